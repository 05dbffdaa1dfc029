//! Writing plaintext streams as deduplicated, sealed blobs.
//!
//! A stream (a dump on a pipe, a file) is cut into content-defined chunks on one blocking
//! thread; each chunk is identified (HMAC), and only when no committed snapshot and no earlier
//! chunk of this run already stored it is it sealed and put. Up to `concurrency` chunks are in
//! flight, so memory stays bounded by about `concurrency x 2 x max chunk size` whatever the
//! stream's length. Blobs left by an interrupted run (present in `blobs/`, referenced by no
//! meta.json) are reused after their stored bytes are hashed, so a retried backup uploads only
//! what is missing.
//!
//! Only what the store holds counts as stored: a blob that a committed snapshot names but the
//! store's listing lacks (lost, deleted by hand) is forgotten at the start, so its content is
//! sealed and uploaded again when it comes by, and [`BlobWriter::reuploaded`] counts those.
//! A later snapshot never references a blob the store does not have.

use super::format::Meta;
use super::format::{BlobRef, ChunkRef, StreamRef};
use super::index::BlobIndex;
use super::{blob_key, Repo};
use crate::error::{Error, Result};
use crate::seal::{sha256_hex, ChunkerParams, Sealer};
use crate::store::{Put, Store};
use crate::util::lock;
use futures::StreamExt;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::sync::{Arc, Mutex};

/// Figures for one stream or a whole run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteStats {
    pub bytes_plain: u64,
    pub bytes_stored: u64,
    pub blobs_new: u64,
    pub blobs_reused: u64,
}

impl WriteStats {
    fn add(&mut self, other: &WriteStats) {
        self.bytes_plain += other.bytes_plain;
        self.bytes_stored += other.bytes_stored;
        self.blobs_new += other.blobs_new;
        self.blobs_reused += other.blobs_reused;
    }
}

pub struct BlobWriter {
    store: Arc<dyn Store>,
    sealer: Arc<Sealer>,
    chunker: ChunkerParams,
    concurrency: usize,
    /// Blobs known to be stored with their stored size and hash: from committed snapshots,
    /// and those this run wrote.
    known: Mutex<HashMap<String, BlobRef>>,
    /// Blobs present in the store that no committed snapshot references, with their size.
    orphans: HashMap<String, u64>,
    /// Every blob this run's snapshot references.
    used: Mutex<BTreeMap<String, BlobRef>>,
    /// Blobs committed snapshots name that the store lacks.
    lost: std::collections::HashSet<String>,
    reuploaded: std::sync::atomic::AtomicU64,
    /// The host's index of committed snapshots' blobs, saved with this run's snapshot.
    index: Mutex<Option<BlobIndex>>,
}

enum Sealed {
    Known(BlobRef),
    Orphan(String),
    New { id: String, bytes: Vec<u8> },
}

impl BlobWriter {
    pub async fn new(repo: &Repo, sealer: Arc<Sealer>, concurrency: usize) -> Result<BlobWriter> {
        let (index, synced) = BlobIndex::open(repo).await?;
        tracing::debug!(
            "blob index: {} meta.json read, {} dropped{}",
            synced.metas_read,
            synced.metas_dropped,
            if synced.rebuilt { " (rebuilt)" } else { "" }
        );
        let mut known = index.referenced();
        let stored = repo.stored_blobs().await?;
        let lost: std::collections::HashSet<String> = known
            .keys()
            .filter(|id| !stored.contains_key(*id))
            .cloned()
            .collect();
        if !lost.is_empty() {
            tracing::warn!(
                "{} blobs that committed snapshots reference are missing from {}; they are uploaded again when their content comes by (`backstop check` names the snapshots that need them)",
                lost.len(),
                repo.store.describe()
            );
        }
        known.retain(|id, _| !lost.contains(id));
        let orphans = stored
            .into_iter()
            .filter(|(id, _)| !known.contains_key(id))
            .collect();
        Ok(BlobWriter {
            store: repo.store.clone(),
            sealer,
            chunker: repo.config.chunker,
            concurrency: concurrency.max(1),
            known: Mutex::new(known),
            orphans,
            used: Mutex::new(BTreeMap::new()),
            lost,
            reuploaded: std::sync::atomic::AtomicU64::new(0),
            index: Mutex::new(Some(index)),
        })
    }

    /// Marks the chunks of unchanged content as used, when every one is a stored blob this
    /// writer knows of (committed, or written by this run). False when any is unknown: then
    /// the content must be read and written again.
    pub fn reuse_committed(&self, chunks: &[ChunkRef]) -> bool {
        let refs: Option<Vec<BlobRef>> = {
            let known = lock(&self.known);
            chunks.iter().map(|c| known.get(&c.id).cloned()).collect()
        };
        let Some(refs) = refs else { return false };
        let mut used = lock(&self.used);
        for r in refs {
            used.insert(r.id.clone(), r);
        }
        true
    }

