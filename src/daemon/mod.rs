//! `backstop daemon`: runs every policy's `[schedule]` in-process through the library
//! operations, alerts, and serves `/healthz`, `/metrics` and `/report` on `--listen`.
//!
//! * **Scheduling.** Each policy's `backup`, `verify` and `prune` crons fire in the policy's
//!   timezone (see [`crate::schedule::Cron::next_after`] for the DST rule), each start delayed
//!   by a random amount up to `[schedule] jitter`. One job per policy runs at a time: a job
//!   due while another of its policy runs waits for it (a job already waiting is not queued
//!   twice). Different policies run in parallel, up to `--max-parallel`.
//! * **Catch-up.** At start, a job whose last successful run (from the run records) is older
//!   than its schedule's interval, or that never succeeded, runs once at once. Missed runs are
//!   not replayed one by one.
//! * **Verify** needs the identity: verify jobs run only when `BACKSTOP_IDENTITY` (or the policy's `[verify] identity`) is set, and
//!   are logged as skipped otherwise (the backup host holds no private key; run verify from a
//!   daemon on another host).
//! * **Reload.** SIGHUP reloads the policy directory. A policy that no longer loads keeps its
//!   old version and is reported; new ones are added, removed files are dropped.
//! * **Shutdown.** SIGTERM or SIGINT stops taking jobs; running jobs get `--grace` to finish,
//!   then are cancelled through their token (a cancelled backup commits nothing); the daemon
//!   then exits 0.
//! * **RPO watch.** Every `min(60 s, rpo / 5)` (at least 1 s) each policy's newest recovery
//!   point is compared with its RPO; `rpo_breach` and `rpo_recovered` are sent on the edges.
//! * **Logs.** With `--json-log`, each job's start and end is one JSON object per line on
//!   stdout; everything else goes to stderr as usual.

mod http;
mod streams;

use crate::error::{Error, Result};
use crate::jobs;
use crate::metrics::PolicyMetrics;
use crate::notify::RpoWatch;
use crate::ops::{self, Cancel, Ctx, Reason};
use crate::policy::Policy;
use crate::record::Job;
use crate::schedule::Cron;
use chrono::{DateTime, Utc};
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

/// glibc gives each thread that allocates an arena of its own (up to 8 per core) and gives
/// little of them back: the daemon, whose jobs run on pool threads that come and go, grew from
/// 108 to 164 MiB over 20 minutes of `scripts/soak.sh` (a job every few seconds), and stayed
/// flat at 41-42 MiB with `MALLOC_ARENA_MAX=2`. So the daemon executes itself again with
/// `MALLOC_ARENA_MAX=2` (same pid, same arguments) unless the environment already sets it.
/// Called before the runtime starts.
pub fn bound_malloc_arenas() {
    use std::os::unix::process::CommandExt;
    if std::env::var_os("MALLOC_ARENA_MAX").is_some() {
        return;
    }
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let mut args = std::env::args_os();
    let arg0 = args.next().unwrap_or_else(|| exe.clone().into_os_string());
    let err = std::process::Command::new(&exe)
        .arg0(arg0)
        .args(args)
        .env("MALLOC_ARENA_MAX", "2")
        .exec();
    eprintln!("backstop: could not execute itself again with MALLOC_ARENA_MAX=2 ({err}); going on");
}

pub struct Options {
    pub dir: PathBuf,
    pub listen: Option<String>,
    pub max_parallel: usize,
    pub grace: Duration,
    pub json_log: bool,
}

/// What the HTTP side reads.
#[derive(Default)]
pub struct Shared {
    pub metrics: Mutex<BTreeMap<String, PolicyMetrics>>,
    pub policies: Mutex<Vec<Arc<Policy>>>,
    /// Each (policy, job)'s last outcome in this process: what notifications compare with
    /// when the repository (and so its run records) cannot be read.
    pub last_ok: Mutex<HashMap<(String, Job), bool>>,
    /// Policy files that did not load at the last (re)load, with their errors.
    pub load_errors: Mutex<BTreeMap<String, String>>,
    /// The run records' headers read so far (each is read once).
    pub records: crate::metrics::RecordCache,
    /// Each policy's change stream as this daemon follows it.
    pub streams: Mutex<BTreeMap<String, StreamState>>,
}

