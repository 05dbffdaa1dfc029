//! One job's lifecycle, the same for the command line and the daemon: open the repository,
//! the start ping, the operation, its run record saved, the notifications its outcome raises
//! (against the previous run of the same job), the metrics file. Every outcome goes through
//! it, including a job that could not start (a policy whose repository cannot be opened, a
//! verify whose identity cannot be read): that one still leaves a record where a repository
//! can be opened, and still alerts.

use crate::error::Error;
use crate::ops::{self, Ctx};
use crate::policy::Policy;
use crate::record::{BackupRecord, CheckRecord, Header, Job, PruneRecord, VerifyRecord};
use crate::repo::Repo;
use std::path::Path;

/// What to run.
pub enum Request {
    Backup(ops::backup::Request),
    Verify(ops::verify::Request),
    Prune(ops::prune::Request),
    Check(ops::check::Request),
}

/// What ran, with the operation's own outcome for the caller's summary.
pub enum Outcome {
    Backup(ops::backup::Outcome),
    Verify(ops::verify::Outcome),
    Prune(ops::prune::Outcome),
    Check(ops::check::Outcome),
}

impl Outcome {
    /// The outcome of `job` that never started, failing with `error`.
    pub fn not_started(job: Job, policy: &str, error: Error) -> Outcome {
        match job {
            Job::Verify => Outcome::Verify(ops::verify::Outcome::not_started(policy, error)),
            Job::Prune => Outcome::Prune(ops::prune::Outcome::not_started(policy, false, error)),
            Job::Check => Outcome::Check(ops::check::Outcome::not_started(policy, false, error)),
            _ => Outcome::Backup(ops::backup::Outcome::not_started(policy, error)),
        }
    }

    /// The run record, as the JSON document `--json` prints and `runs/` keeps.
    pub fn record(&self) -> serde_json::Value {
        let value = match self {
            Outcome::Backup(o) => serde_json::to_value(BackupRecord::from(o)),
            Outcome::Verify(o) => serde_json::to_value(VerifyRecord::from(o)),
            Outcome::Prune(o) => serde_json::to_value(PruneRecord::from(o)),
            Outcome::Check(o) => serde_json::to_value(CheckRecord::from(o)),
        };
        value.unwrap_or_default()
    }

    pub fn times(&self) -> &ops::RunTimes {
        match self {
            Outcome::Backup(o) => &o.times,
            Outcome::Verify(o) => &o.times,
            Outcome::Prune(o) => &o.times,
            Outcome::Check(o) => &o.times,
        }
    }

    pub fn error(&self) -> Option<&Error> {
        match self {
            Outcome::Backup(o) => o.error.as_ref(),
            Outcome::Verify(o) => o.error.as_ref(),
            Outcome::Prune(o) => o.error.as_ref(),
            Outcome::Check(o) => o.error.as_ref(),
        }
    }
}

impl Request {
    pub fn job(&self) -> Job {
        match self {
            Request::Backup(_) => Job::Backup,
            Request::Verify(_) => Job::Verify,
            Request::Prune(_) => Job::Prune,
            Request::Check(_) => Job::Check,
        }
    }
}

/// How the caller wants the job's end handled.
#[derive(Default)]
pub struct Options<'a> {
    /// Also write the policy's metrics here (`--metrics-file`).
    pub metrics_file: Option<&'a Path>,
    /// The previous outcome of this job as the caller remembers it, for notifications when
    /// the repository's records cannot be read (the daemon's memory).
    pub remembered: Option<bool>,
    /// An unattended job (the daemon's): it alerts even on the operator's mistakes (a wrong
    /// identity file), which at the command line are said on the terminal only.
    pub unattended: bool,
}

/// A finished job: its outcome, its record, and the repository it ran against when one could
/// be opened.
pub struct Done {
    pub outcome: Outcome,
    pub record: serde_json::Value,
    pub header: Header,
    pub repo: Option<Repo>,
}

/// Runs one job of `policy` from start to end. `request` is the caller's request, or the error
/// that kept it from being made (then the job is recorded and notified as failed to start).
pub async fn run(
    policy: &Policy,
    job: Job,
    request: crate::error::Result<Request>,
    ctx: &Ctx,
    options: &Options<'_>,
) -> Done {
    let repo = match ops::open_repo(policy).await {
        Ok(repo) => repo,
        Err(e) => {
            let outcome = Outcome::not_started(job, &policy.name, e);
            return finish(policy, job, outcome, None, options.remembered, options).await;
        }
    };
    let previous = ops::last_outcome(&repo, job).await.or(options.remembered);
    // The operator's own mistake at the command line (a wrong identity file) is said on the
    // terminal: no start ping, no alert.
    let request = request.and_then(|r| match &r {
        Request::Verify(v) => ops::verify::check_identity(policy, &repo, v).map(|()| r),
        _ => Ok(r),
    });
    let mistake = request
        .as_ref()
        .is_err_and(|e| e.kind == crate::error::Kind::WrongIdentity);
    if options.unattended || !mistake {
        crate::notify::ping_start(policy, job.as_str()).await;
    }
    let outcome = match request {
        Err(e) => Outcome::not_started(job, &policy.name, e),
        Ok(Request::Backup(r)) => Outcome::Backup(ops::backup::run(policy, &repo, &r, ctx).await),
        Ok(Request::Verify(r)) => Outcome::Verify(ops::verify::run(policy, &repo, &r, ctx).await),
        Ok(Request::Prune(r)) => Outcome::Prune(ops::prune::run(policy, &repo, &r, ctx).await),
        Ok(Request::Check(r)) => Outcome::Check(ops::check::run(&repo, &r, ctx).await),
    };
    finish(policy, job, outcome, Some(repo), previous, options).await
}

async fn finish(
    policy: &Policy,
    job: Job,
    outcome: Outcome,
    repo: Option<Repo>,
    previous: Option<bool>,
    options: &Options<'_>,
) -> Done {
    let record = outcome.record();
    if let Some(repo) = &repo {
        ops::save_record(repo, job, outcome.times(), &record).await;
    }
    let mistake = outcome
        .error()
        .is_some_and(|e| e.kind == crate::error::Kind::WrongIdentity);
    if options.unattended || !mistake {
        crate::notify::after_run(policy, job.as_str(), &record, previous).await;
    }
    if let (Some(path), Some(repo)) = (options.metrics_file, &repo) {
        if let Err(e) = crate::metrics::write_file(path, policy, repo).await {
            tracing::warn!(
                "could not write the metrics file {}: {}",
                path.display(),
                e.message
            );
        }
    }
    let header: Header = serde_json::from_value(record.clone()).unwrap_or_default();
    Done {
        outcome,
        record,
        header,
        repo,
    }
}
