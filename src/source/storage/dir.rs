//! A local directory as a storage source: each bucket is a folder under `path`, each object a
//! file (config files, a self-hosted Supabase's file backend). Symbolic links are not followed.

use super::{safe_relative, Download, ObjectInfo, Reader, StorageSource, UploadMeta};
use crate::error::{Error, Result};
use async_trait::async_trait;
use std::path::{Path, PathBuf};

pub struct DirSource {
    root: PathBuf,
}

impl DirSource {
    pub fn new(root: PathBuf) -> DirSource {
        DirSource { root }
    }

    fn object_path(&self, bucket: &str, name: &str) -> Result<PathBuf> {
        if !safe_relative(bucket) || bucket.contains('/') || !safe_relative(name) {
            return Err(Error::failed(format!(
                "storage object {bucket}/{name}: not a safe relative path"
            )));
        }
        Ok(self.root.join(bucket).join(name))
    }
}

fn walk(dir: &Path, bucket: &str, prefix: &str, out: &mut Vec<ObjectInfo>) -> Result<()> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| Error::failed(format!("storage: listing {}: {e}", dir.display())))?;
    for entry in entries {
        let entry =
            entry.map_err(|e| Error::failed(format!("storage: listing {}: {e}", dir.display())))?;
        let name = entry.file_name().to_string_lossy().to_string();
        let rel = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}/{name}")
        };
        let kind = entry
            .file_type()
            .map_err(|e| Error::failed(format!("storage: {}: {e}", entry.path().display())))?;
        if kind.is_dir() {
            walk(&entry.path(), bucket, &rel, out)?;
        } else if kind.is_file() {
            let meta = entry
                .metadata()
                .map_err(|e| Error::failed(format!("storage: {}: {e}", entry.path().display())))?;
            let mut o = ObjectInfo::new(bucket, &rel);
            o.size = Some(meta.len());
            o.updated_at = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| format!("{}.{:09}", d.as_secs(), d.subsec_nanos()));
            out.push(o);
        }
    }
    Ok(())
}

#[async_trait]
impl StorageSource for DirSource {
    fn describe(&self) -> String {
        format!("directory {}", self.root.display())
    }

    async fn check_buckets(&self, buckets: &[String]) -> Result<()> {
        for bucket in buckets {
            let dir = self.root.join(bucket);
            if !dir.is_dir() {
                return Err(Error::input(format!(
                    "storage: bucket {bucket} does not exist (no directory {})",
                    dir.display()
                )));
            }
        }
        Ok(())
    }

    async fn list(&self, bucket: &str) -> Result<Vec<ObjectInfo>> {
        let dir = self.root.join(bucket);
        if !dir.is_dir() {
            return Err(Error::input(format!(
                "storage: bucket {bucket} does not exist (no directory {})",
                dir.display()
            )));
        }
        let bucket = bucket.to_string();
        tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            walk(&dir, &bucket, "", &mut out)?;
            out.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(out)
        })
        .await
        .map_err(|e| Error::failed(format!("storage listing task: {e}")))?
    }

    async fn read(&self, object: &ObjectInfo) -> Result<Download> {
        let path = self.object_path(&object.bucket, &object.name)?;
        let f = tokio::fs::File::open(&path).await.map_err(|e| {
            Error::failed(format!(
                "storage object {}/{}: {e}",
                object.bucket, object.name
            ))
        })?;
        Ok(Download {
            reader: Box::pin(f),
            content_type: None,
            cache_control: None,
        })
    }

    async fn ensure_bucket(&self, bucket: &str) -> Result<()> {
        let dir = self.root.join(bucket);
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|e| Error::failed(format!("storage: creating {}: {e}", dir.display())))
    }

    async fn write(
        &self,
        bucket: &str,
        name: &str,
        _meta: &UploadMeta,
        body: Reader,
    ) -> Result<()> {
        let path = self.object_path(bucket, name)?;
        let body = tokio::io::BufReader::with_capacity(256 << 10, body);
        crate::localfs::write_file_atomically(&path, body, true).await
    }
}