/// What the daemon knows of a policy's change stream, for `/metrics`.
#[derive(Debug, Clone, Default)]
pub struct StreamState {
    pub last_commit: Option<DateTime<Utc>>,
    pub segments: u64,
    pub lag_bytes: Option<i64>,
}

const JOBS: [Job; 4] = [Job::Backup, Job::Verify, Job::Prune, Job::Check];

fn cron_of(policy: &Policy, job: Job) -> Option<&Cron> {
    let s = policy.schedule.as_ref()?;
    match job {
        Job::Backup => s.backup.as_ref(),
        Job::Verify => s.verify.as_ref(),
        Job::Check => s.check.as_ref(),
        Job::Prune => s.prune.as_ref(),
        _ => None,
    }
}

/// The next start of `job` after `after`, with the policy's jitter.
fn next_start(policy: &Policy, job: Job, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let s = policy.schedule.as_ref()?;
    let t = cron_of(policy, job)?.next_after(after, s.timezone)?;
    let jitter = s.jitter.as_millis() as i64;
    let delay = if jitter > 0 {
        rand::random::<u64>() as i64 % jitter
    } else {
        0
    };
    Some(t + chrono::Duration::milliseconds(delay))
}

/// The schedule's interval around `at` (two consecutive starts).
fn interval(policy: &Policy, job: Job, at: DateTime<Utc>) -> Option<chrono::Duration> {
    let s = policy.schedule.as_ref()?;
    let cron = cron_of(policy, job)?;
    let a = cron.next_after(at, s.timezone)?;
    Some(cron.next_after(a, s.timezone)? - a)
}

/// Loads every `*.toml` of `dir`; the ones that fail are returned with their errors.
fn load_dir(dir: &std::path::Path) -> (Vec<Policy>, Vec<(PathBuf, Error)>) {
    let mut ok = Vec::new();
    let mut bad = Vec::new();
    for p in crate::policy::files_in(dir).unwrap_or_default() {
        match crate::policy::load(&p) {
            Ok(policy) => ok.push(policy),
            Err(e) => bad.push((p, e)),
        }
    }
    (ok, bad)
}

struct Done {
    policy: String,
}

/// One line of `--json-log` on stdout; every line carries its time as `at`.
fn log_json(enabled: bool, mut value: serde_json::Value) {
    if enabled {
        if let Some(map) = value.as_object_mut() {
            map.entry("at").or_insert_with(|| json!(Utc::now()));
        }
        println!("{value}");
    }
}

/// The request of a scheduled job, or why it cannot be made.
fn request_of(policy: &Policy, job: Job) -> Result<jobs::Request> {
    Ok(match job {
        Job::Backup => jobs::Request::Backup(ops::backup::Request { only: None }),
        Job::Verify => {
            let identity = identity_of(policy).ok_or_else(|| {
                Error::input(
                    "no identity: neither BACKSTOP_IDENTITY nor [verify] identity names one",
                )
            })?;
            let opener = Arc::new(crate::seal::Opener::from_file(&identity)?);
            jobs::Request::Verify(ops::verify::Request::for_policy(
                policy,
                crate::repo::Selector::Latest,
                opener,
                None,
                None,
            )?)
        }
        Job::Check => {
            // With the identity where this host has one: then every manifest is decrypted
            // and compared with its meta.json, every week and not only by hand.
            let key = identity_of(policy)
                .map(|p| crate::seal::Opener::from_file(&p))
                .transpose()?
                .map(|o| ops::check::Key {
                    opener: Arc::new(o),
                    dedup_key: policy.repository.dedup_key.clone(),
                });
            jobs::Request::Check(ops::check::Request {
                key,
                read_data: true,
            })
        }
        _ => jobs::Request::Prune(ops::prune::Request {
            dry_run: false,
            snapshots: Vec::new(),
            force: false,
        }),
    })
}

