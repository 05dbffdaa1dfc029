//! Run locks: repository-wide, with two modes, on the stores' create-if-absent write.
//!
//! Every run writes its own lock object, `locks/<run id>.json`, with a create-if-absent write
//! (`If-None-Match: *` on S3, link(2) on the local store). It names the mode, the policy, the
//! operation, the owner, host, pid and run id, and an expiry. Then the run lists `locks/` and
//! reads every other lock:
//! * backup, restore, verify and check take a **shared** lock: any number of them coexist,
//!   across policies and hosts, except that two backups of one policy exclude each other;
//! * prune takes the **exclusive** lock: it excludes every other holder, shared or exclusive.
//!
//! A run that finds a conflicting live lock removes its own and fails with exit 4, naming the
//! holder. Two runs that write at the same moment and see each other agree on which lock is
//! older: the newer gives way at once, the older waits a moment for it to do so and looks
//! again (see `check_others`), so exactly one of two concurrent backups of a policy proceeds
//! and never both. Locks of the format before this one (`locks/<policy>.json`, no mode)
//! count as exclusive.
//!
//! **Refresh.** The holder refreshes its expiry every third of the time-to-live. Before each
//! refresh it reads its lock back: if the lock is gone, names another run, or has expired, or if
//! no refresh has succeeded before the expiry comes near, the lock is *lost* and the run's
//! cancellation token is cancelled with that reason. A backup then commits no snapshot and exits
//! 1 saying the lock was lost. The read-then-write of a refresh leaves a window of one round
//! trip in which a lock deleted by someone else is written again; the run that deleted it sees
//! the lock reappear at its next listing.
//!
//! **Takeover of stale locks.** A lock counts as stale, and is deleted by the next run that
//! lists it (the log says so), when it is past its expiry, or when it was written on this host
//! by a process that no longer exists (a run that was killed). A lock from another host is
//! trusted until it expires: at most the time-to-live (15 minutes) after its holder died. The
//! remaining window: a holder that stalls (suspended, partitioned) for longer than the
//! time-to-live can be taken over while it still runs; it notices at its next refresh and stops
//! before committing, but a write it already had in flight can still land.

use crate::cancel::{Cancel, Reason};
use crate::error::{Error, Kind, Result};
use crate::store::{Put, PutMode, Store};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

pub const TTL: Duration = Duration::from_secs(15 * 60);
const PREFIX: &str = "locks/";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Shared,
    /// Also what a lock without a mode (an older format) counts as.
    #[default]
    Exclusive,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LockInfo {
    #[serde(default)]
    pub mode: Mode,
    pub policy: String,
    pub operation: String,
    pub run_id: String,
    pub owner: String,
    pub host: String,
    pub pid: u32,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

impl LockInfo {
    fn describe(&self) -> String {
        format!(
            "{} run {} of policy {} ({} lock) by {} on {} (pid {}), started {}, lock expires {}",
            self.operation,
            self.run_id,
            self.policy,
            match self.mode {
                Mode::Shared => "shared",
                Mode::Exclusive => "exclusive",
            },
            self.owner,
            self.host,
            self.pid,
            self.created_at.to_rfc3339(),
            self.expires_at.to_rfc3339()
        )
    }

    /// The order in which two runs that see each other decide who gives way: the older.
    fn older_than(&self, other: &LockInfo) -> bool {
        (self.created_at, &self.run_id) < (other.created_at, &other.run_id)
    }

    /// Whether a run holding `self` keeps `other` from running.
    fn conflicts_with(&self, other: &LockInfo) -> bool {
        self.mode == Mode::Exclusive
            || other.mode == Mode::Exclusive
            || (self.operation == "backup"
                && other.operation == "backup"
                && self.policy == other.policy)
    }

    fn is_stale(&self, now: DateTime<Utc>) -> bool {
        self.expires_at <= now
            || (self.host == crate::util::host() && !crate::util::process_alive(self.pid))
    }
}

/// What a run asks to lock.
pub struct LockRequest<'a> {
    pub mode: Mode,
    pub policy: &'a str,
    pub operation: &'a str,
    pub run_id: &'a str,
    pub ttl: Duration,
    /// How long to wait for a conflicting lock to go (zero: fail at once).
    pub wait: Duration,
    /// Wait without limit for a conflicting lock that this very process holds (another job of
    /// the same daemon): jobs of one daemon queue, they never fail on each other.
    pub queue_own: bool,
}

