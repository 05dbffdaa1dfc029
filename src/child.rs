//! Child processes (pg_dump, pg_dumpall, pg_restore, git): each in a process group of its own,
//! with messages in the C locale, and stopped with everything it started.
//!
//! Invariant: a child backstop starts runs as the leader of a new process group, so whatever it
//! starts in turn (pg_restore's workers, the `sleep` or `docker exec` of a wrapper script that
//! `BACKSTOP_PG_BINDIR` points at) is in that group too. A [`Group`] dropped before its child
//! was waited for to the end (a cancelled run, an error on the way) signals the whole group
//! with SIGTERM at once and, from a thread of its own, SIGKILL after [`STOP_GRACE`] if any
//! member is still there. Every pipe the group held closes with it, so no reader is left
//! waiting for an end of file. [`wait_stopped`], called before the process exits, waits until
//! every group being stopped is gone, so no child outlives the run that said it stopped.
//!
//! `LC_ALL=C`: backstop reads these programs' messages (pg_restore's errors, git's refusals)
//! and must read them in English whatever the operator's locale; nothing they write into a
//! dump or a bundle depends on the locale of the client.

use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// How long a group gets after SIGTERM before SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(2);

/// Puts a command into a process group of its own, with messages in the C locale.
pub fn prepare(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    cmd.process_group(0)
        .env("LC_ALL", "C")
        .env_remove("LANGUAGE");
}

/// The process group of a started child; stopped when dropped while armed.
pub struct Group {
    pgid: Option<rustix::process::Pid>,
}

impl Group {
    /// The group of a child started after [`prepare`] (its pid is the group's id).
    pub fn of(pid: u32) -> Group {
        let pgid = i32::try_from(pid)
            .ok()
            .and_then(rustix::process::Pid::from_raw);
        if let Some(p) = pgid {
            crate::util::lock(&LIVE).insert(p.as_raw_pid());
        }
        Group { pgid }
    }

    fn take(&mut self) -> Option<rustix::process::Pid> {
        let pgid = self.pgid.take()?;
        crate::util::lock(&LIVE).remove(&pgid.as_raw_pid());
        Some(pgid)
    }

    /// The child was waited for to its end: nothing is left to stop. (Its own children, if
    /// it left any behind, are stopped too: a finished leader's group should be empty.)
    pub fn finished(&mut self) {
        if let Some(pgid) = self.take() {
            if rustix::process::test_kill_process_group(pgid).is_ok() {
                stop(pgid);
            }
        }
    }

    /// Stops the group now (SIGTERM, SIGKILL after [`STOP_GRACE`]).
    pub fn stop(&mut self) {
        if let Some(pgid) = self.take() {
            stop(pgid);
        }
    }
}

/// Groups started and not yet finished or stopped.
static LIVE: Mutex<std::collections::BTreeSet<i32>> = Mutex::new(std::collections::BTreeSet::new());