/// One job, start to end, through the same lifecycle as the command line's.
async fn run_job(policy: Arc<Policy>, job: Job, ctx: Ctx, shared: Arc<Shared>, json_log: bool) {
    let started = Utc::now();
    log_json(
        json_log,
        json!({"event": "job_start", "policy": policy.name, "job": job, "at": started}),
    );
    tracing::info!("{job} of policy {} starts", policy.name);
    let key = (policy.name.clone(), job);
    let remembered = crate::util::lock(&shared.last_ok).get(&key).copied();
    let options = jobs::Options {
        metrics_file: None,
        remembered,
        unattended: true,
    };
    let done = jobs::run(&policy, job, request_of(&policy, job), &ctx, &options).await;
    let h = &done.header;
    if h.ok {
        tracing::info!(
            "{job} of policy {} succeeded in {:.1}s",
            policy.name,
            h.duration_s
        );
    } else {
        tracing::error!(
            "{job} of policy {} failed: {}",
            policy.name,
            h.error.as_deref().unwrap_or("see its record")
        );
    }
    log_json(
        json_log,
        json!({"event": "job_end", "at": Utc::now(), "policy": policy.name, "job": job, "ok": h.ok, "duration_s": h.duration_s, "snapshot_id": h.snapshot_id, "error": h.error}),
    );
    crate::util::lock(&shared.last_ok).insert(key, h.ok);
    if let Some(repo) = &done.repo {
        refresh_metrics(&policy, repo, &shared).await;
    }
}

async fn refresh_metrics(policy: &Policy, repo: &crate::repo::Repo, shared: &Shared) {
    match PolicyMetrics::from_repository_with(policy, repo, &shared.records).await {
        Ok(m) => {
            crate::util::lock(&shared.metrics).insert(policy.name.clone(), m);
        }
        Err(e) => tracing::warn!("metrics of policy {}: {}", policy.name, e.message),
    }
}

/// When the RPO watch looks again.
fn rpo_period(policies: &[Arc<Policy>]) -> Duration {
    let shortest = policies
        .iter()
        .map(|p| p.objectives.rpo / 5)
        .min()
        .unwrap_or(Duration::from_secs(60));
    shortest.clamp(Duration::from_secs(1), Duration::from_secs(60))
}

/// The identity verify jobs of `policy` use: `BACKSTOP_IDENTITY`, else `[verify] identity`.
fn identity_of(policy: &Policy) -> Option<std::path::PathBuf> {
    std::env::var_os("BACKSTOP_IDENTITY")
        .map(std::path::PathBuf::from)
        .or_else(|| policy.verify.identity.clone())
}

/// Records the files that did not load (for `/metrics`) and alerts about each: through its
/// own `[notify]` when that table alone loads, else through its previous version's.
async fn report_load_errors(
    shared: &Shared,
    broken: &[(PathBuf, Error)],
    previous: &BTreeMap<String, Arc<Policy>>,
    what: &str,
) {
    *crate::util::lock(&shared.load_errors) = broken
        .iter()
        .map(|(p, e)| (p.display().to_string(), e.message.clone()))
        .collect();
    for (path, e) in broken {
        tracing::error!("policy {} {what}: {}", path.display(), e.message);
        let old = previous.values().find(|p| &p.path == path);
        let notify =
            crate::policy::notify_of_broken(path).or_else(|| old.and_then(|p| p.notify.clone()));
        let Some(notify) = notify else { continue };
        let message = crate::notify::Message {
            event: "policy_load_error".into(),
            policy: old.map_or_else(|| path.display().to_string(), |p| p.name.clone()),
            job: "daemon".into(),
            id: None,
            error: Some(format!("{} {what}: {}", path.display(), e.message)),
            figures: Vec::new(),
            record: json!({"kind": "daemon", "ok": false, "file": path, "error": e.message}),
        };
        crate::notify::send(&notify, &message).await;
    }
}

