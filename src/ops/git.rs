//! `[[git]]` repositories in a snapshot: back up as one `git bundle create --all` each,
//! restore by cloning the bundle, verify with `git bundle verify` and the recorded refs.
//!
//! A repository whose refs and HEAD are what the local index remembers, and whose bundle's
//! chunks are committed blobs, is not bundled again: a nightly backup of an unchanged
//! repository stores nothing new.

use crate::cache::{CachedBundle, Index};
use crate::error::{Error, Result};
use crate::policy::GitSource;
pub use crate::record::figures::GitFigures;
pub use crate::record::figures::GitRestored as Restored;
use crate::repo::format::{GitBundle, GitManifest, GitSummary};
use crate::repo::reader::BlobReader;
use crate::repo::writer::BlobWriter;
use crate::source::git;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub struct BackedUp {
    pub manifest: GitManifest,
    pub figures: GitFigures,
    pub index: HashMap<String, CachedBundle>,
}

/// Checks every repository can be read, before a backup starts.
pub async fn check(sources: &[GitSource]) -> Result<()> {
    for s in sources {
        git::check(s).await?;
    }
    Ok(())
}

fn mirrors() -> PathBuf {
    crate::cache::dir()
        .unwrap_or_else(std::env::temp_dir)
        .join("git")
}

pub fn summary(b: &GitBundle) -> GitSummary {
    GitSummary {
        name: b.name.clone(),
        head: b.head.clone(),
        refs: b.refs.iter().filter(|r| r.1 != "HEAD").count() as u64,
    }
}

/// Bundles every repository through the writer.
pub async fn backup(
    sources: &[GitSource],
    writer: &Arc<BlobWriter>,
    cache: &Index,
) -> Result<BackedUp> {
    let mut out = BackedUp {
        manifest: GitManifest::default(),
        figures: GitFigures::default(),
        index: HashMap::new(),
    };
    for src in sources {
        let dir = git::prepare(src, &mirrors()).await?;
        let state = git::ref_state(&dir, &src.name).await?;
        let key = format!(
            "{}\u{0}{}",
            src.location.describe(),
            hex::encode(Sha256::digest(state.as_bytes()))
        );
        let reused = cache
            .git
            .get(&key)
            .filter(|hit| writer.reuse_committed(&hit.stream.chunks))
            .cloned();
        let (cached, stored) = match reused {
            Some(hit) => (hit, 0),
            None => {
                let what = format!("git repository `{}`", src.name);
                let (stdout, child) = git::bundle(&dir, &src.name)?;
                let (tap, header) = git::HeaderTap::new(stdout);
                let written = writer.write_stream(tap, &what, &|_| {}).await;
                let finished = tokio::task::spawn_blocking(move || child.finish())
                    .await
                    .map_err(|e| Error::failed(format!("{what}: {e}")))?;
                finished?;
                let (stream, stats) = written?;
                let refs = git::parse_header(&crate::util::lock(&header))?;
                (CachedBundle { stream, refs }, stats.bytes_stored)
            }
        };
        let bundle = GitBundle {
            name: src.name.clone(),
            source: src.location.describe(),
            head: cached
                .refs
                .iter()
                .find(|r| r.1 == "HEAD")
                .map(|r| r.0.clone()),
            refs: cached.refs.clone(),
            bundle: cached.stream.clone(),
        };
        out.figures.bytes_plain += bundle.bundle.bytes;
        out.figures.bytes_stored += stored;
        out.figures.repositories.push(summary(&bundle));
        out.manifest.repositories.push(bundle);
        out.index.insert(key, cached);
    }
    Ok(out)
}

/// Writes a bundle's bytes (checked chunk by chunk) to `path`.
async fn write_bundle(
    reader: &Arc<BlobReader>,
    b: &GitBundle,
    path: &Path,
    ahead: usize,
) -> Result<()> {
    let body = super::documents::chunks_reader(reader, b.bundle.chunks.clone(), ahead);
    crate::localfs::write_file_atomically(path, body, true).await
}

/// Restores each bundle as `DIR/<name>.bundle` and clones it into `DIR/<name>`, every ref of
/// the bundle a local ref, `origin` pointing where it was backed up from.
pub async fn restore(
    reader: &Arc<BlobReader>,
    manifest: &GitManifest,
    dir: &Path,
    force: bool,
    ahead: usize,
) -> Result<Restored> {
    for b in &manifest.repositories {
        for p in [dir.join(&b.name), dir.join(format!("{}.bundle", b.name))] {
            if !force && std::fs::symlink_metadata(&p).is_ok() {
                return Err(Error::input(format!(
                    "{} exists: restore into an empty directory, or pass --force to replace it",
                    p.display()
                )));
            }
        }
    }
    let mut done = Restored::default();
    for b in &manifest.repositories {
        let bundle = dir.join(format!("{}.bundle", b.name));
        write_bundle(reader, b, &bundle, ahead).await?;
        let dest = dir.join(&b.name);
        if force && dest.exists() {
            std::fs::remove_dir_all(&dest)
                .map_err(|e| Error::failed(format!("cannot replace {}: {e}", dest.display())))?;
        }
        git::clone_bundle(&bundle, &dest, &b.source).await?;
        done.repositories.push(summary(b));
        done.bytes_plain += b.bundle.bytes;
    }
    Ok(done)
}

/// Verifies each bundle in a temporary directory: `git bundle verify` in an empty
/// repository, then its refs against the recorded ones. Returns the problems, each named.
/// Verifies every bundle: the problems found; an error when a read could not be made.
pub async fn verify(
    reader: &Arc<BlobReader>,
    manifest: &GitManifest,
    ahead: usize,
) -> Result<Vec<String>> {
    let mut problems = Vec::new();
    for b in &manifest.repositories {
        let scratch = match tempfile::Builder::new().prefix("backstop-git-").tempdir() {
            Ok(d) => d,
            Err(e) => {
                problems.push(format!(
                    "git repository {}: no temporary directory: {e}",
                    b.name
                ));
                continue;
            }
        };
        let path = scratch.path().join("bundle");
        match write_bundle(reader, b, &path, ahead).await {
            Err(e) if !e.kind.is_finding() => return Err(e),
            Err(e) => {
                problems.push(format!("git repository {}: {}", b.name, e.message));
                continue;
            }
            Ok(_) => {}
        }
        match git::verify_bundle(&path, scratch.path()).await {
            Err(e) => problems.push(format!("git repository {}: {}", b.name, e.message)),
            Ok(refs) if refs != b.refs => {
                let differ: Vec<String> = refs
                    .iter()
                    .filter(|r| !b.refs.contains(r))
                    .chain(b.refs.iter().filter(|r| !refs.contains(r)))
                    .map(|(oid, name)| format!("{name} {oid}"))
                    .take(5)
                    .collect();
                problems.push(format!(
                    "git repository {}: the bundle's refs differ from the recorded ones ({})",
                    b.name,
                    differ.join(", ")
                ));
            }
            Ok(_) => {}
        }
    }
    Ok(problems)
}
