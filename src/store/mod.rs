//! Stores know bytes and keys, never snapshots.
//!
//! Every write creates a new object and never replaces one ([`Store::put_new`] reports
//! [`Put::Exists`] instead), so nothing written to a repository can be destroyed by a later
//! write. A put is all-or-nothing: a reader sees the whole object or no object. Keys are
//! `/`-separated relative paths such as `blobs/ab/<id>`.

pub mod fs;

use crate::error::Result;
use async_trait::async_trait;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Put {
    Created,
    Exists,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: String,
    pub size: u64,
}

#[async_trait]
pub trait Store: Send + Sync {
    /// Where the store is, for messages (never with a secret).
    fn describe(&self) -> String;
    /// Writes `data` under `key` unless an object is there already.
    async fn put_new(&self, key: &str, data: Vec<u8>) -> Result<Put>;
    /// The object, or `None` when there is none.
    async fn get_opt(&self, key: &str) -> Result<Option<Vec<u8>>>;
    /// The object's size, or `None` when there is none.
    async fn stat(&self, key: &str) -> Result<Option<u64>>;
    /// Every object whose key starts with `prefix`, sorted by key.
    async fn list(&self, prefix: &str) -> Result<Vec<Entry>>;
    /// Removes the object; removing a missing object is not an error.
    async fn delete(&self, key: &str) -> Result<()>;
}

/// Opens the store a policy's repository names.
pub fn open(repo: &crate::policy::Repository) -> Result<std::sync::Arc<dyn Store>> {
    match &repo.location {
        crate::policy::Location::Dir(path) => Ok(std::sync::Arc::new(fs::FsStore::new(path.clone()))),
        crate::policy::Location::S3 { .. } => Err(crate::error::Error::input(format!(
            "repository {}: S3 repositories are not supported by this build yet; use a local directory (file:///path)",
            repo.url
        ))),
    }
}