/// How often a waiting run looks at the locks again.
const WAIT_POLL: Duration = Duration::from_secs(1);

/// A held lock. Release it with [`RunLock::release`]; dropping it only stops the refresh.
pub struct RunLock {
    store: Arc<dyn Store>,
    key: String,
    info: LockInfo,
    refresher: tokio::task::JoinHandle<()>,
}

impl Drop for RunLock {
    fn drop(&mut self) {
        self.refresher.abort();
    }
}

fn encode(info: &LockInfo) -> Result<Vec<u8>> {
    serde_json::to_vec_pretty(info).map_err(|e| Error::failed(format!("encoding lock: {e}")))
}

fn expiry(ttl: Duration) -> DateTime<Utc> {
    Utc::now() + chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::minutes(15))
}

impl RunLock {
    /// Takes the lock, or fails with [`Kind::Locked`] naming a holder that conflicts, after
    /// waiting up to `req.wait` for it (without limit for this process's own locks when
    /// `req.queue_own`). While
    /// held, the lock is refreshed; `cancel` is cancelled when it is lost.
    pub async fn acquire(
        store: Arc<dyn Store>,
        req: LockRequest<'_>,
        cancel: Cancel,
    ) -> Result<RunLock> {
        let deadline = tokio::time::Instant::now() + req.wait;
        let mut said = None;
        loop {
            let held = match Self::try_acquire(store.clone(), &req, cancel.clone()).await? {
                Ok(lock) => return Ok(lock),
                Err(held) => held,
            };
            let ours = req.queue_own
                && held.info.host == crate::util::host()
                && held.info.pid == std::process::id();
            if !ours && tokio::time::Instant::now() >= deadline {
                return Err(held.error);
            }
            if said.as_ref() != Some(&held.info.run_id) {
                tracing::info!(
                    "waiting for the lock: {}{}",
                    held.info.describe(),
                    if ours {
                        " (a job of this process: it runs next)".to_string()
                    } else {
                        format!(" (at most {})", crate::util::format_duration(req.wait))
                    }
                );
                said = Some(held.info.run_id.clone());
            }
            tokio::select! {
                _ = tokio::time::sleep(WAIT_POLL) => {}
                _ = cancel.cancelled() => return Err(cancel.error()),
            }
        }
    }

    /// One attempt: the lock, or the conflicting holder and the error that names it.
    async fn try_acquire(
        store: Arc<dyn Store>,
        req: &LockRequest<'_>,
        cancel: Cancel,
    ) -> Result<std::result::Result<RunLock, Conflict>> {
        let key = format!("{PREFIX}{}.json", req.run_id);
        let now = Utc::now();
        let info = LockInfo {
            mode: req.mode,
            policy: req.policy.to_string(),
            operation: req.operation.to_string(),
            run_id: req.run_id.to_string(),
            owner: std::env::var("USER").unwrap_or_else(|_| "unknown".into()),
            host: crate::util::host(),
            pid: std::process::id(),
            created_at: now,
            expires_at: expiry(req.ttl),
        };
        if store
            .put(&key, encode(&info)?, PutMode::CreateMutable)
            .await?
            == Put::Exists
        {
            // A retried write whose first answer was lost finds its own lock.
            let mine = match store.get_opt(&key).await? {
                Some(body) => serde_json::from_slice::<LockInfo>(&body)
                    .is_ok_and(|h| h.run_id == info.run_id && h.pid == info.pid),
                None => false,
            };
            if !mine {
                return Err(Error::new(
                    Kind::Locked,
                    format!("{key} in {} is held by another run", store.describe()),
                ));
            }
        }
        match check_others(store.as_ref(), &info, &key).await {
            Ok(None) => {}
            Ok(Some(conflict)) => {
                let _ = store.delete(&key).await;
                return Ok(Err(conflict));
            }
            Err(e) => {
                let _ = store.delete(&key).await;
                return Err(e);
            }
        }
        let refresher = tokio::spawn(refresh(
            store.clone(),
            key.clone(),
            info.clone(),
            req.ttl,
            cancel,
        ));
        Ok(Ok(RunLock {
            store,
            key,
            info,
            refresher,
        }))
    }