pub async fn run(opts: Options) -> Result<()> {
    let shared = Arc::new(Shared::default());
    let policies = first_load(&opts, &shared).await?;
    if let Some(addr) = &opts.listen {
        http::serve(addr, shared.clone()).await?;
    }
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Done>();
    let mut sched = Scheduler {
        policies,
        shared: shared.clone(),
        root: Cancel::new(),
        done_tx,
        due: HashMap::new(),
        waiting: Vec::new(),
        running: BTreeSet::new(),
        tasks: tokio::task::JoinSet::new(),
        watches: HashMap::new(),
    };
    sched.catch_up().await;
    let signal = |kind: tokio::signal::unix::SignalKind, name: &str| {
        tokio::signal::unix::signal(kind).map_err(|e| Error::failed(format!("{name} handler: {e}")))
    };
    use tokio::signal::unix::SignalKind;
    let mut hup = signal(SignalKind::hangup(), "SIGHUP")?;
    let mut term = signal(SignalKind::terminate(), "SIGTERM")?;
    let mut int = signal(SignalKind::interrupt(), "SIGINT")?;
    let mut next_rpo_check = tokio::time::Instant::now();
    let mut followers = streams::Streams::default();
    followers.reconcile(&sched.list(), shared.clone());
    tracing::info!("daemon started with {} policies", sched.policies.len());
    loop {
        let now = Utc::now();
        sched.enqueue_due(now);
        sched.start_waiting(&opts);
        if tokio::time::Instant::now() >= next_rpo_check {
            next_rpo_check = tokio::time::Instant::now() + sched.watch_rpo();
        }
        let next_due = sched
            .due
            .values()
            .min()
            .copied()
            .unwrap_or(now + chrono::Duration::seconds(60));
        let sleep = (next_due - Utc::now())
            .to_std()
            .unwrap_or_default()
            .min(Duration::from_secs(1));
        tokio::select! {
            _ = tokio::time::sleep(sleep) => {}
            Some(done) = done_rx.recv() => { sched.running.remove(&done.policy); }
            Some(_) = sched.tasks.join_next(), if !sched.tasks.is_empty() => {}
            _ = hup.recv() => {
                sched.reload(&opts).await;
                let list = sched.list();
                tokio::task::block_in_place(|| followers.reconcile(&list, shared.clone()));
                tracing::info!("reloaded: {} policies", sched.policies.len());
            }
            _ = term.recv() => { break; }
            _ = int.recv() => { break; }
        }
    }
    // The streams stop at once: each commits nothing after its stop, and the slot keeps
    // whatever was not sealed for the next start.
    tokio::task::block_in_place(|| followers.stop_all());
    sched.stop(opts.grace).await;
    tracing::info!("daemon stopped");
    Ok(())
}

/// Loads the policies directory at start: an error where nothing loads (a daemon with nothing
/// to run would look healthy and back up nothing); the files that do not load are reported.
async fn first_load(opts: &Options, shared: &Shared) -> Result<BTreeMap<String, Arc<Policy>>> {
    if !opts.dir.is_dir() {
        return Err(Error::input(format!(
            "the policies directory {} does not exist: pass --policies DIR (or set BACKSTOP_POLICIES) to the directory of the policy files",
            opts.dir.display()
        )));
    }
    let (loaded, broken) = load_dir(&opts.dir);
    report_load_errors(shared, &broken, &BTreeMap::new(), "is skipped").await;
    if loaded.is_empty() {
        return Err(Error::input(if broken.is_empty() {
            format!("no policies (*.toml) in {}", opts.dir.display())
        } else {
            format!(
                "no policy in {} loads ({} skipped, named above): the daemon has nothing to run",
                opts.dir.display(),
                broken.len()
            )
        }));
    }
    let policies: BTreeMap<String, Arc<Policy>> = loaded
        .into_iter()
        .map(|p| (p.name.clone(), Arc::new(p)))
        .collect();
    *crate::util::lock(&shared.policies) = policies.values().cloned().collect();
    Ok(policies)
}

