//! Operations: what backstop can do, as library calls. Each one takes the policy, the opened
//! repository, a typed request and a [`Ctx`] (progress sink, cancellation), and returns a
//! typed outcome that holds everything a run record, a notification or a metric needs,
//! including the error when it failed. Nothing here prints, draws a bar or builds a record:
//! the command line and the daemon are both callers.
//!
//! Every operation takes its repository lock itself (shared for backup, restore, verify and
//! check; see [`crate::repo::lock`]) and releases it on every path, so a caller cannot forget
//! it. A lost lock or a cancelled token stops the run at its next await point, before anything
//! is committed.

pub mod backup;
pub mod check;
mod context;
pub mod documents;
pub mod files;
pub mod git;
pub mod load;
pub mod prune;
pub mod replay;
pub mod report;
pub mod restore;
pub mod runbook;
pub mod stream;
pub mod verify;

pub use context::{Bar, Cancel, Ctx, NoProgress, ProgressSink, Reason};

use crate::error::Result;
pub use crate::record::figures::Phase;
use crate::repo::lock::{LockRequest, Mode, RunLock};
use crate::repo::Repo;
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::time::Instant;

impl Phase {
    pub fn since(name: &str, start: Instant) -> Phase {
        Phase {
            name: name.into(),
            duration_s: crate::util::secs(start.elapsed()),
        }
    }
}

/// When a run started and ended; every outcome has one.
#[derive(Debug, Clone)]
pub struct RunTimes {
    pub run_id: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub duration_s: f64,
    clock: Instant,
}

impl RunTimes {
    pub fn start() -> RunTimes {
        let started_at = Utc::now();
        RunTimes {
            run_id: crate::util::new_id(started_at),
            started_at,
            finished_at: started_at,
            duration_s: 0.0,
            clock: Instant::now(),
        }
    }

    pub fn finish(&mut self) {
        self.finished_at = Utc::now();
        self.duration_s = crate::util::secs(self.clock.elapsed());
    }
}

/// The sealer a policy's runs write blobs with, and the key of their keyed ids.
pub(crate) fn policy_sealer(
    policy: &crate::policy::Policy,
    repo: &Repo,
) -> Result<(std::sync::Arc<crate::seal::Sealer>, Vec<u8>)> {
    use secrecy::ExposeSecret;
    let dedup_key = repo.blob_id_key(
        policy
            .repository
            .dedup_key
            .as_ref()
            .map(|k| k.expose_secret()),
        &policy.recipients,
    )?;
    let sealer =
        crate::seal::Sealer::new(&policy.recipients, &dedup_key, policy.repository.zstd_level)?;
    Ok((std::sync::Arc::new(sealer), dedup_key))
}

/// Opens the repository a policy names (its backstop.json must exist).
pub async fn open_repo(policy: &crate::policy::Policy) -> Result<Repo> {
    let store = crate::store::open(&policy.repository.store_config()).await?;
    Repo::open(store, &policy.name).await
}

/// Writes a run's record under `runs/`. A record that cannot be written is logged: the run's
/// outcome stands either way. Every caller (the command line, the daemon) ends a run with it.
pub async fn save_record(
    repo: &Repo,
    job: crate::record::Job,
    times: &RunTimes,
    record: &impl Serialize,
) {
    let store = repo.store.as_ref();
    let written = crate::repo::runs::write(
        store,
        &repo.policy,
        job,
        &times.run_id,
        times.started_at,
        record,
    );
    if let Err(e) = written.await {
        tracing::warn!("could not write the run record: {}", e.message);
    }
}

/// Whether the last recorded run of `job` succeeded; `None` when there is none (or the
/// records cannot be read: notifications then treat the run as a first one).
pub async fn last_outcome(repo: &Repo, job: crate::record::Job) -> Option<bool> {
    let records: Vec<crate::record::Header> =
        crate::repo::runs::read(repo.store.as_ref(), &repo.policy, job)
            .await
            .ok()?;
    let last = records.iter().max_by_key(|r| r.started_at)?;
    Some(last.ok)
}

/// Runs `work` under a shared lock of the repository, with `ctx`'s token cancelled (for this
/// run only) when the lock is lost. The lock is released on every path.
pub(crate) async fn with_shared_lock<T>(
    repo: &Repo,
    operation: &str,
    run_id: &str,
    ctx: &Ctx,
    work: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    with_lock(Mode::Shared, repo, operation, run_id, ctx, work).await
}

/// [`with_shared_lock`] in either mode.
pub(crate) async fn with_lock<T>(
    mode: Mode,
    repo: &Repo,
    operation: &str,
    run_id: &str,
    ctx: &Ctx,
    work: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    let lock = RunLock::acquire(
        repo.store.clone(),
        LockRequest {
            mode,
            policy: &repo.policy,
            operation,
            run_id,
            ttl: ctx.lock_ttl,
            wait: ctx.lock_wait,
            queue_own: ctx.queue_own_locks,
        },
        ctx.cancel.clone(),
    )
    .await?;
    let result = work.await;
    lock.release().await;
    result
}
