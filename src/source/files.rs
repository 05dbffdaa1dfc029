//! The files of a `[[files]]` set: its paths and globs expanded, directories walked, excludes
//! applied. Symbolic links are recorded as links and never followed, so a set never reaches
//! outside the paths it lists. Whether every file can be read is checked here, before a
//! backup starts, so an unreadable file fails the run up front, named with the permission to
//! grant.

use crate::error::{Error, Result};
use crate::policy::{exclude_glob, FileSet};
use crate::repo::format::FileEntry;
use std::collections::BTreeMap;
use std::fs::Metadata;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// A set ready to read: its roots and every entry under them (parents before children).
#[derive(Debug)]
pub struct Planned {
    pub roots: Vec<PathBuf>,
    pub entries: BTreeMap<PathBuf, Metadata>,
    pub warnings: Vec<String>,
}

fn is_glob(p: &str) -> bool {
    p.contains(['*', '?', '['])
}

fn io_problem(set: &str, path: &Path, what: &str, e: &std::io::Error) -> Error {
    let hint = if e.kind() == std::io::ErrorKind::PermissionDenied {
        format!(
            ": grant the backup user read access (e.g. `setfacl -m u:{}:rX {}`) or leave it out with `exclude`",
            std::env::var("USER").unwrap_or_else(|_| "backstop".into()),
            path.display()
        )
    } else {
        String::new()
    };
    Error::input(format!(
        "files set `{set}`: cannot {what} {}: {e}{hint}",
        path.display()
    ))
}

/// Expands and walks `set`, checking that every file and directory can be read.
pub fn plan(set: &FileSet) -> Result<Planned> {
    let mut excludes = globset::GlobSetBuilder::new();
    for e in &set.exclude {
        excludes.add(exclude_glob(e).map_err(Error::input)?);
    }
    let excludes = excludes
        .build()
        .map_err(|e| Error::input(format!("files set `{}`: exclude: {e}", set.name)))?;
    let mut roots = Vec::new();
    let mut warnings = Vec::new();
    for p in &set.paths {
        if is_glob(p) {
            let matches: Vec<PathBuf> = glob::glob(p)
                .map_err(|e| Error::input(format!("files set `{}`: `{p}`: {e}", set.name)))?
                .filter_map(std::result::Result::ok)
                .collect();
            if matches.is_empty() {
                let text = format!("files set `{}`: `{p}` matches nothing", set.name);
                if set.required {
                    return Err(Error::input(format!(
                        "{text} (the set has required = true)"
                    )));
                }
                tracing::warn!("{text}");
                warnings.push(text);
            }
            roots.extend(matches);
        } else {
            let path = PathBuf::from(p);
            if let Err(e) = std::fs::symlink_metadata(&path) {
                return Err(if e.kind() == std::io::ErrorKind::NotFound {
                    Error::input(format!(
                        "files set `{}`: {p} does not exist (fix `paths`, or use a glob for a path that may be absent)",
                        set.name
                    ))
                } else {
                    io_problem(&set.name, &path, "read", &e)
                });
            }
            roots.push(path);
        }
    }
    roots.sort();
    roots.dedup();
    let mut entries = BTreeMap::new();
    for root in &roots {
        walk(&set.name, root, &excludes, &mut entries)?;
    }
    Ok(Planned {
        roots,
        entries,
        warnings,
    })
}

fn walk(
    set: &str,
    path: &Path,
    excludes: &globset::GlobSet,
    out: &mut BTreeMap<PathBuf, Metadata>,
) -> Result<()> {
    if excludes.is_match(path) || out.contains_key(path) {
        return Ok(());
    }
    let meta = std::fs::symlink_metadata(path).map_err(|e| io_problem(set, path, "read", &e))?;
    let ft = meta.file_type();
    if ft.is_file() {
        std::fs::File::open(path).map_err(|e| io_problem(set, path, "read", &e))?;
    } else if ft.is_dir() {
        let mut children: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|e| io_problem(set, path, "list", &e))?
            .map(|d| d.map(|d| d.path()))
            .collect::<std::io::Result<_>>()
            .map_err(|e| io_problem(set, path, "list", &e))?;
        children.sort();
        out.insert(path.to_path_buf(), meta);
        for c in children {
            walk(set, &c, excludes, out)?;
        }
        return Ok(());
    } else if !ft.is_symlink() {
        // Sockets, fifos and devices are not configuration: skipped, as restic does.
        tracing::info!(
            "files set `{set}`: {} is not a regular file, directory or link: skipped",
            path.display()
        );
        return Ok(());
    }
    out.insert(path.to_path_buf(), meta);
    Ok(())
}

/// A path as the manifest keeps it: UTF-8 text, plus the exact bytes in hex when it is not.
pub fn encode_path(p: &Path) -> (String, Option<String>) {
    let bytes = p.as_os_str().as_bytes();
    match std::str::from_utf8(bytes) {
        Ok(s) => (s.to_string(), None),
        Err(_) => (p.to_string_lossy().into_owned(), Some(hex::encode(bytes))),
    }
}

