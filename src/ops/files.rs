//! `[[files]]` sets in a snapshot: back up, restore and verify.
//!
//! Each file streams through the same chunking, dedup and sealing as everything else,
//! [`CONCURRENT_FILES`] at a time; a file whose fingerprint (path, size, mtime, inode, ctime)
//! matches the local index and whose chunks are committed blobs is not read again. A file is
//! stat'ed before and after it is read; when its size or mtime moved, it is read once more,
//! and if it moved again the snapshot keeps the second read and the run says so.
//!
//! Restore writes each set under `DIR/<set>/<absolute path>` (`--files-dir`) or back to the
//! original paths (`--files-to-source`), with modes, mtimes and, as root, owners. Files are
//! written atomically and created 0600 until their mode is set. Nothing existing is replaced
//! without `force`, and a restore to the source writes only under the roots the backup
//! matched, never through a `..`.

use crate::cache::{Cached, Index};
use crate::error::{Error, Result};
use crate::policy::FileSet;
pub use crate::record::figures::FilesFigures;
pub use crate::record::figures::FilesRestored as Restored;
use crate::repo::format::{FileEntry, FileSetManifest, FilesManifest, StreamRef};
use crate::repo::reader::BlobReader;
use crate::repo::writer::BlobWriter;
use crate::source::files::{self, Planned};
use futures::{StreamExt, TryStreamExt};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

pub const CONCURRENT_FILES: usize = 4;

pub struct BackedUp {
    pub manifest: FilesManifest,
    pub figures: FilesFigures,
    pub index: HashMap<String, Cached>,
    pub warnings: Vec<String>,
}

/// Plans every set (paths exist, globs match, everything readable) before a backup starts.
pub async fn plan(sets: &[FileSet]) -> Result<Vec<Planned>> {
    let sets = sets.to_vec();
    tokio::task::spawn_blocking(move || sets.iter().map(files::plan).collect())
        .await
        .map_err(|e| Error::failed(format!("planning files: {e}")))?
}

struct Read {
    entry: FileEntry,
    stored: u64,
    fingerprint: String,
    warning: Option<String>,
}

/// Reads one file through the writer (or takes it from the index), stat'ing around the read.
async fn read_file(path: PathBuf, writer: &Arc<BlobWriter>, cache: &Index) -> Result<Read> {
    let what = format!("file {}", path.display());
    let mut warning = None;
    for attempt in 1..=2 {
        let before = std::fs::symlink_metadata(&path)
            .map_err(|e| Error::failed(format!("cannot read {what}: {e}")))?;
        let fingerprint = files::fingerprint(&path, &before);
        if let Some(hit) = cache.files.get(&fingerprint) {
            if writer.reuse_committed(&hit.chunks) {
                let mut entry = files::entry(&path, &before)?;
                entry.sha256 = Some(hit.sha256.clone());
                entry.chunks = hit.chunks.clone();
                return Ok(Read {
                    entry,
                    stored: 0,
                    fingerprint,
                    warning,
                });
            }
        }
        let file = std::fs::File::open(&path)
            .map_err(|e| Error::failed(format!("cannot read {what}: {e}")))?;
        let (stream, stats): (StreamRef, _) = writer.write_stream(file, &what, &|_| {}).await?;
        let after = std::fs::symlink_metadata(&path)
            .map_err(|e| Error::failed(format!("{what} went away while it was read: {e}")))?;
        let moved = files::changed(&before, &after) || stream.bytes != after.len();
        if moved && attempt == 1 {
            continue;
        }
        if moved {
            let text = format!(
                "{} changed while it was read, twice; the snapshot holds the second read",
                path.display()
            );
            tracing::warn!("{text}");
            warning = Some(text);
        }
        let mut entry = files::entry(&path, &after)?;
        entry.size = stream.bytes;
        entry.sha256 = Some(stream.sha256);
        entry.chunks = stream.chunks;
        return Ok(Read {
            entry,
            stored: stats.bytes_stored,
            fingerprint: files::fingerprint(&path, &after),
            warning,
        });
    }
    unreachable!("the second attempt always returns")
}

