//! Storage buckets in a snapshot: back up every object of the policy's buckets through the
//! seal, and restore them to a directory or back to the source.
//!
//! Each object streams through the same chunking, dedup and sealing as the dump (no whole file
//! in memory), [`CONCURRENT_OBJECTS`] at a time. An object whose listing fingerprint matches the
//! local index ([`crate::cache`]) and whose chunks are all committed blobs is not downloaded
//! again. A download that ends short of the listed size, or fails, fails the backup naming the
//! object. The bucket listing is compared with the `storage.objects` rows read in the database
//! snapshot: rows whose object is absent (`missing_in_bucket`) and objects without a row
//! (`missing_in_table`) are recorded, and fail the backup when `require_consistent` is set.
//!
//! Restoring writes `DIR/<bucket>/<name>` atomically (a temporary file, fsync, rename; the
//! directories are fsynced once each when all are written, see [`crate::localfs`]) and never
//! replaces an existing file without `force`; a name that is not a safe path is written through
//! the reversible mapping of [`crate::source::storage::names`] and listed in [`NAMES_FILE`]. Or
//! it uploads each object to the source under its exact name, with the recorded content type
//! and cache control, creating the bucket if missing. An object that cannot be written is
//! named, and the others are still restored.

use crate::cache::{Cached, Index};
use crate::error::{Error, Kind, Result};
use crate::localfs::write_file_atomically;
pub use crate::record::figures::BackupStorage;
pub use crate::record::figures::Mismatches;
use crate::repo::format::StorageObject;
use crate::repo::format::StreamRef;
use crate::repo::reader::BlobReader;
use crate::repo::writer::{BlobWriter, WriteStats};
use crate::source::storage::{names, safe_relative, ObjectInfo, StorageSource, UploadMeta};
use futures::{StreamExt, TryStreamExt};
use std::collections::{BTreeSet, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use tokio::io::AsyncBufRead;

pub const CONCURRENT_OBJECTS: usize = 4;

/// Objects restored at once. Higher than for backups: each restored file waits on its own
/// fsync (and its directory's), so the disk's queue, not the CPU, is what parallelism fills.
pub const CONCURRENT_RESTORES: usize = 16;

pub struct BackedUp {
    pub objects: Vec<StorageObject>,
    pub figures: BackupStorage,
    pub index: Index,
}

/// Backs up every object of `buckets`. `db_names` holds `bucket/name` of the `storage.objects`
/// rows read in the database snapshot, when the database has that table.
pub async fn backup(
    source: &dyn StorageSource,
    buckets: &[String],
    writer: &Arc<BlobWriter>,
    cache: &Index,
    db_names: Option<&BTreeSet<String>>,
) -> Result<BackedUp> {
    let mut listed = Vec::new();
    for bucket in buckets {
        listed.extend(source.list(bucket).await?);
    }
    let mut figures = BackupStorage::default();
    if let Some(rows) = db_names {
        let in_bucket: BTreeSet<String> = listed
            .iter()
            .map(|o| format!("{}/{}", o.bucket, o.name))
            .collect();
        figures.mismatches = Mismatches {
            missing_in_bucket: rows.difference(&in_bucket).cloned().collect(),
            missing_in_table: in_bucket.difference(rows).cloned().collect(),
        };
    }
    let (listed, unfetchable): (Vec<_>, Vec<_>) = listed
        .into_iter()
        .partition(|o| source.unfetchable(o).is_none());
    figures.unfetchable = unfetchable
        .iter()
        .filter_map(|o| source.unfetchable(o))
        .collect();
    let results: Vec<(StorageObject, bool, u64, Option<String>)> = futures::stream::iter(listed)
        .map(|info| backup_one(source, writer, cache, info))
        .buffer_unordered(CONCURRENT_OBJECTS)
        .try_collect()
        .await?;
    let mut index = Index::default();
    let mut objects = Vec::with_capacity(results.len());
    for (object, new, stored, fingerprint) in results {
        figures.objects += 1;
        figures.bytes_plain += object.size;
        figures.bytes_stored += stored;
        if new {
            figures.objects_new += 1;
        } else {
            figures.objects_reused += 1;
        }
        if let Some(fp) = fingerprint {
            index.objects.insert(
                fp,
                Cached {
                    sha256: object.sha256.clone(),
                    size: object.size,
                    chunks: object.chunks.clone(),
                    content_type: object.content_type.clone(),
                    cache_control: object.cache_control.clone(),
                },
            );
        }
        objects.push(object);
    }
    objects.sort_by(|a, b| (&a.bucket, &a.name).cmp(&(&b.bucket, &b.name)));
    Ok(BackedUp {
        objects,
        figures,
        index,
    })
}

/// One object: from the index when unchanged, else downloaded through the writer. Returns the
/// manifest entry, whether it needed new blobs, the bytes it stored, and its fingerprint.
async fn backup_one(
    source: &dyn StorageSource,
    writer: &Arc<BlobWriter>,
    cache: &Index,
    info: ObjectInfo,
) -> Result<(StorageObject, bool, u64, Option<String>)> {
    let fingerprint = info.fingerprint();
    if let Some(hit) = fingerprint.as_ref().and_then(|f| cache.objects.get(f)) {
        if writer.reuse_committed(&hit.chunks) {
            let object = StorageObject {
                bucket: info.bucket,
                name: info.name,
                size: hit.size,
                sha256: hit.sha256.clone(),
                content_type: info.content_type.or_else(|| hit.content_type.clone()),
                cache_control: info.cache_control.or_else(|| hit.cache_control.clone()),
                etag: info.etag,
                version: info.version,
                chunks: hit.chunks.clone(),
            };
            return Ok((object, false, 0, fingerprint));
        }
    }
    let what = format!("storage object {}/{}", info.bucket, info.name);
    // A download cut off midway (or one that ends short of the listed size) is made again,
    // with backoff; chunks the failed attempt stored are found again, not re-uploaded.
    let backoff = crate::retry::Backoff {
        attempts: DOWNLOAD_ATTEMPTS,
        first: std::time::Duration::from_millis(500),
    };
    let once = |_| async {
        download_once(source, writer, &info, &what)
            .await
            .map_err(|e| match e.kind {
                Kind::Failed => crate::retry::Attempt::Again(e),
                _ => crate::retry::Attempt::Final(e),
            })
    };
    let again = |e: &Error, n: u32| {
        tracing::warn!(
            "{}; trying again (attempt {} of {DOWNLOAD_ATTEMPTS})",
            e.message,
            n + 1
        );
    };
    let (stream, stats, download_meta) = match backoff.run(once, again).await {
        Ok(done) => done,
        Err((e, n)) if n > 1 => return Err(e.context(format!("{n} attempts"))),
        Err((e, _)) => return Err(e),
    };
    let object = StorageObject {
        bucket: info.bucket,
        name: info.name,
        size: stream.bytes,
        sha256: stream.sha256,
        content_type: info.content_type.or(download_meta.0),
        cache_control: info.cache_control.or(download_meta.1),
        etag: info.etag,
        version: info.version,
        chunks: stream.chunks,
    };
    Ok((object, stats.blobs_new > 0, stats.bytes_stored, fingerprint))
}

/// One object fetched by name (the change stream's documents), downloaded and stored through
/// `writer` with the same retries as a backup's.
pub async fn fetch_object(
    source: &dyn StorageSource,
    writer: &Arc<BlobWriter>,
    bucket: &str,
    name: &str,
) -> Result<StorageObject> {
    let info = ObjectInfo::new(bucket, name);
    if let Some(why) = source.unfetchable(&info) {
        return Err(Error::failed(why));
    }
    let (object, ..) = backup_one(source, writer, &Index::default(), info).await?;
    Ok(object)
}

/// How many times one object's download is made in all.
const DOWNLOAD_ATTEMPTS: u32 = 3;

/// One download of an object through the writer; the stream, its figures, and the content
/// type and cache control the download carried.
async fn download_once(
    source: &dyn StorageSource,
    writer: &Arc<BlobWriter>,
    info: &ObjectInfo,
    what: &str,
) -> Result<(StreamRef, WriteStats, (Option<String>, Option<String>))> {
    let download = source.read(info).await?;
    let reader = tokio_util::io::SyncIoBridge::new(download.reader);
    let (stream, stats) = writer
        .write_stream(reader, what, &|_| {})
        .await
        .map_err(|e| e.context(format!("backing up {what}")))?;
    if let Some(size) = info.size {
        if stream.bytes != size {
            return Err(Error::failed(format!(
                "backing up {what}: downloaded {} bytes but the listing says {size}: the download was cut short",
                stream.bytes
            )));
        }
    }
    Ok((
        stream,
        stats,
        (download.content_type, download.cache_control),
    ))
}

/// A stream of the plaintext of `chunks`, each checked against its blob as it arrives.
pub fn chunks_reader(
    reader: &Arc<BlobReader>,
    chunks: Vec<crate::repo::format::ChunkRef>,
    ahead: usize,
) -> impl AsyncBufRead + Send + Unpin + 'static {
    let stream = reader
        .stream(chunks, ahead)
        .map_ok(bytes::Bytes::from)
        .map_err(|e| std::io::Error::other(e.message));
    tokio_util::io::StreamReader::new(Box::pin(stream))
}

