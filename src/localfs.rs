//! Local file helpers shared by the operations: atomic writes of restored files (a temporary
//! file, fsync, rename, fsync of the directory), and the sweep of temporary files that
//! interrupted writes left: a run that writes into a directory removes the `.tmp-*` or
//! `.backstop-tmp-*` files there whose owner process (named in them) is gone, or older than a
//! day.
//!
//! A restore of many files writes them through one [`Writes`]: each file is still fsynced
//! before its rename (a crash never leaves a short file under the real name), but the
//! directories' fsyncs, which make the renames durable, are made once per directory when the
//! restore ends, not once per file; the restore reports success only after them. The
//! directories it created and their parents are fsynced too, so a created path survives a
//! crash.

use crate::error::{Error, Result};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use tokio::io::AsyncBufRead;

/// The most a file write hands to the blocking pool at once. The body is read as the buffers
/// it already holds (a restored chunk is one), not copied through the 8 KiB buffer of
/// `tokio::io::copy`, so a chunk goes to the file in one write, not one trip to the blocking
/// pool per 8 KiB.
const WRITE_BUFFER: usize = 1 << 20;

/// Writes a stream to `path` atomically; an existing file is kept unless `replace`.
pub async fn write_file_atomically(
    path: &Path,
    body: impl AsyncBufRead + Unpin,
    replace: bool,
) -> Result<()> {
    let writes = Writes::new();
    writes.write(path, body, replace, None).await?;
    writes.sync().await
}

/// Files written atomically whose directories are made durable together by [`Writes::sync`].
/// Until it returns, a rename may not survive a crash.
#[derive(Default)]
pub struct Writes {
    /// The directories whose entries changed: those written into, the ones created for them,
    /// and the parent of each created one.
    dirs: std::sync::Mutex<BTreeSet<PathBuf>>,
}

impl Writes {
    pub fn new() -> Self {
        Self::default()
    }

    /// Writes `body` to `path` atomically (a temporary file created 0600 and given `mode`
    /// before the rename, so a secret is never readable by others, not even for a moment); an
    /// existing file is kept unless `replace`.
    pub async fn write(
        &self,
        path: &Path,
        body: impl AsyncBufRead + Unpin,
        replace: bool,
        mode: Option<u32>,
    ) -> Result<()> {
        if !replace && tokio::fs::try_exists(path).await.unwrap_or(false) {
            return Err(Error::input(format!(
                "{} exists; pass --force to replace it",
                path.display()
            )));
        }
        let dir = parent_dir(path);
        if !crate::util::lock(&self.dirs).contains(dir) {
            let mut changed = vec![dir.to_path_buf()];
            let mut at = dir;
            while at != Path::new("/") && !tokio::fs::try_exists(at).await.unwrap_or(true) {
                at = parent_dir(at);
                changed.push(at.to_path_buf());
            }
            tokio::fs::create_dir_all(dir)
                .await
                .map_err(|e| Error::failed(format!("creating {}: {e}", dir.display())))?;
            crate::util::lock(&self.dirs).extend(changed);
            let d = dir.to_path_buf();
            let _ =
                tokio::task::spawn_blocking(move || sweep_stale_tmp(&d, ".backstop-tmp-")).await;
        }
        let tmp = dir.join(tmp_name(".backstop-tmp-"));
        let result = write_and_rename(&tmp, path, body, mode).await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&tmp).await;
        }
        result
    }

    /// Fsyncs every directory written into, so that every rename is durable.
    pub async fn sync(self) -> Result<()> {
        let dirs = self.dirs.into_inner().unwrap_or_else(|e| e.into_inner());
        tokio::task::spawn_blocking(move || {
            for d in dirs.iter().rev() {
                std::fs::File::open(d)
                    .and_then(|f| f.sync_all())
                    .map_err(|e| {
                        Error::failed(format!("syncing directory {}: {e}", d.display()))
                    })?;
            }
            Ok(())
        })
        .await
        .map_err(|e| Error::failed(format!("syncing directories: {e}")))?
    }
}

/// The directory that holds `path`: `.` for a bare name, whose parent is the empty path (which
/// cannot be opened to be fsynced).
fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Copies `body` into the new file `tmp`, fsyncs it and renames it to `path`.
async fn write_and_rename(
    tmp: &Path,
    path: &Path,
    mut body: impl AsyncBufRead + Unpin,
    mode: Option<u32>,
) -> Result<()> {
    let mut options = tokio::fs::OpenOptions::new();
    options.write(true).create_new(true);
    if mode.is_some() {
        options.mode(0o600);
    }
    let mut f = options
        .open(tmp)
        .await
        .map_err(|e| Error::failed(format!("creating {}: {e}", tmp.display())))?;
    f.set_max_buf_size(WRITE_BUFFER);
    tokio::io::copy_buf(&mut body, &mut f)
        .await
        .map_err(|e| Error::failed(format!("writing {}: {e}", path.display())))?;
    if let Some(mode) = mode {
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(std::fs::Permissions::from_mode(mode))
            .await
            .map_err(|e| Error::failed(format!("setting the mode of {}: {e}", path.display())))?;
    }
    f.sync_all()
        .await
        .map_err(|e| Error::failed(format!("syncing {}: {e}", path.display())))?;
    tokio::fs::rename(tmp, path)
        .await
        .map_err(|e| Error::failed(format!("renaming into {}: {e}", path.display())))
}