/// Backs up every planned set.
pub async fn backup(
    sets: &[FileSet],
    plans: Vec<Planned>,
    writer: &Arc<BlobWriter>,
    cache: &Index,
) -> Result<BackedUp> {
    let mut out = BackedUp {
        manifest: FilesManifest::default(),
        figures: FilesFigures::default(),
        index: HashMap::new(),
        warnings: Vec::new(),
    };
    for (set, plan) in sets.iter().zip(plans) {
        out.warnings.extend(plan.warnings.iter().cloned());
        let regular: Vec<PathBuf> = plan
            .entries
            .iter()
            .filter(|(_, m)| m.file_type().is_file())
            .map(|(p, _)| p.clone())
            .collect();
        let reads: Vec<Read> = futures::stream::iter(regular)
            .map(|p| read_file(p, writer, cache))
            .buffered(CONCURRENT_FILES)
            .try_collect()
            .await?;
        // `buffered` keeps the order, so the reads come back in the plan's order of files.
        let mut reads = reads.into_iter();
        let mut entries = Vec::with_capacity(plan.entries.len());
        for (path, meta) in &plan.entries {
            let read = if meta.file_type().is_file() {
                reads.next()
            } else {
                None
            };
            let entry = match read {
                Some(read) => {
                    out.figures.files += 1;
                    out.figures.bytes_plain += read.entry.size;
                    out.figures.bytes_stored += read.stored;
                    out.warnings.extend(read.warning);
                    out.index.insert(
                        read.fingerprint,
                        Cached {
                            sha256: read.entry.sha256.clone().unwrap_or_default(),
                            size: read.entry.size,
                            chunks: read.entry.chunks.clone(),
                            content_type: None,
                            cache_control: None,
                        },
                    );
                    read.entry
                }
                None => files::entry(path, meta)?,
            };
            entries.push(entry);
        }
        out.figures.sets += 1;
        out.manifest.sets.push(FileSetManifest {
            name: set.name.clone(),
            paths: set.paths.clone(),
            roots: plan.roots.iter().map(|r| files::encode_path(r).0).collect(),
            entries,
        });
    }
    Ok(out)
}

/// Where restored files go.
#[derive(Debug, Clone)]
pub enum Target {
    /// `DIR/<set>/<absolute path>`.
    Dir { root: PathBuf, force: bool },
    /// The original paths.
    Source { force: bool },
}

/// Where `entry` of `set` goes; refuses a path outside the set's roots (to the source) or
/// with a `..`.
fn destination(target: &Target, set: &FileSetManifest, entry: &FileEntry) -> Result<PathBuf> {
    let path = files::decode_path(&entry.path, entry.path_hex.as_deref())?;
    if !path.is_absolute() || path.components().any(|c| c == Component::ParentDir) {
        return Err(Error::failed(format!(
            "the manifest names {} in set {}, which is not a clean absolute path: refused",
            entry.path, set.name
        )));
    }
    match target {
        Target::Dir { root, .. } => Ok(root
            .join(&set.name)
            .join(path.strip_prefix("/").unwrap_or(&path))),
        Target::Source { .. } => {
            let inside = set.roots.iter().any(|r| path.starts_with(r));
            if !inside {
                return Err(Error::failed(format!(
                    "{} is outside the paths set {} was backed up from: refused",
                    entry.path, set.name
                )));
            }
            Ok(path)
        }
    }
}

fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// Sets owner (as root), mode and mtime of a restored entry; links get owner and mtime only.
fn apply_metadata(path: &Path, e: &FileEntry, root: bool) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mtime = filetime::FileTime::from_unix_time(e.mtime, e.mtime_ns);
    if e.kind == "symlink" {
        if root {
            std::os::unix::fs::lchown(path, e.uid, e.gid)?;
        }
        return filetime::set_symlink_file_times(path, mtime, mtime);
    }
    if root {
        std::os::unix::fs::chown(path, e.uid, e.gid)?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(e.mode))?;
    filetime::set_file_times(path, mtime, mtime)
}

