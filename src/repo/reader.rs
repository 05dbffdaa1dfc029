//! Reading a stream back: blobs fetched several ahead in parallel, each checked before use.
//!
//! Every blob passes three checks, and a failure names the blob and the snapshot: its stored
//! bytes have the size and SHA-256 that meta.json records; it decrypts (age's MAC covers every
//! byte); and its plaintext's HMAC is the id the manifest names, with the recorded length.

use super::blob_key;
use super::format::{BlobRef, ChunkRef, Meta};
use crate::error::{Error, Kind, Result};
use crate::seal::{sha256_hex, BlobIds, Opener};
use crate::store::Store;
use futures::{Stream, StreamExt};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct BlobReader {
    store: Arc<dyn Store>,
    opener: Arc<Opener>,
    ids: BlobIds,
    refs: HashMap<String, BlobRef>,
    snapshot: String,
    /// Time spent downloading and opening blobs, summed over all fetches (they overlap).
    download_nanos: AtomicU64,
    open_nanos: AtomicU64,
}

impl BlobReader {
    pub fn new(
        store: Arc<dyn Store>,
        opener: Arc<Opener>,
        ids: BlobIds,
        meta: &Meta,
    ) -> BlobReader {
        Self::from_refs(store, opener, ids, meta.blobs.clone(), &meta.id)
    }

    /// A reader of the given blobs; `label` names what they belong to in errors.
    pub fn from_refs(
        store: Arc<dyn Store>,
        opener: Arc<Opener>,
        ids: BlobIds,
        refs: Vec<BlobRef>,
        label: &str,
    ) -> BlobReader {
        BlobReader {
            store,
            opener,
            ids,
            refs: refs.into_iter().map(|b| (b.id.clone(), b)).collect(),
            snapshot: label.to_string(),
            download_nanos: AtomicU64::new(0),
            open_nanos: AtomicU64::new(0),
        }
    }

    /// Summed time spent downloading, and decrypting and decompressing, so far.
    pub fn work_times(&self) -> (Duration, Duration) {
        (
            Duration::from_nanos(self.download_nanos.load(Ordering::Relaxed)),
            Duration::from_nanos(self.open_nanos.load(Ordering::Relaxed)),
        )
    }

    /// The plaintext chunks in order, with up to `ahead` fetched and opened concurrently.
    pub fn stream(
        self: &Arc<Self>,
        chunks: Vec<ChunkRef>,
        ahead: usize,
    ) -> impl Stream<Item = Result<Vec<u8>>> + Send + 'static {
        let this = self.clone();
        futures::stream::iter(chunks)
            .map(move |c| {
                let this = this.clone();
                async move { this.fetch(c).await }
            })
            .buffered(ahead.max(1))
    }

    pub async fn fetch(self: Arc<Self>, chunk: ChunkRef) -> Result<Vec<u8>> {
        let id = chunk.id.clone();
        let key = blob_key(&id);
        let expected = self.refs.get(&id).ok_or_else(|| {
            Error::new(Kind::Damaged, format!(
                "blob {id} is used by snapshot {} but not listed in its meta.json: the snapshot is damaged",
                self.snapshot
            ))
        })?;
        let started = Instant::now();
        let fetched = self.store.get_opt(&key).await;
        self.download_nanos
            .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        let bytes = fetched?.ok_or_else(|| {
            Error::new(
                Kind::Damaged,
                format!(
                    "blob {id} is missing from {} ({key}, needed by snapshot {})",
                    self.store.describe(),
                    self.snapshot
                ),
            )
        })?;
        if bytes.len() as u64 != expected.size {
            return Err(Error::new(
                Kind::Damaged,
                format!(
                    "blob {id} is damaged: {} bytes stored, meta.json of snapshot {} records {}",
                    bytes.len(),
                    self.snapshot,
                    expected.size
                ),
            ));
        }
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let result = this.check_and_open(&id, &bytes, chunk.len);
            this.open_nanos
                .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
            result
        })
        .await
        .map_err(|e| Error::failed(format!("reading blob {}: {e}", chunk.id)))?
    }

    /// Opens a blob and checks its plaintext against its id. The AEAD of age and the keyed id
    /// of the plaintext already prove the blob authentic, so the SHA-256 of the stored bytes
    /// (what `check` compares without the key) is computed only when they fail, to say whether
    /// the stored bytes changed: one hash pass over every restored byte less.
    fn check_and_open(&self, id: &str, bytes: &[u8], len: u32) -> Result<Vec<u8>> {
        let opened = self
            .opener
            .open_bounded(bytes, &format!("blob {id}"), u64::from(len))
            .and_then(|plain| {
                if plain.len() != len as usize || self.ids.id(&plain) != id {
                    return Err(Error::new(
                        Kind::Damaged,
                        format!(
                            "blob {id} is damaged: its plaintext does not match its id (snapshot {})",
                            self.snapshot
                        ),
                    ));
                }
                Ok(plain)
            });
        opened.map_err(|e| {
            let sha = sha256_hex(bytes);
            if sha == self.refs[id].sha256 {
                return e;
            }
            Error::new(Kind::Damaged, format!(
                "blob {id} is damaged: its stored bytes have SHA-256 {sha}, meta.json of snapshot {} records {}",
                self.snapshot, self.refs[id].sha256
            ))
        })
    }
}
