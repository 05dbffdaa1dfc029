//! The local-directory store, the embedded default.
//!
//! Crash safety: an object is written to a temporary file in its final directory (named
//! `.tmp-*`, ignored by listings), fsynced, then hard-linked to its key, which fails if the key
//! exists, so an existing object is never overwritten; then the temporary name is removed and
//! the directory fsynced. A crash at any point leaves either no object or the whole object
//! (plus perhaps a stray `.tmp-*` file, which the next run that writes into that directory
//! removes once it is a day old). A full disk or a permission problem is reported with
//! the path and is never retried.

use super::{Entry, Put, PutMode, Store};
use crate::error::{Error, Kind, Result};
use async_trait::async_trait;
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};

pub struct FsStore {
    root: PathBuf,
}

impl FsStore {
    pub fn new(root: PathBuf) -> FsStore {
        FsStore { root }
    }

    fn path(&self, key: &str) -> Result<PathBuf> {
        if key
            .split('/')
            .any(|p| p.is_empty() || p == "." || p == "..")
        {
            return Err(Error::failed(format!("invalid store key `{key}`")));
        }
        Ok(self.root.join(key))
    }
}

fn io_error(op: &str, path: &Path, e: std::io::Error) -> Error {
    let hint = match e.kind() {
        ErrorKind::StorageFull => ": the disk is full; free space or move the repository",
        ErrorKind::PermissionDenied => {
            ": permission denied; check the owner and mode of the repository directory"
        }
        ErrorKind::ReadOnlyFilesystem => ": the filesystem is read-only",
        _ => "",
    };
    let message = format!("local store: {op} {}: {e}{hint}", path.display());
    // A read that could not be made says nothing of the bytes stored: not damage.
    if op == "read" || op == "stat" || op == "list" {
        Error::new(Kind::Unavailable, message)
    } else {
        Error::failed(message)
    }
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Creates `dir` and every missing ancestor, fsyncing the parent of each level it created, so
/// that after a crash no directory that a durable object lives in can vanish.
fn create_dirs_durably(dir: &Path) -> Result<()> {
    let mut missing = Vec::new();
    let mut at = dir;
    while !at.is_dir() {
        missing.push(at.to_path_buf());
        match at.parent() {
            Some(p) if !p.as_os_str().is_empty() => at = p,
            _ => break,
        }
    }
    for d in missing.iter().rev() {
        match std::fs::create_dir(d) {
            Ok(()) => {}
            // Another writer made it first: it is there, which is all that matters.
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_error("create directory", d, e)),
        }
        if let Some(up) = d.parent().filter(|p| !p.as_os_str().is_empty()) {
            sync_dir(up).map_err(|e| io_error("sync directory", up, e))?;
        }
    }
    Ok(())
}

fn put_blocking(path: &Path, data: &[u8], mode: PutMode) -> Result<Put> {
    if mode != PutMode::Replace && path.exists() {
        return Ok(Put::Exists);
    }
    // Parent of a key always exists in a valid key (it has at least one component).
    let dir = path.parent().unwrap_or(Path::new("."));
    if !dir.is_dir() {
        create_dirs_durably(dir)?;
    }
    crate::localfs::sweep_stale_tmp(dir, ".tmp-");
    let tmp = dir.join(crate::localfs::tmp_name(".tmp-"));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|e| io_error("create", &tmp, e))?;
        f.write_all(data).map_err(|e| io_error("write", &tmp, e))?;
        f.sync_all().map_err(|e| io_error("sync", &tmp, e))?;
        let len = f.metadata().map_err(|e| io_error("stat", &tmp, e))?.len();
        if len != data.len() as u64 {
            return Err(Error::failed(format!(
                "local store: {} has {len} bytes after writing {}",
                tmp.display(),
                data.len()
            )));
        }
        if mode == PutMode::Replace {
            return std::fs::rename(&tmp, path)
                .map(|_| Put::Created)
                .map_err(|e| io_error("rename", path, e));
        }
        // link(2) fails when the name exists: the atomic create-if-absent (O_EXCL for names).
        match std::fs::hard_link(&tmp, path) {
            Ok(()) => Ok(Put::Created),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(Put::Exists),
            Err(e) => Err(io_error("link", path, e)),
        }
    })();
    let _ = std::fs::remove_file(&tmp);
    let put = result?;
    sync_dir(dir).map_err(|e| io_error("sync directory", dir, e))?;
    Ok(put)
}

