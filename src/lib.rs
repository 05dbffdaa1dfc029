//! backstop: backup and restore automation for PostgreSQL/Supabase and object storage.
//!
//! Data flows one way: commands -> (source | repo) -> seal -> store. A store knows bytes and
//! keys, never snapshots; the repository knows snapshots, never where bytes live.

pub mod backup;
pub mod cache;
pub mod check;
pub mod cli;
pub mod commands;
pub mod documents;
pub mod error;
pub mod expect;
pub mod policy;
pub mod progress;
pub mod record;
pub mod repo;
pub mod restore;
pub mod schedule;
pub mod seal;
pub mod source;
pub mod store;
pub mod util;
pub mod verify;