    /// How many blobs that committed snapshots named but the store had lost this run uploaded
    /// again.
    pub fn reuploaded(&self) -> u64 {
        self.reuploaded.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Adds a snapshot just committed (its meta.json `meta_size` bytes) to the host's blob
    /// index and saves it.
    pub fn committed(&self, repo: &Repo, meta: &Meta, meta_size: u64) {
        if let Some(mut index) = lock(&self.index).take() {
            index.add_committed(repo, meta, meta_size);
            index.save();
        }
    }

    /// Every blob referenced so far, sorted by id.
    pub fn used(&self) -> Vec<BlobRef> {
        lock(&self.used).values().cloned().collect()
    }

    /// Chunks, seals and stores everything `reader` yields. `on_chunk` sees each chunk's
    /// plaintext length as it is stored (for progress).
    pub async fn write_stream<R: Read + Send + 'static>(
        self: &Arc<Self>,
        reader: R,
        what: &str,
        on_chunk: &(dyn Fn(u64) + Sync),
    ) -> Result<(StreamRef, WriteStats)> {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>>>(2);
        let params = self.chunker;
        let label = what.to_string();
        let chunker = tokio::task::spawn_blocking(move || {
            let mut hasher = Sha256::new();
            let mut total = 0u64;
            for chunk in params.chunks(reader) {
                let item = match chunk {
                    Ok(c) => {
                        hasher.update(&c.data);
                        total += c.data.len() as u64;
                        Ok(c.data)
                    }
                    Err(e) => Err(Error::failed(format!("reading {label}: {e}"))),
                };
                let stop = item.is_err();
                if tx.blocking_send(item).is_err() || stop {
                    break;
                }
            }
            (total, hex::encode(hasher.finalize()))
        });
        let chunks = Box::pin(futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        }));
        let mut results = chunks
            .map(|item| {
                let this = self.clone();
                async move { this.put_chunk(item?).await }
            })
            .buffered(self.concurrency);
        let mut stream = StreamRef::default();
        let mut stats = WriteStats::default();
        while let Some(result) = results.next().await {
            let (chunk, one) = result?;
            on_chunk(chunk.len as u64);
            stats.add(&one);
            stream.chunks.push(chunk);
        }
        drop(results);
        let (bytes, sha256) = chunker
            .await
            .map_err(|e| Error::failed(format!("chunking {what}: {e}")))?;
        stream.bytes = bytes;
        stream.sha256 = sha256;
        Ok((stream, stats))
    }

    async fn put_chunk(self: Arc<Self>, data: Vec<u8>) -> Result<(ChunkRef, WriteStats)> {
        let len = data.len();
        let this = self.clone();
        let sealed = tokio::task::spawn_blocking(move || -> Result<Sealed> {
            let id = this.sealer.blob_id(&data);
            if let Some(b) = lock(&this.known).get(&id) {
                return Ok(Sealed::Known(b.clone()));
            }
            if this.orphans.contains_key(&id) {
                return Ok(Sealed::Orphan(id));
            }
            let bytes = this.sealer.seal(&data)?;
            Ok(Sealed::New { id, bytes })
        })
        .await
        .map_err(|e| Error::failed(format!("sealing task failed: {e}")))??;
        let mut stats = WriteStats {
            bytes_plain: len as u64,
            ..Default::default()
        };
        let blob = match sealed {
            Sealed::Known(b) => {
                stats.blobs_reused = 1;
                b
            }
            Sealed::Orphan(id) => {
                stats.blobs_reused = 1;
                self.hash_stored(&id).await?
            }
            Sealed::New { id, bytes } => {
                let b = BlobRef {
                    id: id.clone(),
                    size: bytes.len() as u64,
                    sha256: sha256_hex(&bytes),
                };
                match self.store.put_new(&blob_key(&id), bytes).await? {
                    Put::Created => {
                        if self.lost.contains(&id) {
                            self.reuploaded
                                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                        stats.blobs_new = 1;
                        stats.bytes_stored = b.size;
                        b
                    }
                    // Another chunk of this run with the same content won the race.
                    Put::Exists => {
                        stats.blobs_reused = 1;
                        self.hash_stored(&id).await?
                    }
                }
            }
        };
        lock(&self.known).insert(blob.id.clone(), blob.clone());
        lock(&self.used).insert(blob.id.clone(), blob.clone());
        Ok((
            ChunkRef {
                id: blob.id,
                len: len as u32,
            },
            stats,
        ))
    }

    /// Size and SHA-256 of a blob already in the store.
    async fn hash_stored(&self, id: &str) -> Result<BlobRef> {
        let key = blob_key(id);
        let bytes = self.store.get_opt(&key).await?.ok_or_else(|| {
            Error::failed(format!(
                "{key} vanished from {} during the backup",
                self.store.describe()
            ))
        })?;
        Ok(BlobRef {
            id: id.to_string(),
            size: bytes.len() as u64,
            sha256: sha256_hex(&bytes),
        })
    }
}
