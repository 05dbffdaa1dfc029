//! Stores know bytes and keys, never snapshots.
//!
//! Repository data is written with [`PutMode::Create`]: a new object that never replaces one
//! ([`Put::Exists`] is reported instead) and that carries the store's object-lock retention
//! where one is configured, so nothing written can be destroyed by a later write. Only run
//! locks are mutable ([`PutMode::CreateMutable`], [`PutMode::Replace`]). A put is
//! all-or-nothing: a reader sees the whole object or no object. Keys are `/`-separated relative
//! paths such as `blobs/ab/<id>`. Every store passes the conformance suite in
//! `tests/store_conformance.rs`.

pub mod fs;
pub mod s3;

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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutMode {
    /// A new, immutable object (with object-lock retention where configured).
    Create,
    /// A new object without retention, for run locks.
    CreateMutable,
    /// Create or overwrite, without retention, for refreshing run locks.
    Replace,
}

#[async_trait]
pub trait Store: Send + Sync {
    /// Where the store is, for messages (never with a secret).
    fn describe(&self) -> String;
    /// Checks that the store can be used (the bucket exists, object lock is enabled when the
    /// policy asks for it); `init` calls it.
    async fn check(&self) -> Result<()>;
    /// Writes `data` under `key`. Unless `mode` is `Replace`, nothing is written when an object
    /// is there already, and `Put::Exists` says so.
    async fn put(&self, key: &str, data: Vec<u8>, mode: PutMode) -> Result<Put>;
    /// [`Store::put`] with [`PutMode::Create`].
    async fn put_new(&self, key: &str, data: Vec<u8>) -> Result<Put> {
        self.put(key, data, PutMode::Create).await
    }
    /// The object, or `None` when there is none.
    async fn get_opt(&self, key: &str) -> Result<Option<Vec<u8>>>;
    /// The object's size, or `None` when there is none.
    async fn stat(&self, key: &str) -> Result<Option<u64>>;
    /// Every object whose key starts with `prefix`, sorted by key.
    async fn list(&self, prefix: &str) -> Result<Vec<Entry>>;
    /// Removes the object; removing a missing object is not an error.
    async fn delete(&self, key: &str) -> Result<()>;
    /// Removes objects for good: on a versioned bucket every version (and delete marker) of
    /// each, never only a new delete marker. An object under object-lock retention is never
    /// tried before its date: it is reported in [`Removed::locked`] instead. Absent keys are
    /// not errors. This default, for stores without versions or locks, deletes one by one.
    async fn remove(&self, keys: &[String]) -> Result<Removed> {
        let mut out = Removed::default();
        for key in keys {
            if let Some(size) = self.stat(key).await? {
                self.delete(key).await?;
                out.removed.push((key.clone(), size));
            }
        }
        Ok(out)
    }
}

/// What [`Store::remove`] did.
#[derive(Debug, Default)]
pub struct Removed {
    /// Keys removed for good, with the stored bytes that freed.
    pub removed: Vec<(String, u64)>,
    /// Keys left in place because object lock retains them, with the time each becomes
    /// deletable.
    pub locked: Vec<(String, chrono::DateTime<chrono::Utc>)>,
}

/// Where a store is and how to reach it. The policy converts its `[repository]` into this
/// (`policy::Repository::store_config`); a store never reads a policy.
#[derive(Debug, Clone)]
pub enum StoreConfig {
    Dir(std::path::PathBuf),
    S3(s3::S3Config),
}

/// Opens the store a configuration names.
pub async fn open(config: &StoreConfig) -> Result<std::sync::Arc<dyn Store>> {
    Ok(match config {
        StoreConfig::Dir(path) => std::sync::Arc::new(fs::FsStore::new(path.clone())),
        StoreConfig::S3(c) => std::sync::Arc::new(s3::S3Store::connect(c.clone()).await?),
    })
}
