//! The backup host's local index of storage objects, files and git bundles it has already
//! backed up.
//!
//! The backup host cannot read earlier manifests (they are encrypted to keys it does not
//! hold), so to avoid downloading an unchanged object again it remembers, per repository and
//! policy, each object's listing fingerprint (bucket, name, size, etag, update time) with the
//! content's SHA-256 and chunk ids. It lives in `$BACKSTOP_CACHE_DIR`, else
//! `$XDG_CACHE_HOME/backstop`, else `~/.cache/backstop`: outside the repository, on the host
//! that reads the bucket anyway, so it reveals nothing new. An entry is used only when every
//! chunk it names is a blob of a committed snapshot; a missing or unreadable cache only costs
//! downloads. It is replaced atomically after each committed backup.

use crate::repo::format::ChunkRef;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::PathBuf;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Index {
    pub objects: HashMap<String, Cached>,
    /// `[[files]]` files by [`crate::source::files::fingerprint`].
    #[serde(default)]
    pub files: HashMap<String, Cached>,
    /// `[[git]]` bundles by source and ref state: an unchanged repository is not bundled again.
    #[serde(default)]
    pub git: HashMap<String, CachedBundle>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CachedBundle {
    pub stream: crate::repo::format::StreamRef,
    pub refs: Vec<(String, String)>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Cached {
    pub sha256: String,
    pub size: u64,
    pub chunks: Vec<ChunkRef>,
    pub content_type: Option<String>,
    pub cache_control: Option<String>,
}

pub fn dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("BACKSTOP_CACHE_DIR") {
        return Some(PathBuf::from(d));
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return Some(PathBuf::from(d).join("backstop"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/backstop"))
}

/// A file in the cache's `index/` directory.
pub fn index_file(name: &str) -> Option<PathBuf> {
    dir().map(|d| d.join("index").join(name))
}

fn path(repository: &str, policy: &str) -> Option<PathBuf> {
    let id = hex::encode(Sha256::digest(
        format!("{repository}\u{0}{policy}").as_bytes(),
    ));
    index_file(&format!("{}.json", &id[..32]))
}

pub fn load(repository: &str, policy: &str) -> Index {
    path(repository, policy)
        .and_then(|p| std::fs::read(p).ok())
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// Replaces the index; a failure only costs downloads next time, so it is logged, not raised.
pub fn save(repository: &str, policy: &str, index: &Index) {
    if let Some(p) = path(repository, policy) {
        save_json(&p, index, "the storage index cache");
    }
}

/// Replaces a cache file with `value` as JSON (written beside it, then renamed). A cache
/// that cannot be saved only costs work next time, so a failure is logged, not raised.
pub fn save_json<T: Serialize>(path: &std::path::Path, value: &T, what: &str) {
    let write = || -> std::io::Result<()> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
        let mut out = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&tmp)?);
        serde_json::to_writer(&mut out, value).map_err(std::io::Error::other)?;
        out.into_inner().map_err(|e| e.into_error())?;
        std::fs::rename(&tmp, path)
    };
    if let Err(e) = write() {
        tracing::warn!("could not save {what} {}: {e}", path.display());
    }
}
