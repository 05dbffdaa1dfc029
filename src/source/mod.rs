//! Where backups come from.

pub mod archive;
pub mod copytext;
pub mod pgtools;
pub mod postgres;
pub mod storage;