    /// Stops refreshing and removes the lock if it is still ours.
    pub async fn release(self) {
        self.refresher.abort();
        match read(self.store.as_ref(), &self.key).await {
            Ok(Some(Ok(held))) if held.run_id == self.info.run_id => {
                if let Err(e) = self.store.delete(&self.key).await {
                    tracing::warn!("could not remove lock {}: {}", self.key, e.message);
                }
            }
            Ok(None) => {}
            Ok(Some(_)) => tracing::warn!("lock {} is no longer ours; leaving it", self.key),
            Err(e) => tracing::warn!("could not read lock {}: {}", self.key, e.message),
        }
    }
}

async fn read(
    store: &dyn Store,
    key: &str,
) -> Result<Option<std::result::Result<LockInfo, serde_json::Error>>> {
    Ok(store
        .get_opt(key)
        .await?
        .map(|body| serde_json::from_slice::<LockInfo>(&body)))
}

/// How long a run that found only *newer* conflicting locks waits for their runs to see its
/// own lock and give way, before it looks again.
const SETTLE: Duration = Duration::from_secs(2);

/// A live lock that keeps a run from taking its own, and the error that names it.
struct Conflict {
    info: LockInfo,
    error: Error,
}

/// The conflicting live lock, if any, that keeps ours from being taken. Runs that see each
/// other agree on the order of their locks (created_at, then run id, as written): a run gives
/// way at once to an older conflicting lock; one that sees only newer ones waits [`SETTLE`]
/// for them to give way and looks again, and gives way itself if any is still there (that run
/// may have looked before our lock existed). Either way at most one of two conflicting runs
/// proceeds.
async fn check_others(
    store: &dyn Store,
    mine: &LockInfo,
    my_key: &str,
) -> Result<Option<Conflict>> {
    let newer = match conflicting(store, mine, my_key).await? {
        Some(held) if held.older_than(mine) => return Ok(Some(locked(store, mine, held))),
        Some(held) => held,
        None => return Ok(None),
    };
    tracing::info!("waiting for a newer run to give way: {}", newer.describe());
    tokio::time::sleep(SETTLE).await;
    Ok(conflicting(store, mine, my_key)
        .await?
        .map(|held| locked(store, mine, held)))
}

fn locked(store: &dyn Store, mine: &LockInfo, held: LockInfo) -> Conflict {
    let error = Error::new(
        Kind::Locked,
        format!(
            "policy {} is locked by another run: {} (locks/{}.json in {}). Wait for it to finish (or pass --wait DURATION); if it died, its lock expires by itself",
            mine.policy,
            held.describe(),
            held.run_id,
            store.describe()
        ),
    );
    Conflict { info: held, error }
}

/// Reads a run's own lock back at a commit point (just before a snapshot's meta.json, a
/// segment's record, or a prune's first deletion): the refresh runs only every third of the
/// lock's lifetime, so a lock removed or taken over since is noticed here, whatever the
/// interval. An error of kind [`Kind::LockLost`] when the lock is gone, names another run or
/// has expired: the run commits nothing.
pub async fn confirm(store: &dyn Store, run_id: &str) -> Result<()> {
    let key = format!("{PREFIX}{run_id}.json");
    let how = match read(store, &key).await {
        Ok(Some(Ok(held))) if held.run_id == run_id && held.pid == std::process::id() => {
            if held.expires_at > Utc::now() {
                return Ok(());
            }
            "it expired".to_string()
        }
        Ok(Some(Ok(held))) => format!("it was replaced by {}", held.describe()),
        Ok(Some(Err(e))) => format!("it was replaced by something unreadable ({e})"),
        Ok(None) => "it was removed".to_string(),
        Err(e) => format!("it could not be read back ({})", e.message),
    };
    Err(crate::cancel::Reason::LockLost(format!("{key} in {}: {how}", store.describe())).error())
}

/// The oldest live lock that conflicts with ours; stale and unreadable locks are deleted.
async fn conflicting(store: &dyn Store, mine: &LockInfo, my_key: &str) -> Result<Option<LockInfo>> {
    let mut oldest: Option<LockInfo> = None;
    for entry in store.list(PREFIX).await? {
        if entry.key == my_key || !entry.key.ends_with(".json") {
            continue;
        }
        let held = match read(store, &entry.key).await? {
            None => continue,
            Some(Ok(h)) => h,
            Some(Err(e)) => {
                tracing::warn!("removing unreadable lock {} ({e})", entry.key);
                store.delete(&entry.key).await?;
                continue;
            }
        };
        if held.is_stale(Utc::now()) {
            tracing::warn!("taking over the stale lock of {}", held.describe());
            store.delete(&entry.key).await?;
            continue;
        }
        if mine.conflicts_with(&held) && oldest.as_ref().is_none_or(|o| held.older_than(o)) {
            oldest = Some(held);
        }
    }
    Ok(oldest)
}