pub enum Target<'a> {
    Dir { root: PathBuf, force: bool },
    Source(&'a dyn StorageSource),
}

/// The name of the list of mapped names that a directory restore writes at its root.
pub const NAMES_FILE: &str = "restore-names.tsv";

/// What a storage restore did.
#[derive(Debug, Default)]
pub struct Restored {
    pub objects: u64,
    pub bytes: u64,
    /// `bucket/name` and the path written, for names that are not safe paths (directory
    /// restores only; see [`crate::source::storage::names`]).
    pub mapped: Vec<(String, String)>,
    /// Objects that could not be restored, each with why. The others were restored.
    pub failed: Vec<String>,
}

/// Where `o` goes under `root`, and whether its name had to be mapped.
fn dir_path(root: &std::path::Path, o: &StorageObject) -> Result<(PathBuf, Option<String>)> {
    if !safe_relative(&o.bucket) || o.bucket.contains('/') {
        return Err(Error::failed(format!(
            "bucket name `{}` is not a directory name; restore it with --storage-to-source",
            o.bucket
        )));
    }
    let (rel, mapped) = names::to_dir_path(&o.name);
    let path = root.join(&o.bucket).join(&rel);
    Ok((path, mapped.then_some(rel)))
}

/// Restores every object. One that cannot be restored never stops the others: it is named in
/// [`Restored::failed`].
pub async fn restore(
    reader: &Arc<BlobReader>,
    objects: &[StorageObject],
    target: Target<'_>,
    ahead: usize,
) -> Result<Restored> {
    let mut done = Restored::default();
    if let Target::Dir { root, force } = &target {
        for o in objects {
            let Ok((p, mapped)) = dir_path(root, o) else {
                continue;
            };
            // Refuse before writing anything, naming the first file in the way.
            if !force && tokio::fs::try_exists(&p).await.unwrap_or(false) {
                return Err(Error::input(format!(
                    "{} exists: restore into an empty directory, or pass --force to replace existing files",
                    p.display()
                )));
            }
            if let Some(rel) = mapped {
                done.mapped.push((
                    format!("{}/{}", o.bucket, o.name),
                    format!("{}/{rel}", o.bucket),
                ));
            }
        }
        if !done.mapped.is_empty() {
            let list: String = done
                .mapped
                .iter()
                .map(|(name, path)| {
                    let (bucket, name) = name.split_once('/').unwrap_or_default();
                    names::tsv_line(bucket, name, path)
                })
                .collect();
            let body = std::io::Cursor::new(list.into_bytes());
            write_file_atomically(&root.join(NAMES_FILE), body, *force).await?;
        }
    }
    if let Target::Source(source) = &target {
        let buckets: HashSet<&str> = objects.iter().map(|o| o.bucket.as_str()).collect();
        for b in buckets {
            source.ensure_bucket(b).await?;
        }
    }
    let writes = crate::localfs::Writes::new();
    let results: Vec<(u64, Option<String>)> = futures::stream::iter(objects)
        .map(|o| {
            let target = &target;
            let writes = &writes;
            async move {
                let body = chunks_reader(reader, o.chunks.clone(), ahead);
                let written = match target {
                    Target::Dir { root, force } => match dir_path(root, o) {
                        Ok((path, _)) => writes.write(&path, body, *force, None).await,
                        Err(e) => Err(e),
                    },
                    Target::Source(source) => {
                        let meta = UploadMeta {
                            size: o.size,
                            content_type: o.content_type.clone(),
                            cache_control: o.cache_control.clone(),
                        };
                        source
                            .write(&o.bucket, &o.name, &meta, Box::pin(body))
                            .await
                    }
                };
                match written {
                    Ok(()) => (o.size, None),
                    Err(e) => (0, Some(format!("{}/{}: {}", o.bucket, o.name, e.message))),
                }
            }
        })
        .buffer_unordered(CONCURRENT_RESTORES)
        .collect()
        .await;
    writes.sync().await?;
    for (bytes, failure) in results {
        match failure {
            None => {
                done.objects += 1;
                done.bytes += bytes;
            }
            Some(why) => done.failed.push(why),
        }
    }
    done.failed.sort();
    Ok(done)
}