fn list_blocking(root: &Path, prefix: &str) -> Result<Vec<Entry>> {
    // Walk from the deepest directory the prefix names, then filter by the full prefix.
    let dir_part = prefix.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
    let start = if dir_part.is_empty() {
        root.to_path_buf()
    } else {
        root.join(dir_part)
    };
    let mut out = Vec::new();
    let mut stack = vec![start];
    while let Some(dir) = stack.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == ErrorKind::NotFound => continue,
            Err(e) => return Err(io_error("list", &dir, e)),
        };
        for entry in entries {
            let entry = entry.map_err(|e| io_error("list", &dir, e))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with(".tmp-") {
                continue;
            }
            let path = entry.path();
            let meta = entry.metadata().map_err(|e| io_error("stat", &path, e))?;
            if meta.is_dir() {
                stack.push(path);
                continue;
            }
            let Ok(rel) = path.strip_prefix(root) else {
                continue;
            };
            let key = rel.to_string_lossy().to_string();
            if key.starts_with(prefix) {
                out.push(Entry {
                    key,
                    size: meta.len(),
                });
            }
        }
    }
    out.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(out)
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::failed(format!("local store task failed: {e}")))?
}

#[async_trait]
impl Store for FsStore {
    fn describe(&self) -> String {
        format!("file://{}", self.root.display())
    }

    async fn check(&self) -> Result<()> {
        let root = self.root.clone();
        blocking(move || {
            std::fs::create_dir_all(&root).map_err(|e| io_error("create directory", &root, e))
        })
        .await
    }

    async fn put(&self, key: &str, data: Vec<u8>, mode: PutMode) -> Result<Put> {
        let path = self.path(key)?;
        blocking(move || put_blocking(&path, &data, mode)).await
    }

    async fn get_opt(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let path = self.path(key)?;
        blocking(move || match std::fs::read(&path) {
            Ok(d) => Ok(Some(d)),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_error("read", &path, e)),
        })
        .await
    }

    async fn stat(&self, key: &str) -> Result<Option<u64>> {
        let path = self.path(key)?;
        blocking(move || match std::fs::metadata(&path) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_error("stat", &path, e)),
        })
        .await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<Entry>> {
        let root = self.root.clone();
        let prefix = prefix.to_string();
        blocking(move || list_blocking(&root, &prefix)).await
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let path = self.path(key)?;
        blocking(move || match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_error("delete", &path, e)),
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn put_get_list_delete_and_no_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let s = FsStore::new(dir.path().join("repo"));
        assert_eq!(
            s.put_new("blobs/ab/abc", b"one".to_vec()).await.unwrap(),
            Put::Created
        );
        assert_eq!(
            s.put_new("blobs/ab/abc", b"two".to_vec()).await.unwrap(),
            Put::Exists
        );
        assert_eq!(s.get_opt("blobs/ab/abc").await.unwrap().unwrap(), b"one");
        assert_eq!(s.get_opt("blobs/ab/none").await.unwrap(), None);
        s.put_new("blobs/cd/cde", vec![0; 10]).await.unwrap();
        s.put_new("snapshots/p/1/meta.json", b"{}".to_vec())
            .await
            .unwrap();
        std::fs::write(dir.path().join("repo/blobs/ab/.tmp-x"), b"junk").unwrap();
        let keys: Vec<_> = s
            .list("blobs/")
            .await
            .unwrap()
            .into_iter()
            .map(|e| (e.key, e.size))
            .collect();
        assert_eq!(
            keys,
            vec![("blobs/ab/abc".into(), 3), ("blobs/cd/cde".into(), 10)]
        );
        assert_eq!(s.list("snapshots/p/").await.unwrap().len(), 1);
        assert_eq!(s.list("nothing/").await.unwrap(), vec![]);
        s.delete("blobs/ab/abc").await.unwrap();
        s.delete("blobs/ab/abc").await.unwrap();
        assert_eq!(s.stat("blobs/ab/abc").await.unwrap(), None);
        assert!(s.put_new("../escape", vec![]).await.is_err());
        s.put("locks/p.json", b"a".to_vec(), PutMode::CreateMutable)
            .await
            .unwrap();
        assert_eq!(
            s.put("locks/p.json", b"b".to_vec(), PutMode::CreateMutable)
                .await
                .unwrap(),
            Put::Exists
        );
        s.put("locks/p.json", b"c".to_vec(), PutMode::Replace)
            .await
            .unwrap();
        assert_eq!(s.get_opt("locks/p.json").await.unwrap().unwrap(), b"c");
    }

    #[tokio::test]
    async fn a_file_in_the_way_is_reported_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("blobs"), b"not a dir").unwrap();
        let s = FsStore::new(dir.path().to_path_buf());
        let e = s.put_new("blobs/ab/x", vec![1]).await.unwrap_err();
        assert!(
            e.message
                .contains(&dir.path().join("blobs").display().to_string()),
            "{}",
            e.message
        );
    }
}
