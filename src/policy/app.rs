//! The application sources of a policy (`[[files]]`, `[[git]]`) and `[runbook]`.
//!
//! Checked here, at load: names (unique, letters, digits, `-`, `_`), absolute `paths`, `exclude`
//! patterns that compile, exactly one of `repo` and `url` per git entry, and no credentials in a
//! git url (they come from the environment: a credential helper, `GIT_ASKPASS`, or the SSH
//! agent). Whether the paths exist and can be read is checked by the backup before it starts,
//! on the host that reads them.

use super::raw::{RawFiles, RawGit, RawRunbook};
use super::Validator;
use std::collections::HashSet;
use std::path::PathBuf;

/// One `[[files]]` set.
#[derive(Debug, Clone)]
pub struct FileSet {
    pub name: String,
    /// Absolute paths or glob patterns, as written (after `${VAR}`s).
    pub paths: Vec<String>,
    /// Glob patterns: one without `/` matches a file or directory name anywhere; one with `/`
    /// matches the whole absolute path (`**` crosses directories).
    pub exclude: Vec<String>,
    /// A glob that matches nothing fails the backup (default: a warning).
    pub required: bool,
}

/// One `[[git]]` repository.
#[derive(Debug, Clone)]
pub struct GitSource {
    pub name: String,
    pub location: GitLocation,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GitLocation {
    /// A repository on this host (a work tree or a bare repository).
    Local(PathBuf),
    /// Cloned as a mirror into the cache directory, then fetched on each backup.
    Url(String),
}

impl GitLocation {
    pub fn describe(&self) -> String {
        match self {
            GitLocation::Local(p) => p.display().to_string(),
            GitLocation::Url(u) => u.clone(),
        }
    }
}

/// `[runbook]`: the application's own steps, quoted in the generated runbook.
#[derive(Debug, Clone, Default)]
pub struct Runbook {
    pub redeploy: Option<String>,
    pub rollback: Option<String>,
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

impl Validator<'_> {
    /// A name (of the policy, a file set, a git repository): letters, digits, `-` and `_`, and,
    /// with `seen`, not used twice.
    pub(super) fn name(
        &mut self,
        s: &super::raw::S,
        key: &str,
        seen: &mut HashSet<String>,
    ) -> String {
        let name = s.get_ref().clone();
        if !valid_name(&name) {
            self.problem(
                s.span(),
                key,
                format!("`{name}` must be non-empty and use only letters, digits, `-` and `_`"),
            );
        } else if !seen.insert(name.clone()) {
            self.problem(s.span(), key, format!("`{name}` is used twice"));
        }
        name
    }
}

/// Compiles an exclude pattern the way [`FileSet::exclude`] says.
pub fn exclude_glob(pattern: &str) -> Result<globset::Glob, String> {
    let full = if pattern.contains('/') {
        pattern.to_string()
    } else {
        format!("**/{pattern}")
    };
    globset::GlobBuilder::new(&full)
        .literal_separator(true)
        .build()
        .map_err(|e| format!("`{pattern}` is not a glob pattern: {e}"))
}

impl Validator<'_> {
    pub(super) fn files(&mut self, raw: Vec<RawFiles>) -> Vec<FileSet> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for f in raw {
            let name = self.name(&f.name, "files.name", &mut seen);
            if f.paths.get_ref().is_empty() {
                self.problem(f.paths.span(), "files.paths", "names no path");
            }
            let mut paths = Vec::new();
            for p in f.paths.get_ref() {
                let path = self.expand(p, "files.paths");
                if !path.is_empty() && !path.starts_with('/') {
                    self.problem(
                        p.span(),
                        "files.paths",
                        format!("`{path}` is not absolute: write the full path"),
                    );
                }
                paths.push(path);
            }
            let mut exclude = Vec::new();
            for e in &f.exclude {
                let pattern = self.expand(e, "files.exclude");
                if let Err(problem) = exclude_glob(&pattern) {
                    self.problem(e.span(), "files.exclude", problem);
                }
                exclude.push(pattern);
            }
            out.push(FileSet {
                name,
                paths,
                exclude,
                required: f.required.unwrap_or(false),
            });
        }
        out
    }

    pub(super) fn git(&mut self, raw: Vec<RawGit>) -> Vec<GitSource> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for g in raw {
            let name = self.name(&g.name, "git.name", &mut seen);
            let location = match (&g.repo, &g.url) {
                (Some(r), None) => {
                    let path = self.expand(r, "git.repo");
                    if !path.is_empty() && !path.starts_with('/') {
                        self.problem(r.span(), "git.repo", format!("`{path}` is not absolute"));
                    }
                    GitLocation::Local(PathBuf::from(path))
                }
                (None, Some(u)) => {
                    let url = self.expand(u, "git.url");
                    if let Err(problem) = check_git_url(&url) {
                        self.problem(u.span(), "git.url", problem);
                    }
                    GitLocation::Url(url)
                }
                _ => {
                    self.problem(
                        g.name.span(),
                        "git",
                        format!("`{name}` needs exactly one of `repo` (a local path) and `url`"),
                    );
                    GitLocation::Local(PathBuf::new())
                }
            };
            out.push(GitSource { name, location });
        }
        out
    }

    pub(super) fn runbook(&mut self, raw: Option<RawRunbook>) -> Runbook {
        let Some(r) = raw else {
            return Runbook::default();
        };
        Runbook {
            redeploy: r.redeploy.map(|s| s.get_ref().clone()),
            rollback: r.rollback.map(|s| s.get_ref().clone()),
        }
    }
}

/// A git url is `https://`, `http://`, `ssh://`, `git://`, `file://` or scp-like
/// `user@host:path`, and carries no password.
fn check_git_url(url: &str) -> Result<(), String> {
    if url.is_empty() {
        return Ok(()); // already reported as empty
    }
    match url::Url::parse(url) {
        Ok(u) => {
            if !["https", "http", "ssh", "git", "file"].contains(&u.scheme()) {
                return Err(format!(
                    "the scheme `{}` is not one git fetches over: use https://, ssh://, git:// or file://",
                    u.scheme()
                ));
            }
            if u.password().is_some() {
                return Err("carries a password: remove it and give credentials through the environment (a credential helper, GIT_ASKPASS) or the SSH agent".into());
            }
            Ok(())
        }
        Err(_) if url.contains(':') && !url.starts_with('/') => Ok(()), // scp-like
        Err(e) => Err(format!("does not parse as a url: {e}")),
    }
}
