//! Storage sources: where uploaded documents and config files live. Supabase Storage over its
//! REST API, any S3 endpoint, or a local directory (each bucket a folder).
//!
//! A source lists a bucket (with whatever size, etag and update time it reliably knows),
//! streams one object's content, and for restore uploads one back. Names are the full object
//! paths within the bucket, `/`-separated, exactly as the source spells them (any Unicode,
//! spaces, `#`, `%`, `+`, `?`, `=`); each source encodes them for its own protocol.

pub mod dir;
pub mod names;
pub mod s3;
pub mod supabase;

use crate::error::{Error, Result};
use crate::policy::{StorageKind, StorageSource as Config};
use async_trait::async_trait;
use secrecy::ExposeSecret;
use std::pin::Pin;
use tokio::io::AsyncRead;

pub type Reader = Pin<Box<dyn AsyncRead + Send>>;

/// One object as the source's listing describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    pub bucket: String,
    pub name: String,
    pub size: Option<u64>,
    pub etag: Option<String>,
    pub updated_at: Option<String>,
    pub content_type: Option<String>,
    pub cache_control: Option<String>,
    pub version: Option<String>,
}

impl ObjectInfo {
    pub fn new(bucket: &str, name: &str) -> ObjectInfo {
        ObjectInfo {
            bucket: bucket.to_string(),
            name: name.to_string(),
            size: None,
            etag: None,
            updated_at: None,
            content_type: None,
            cache_control: None,
            version: None,
        }
    }

    /// What identifies this version of the object without reading it, when the listing gives
    /// a size and an etag or update time; `None` when it does not (then it is always read).
    pub fn fingerprint(&self) -> Option<String> {
        let size = self.size?;
        if self.etag.is_none() && self.updated_at.is_none() {
            return None;
        }
        Some(format!(
            "{}\u{0}{}\u{0}{size}\u{0}{}\u{0}{}",
            self.bucket,
            self.name,
            self.etag.as_deref().unwrap_or(""),
            self.updated_at.as_deref().unwrap_or("")
        ))
    }
}

/// An object's content as it downloads, with what the server says of it.
pub struct Download {
    pub reader: Reader,
    pub content_type: Option<String>,
    pub cache_control: Option<String>,
}

/// What an upload back to the source carries besides the bytes.
#[derive(Debug, Clone)]
pub struct UploadMeta {
    pub size: u64,
    pub content_type: Option<String>,
    pub cache_control: Option<String>,
}

#[async_trait]
pub trait StorageSource: Send + Sync {
    fn describe(&self) -> String;
    /// Checks, before any work starts, that the credentials are accepted and every bucket
    /// exists: a refused key and a missing bucket are each named (exit 2).
    async fn check_buckets(&self, buckets: &[String]) -> Result<()>;
    /// Every object of a bucket; a missing bucket is an error naming it.
    async fn list(&self, bucket: &str) -> Result<Vec<ObjectInfo>>;
    /// Why this source's protocol cannot fetch a listed object at all (a Supabase object
    /// named exactly `.` or `..`, which no URL path can address); `None` for the others.
    fn unfetchable(&self, _object: &ObjectInfo) -> Option<String> {
        None
    }
    /// The object's content as a stream.
    async fn read(&self, object: &ObjectInfo) -> Result<Download>;
    /// Creates the bucket when it does not exist.
    async fn ensure_bucket(&self, bucket: &str) -> Result<()>;
    /// Uploads (or replaces) one object from a stream of `meta.size` bytes.
    async fn write(&self, bucket: &str, name: &str, meta: &UploadMeta, body: Reader) -> Result<()>;
}

pub async fn open(config: &Config) -> Result<Box<dyn StorageSource>> {
    Ok(match config.kind {
        StorageKind::Dir => {
            let path = config
                .path
                .clone()
                .ok_or_else(|| Error::input("storage: kind = \"dir\" needs path"))?;
            Box::new(dir::DirSource::new(path))
        }
        StorageKind::Supabase => Box::new(supabase::SupabaseSource::new(
            config.url.as_deref().unwrap_or_default(),
            config
                .key
                .as_ref()
                .map(|k| k.expose_secret())
                .unwrap_or_default(),
        )?),
        StorageKind::S3 => Box::new(s3::S3Source::connect(config).await?),
    })
}

/// A name is safe to use as a relative path: no empty, `.` or `..` component, not absolute.
pub fn safe_relative(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('/')
        && name
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..")
}
