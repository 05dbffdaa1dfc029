//! Local file helpers shared by the operations: atomic writes of restored files (a temporary
//! file, fsync, rename, fsync of the directory).

use crate::error::{Error, Result};
use std::path::Path;
use tokio::io::AsyncRead;

/// Writes a stream to `path` atomically; an existing file is kept unless `replace`.
pub async fn write_file_atomically(
    path: &Path,
    mut body: impl AsyncRead + Unpin,
    replace: bool,
) -> Result<()> {
    if !replace && tokio::fs::try_exists(path).await.unwrap_or(false) {
        return Err(Error::input(format!(
            "{} exists; pass --force to replace it",
            path.display()
        )));
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(|e| Error::failed(format!("creating {}: {e}", dir.display())))?;
    let tmp = dir.join(format!(".backstop-tmp-{:016x}", rand::random::<u64>()));
    let result = async {
        let mut f = tokio::fs::File::create(&tmp)
            .await
            .map_err(|e| Error::failed(format!("creating {}: {e}", tmp.display())))?;
        tokio::io::copy(&mut body, &mut f)
            .await
            .map_err(|e| Error::failed(format!("writing {}: {e}", path.display())))?;
        f.sync_all()
            .await
            .map_err(|e| Error::failed(format!("syncing {}: {e}", path.display())))?;
        tokio::fs::rename(&tmp, path)
            .await
            .map_err(|e| Error::failed(format!("renaming into {}: {e}", path.display())))?;
        // The rename is durable only once the directory is.
        let d = dir.to_path_buf();
        tokio::task::spawn_blocking(move || std::fs::File::open(&d)?.sync_all())
            .await
            .map_err(|e| Error::failed(format!("syncing {}: {e}", dir.display())))?
            .map_err(|e| Error::failed(format!("syncing directory {}: {e}", dir.display())))
    }
    .await;
    if result.is_err() {
        let _ = tokio::fs::remove_file(&tmp).await;
    }
    result
}