/// Restores every set of `manifest` (`only`: the set names to restore, all when empty).
pub async fn restore(
    reader: &Arc<BlobReader>,
    manifest: &FilesManifest,
    target: &Target,
    ahead: usize,
) -> Result<Restored> {
    let force = match target {
        Target::Dir { force, .. } | Target::Source { force } => *force,
    };
    let mut planned: Vec<(PathBuf, &FileEntry)> = Vec::new();
    for set in &manifest.sets {
        for e in &set.entries {
            planned.push((destination(target, set, e)?, e));
        }
    }
    // Refuse before writing anything, naming the first file in the way.
    if !force {
        for (dest, e) in &planned {
            if e.kind != "dir" && std::fs::symlink_metadata(dest).is_ok() {
                return Err(Error::input(format!(
                    "{} exists: restore into an empty directory, or pass --force to replace existing files",
                    dest.display()
                )));
            }
        }
    }
    let root = running_as_root();
    let mut done = Restored {
        sets: manifest.sets.len() as u64,
        ..Restored::default()
    };
    for (dest, e) in planned.iter().filter(|(_, e)| e.kind == "dir") {
        if let Err(err) = std::fs::create_dir_all(dest) {
            done.failed.push(format!("{}: {err}", e.path));
        }
    }
    let writes = crate::localfs::Writes::new();
    let results: Vec<Option<String>> =
        futures::stream::iter(planned.iter().filter(|(_, e)| e.kind == "file"))
            .map(|(dest, e)| {
                let writes = &writes;
                async move {
                    let body = super::documents::chunks_reader(reader, e.chunks.clone(), ahead);
                    let written = writes
                        .write(dest, body, force, Some(e.mode))
                        .await
                        .and_then(|()| {
                            apply_metadata(dest, e, root).map_err(|err| {
                                Error::failed(format!("setting owner, mode or mtime: {err}"))
                            })
                        });
                    written
                        .err()
                        .map(|err| format!("{}: {}", e.path, err.message))
                }
            })
            .buffer_unordered(super::documents::CONCURRENT_RESTORES)
            .collect()
            .await;
    writes.sync().await?;
    for (r, (_, e)) in results
        .into_iter()
        .zip(planned.iter().filter(|(_, e)| e.kind == "file"))
    {
        match r {
            None => {
                done.files += 1;
                done.bytes += e.size;
                done.bytes_plain += e.size;
            }
            Some(why) => done.failed.push(why),
        }
    }
    for (dest, e) in planned.iter().filter(|(_, e)| e.kind == "symlink") {
        let result = (|| -> Result<()> {
            let target = files::decode_path(
                e.target.as_deref().unwrap_or_default(),
                e.target_hex.as_deref(),
            )?;
            if let Some(parent) = dest.parent() {
                std::fs::create_dir_all(parent).map_err(|err| Error::failed(err.to_string()))?;
            }
            if force && std::fs::symlink_metadata(dest).is_ok() {
                std::fs::remove_file(dest).map_err(|err| Error::failed(err.to_string()))?;
            }
            std::os::unix::fs::symlink(&target, dest)
                .and_then(|()| apply_metadata(dest, e, root))
                .map_err(|err| Error::failed(err.to_string()))
        })();
        if let Err(err) = result {
            done.failed.push(format!("{}: {}", e.path, err.message));
        }
    }
    // Directories last, deepest first, so writing their contents does not move their mtimes.
    for (dest, e) in planned.iter().rev().filter(|(_, e)| e.kind == "dir") {
        if let Err(err) = apply_metadata(dest, e, root) {
            done.failed.push(format!("{}: {err}", e.path));
        }
    }
    done.failed.sort();
    Ok(done)
}

/// Reads every file back and compares its SHA-256 with the manifest's (each chunk is also
/// checked against its blob id on the way). Returns the problems found, each naming the file.
/// Reads every file back and compares it with the manifest: the number checked and the
/// problems found; an error when a read could not be made (the store unreachable), which is no
/// finding about the files.
pub async fn verify(
    reader: &Arc<BlobReader>,
    manifest: &FilesManifest,
    ahead: usize,
) -> Result<(u64, Vec<String>)> {
    let entries: Vec<&FileEntry> = manifest
        .sets
        .iter()
        .flat_map(|s| s.entries.iter())
        .filter(|e| e.kind == "file")
        .collect();
    let checked = entries.len() as u64;
    let problems: Vec<Result<Option<String>>> = futures::stream::iter(entries)
        .map(|e| async move {
            let mut hasher = Sha256::new();
            let mut stream = Box::pin(reader.stream(e.chunks.clone(), ahead));
            let mut bytes = 0u64;
            while let Some(chunk) = stream.next().await {
                match chunk {
                    Ok(c) => {
                        bytes += c.len() as u64;
                        hasher.update(&c);
                    }
                    Err(err) if !err.kind.is_finding() => return Err(err),
                    Err(err) => return Ok(Some(format!("file {}: {}", e.path, err.message))),
                }
            }
            let sha = hex::encode(hasher.finalize());
            if Some(&sha) != e.sha256.as_ref() || bytes != e.size {
                return Ok(Some(format!(
                    "file {}: its content does not match the manifest (SHA-256 {sha}, {bytes} bytes)",
                    e.path
                )));
            }
            Ok(None)
        })
        .buffer_unordered(CONCURRENT_FILES)
        .collect()
        .await;
    let problems: Vec<Option<String>> = problems.into_iter().collect::<Result<_>>()?;
    Ok((checked, problems.into_iter().flatten().collect()))
}