/// How old a temporary file must be before a later run removes it: older than any write in
/// flight can be.
pub const STALE_TMP: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// A host's tag in temporary names: a hash of its name (names may hold any character).
fn host_tag() -> String {
    format!(
        "{:08x}",
        xxhash_rust::xxh3::xxh3_64(crate::util::host().as_bytes()) as u32
    )
}

/// A fresh temporary name `PREFIX<host tag>-<pid>-<random>`: its owner can be told dead.
pub fn tmp_name(prefix: &str) -> String {
    format!(
        "{prefix}{}-{}-{:016x}",
        host_tag(),
        std::process::id(),
        rand::random::<u64>()
    )
}

/// Whether a temporary file named by [`tmp_name`] belongs to a process of this host that no
/// longer runs (a run that was killed): its file is a leftover at once, whatever its age.
fn owner_is_gone(rest: &str) -> bool {
    let mut parts = rest.splitn(3, '-');
    match (
        parts.next(),
        parts.next().and_then(|p| p.parse::<u32>().ok()),
    ) {
        (Some(tag), Some(pid)) => tag == host_tag() && !crate::util::process_alive(pid),
        _ => false,
    }
}

/// Removes, once per directory and process, the temporary files named `prefix*` in `dir`
/// that interrupted writes left behind: those whose owner (named in them by [`tmp_name`]) was
/// a process of this host that no longer runs, and any older than [`STALE_TMP`] (another
/// host's, or an older name). A partial restored file, which may hold plaintext, goes with
/// the next run that writes into its directory. Errors are only logged: a leftover is untidy,
/// never a reason to fail a run. Returns how many were removed.
pub fn sweep_stale_tmp(dir: &Path, prefix: &str) -> usize {
    static SWEPT: std::sync::Mutex<Option<std::collections::HashSet<std::path::PathBuf>>> =
        std::sync::Mutex::new(None);
    {
        let mut swept = crate::util::lock(&SWEPT);
        if !swept
            .get_or_insert_with(Default::default)
            .insert(dir.to_path_buf())
        {
            return 0;
        }
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for e in entries.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        let Some(rest) = name.strip_prefix(prefix) else {
            continue;
        };
        let old = owner_is_gone(rest)
            || e.metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > STALE_TMP);
        if old {
            match std::fs::remove_file(e.path()) {
                Ok(()) => removed += 1,
                Err(err) => tracing::warn!("could not remove {}: {err}", e.path().display()),
            }
        }
    }
    if removed > 0 {
        tracing::info!(
            "removed {removed} stale temporary files from {}",
            dir.display()
        );
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_batch_syncs_the_directories_it_wrote_into_and_created() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir(root.join("old")).unwrap();
        let writes = Writes::new();
        for name in ["old/a", "old/b", "new/deeper/c"] {
            let body = std::io::Cursor::new(name.as_bytes().to_vec());
            writes
                .write(&root.join(name), body, false, None)
                .await
                .unwrap();
        }
        let body = std::io::Cursor::new(Vec::new());
        let err = writes.write(&root.join("old/a"), body, false, None).await;
        assert!(err.unwrap_err().message.contains("exists"));
        let dirs: Vec<PathBuf> = crate::util::lock(&writes.dirs).iter().cloned().collect();
        let expected: Vec<PathBuf> = ["", "new", "new/deeper", "old"]
            .iter()
            .map(|d| root.join(d))
            .collect();
        assert_eq!(
            dirs, expected,
            "the root changed (new/ was created in it); old/ only gained files"
        );
        writes.sync().await.unwrap();
        assert_eq!(
            std::fs::read(root.join("new/deeper/c")).unwrap(),
            b"new/deeper/c"
        );
        let left: Vec<_> = std::fs::read_dir(root.join("old")).unwrap().collect();
        assert_eq!(left.len(), 2, "no temporary file is left");
        assert_eq!(parent_dir(Path::new("report.html")), Path::new("."));
    }

    #[test]
    fn only_day_old_temporaries_of_the_prefix_go_once_per_directory() {
        let dir = tempfile::tempdir().unwrap();
        let make = |name: &str, age_h: u64| {
            let f = std::fs::File::create(dir.path().join(name)).unwrap();
            let t = std::time::SystemTime::now() - std::time::Duration::from_secs(age_h * 3600);
            f.set_modified(t).unwrap();
        };
        make(".tmp-old", 30);
        make(".tmp-fresh", 1);
        make("kept-old", 30);
        // A fresh one of a process of this host that is gone, and one of this very process.
        let dead = format!(".tmp-{}-{}-00", host_tag(), u32::MAX - 7);
        make(&dead, 0);
        let mine = tmp_name(".tmp-");
        make(&mine, 0);
        assert_eq!(sweep_stale_tmp(dir.path(), ".tmp-"), 2);
        assert!(!dir.path().join(".tmp-old").exists() && !dir.path().join(&dead).exists());
        assert!(dir.path().join(".tmp-fresh").exists() && dir.path().join("kept-old").exists());
        assert!(dir.path().join(&mine).exists());
        make(".tmp-old2", 30);
        assert_eq!(
            sweep_stale_tmp(dir.path(), ".tmp-"),
            0,
            "once per directory and process"
        );
    }
}
