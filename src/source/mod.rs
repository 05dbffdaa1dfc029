//! Where backups come from.

pub mod pgtools;
pub mod postgres;
pub mod storage;