/// The daemon's jobs: when each is due next, those waiting for their turn, the policies with
/// a job running, and the tasks that run them.
struct Scheduler {
    policies: BTreeMap<String, Arc<Policy>>,
    shared: Arc<Shared>,
    /// The parent of every job's cancellation token.
    root: Cancel,
    done_tx: mpsc::UnboundedSender<Done>,
    due: HashMap<(String, Job), DateTime<Utc>>,
    waiting: Vec<(String, Job)>,
    running: BTreeSet<String>,
    tasks: tokio::task::JoinSet<()>,
    watches: HashMap<String, RpoWatch>,
}

impl Scheduler {
    fn list(&self) -> Vec<Arc<Policy>> {
        self.policies.values().cloned().collect()
    }

    /// Catch-up and first starts: an overdue job (by its last success in the run records)
    /// waits to run now; every scheduled job gets its next start.
    async fn catch_up(&mut self) {
        let now = Utc::now();
        for p in self.policies.values() {
            if let Ok(repo) = ops::open_repo(p).await {
                refresh_metrics(p, &repo, &self.shared).await;
            }
            for job in JOBS {
                if cron_of(p, job).is_none() {
                    continue;
                }
                let last_success = crate::util::lock(&self.shared.metrics)
                    .get(&p.name)
                    .and_then(|m| m.jobs.get(&job).and_then(|s| s.last_success));
                let late = match (last_success, interval(p, job, now)) {
                    (Some(t), Some(i)) => now - t > i,
                    _ => true,
                };
                if late && (job != Job::Verify || identity_of(p).is_some()) {
                    tracing::info!(
                        "{job} of policy {} is overdue (last success {}): it runs now",
                        p.name,
                        last_success.map_or("never".into(), |t| t.to_rfc3339())
                    );
                    self.waiting.push((p.name.clone(), job));
                }
                if let Some(t) = next_start(p, job, now) {
                    self.due.insert((p.name.clone(), job), t);
                }
            }
        }
    }

    /// Due jobs join the queue (once) and get their next start.
    fn enqueue_due(&mut self, now: DateTime<Utc>) {
        for ((name, job), t) in self.due.iter_mut() {
            if *t > now {
                continue;
            }
            let no_identity = self
                .policies
                .get(name)
                .is_some_and(|p| identity_of(p).is_none());
            if *job == Job::Verify && no_identity {
                tracing::info!("verify of policy {name} is skipped: neither BACKSTOP_IDENTITY nor [verify] identity names an identity on this host");
            } else if !self.waiting.contains(&(name.clone(), *job)) {
                self.waiting.push((name.clone(), *job));
            }
            if let Some(p) = self.policies.get(name) {
                *t = next_start(p, *job, now).unwrap_or(now + chrono::Duration::days(3650));
            }
        }
    }

    /// Starts the waiting jobs that may start: one per policy, up to `--max-parallel`.
    fn start_waiting(&mut self, opts: &Options) {
        let mut still = Vec::new();
        for (name, job) in std::mem::take(&mut self.waiting) {
            let Some(p) = self.policies.get(&name) else {
                continue;
            };
            if self.running.contains(&name) || self.running.len() >= opts.max_parallel.max(1) {
                still.push((name, job));
                continue;
            }
            self.running.insert(name.clone());
            let ctx = Ctx {
                cancel: self.root.child(),
                lock_wait: p
                    .schedule
                    .as_ref()
                    .map_or(Duration::from_secs(30 * 60), |s| s.lock_wait),
                queue_own_locks: true,
                ..Ctx::default()
            };
            let (p, shared, tx, json_log) = (
                p.clone(),
                self.shared.clone(),
                self.done_tx.clone(),
                opts.json_log,
            );
            // The operations' futures are not `Send` in general (they borrow across awaits),
            // so each job drives its own on a blocking thread; what it spawns still runs on
            // the runtime's workers.
            let handle = tokio::runtime::Handle::current();
            self.tasks.spawn_blocking(move || {
                handle.block_on(run_job(p, job, ctx, shared, json_log));
                let _ = tx.send(Done { policy: name });
            });
        }
        self.waiting = still;
    }