/// SIGKILL to every live group, for a process about to exit at once (a second signal).
pub fn kill_all() {
    for pgid in std::mem::take(&mut *crate::util::lock(&LIVE)) {
        if let Some(p) = rustix::process::Pid::from_raw(pgid) {
            let _ = rustix::process::kill_process_group(p, rustix::process::Signal::KILL);
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Groups being stopped right now.
static STOPPING: Mutex<usize> = Mutex::new(0);
static STOPPED: Condvar = Condvar::new();

fn stop(pgid: rustix::process::Pid) {
    use rustix::process::{kill_process_group, test_kill_process_group, Signal};
    if kill_process_group(pgid, Signal::TERM).is_err() {
        return; // no such group: everything in it has ended
    }
    *crate::util::lock(&STOPPING) += 1;
    let spawned = std::thread::Builder::new()
        .name("stop-child".into())
        .spawn(move || {
            let deadline = Instant::now() + STOP_GRACE;
            while Instant::now() < deadline && test_kill_process_group(pgid).is_ok() {
                std::thread::sleep(Duration::from_millis(25));
            }
            if test_kill_process_group(pgid).is_ok() {
                tracing::debug!(
                    "process group {} ignored SIGTERM: SIGKILL",
                    pgid.as_raw_pid()
                );
                let _ = kill_process_group(pgid, Signal::KILL);
            }
            *crate::util::lock(&STOPPING) -= 1;
            STOPPED.notify_all();
        });
    if spawned.is_err() {
        let _ = kill_process_group(pgid, Signal::KILL);
        *crate::util::lock(&STOPPING) -= 1;
    }
}

/// Waits (at most `limit`) until every group being stopped is gone. The process calls it
/// before it exits.
pub fn wait_stopped(limit: Duration) {
    let deadline = Instant::now() + limit;
    let mut n = crate::util::lock(&STOPPING);
    while *n > 0 {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        n = match STOPPED.wait_timeout(n, left) {
            Ok((g, _)) => g,
            Err(p) => p.into_inner().0,
        };
    }
}

/// A started child with its group: the standard library's child, stopped with its whole
/// group when dropped before [`Child::wait`] returned.
pub struct Child {
    inner: Option<std::process::Child>,
    group: Group,
}

impl Child {
    /// Starts `cmd` in its own group (see [`prepare`]).
    pub fn spawn(mut cmd: std::process::Command) -> std::io::Result<Child> {
        prepare(&mut cmd);
        let inner = cmd.spawn()?;
        let group = Group::of(inner.id());
        Ok(Child {
            inner: Some(inner),
            group,
        })
    }

    /// The child's stdout, once (when it was piped).
    pub fn take_stdout(&mut self) -> Option<std::process::ChildStdout> {
        self.inner.as_mut()?.stdout.take()
    }

    /// The child's stderr, once (when it was piped).
    pub fn take_stderr(&mut self) -> Option<std::process::ChildStderr> {
        self.inner.as_mut()?.stderr.take()
    }

    /// Waits for the child to end; its group then has nothing left to stop.
    pub fn wait(&mut self) -> std::io::Result<std::process::ExitStatus> {
        let inner = self
            .inner
            .as_mut()
            .ok_or_else(|| std::io::Error::other("the child was already reaped"))?;
        let status = inner.wait()?;
        self.group.finished();
        Ok(status)
    }

    /// Stops the group now; the child is reaped when waited for or dropped.
    pub fn stop(&mut self) {
        self.group.stop();
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        let Some(mut inner) = self.inner.take() else {
            return;
        };
        if let Ok(None) = inner.try_wait() {
            self.group.stop();
            // Reaped by a thread once it ends, so no zombie is left and the drop does not
            // block.
            let _ = std::thread::Builder::new()
                .name("reap-child".into())
                .spawn(move || inner.wait());
        }
    }
}

/// Runs `cmd` to its end in its own group and returns its output; dropped before the end (a
/// cancelled run), the whole group is stopped.
pub async fn output(cmd: std::process::Command) -> std::io::Result<std::process::Output> {
    let mut cmd = tokio::process::Command::from(cmd);
    cmd.as_std_mut().stdin(std::process::Stdio::null());
    prepare(cmd.as_std_mut());
    cmd.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let child = cmd.spawn()?;
    let mut group = Group::of(child.id().unwrap_or(0));
    let out = child.wait_with_output().await?;
    group.finished();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alive(pid: &str) -> bool {
        std::path::Path::new(&format!("/proc/{pid}")).exists()
            && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .unwrap_or_default()
                .contains(") Z ")
    }

    #[test]
    fn a_dropped_child_takes_its_grandchildren_and_their_pipes_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        let mut cmd = std::process::Command::new("sh");
        // The grandchild ignores nothing and holds stdout, as a wrapper's `sleep` does.
        cmd.arg("-c")
            .arg(format!("sleep 300 & echo $! > {}; wait", pidfile.display()))
            .stdout(std::process::Stdio::piped());
        let mut child = Child::spawn(cmd).unwrap();
        let mut stdout = child.take_stdout().unwrap();
        let t = Instant::now();
        while !pidfile.exists() || std::fs::read_to_string(&pidfile).unwrap().trim().is_empty() {
            assert!(t.elapsed() < Duration::from_secs(10));
            std::thread::sleep(Duration::from_millis(20));
        }
        let grandchild = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .to_string();
        assert!(alive(&grandchild));
        drop(child);
        // The pipe closes: a reader gets its end of file instead of waiting 300 s.
        let mut rest = Vec::new();
        std::io::Read::read_to_end(&mut stdout, &mut rest).unwrap();
        wait_stopped(Duration::from_secs(5));
        assert!(
            !alive(&grandchild),
            "the sleeping grandchild outlived its group"
        );
        assert!(t.elapsed() < Duration::from_secs(8));
    }

    #[tokio::test]
    async fn output_runs_in_the_c_locale() {
        let mut cmd = std::process::Command::new("sh");
        cmd.arg("-c")
            .arg("echo $LC_ALL")
            .env("LC_ALL", "ko_KR.UTF-8");
        let out = output(cmd).await.unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "C");
    }
}
