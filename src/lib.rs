//! backstop: backup and restore automation for PostgreSQL/Supabase and object storage.
//!
//! Data flows one way: commands -> ops -> (source | repo) -> seal -> store. A store knows
//! bytes and keys, never snapshots; the repository knows snapshots, never where bytes live;
//! a command knows neither's internals. README.md, "Architecture", has the map.

pub mod cache;
pub mod cancel;
pub mod child;
pub mod cli;
pub mod commands;
pub mod daemon;
pub mod error;
pub mod expect;
pub mod jobs;
pub mod localfs;
pub mod metrics;
pub mod model;
pub mod notify;
pub mod objectives;
pub mod ops;
pub mod policy;
pub mod progress;
pub mod record;
pub mod repo;
pub mod report;
pub mod retention;
pub mod retry;
pub mod runbook;
pub mod s3client;
pub mod schedule;
pub mod seal;
pub mod source;
pub mod store;
pub mod util;