    /// Compares each policy's newest recovery point with its RPO and alerts on the edges;
    /// returns when to look again.
    fn watch_rpo(&mut self) -> Duration {
        let list = self.list();
        for p in &list {
            let newest = crate::util::lock(&self.shared.metrics)
                .get(&p.name)
                .and_then(|m| m.newest);
            let now = Utc::now();
            let age = newest.map(|n| (now - n).to_std().unwrap_or_default());
            let watch = self.watches.entry(p.name.clone()).or_default();
            let Some(event) = watch.observe_at(newest, now, p.objectives.rpo) else {
                continue;
            };
            let Some(notify) = p.notify.clone() else {
                continue;
            };
            let message = crate::notify::Message {
                event: event.to_string(),
                policy: p.name.clone(),
                job: "backup".into(),
                id: None,
                error: None,
                figures: vec![format!(
                    "recovery point age {} (RPO {})",
                    age.map_or("unknown (no snapshot)".into(), crate::util::format_duration),
                    crate::util::format_duration(p.objectives.rpo)
                )],
                record: json!({"policy": p.name, "newest_consistent_at": newest}),
            };
            tokio::spawn(async move { crate::notify::send(&notify, &message).await });
        }
        rpo_period(&list)
    }

    /// SIGHUP: the directory again. A policy that no longer loads keeps its old version; new
    /// ones are added, removed files dropped; every schedule starts afresh.
    async fn reload(&mut self, opts: &Options) {
        let (fresh, broken) = load_dir(&opts.dir);
        report_load_errors(
            &self.shared,
            &broken,
            &self.policies,
            "does not load, its previous version (if any) keeps running",
        )
        .await;
        let kept: BTreeSet<String> = broken
            .iter()
            .filter_map(|(path, _)| {
                self.policies
                    .values()
                    .find(|p| &p.path == path)
                    .map(|p| p.name.clone())
            })
            .collect();
        let mut next: BTreeMap<String, Arc<Policy>> = self
            .policies
            .iter()
            .filter(|(n, _)| kept.contains(*n))
            .map(|(n, p)| (n.clone(), p.clone()))
            .collect();
        for p in fresh {
            next.insert(p.name.clone(), Arc::new(p));
        }
        self.policies = next;
        let policies = &self.policies;
        self.due.retain(|(n, _), _| policies.contains_key(n));
        let now = Utc::now();
        for p in self.policies.values() {
            for job in JOBS {
                match next_start(p, job, now) {
                    Some(t) => {
                        self.due.insert((p.name.clone(), job), t);
                    }
                    None => {
                        self.due.remove(&(p.name.clone(), job));
                    }
                }
            }
        }
        *crate::util::lock(&self.shared.policies) = self.list();
    }

    /// Shutdown: no new jobs; the running ones get `grace`, then are cancelled.
    async fn stop(mut self, grace: Duration) {
        tracing::info!(
            "stopping: no new jobs; {} running get {} to finish",
            self.running.len(),
            crate::util::format_duration(grace)
        );
        let tasks = &mut self.tasks;
        let finished =
            tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} }).await;
        if finished.is_err() {
            tracing::warn!("grace period over: cancelling the running jobs");
            self.root.cancel(Reason::Requested);
            while self.tasks.join_next().await.is_some() {}
        }
    }
}
