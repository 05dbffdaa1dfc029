//! Where backups come from.

pub mod archive;
pub mod copytext;
pub mod files;
pub mod git;
pub mod pgoutput;
pub mod pgtools;
pub mod postgres;
pub mod slot;
pub mod storage;