/// The exact path of a manifest entry.
pub fn decode_path(text: &str, hex_bytes: Option<&str>) -> Result<PathBuf> {
    use std::os::unix::ffi::OsStringExt;
    match hex_bytes {
        None => Ok(PathBuf::from(text)),
        Some(h) => hex::decode(h)
            .map(|b| PathBuf::from(std::ffi::OsString::from_vec(b)))
            .map_err(|e| Error::failed(format!("the manifest's path of {text} is damaged: {e}"))),
    }
}

/// The manifest entry of `path` from its metadata (content fields left empty).
pub fn entry(path: &Path, meta: &Metadata) -> Result<FileEntry> {
    let (text, hex_bytes) = encode_path(path);
    let ft = meta.file_type();
    let (kind, target, target_hex) = if ft.is_dir() {
        ("dir", None, None)
    } else if ft.is_symlink() {
        let t = std::fs::read_link(path)
            .map_err(|e| Error::failed(format!("cannot read the link {}: {e}", path.display())))?;
        let (t, h) = encode_path(&t);
        ("symlink", Some(t), h)
    } else {
        ("file", None, None)
    };
    Ok(FileEntry {
        path: text,
        path_hex: hex_bytes,
        kind: kind.into(),
        mode: meta.mode() & 0o7777,
        mtime: meta.mtime(),
        mtime_ns: meta.mtime_nsec() as u32,
        uid: Some(meta.uid()),
        gid: Some(meta.gid()),
        size: if ft.is_file() { meta.len() } else { 0 },
        sha256: None,
        chunks: Vec::new(),
        target,
        target_hex,
    })
}

/// What identifies an unchanged file for the local index: path, size, mtime, inode and ctime
/// (a write that restores the mtime still moves the ctime).
pub fn fingerprint(path: &Path, meta: &Metadata) -> String {
    format!(
        "file\u{0}{}\u{0}{}\u{0}{}.{}\u{0}{}\u{0}{}.{}",
        hex::encode(path.as_os_str().as_bytes()),
        meta.len(),
        meta.mtime(),
        meta.mtime_nsec(),
        meta.ino(),
        meta.ctime(),
        meta.ctime_nsec()
    )
}

/// Whether a file changed between two stats (size or mtime).
pub fn changed(before: &Metadata, after: &Metadata) -> bool {
    before.len() != after.len()
        || before.mtime() != after.mtime()
        || before.mtime_nsec() != after.mtime_nsec()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(paths: &[&str], exclude: &[&str], required: bool) -> FileSet {
        FileSet {
            name: "config".into(),
            paths: paths.iter().map(|s| s.to_string()).collect(),
            exclude: exclude.iter().map(|s| s.to_string()).collect(),
            required,
        }
    }

    #[test]
    fn walks_excludes_and_keeps_links_as_links() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("etc");
        std::fs::create_dir_all(root.join("sub/cache")).unwrap();
        std::fs::write(root.join("a.yaml"), "a").unwrap();
        std::fs::write(root.join("b.tmp"), "b").unwrap();
        std::fs::write(root.join("sub/cache/x"), "x").unwrap();
        std::fs::write(root.join("sub/c.yaml"), "c").unwrap();
        std::os::unix::fs::symlink("/nonexistent/target", root.join("link")).unwrap();
        let p = root.display().to_string();
        let planned = plan(&set(&[&p], &["*.tmp", "**/cache/**"], false)).unwrap();
        let names: Vec<String> = planned
            .entries
            .keys()
            .map(|k| k.strip_prefix(&root).unwrap().display().to_string())
            .collect();
        assert_eq!(
            names,
            ["", "a.yaml", "link", "sub", "sub/c.yaml", "sub/cache"]
        );
        let link = entry(&root.join("link"), &planned.entries[&root.join("link")]).unwrap();
        assert_eq!(link.kind, "symlink");
        assert_eq!(link.target.as_deref(), Some("/nonexistent/target"));
        // A glob: matches, or a warning, or with required an error.
        let g = format!("{p}/*.yaml");
        assert_eq!(plan(&set(&[&g], &[], false)).unwrap().entries.len(), 1);
        let none = format!("{p}/*.nothing");
        assert_eq!(plan(&set(&[&none], &[], false)).unwrap().warnings.len(), 1);
        let e = plan(&set(&[&none], &[], true)).unwrap_err();
        assert!(e.message.contains("matches nothing"), "{}", e.message);
        let e = plan(&set(&[&format!("{p}/missing")], &[], false)).unwrap_err();
        assert!(e.message.contains("does not exist"), "{}", e.message);
    }

    #[test]
    fn paths_that_are_not_utf8_round_trip() {
        use std::os::unix::ffi::OsStrExt;
        let p = Path::new(std::ffi::OsStr::from_bytes(b"/etc/caf\xe9.conf"));
        let (text, hex_bytes) = encode_path(p);
        assert!(hex_bytes.is_some());
        assert_eq!(decode_path(&text, hex_bytes.as_deref()).unwrap(), p);
        let (text, none) = encode_path(Path::new("/etc/ok"));
        assert_eq!((text.as_str(), none), ("/etc/ok", None));
    }
}