async fn refresh(
    store: Arc<dyn Store>,
    key: String,
    mut info: LockInfo,
    ttl: Duration,
    cancel: Cancel,
) {
    let mut wait = ttl / 3;
    loop {
        tokio::time::sleep(wait).await;
        let step = match read(store.as_ref(), &key).await {
            Ok(None) => Step::Lost("it was removed".to_string()),
            Ok(Some(Ok(held))) if held.run_id != info.run_id => {
                Step::Lost(format!("it was replaced by {}", held.describe()))
            }
            Ok(Some(Err(e))) => {
                Step::Lost(format!("it was replaced by something unreadable ({e})"))
            }
            Ok(Some(Ok(held))) if held.expires_at <= Utc::now() => {
                Step::Lost("it expired before it could be refreshed".to_string())
            }
            Ok(Some(Ok(_))) => {
                let mut next = info.clone();
                next.expires_at = expiry(ttl);
                match encode(&next) {
                    Ok(body) => match store.put(&key, body, PutMode::Replace).await {
                        Ok(_) => {
                            info = next;
                            Step::Kept
                        }
                        Err(e) => Step::Unreachable(e.message),
                    },
                    Err(e) => Step::Unreachable(e.message),
                }
            }
            Err(e) => Step::Unreachable(e.message),
        };
        match step {
            Step::Kept => wait = ttl / 3,
            Step::Lost(how) => {
                cancel.cancel(Reason::LockLost(format!(
                    "{key} in {}: {how}",
                    store.describe()
                )));
                return;
            }
            // Could not read or write: retry while the lock is still ours to keep.
            Step::Unreachable(how) => {
                let left = (info.expires_at - Utc::now()).to_std().unwrap_or_default();
                if left <= ttl / 6 {
                    cancel.cancel(Reason::LockLost(format!(
                        "{key} in {} could not be refreshed before it expires: {how}",
                        store.describe()
                    )));
                    return;
                }
                tracing::warn!("could not refresh lock {key}, retrying: {how}");
                wait = ttl / 12;
            }
        }
    }
}

/// What one refresh found.
enum Step {
    Kept,
    /// Gone, taken or expired: lost at once.
    Lost(String),
    /// The store could not be read or written.
    Unreachable(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(mode: Mode, policy: &str, operation: &str) -> LockInfo {
        LockInfo {
            mode,
            policy: policy.into(),
            operation: operation.into(),
            run_id: "r".into(),
            owner: "o".into(),
            host: "elsewhere".into(),
            pid: 1,
            created_at: Utc::now(),
            expires_at: Utc::now() + chrono::Duration::minutes(5),
        }
    }

    #[test]
    fn modes_conflict_as_documented() {
        use Mode::*;
        let backup_a = info(Shared, "a", "backup");
        assert!(!backup_a.conflicts_with(&info(Shared, "b", "backup")));
        assert!(!backup_a.conflicts_with(&info(Shared, "a", "verify")));
        assert!(backup_a.conflicts_with(&info(Shared, "a", "backup")));
        assert!(backup_a.conflicts_with(&info(Exclusive, "b", "prune")));
        assert!(info(Exclusive, "a", "prune").conflicts_with(&info(Shared, "b", "check")));
        assert!(!info(Shared, "a", "check").conflicts_with(&info(Shared, "a", "restore")));
    }

    #[test]
    fn an_old_lock_without_mode_counts_as_exclusive_and_expiry_makes_stale() {
        let text = r#"{"policy":"p","operation":"backup","run_id":"x","owner":"o",
            "host":"elsewhere","pid":1,"created_at":"2026-01-01T00:00:00Z",
            "expires_at":"2026-01-01T00:15:00Z"}"#;
        let old: LockInfo = serde_json::from_str(text).unwrap();
        assert_eq!(old.mode, Mode::Exclusive);
        assert!(old.is_stale(Utc::now()));
        assert!(!info(Mode::Shared, "p", "check").is_stale(Utc::now()));
    }
}
