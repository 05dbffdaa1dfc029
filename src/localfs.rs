//! Local file helpers shared by the operations: atomic writes of restored files (a temporary
//! file, fsync, rename, fsync of the directory), and the sweep of temporary files that
//! interrupted writes left: a run that writes into a directory removes the `.tmp-*` or
//! `.backstop-tmp-*` files there older than a day.

use crate::error::{Error, Result};
use std::path::Path;
use tokio::io::AsyncRead;

/// Writes a stream to `path` atomically; an existing file is kept unless `replace`.
pub async fn write_file_atomically(
    path: &Path,
    body: impl AsyncRead + Unpin,
    replace: bool,
) -> Result<()> {
    write_file_atomically_as(path, body, replace, None).await
}

/// [`write_file_atomically`] with the file's permission bits: the temporary file is created
/// 0600 and given `mode` before it is renamed into place, so a secret is never readable by
/// others, not even for a moment.
pub async fn write_file_atomically_as(
    path: &Path,
    mut body: impl AsyncRead + Unpin,
    replace: bool,
    mode: Option<u32>,
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
    let d = dir.to_path_buf();
    let _ = tokio::task::spawn_blocking(move || sweep_stale_tmp(&d, ".backstop-tmp-")).await;
    let tmp = dir.join(format!(".backstop-tmp-{:016x}", rand::random::<u64>()));
    let result = async {
        let mut options = tokio::fs::OpenOptions::new();
        options.write(true).create_new(true);
        if mode.is_some() {
            options.mode(0o600);
        }
        let mut f = options
            .open(&tmp)
            .await
            .map_err(|e| Error::failed(format!("creating {}: {e}", tmp.display())))?;
        tokio::io::copy(&mut body, &mut f)
            .await
            .map_err(|e| Error::failed(format!("writing {}: {e}", path.display())))?;
        if let Some(mode) = mode {
            use std::os::unix::fs::PermissionsExt;
            f.set_permissions(std::fs::Permissions::from_mode(mode))
                .await
                .map_err(|e| {
                    Error::failed(format!("setting the mode of {}: {e}", path.display()))
                })?;
        }
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

/// How old a temporary file must be before a later run removes it: older than any write in
/// flight can be.
pub const STALE_TMP: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// Removes, once per directory and process, the temporary files named `prefix*` in `dir`
/// that are older than [`STALE_TMP`]: what interrupted writes left behind. Errors are only
/// logged: a leftover is untidy, never a reason to fail a run. Returns how many were removed.
pub fn sweep_stale_tmp(dir: &Path, prefix: &str) -> usize {
    static SWEPT: std::sync::Mutex<Option<std::collections::HashSet<std::path::PathBuf>>> =
        std::sync::Mutex::new(None);
    {
        let mut swept = crate::repo::writer::lock(&SWEPT);
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
        if !name.to_string_lossy().starts_with(prefix) {
            continue;
        }
        let old = e
            .metadata()
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
        assert_eq!(sweep_stale_tmp(dir.path(), ".tmp-"), 1);
        assert!(!dir.path().join(".tmp-old").exists());
        assert!(dir.path().join(".tmp-fresh").exists() && dir.path().join("kept-old").exists());
        make(".tmp-old2", 30);
        assert_eq!(
            sweep_stale_tmp(dir.path(), ".tmp-"),
            0,
            "once per directory and process"
        );
    }
}
