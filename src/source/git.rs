//! Git repositories (`[[git]]`) through the `git` command: a local repository is bundled in
//! place; a url is cloned once as a mirror into the cache directory and fetched on each backup.
//! Credentials never come from the policy: git runs with `GIT_TERMINAL_PROMPT=0` and SSH in
//! batch mode, so a repository that needs credentials the environment does not give (a
//! credential helper, `GIT_ASKPASS`, the SSH agent) fails at once, named.
//!
//! A backup is `git bundle create - --all` streamed through the writer; its refs are read from
//! the bundle's own header as it passes, so the record names exactly what the bundle holds.

use crate::error::{Error, Result};
use crate::policy::{GitLocation, GitSource};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

/// `git` with prompts off, SSH in batch mode and messages in English, in a process group of
/// its own (see [`crate::child`]).
pub fn command() -> Command {
    let mut c = Command::new("git");
    crate::child::prepare(&mut c);
    c.env("GIT_TERMINAL_PROMPT", "0");
    if std::env::var_os("GIT_SSH_COMMAND").is_none() {
        c.env("GIT_SSH_COMMAND", "ssh -o BatchMode=yes");
    }
    c.stdin(Stdio::null());
    c
}

/// Runs `cmd` to its end; its stdout, or an error naming `what` with git's message.
pub async fn run(cmd: Command, what: &str) -> Result<String> {
    let out = crate::child::output(cmd)
        .await
        .map_err(|e| Error::input(format!("{what}: cannot run git: {e} (install git)")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(Error::failed(format!(
            "{what}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

fn needs_credentials(message: &str) -> bool {
    [
        "could not read Username",
        "could not read Password",
        "Authentication failed",
        "Permission denied (publickey",
        "terminal prompts disabled",
        "Host key verification failed",
    ]
    .iter()
    .any(|m| message.contains(m))
}

/// Checks before a backup starts that the repository can be read: exit 2, named, if not.
pub async fn check(src: &GitSource) -> Result<()> {
    let what = format!(
        "git repository `{}` ({})",
        src.name,
        src.location.describe()
    );
    let result = match &src.location {
        GitLocation::Local(p) => {
            let mut c = command();
            c.arg("-C").arg(p).args(["rev-parse", "--git-dir"]);
            run(c, &what).await
        }
        GitLocation::Url(u) => {
            let mut c = command();
            c.args(["ls-remote", "--quiet", "--", u]);
            run(c, &what).await
        }
    };
    result.map(|_| ()).map_err(|e| {
        if needs_credentials(&e.message) {
            Error::input(format!(
                "{}: the url needs credentials, and they must come from the environment (a credential helper, GIT_ASKPASS, or the SSH agent), never the policy",
                e.message
            ))
        } else {
            Error::input(e.message)
        }
    })
}

/// The git directory to bundle: the local repository, or the mirror of the url (cloned into
/// `mirrors` the first time, fetched afterwards).
pub async fn prepare(src: &GitSource, mirrors: &Path) -> Result<PathBuf> {
    match &src.location {
        GitLocation::Local(p) => Ok(p.clone()),
        GitLocation::Url(u) => {
            use sha2::Digest;
            let id = hex::encode(sha2::Sha256::digest(u.as_bytes()));
            let dir = mirrors.join(format!("{}-{}.git", src.name, &id[..16]));
            let what = format!("git repository `{}`", src.name);
            if dir.join("HEAD").is_file() {
                let mut c = command();
                c.arg("-C").arg(&dir).args([
                    "fetch",
                    "--quiet",
                    "--prune",
                    "--force",
                    "origin",
                    "+refs/*:refs/*",
                ]);
                run(c, &format!("{what}: fetching")).await?;
            } else {
                std::fs::create_dir_all(mirrors).map_err(|e| {
                    Error::failed(format!("cannot create {}: {e}", mirrors.display()))
                })?;
                let tmp = dir.with_extension("tmp");
                let _ = std::fs::remove_dir_all(&tmp);
                let mut c = command();
                c.args(["clone", "--quiet", "--mirror", "--", u]).arg(&tmp);
                run(c, &format!("{what}: cloning")).await?;
                std::fs::rename(&tmp, &dir).map_err(|e| {
                    Error::failed(format!("cannot move the mirror to {}: {e}", dir.display()))
                })?;
            }
            Ok(dir)
        }
    }
}

/// Every ref and HEAD as `for-each-ref` and `rev-parse` see them: what decides whether the
/// repository changed since the last bundle.
pub async fn ref_state(git_dir: &Path, name: &str) -> Result<String> {
    let mut c = command();
    c.arg("-C")
        .arg(git_dir)
        .args(["for-each-ref", "--format=%(objectname) %(refname)"]);
    let refs = run(c, &format!("git repository `{name}`: listing refs")).await?;
    let mut c = command();
    c.arg("-C")
        .arg(git_dir)
        .args(["rev-parse", "--verify", "--quiet", "HEAD"]);
    let head = run(c, "HEAD").await.unwrap_or_default();
    Ok(format!("{refs}HEAD {head}"))
}

/// A reader that keeps a copy of the bundle's header (up to its blank line) as it passes.
pub struct HeaderTap<R> {
    inner: R,
    header: Arc<Mutex<Vec<u8>>>,
    done: bool,
}

/// The most header bytes kept (about 400,000 refs).
const HEADER_MAX: usize = 64 << 20;

impl<R: Read> HeaderTap<R> {
    pub fn new(inner: R) -> (Self, Arc<Mutex<Vec<u8>>>) {
        let header = Arc::new(Mutex::new(Vec::new()));
        (
            HeaderTap {
                inner,
                header: header.clone(),
                done: false,
            },
            header,
        )
    }
}

impl<R: Read> Read for HeaderTap<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if !self.done && n > 0 {
            let mut h = crate::util::lock(&self.header);
            h.extend_from_slice(&buf[..n]);
            if let Some(end) = h.windows(2).position(|w| w == b"\n\n") {
                h.truncate(end + 1);
                self.done = true;
            } else if h.len() > HEADER_MAX {
                self.done = true;
            }
        }
        Ok(n)
    }
}

/// The refs a bundle header lists, `(commit, refname)` sorted by name.
pub fn parse_header(header: &[u8]) -> Result<Vec<(String, String)>> {
    let text = String::from_utf8_lossy(header);
    let mut lines = text.lines();
    match lines.next() {
        Some(l) if l.starts_with("# v2 git bundle") || l.starts_with("# v3 git bundle") => {}
        _ => {
            return Err(Error::failed(
                "git bundle create did not write a bundle header",
            ))
        }
    }
    let mut refs: Vec<(String, String)> = lines
        .filter(|l| !l.is_empty() && !l.starts_with('@') && !l.starts_with('-'))
        .filter_map(|l| l.split_once(' '))
        .map(|(oid, name)| (oid.to_string(), name.to_string()))
        .collect();
    refs.sort_by(|a, b| a.1.cmp(&b.1));
    Ok(refs)
}

/// Starts `git bundle create - --all` in `git_dir`; its stdout, and a handle that waits for it.
pub fn bundle(git_dir: &Path, name: &str) -> Result<(std::process::ChildStdout, BundleChild)> {
    let mut c = command();
    c.arg("-C")
        .arg(git_dir)
        .args(["bundle", "create", "--quiet", "-", "--all"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = crate::child::Child::spawn(c)
        .map_err(|e| Error::input(format!("git repository `{name}`: cannot run git: {e}")))?;
    let (Some(stdout), Some(mut stderr)) = (child.take_stdout(), child.take_stderr()) else {
        return Err(Error::failed(format!(
            "git repository `{name}`: git bundle create has no output pipes"
        )));
    };
    let errors = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = (&mut stderr).take(64 * 1024).read_to_string(&mut text);
        text
    });
    Ok((
        stdout,
        BundleChild {
            child,
            errors: Some(errors),
            name: name.to_string(),
        },
    ))
}

/// A running `git bundle create`; dropped before [`BundleChild::finish`], it is stopped with
/// its whole process group.
pub struct BundleChild {
    child: crate::child::Child,
    errors: Option<std::thread::JoinHandle<String>>,
    name: String,
}

impl BundleChild {
    /// Waits for git; an error with its message when it failed.
    pub fn finish(mut self) -> Result<()> {
        let status = self.child.wait();
        let errors = self
            .errors
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        match status {
            Ok(s) if s.success() => Ok(()),
            _ => Err(Error::failed(format!(
                "git repository `{}`: git bundle create failed: {}",
                self.name,
                errors.trim()
            ))),
        }
    }
}

/// `git bundle verify` in an empty repository (so every object must be in the bundle), then
/// the refs the bundle lists.
pub async fn verify_bundle(bundle: &Path, scratch: &Path) -> Result<Vec<(String, String)>> {
    let repo = scratch.join("verify-repo");
    let mut c = command();
    c.args(["init", "--quiet", "--bare"]).arg(&repo);
    run(c, "git init").await?;
    let mut c = command();
    c.arg("-C")
        .arg(&repo)
        .args(["bundle", "verify", "--quiet"])
        .arg(bundle);
    run(c, "git bundle verify").await?;
    let mut c = command();
    c.arg("-C")
        .arg(&repo)
        .args(["bundle", "list-heads"])
        .arg(bundle);
    let heads = run(c, "git bundle list-heads").await?;
    let mut refs: Vec<(String, String)> = heads
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(oid, name)| (oid.to_string(), name.to_string()))
        .collect();
    refs.sort_by(|a, b| a.1.cmp(&b.1));
    Ok(refs)
}

/// Clones `bundle` into `dest` with every ref of the bundle as a local ref (branches and
/// tags at their recorded commits), and points `origin` at `origin_url`.
pub async fn clone_bundle(bundle: &Path, dest: &Path, origin_url: &str) -> Result<()> {
    let what = format!("cloning into {}", dest.display());
    let mut c = command();
    c.args(["clone", "--quiet"]).arg(bundle).arg(dest);
    run(c, &what).await?;
    let mut c = command();
    c.arg("-C")
        .arg(dest)
        .args(["fetch", "--quiet", "--update-head-ok", "--force"])
        .arg(bundle)
        .arg("+refs/*:refs/*");
    run(c, &what).await?;
    let mut c = command();
    c.arg("-C")
        .arg(dest)
        .args(["remote", "set-url", "origin", origin_url]);
    run(c, &what).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_names_every_ref() {
        let header = b"# v2 git bundle\nbbb refs/tags/v1\naaa refs/heads/main\naaa HEAD\n";
        assert_eq!(
            parse_header(header).unwrap(),
            vec![
                ("aaa".to_string(), "HEAD".to_string()),
                ("aaa".to_string(), "refs/heads/main".to_string()),
                ("bbb".to_string(), "refs/tags/v1".to_string()),
            ]
        );
        assert!(parse_header(b"PACK").is_err());
    }
}
