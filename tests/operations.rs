//! The operations as library calls, the way the daemon will drive them: cancellation through
//! the context's token, runs of two policies side by side in one repository, and the lock
//! rules (a second backup of a policy is refused; a backup whose lock is removed or replaced
//! stops and commits nothing). Against real PostgreSQL clusters and a local repository.

mod common;

use backstop::error::Kind;
use backstop::ops::{self, Bar, Cancel, Ctx, ProgressSink, Reason};
use backstop::policy::Policy;
use backstop::repo::{Repo, Selector};
use backstop::store::{Entry, Put, PutMode, Store};
use common::{Env, FIXTURE_DB};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A progress sink that runs `action` once, from inside the run, when a bar labelled `label`
/// has counted more than `after` bytes.
struct Hook {
    label: &'static str,
    after: u64,
    action: Arc<dyn Fn() + Send + Sync>,
    fired: Arc<AtomicBool>,
}

struct HookBar {
    done: AtomicU64,
    armed: bool,
    after: u64,
    action: Arc<dyn Fn() + Send + Sync>,
    fired: Arc<AtomicBool>,
}

impl ProgressSink for Hook {
    fn bar(&self, label: &str, _: Option<u64>) -> Box<dyn Bar> {
        Box::new(HookBar {
            done: AtomicU64::new(0),
            armed: label == self.label,
            after: self.after,
            action: self.action.clone(),
            fired: self.fired.clone(),
        })
    }
}

impl Bar for HookBar {
    fn inc(&self, n: u64) {
        let done = self.done.fetch_add(n, Ordering::SeqCst) + n;
        if self.armed && done > self.after && !self.fired.swap(true, Ordering::SeqCst) {
            (self.action)();
        }
    }
}

fn ctx_with(label: &'static str, after: u64, action: impl Fn() + Send + Sync + 'static) -> Ctx {
    Ctx {
        progress: Arc::new(Hook {
            label,
            after,
            action: Arc::new(action),
            fired: Arc::new(AtomicBool::new(false)),
        }),
        ..Ctx::default()
    }
}

/// Waits (blocking this thread: the run's other tasks go on on the runtime's other workers)
/// until `done` holds, for at most 30 s.
fn wait_until(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The policy file as the binary would load it, with the test's environment.
fn load(env: &Env, path: &Path) -> Policy {
    let text = std::fs::read_to_string(path).unwrap();
    let (source, scratch) = (env.source.url(FIXTURE_DB), env.scratch.url("postgres"));
    let vars = move |k: &str| match k {
        "SOURCE_DB_URL" => Some(source.clone()),
        "SCRATCH_URL" => Some(scratch.clone()),
        _ => None,
    };
    backstop::policy::parse(&text, path, &vars).unwrap()
}

async fn open(policy: &Policy) -> Repo {
    let store = backstop::store::open(&policy.repository.store_config())
        .await
        .unwrap();
    Repo::open(store, &policy.name).await.unwrap()
}

/// A table big enough that a run can be caught in the middle of its dump or restore.
fn with_bulk(env: &Env, rows: u32) {
    env.source.psql(
        FIXTURE_DB,
        &format!("create table public.bulk as select i, md5(i::text) || repeat(md5((i * 7)::text), 8) as t from generate_series(1, {rows}) i"),
    );
}

fn backup_request() -> ops::backup::Request {
    ops::backup::Request::default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backup_cancelled_through_its_token_commits_nothing_and_the_next_reuses_its_blobs() {
    let env = Env::new();
    with_bulk(&env, 200_000);
    let policy = load(&env, &env.policy);
    let repo = open(&policy).await;
    let cancel = Cancel::new();
    let c = cancel.clone();
    let ctx = Ctx {
        cancel: cancel.clone(),
        ..ctx_with("backup", 8 << 20, move || c.cancel(Reason::Requested))
    };
    let out = ops::backup::run(&policy, &repo, &backup_request(), &ctx).await;
    let e = out.error.expect("a cancelled backup fails");
    assert_eq!(e.kind, Kind::Cancelled, "{}", e.message);
    assert!(out.snapshot_id.is_none());
    assert!(
        env.meta_files().is_empty(),
        "a cancelled backup left a snapshot"
    );
    assert!(repo.listing().await.unwrap().snapshots.is_empty());
    assert!(
        common::files_under(&env.repo.join("locks")).is_empty(),
        "the cancelled backup left its lock"
    );

    let out = ops::backup::run(&policy, &repo, &backup_request(), &Ctx::default()).await;
    assert!(out.error.is_none(), "{:?}", out.error);
    let db = out.db.unwrap();
    assert!(
        db.blobs_reused >= 8,
        "blobs of the cancelled run were not reused: {db:?}"
    );
    assert_eq!(env.meta_files().len(), 1);
}

fn databases(env: &Env) -> String {
    env.scratch.psql(
        "postgres",
        "select string_agg(datname, ',' order by datname) from pg_database",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_verify_cancelled_mid_restore_drops_its_temporary_database() {
    let env = Env::new();
    with_bulk(&env, 200_000);
    let policy = load(&env, &env.policy);
    let repo = open(&policy).await;
    let out = ops::backup::run(&policy, &repo, &backup_request(), &Ctx::default()).await;
    assert!(out.error.is_none(), "{:?}", out.error);
    let before = databases(&env);

    let cancel = Cancel::new();
    let seen = Arc::new(std::sync::Mutex::new(String::new()));
    let (c, s, scratch) = (cancel.clone(), seen.clone(), env.scratch.url("postgres"));
    let ctx = Ctx {
        cancel: cancel.clone(),
        ..ctx_with("restore", 4 << 20, move || {
            // The temporary database exists while the restore runs.
            let out = std::process::Command::new("psql")
                .args([
                    &scratch,
                    "-Atc",
                    "select string_agg(datname, ',') from pg_database",
                ])
                .output()
                .unwrap();
            *s.lock().unwrap() = String::from_utf8_lossy(&out.stdout).to_string();
            c.cancel(Reason::Requested)
        })
    };
    let req = ops::verify::Request {
        selector: Selector::Latest,
        opener: Arc::new(backstop::seal::Opener::from_file(&env.identity).unwrap()),
        scratch: Some(
            backstop::source::pgtools::DbUrl::parse(&env.scratch.url("postgres")).unwrap(),
        ),
        read_share: 0.0,
        queries: Vec::new(),
        keep: false,
    };
    let out = ops::verify::run(&policy, &repo, &req, &ctx).await;
    let e = out.error.as_ref().expect("a cancelled verify fails");
    assert_eq!(e.kind, Kind::Cancelled, "{}", e.message);
    assert!(!out.ok());
    let name = out
        .scratch_database
        .clone()
        .expect("a temporary database was made");
    assert!(
        seen.lock().unwrap().contains(&name),
        "cancelled before the restore ran"
    );
    assert_eq!(
        databases(&env),
        before,
        "the temporary database {name} was left behind"
    );
    assert!(common::files_under(&env.repo.join("locks")).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn backups_of_two_policies_into_one_repository_run_at_the_same_time() {
    let env = Env::new();
    let other = env.dir.path().join("other.toml");
    std::fs::write(
        &other,
        std::fs::read_to_string(&env.policy)
            .unwrap()
            .replace("name = \"test\"", "name = \"other\""),
    )
    .unwrap();
    let running = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for path in [env.policy.clone(), other] {
        let policy = load(&env, &path);
        let repo = open(&policy).await;
        let r = running.clone();
        // Each backup, once dumping, waits until the other is dumping too.
        let ctx = ctx_with("backup", 0, move || {
            r.fetch_add(1, Ordering::SeqCst);
            wait_until("both backups to run", || r.load(Ordering::SeqCst) == 2);
        });
        tasks.push(tokio::spawn(async move {
            ops::backup::run(&policy, &repo, &backup_request(), &ctx).await
        }));
    }
    for t in tasks {
        let out = t.await.unwrap();
        assert!(out.error.is_none(), "{}: {:?}", out.policy, out.error);
        assert!(out.snapshot_id.is_some());
    }
    assert_eq!(running.load(Ordering::SeqCst), 2);
    assert_eq!(env.meta_files().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_second_backup_of_the_same_policy_gets_the_lock_error() {
    let env = Env::new();
    let policy = load(&env, &env.policy);
    let second_done = Arc::new(AtomicBool::new(false));
    let started = Arc::new(AtomicBool::new(false));
    let (d, s) = (second_done.clone(), started.clone());
    let ctx = ctx_with("backup", 0, move || {
        s.store(true, Ordering::SeqCst);
        wait_until("the second backup", || d.load(Ordering::SeqCst));
    });
    let (p, repo) = (policy.clone(), open(&policy).await);
    let first =
        tokio::spawn(async move { ops::backup::run(&p, &repo, &backup_request(), &ctx).await });
    let s = started.clone();
    tokio::task::spawn_blocking(move || {
        wait_until("the first backup", || s.load(Ordering::SeqCst))
    })
    .await
    .unwrap();

    let repo = open(&policy).await;
    let out = ops::backup::run(&policy, &repo, &backup_request(), &Ctx::default()).await;
    second_done.store(true, Ordering::SeqCst);
    let e = out.error.expect("the second backup must be refused");
    assert_eq!(e.kind, Kind::Locked);
    assert_eq!(e.kind.exit_code(), 4);
    assert!(
        e.message.contains("is locked by another run: backup run"),
        "{}",
        e.message
    );
    assert!(out.snapshot_id.is_none());
    let first = first.await.unwrap();
    assert!(first.error.is_none(), "{:?}", first.error);
    assert_eq!(env.meta_files().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backup_whose_lock_is_removed_or_replaced_fails_with_lock_lost_and_commits_nothing() {
    let env = Env::new();
    with_bulk(&env, 100_000);
    let policy = load(&env, &env.policy);
    let repo = open(&policy).await;
    let locks = env.repo.join("locks");
    for replace in [false, true] {
        let dir = locks.clone();
        let ctx = Ctx {
            lock_ttl: Duration::from_secs(3),
            ..ctx_with("backup", 1 << 20, move || {
                for f in common::files_under(&dir) {
                    if replace {
                        let mut v: serde_json::Value =
                            serde_json::from_slice(&std::fs::read(&f).unwrap()).unwrap();
                        v["run_id"] = "someone-else".into();
                        std::fs::write(&f, v.to_string()).unwrap();
                    } else {
                        std::fs::remove_file(&f).unwrap();
                    }
                }
                // Hold the dump here while the refresher (every second) notices. The run's own
                // token is a child of the context's, so there is nothing here to watch.
                std::thread::sleep(Duration::from_secs(4));
            })
        };
        let out = ops::backup::run(&policy, &repo, &backup_request(), &ctx).await;
        let e = out.error.expect("a backup that lost its lock fails");
        assert_eq!(e.kind, Kind::LockLost, "{}", e.message);
        assert_eq!(e.kind.exit_code(), 1);
        assert!(e.message.contains("lock was lost"), "{}", e.message);
        let how = if replace { "replaced by" } else { "removed" };
        assert!(e.message.contains(how), "{}", e.message);
        assert!(out.snapshot_id.is_none());
        assert!(
            env.meta_files().is_empty(),
            "a backup without its lock committed"
        );
        // The replaced lock is not ours: it stays, and is someone else's to remove.
        for f in common::files_under(&locks) {
            std::fs::remove_file(f).unwrap();
        }
    }
}

/// A store that injects faults into another:
/// * `lose_answers`: the answer to a create-if-absent write of a lock, `manifest.age` or
///   `meta.json` is lost. The write lands, and the client's retry (as the S3 SDK makes after a
///   dropped response) finds the object there and is told so;
/// * `fail_every`: every n-th read (locks aside) fails the way a cut connection does.
struct Faulty {
    inner: Arc<dyn Store>,
    lose_answers: bool,
    fail_every: u64,
    lost: std::sync::Mutex<Vec<String>>,
    reads: AtomicU64,
    failed: AtomicU64,
}

impl Faulty {
    fn new(inner: Arc<dyn Store>, lose_answers: bool, fail_every: u64) -> Arc<Faulty> {
        Arc::new(Faulty {
            inner,
            lose_answers,
            fail_every,
            lost: Default::default(),
            reads: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        })
    }
}

fn answer_is_lost(key: &str) -> bool {
    key.ends_with("/meta.json") || key.ends_with("/manifest.age") || key.starts_with("locks/")
}

#[async_trait::async_trait]
impl Store for Faulty {
    fn describe(&self) -> String {
        self.inner.describe()
    }
    async fn check(&self) -> backstop::error::Result<()> {
        self.inner.check().await
    }
    async fn put(&self, key: &str, data: Vec<u8>, mode: PutMode) -> backstop::error::Result<Put> {
        let first = self.inner.put(key, data.clone(), mode).await?;
        if !self.lose_answers || mode == PutMode::Replace || !answer_is_lost(key) {
            return Ok(first);
        }
        self.lost.lock().unwrap().push(key.to_string());
        self.inner.put(key, data, mode).await
    }
    async fn get_opt(&self, key: &str) -> backstop::error::Result<Option<Vec<u8>>> {
        let n = self.reads.fetch_add(1, Ordering::SeqCst) + 1;
        if self.fail_every > 0 && n.is_multiple_of(self.fail_every) && !key.starts_with("locks/") {
            self.failed.fetch_add(1, Ordering::SeqCst);
            return Err(backstop::error::Error::failed(format!(
                "test: reading {key}: connection reset"
            )));
        }
        self.inner.get_opt(key).await
    }
    async fn stat(&self, key: &str) -> backstop::error::Result<Option<u64>> {
        self.inner.stat(key).await
    }
    async fn list(&self, prefix: &str) -> backstop::error::Result<Vec<Entry>> {
        self.inner.list(prefix).await
    }
    async fn delete(&self, key: &str) -> backstop::error::Result<()> {
        self.inner.delete(key).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lost_answers_to_the_commit_and_lock_writes_are_success() {
    let env = Env::new();
    let policy = load(&env, &env.policy);
    let inner = backstop::store::open(&policy.repository.store_config())
        .await
        .unwrap();
    let store = Faulty::new(inner, true, 0);
    let repo = Repo::open(store.clone(), &policy.name).await.unwrap();
    let out = ops::backup::run(&policy, &repo, &backup_request(), &Ctx::default()).await;
    assert!(out.error.is_none(), "{:?}", out.error);
    let id = out
        .snapshot_id
        .expect("the record names the committed snapshot");
    let lost = store.lost.lock().unwrap().clone();
    assert_eq!(
        lost.len(),
        3,
        "lock, manifest and meta.json answers were lost: {lost:?}"
    );
    assert_eq!(env.meta_files().len(), 1);
    assert!(env.meta_files()[0].to_string_lossy().contains(&id));
    assert!(common::files_under(&env.repo.join("locks")).is_empty());
    // The repository agrees: the snapshot is there, whole.
    let plain = open(&policy).await;
    let req = ops::check::Request {
        key: None,
        read_data: true,
    };
    let checked = ops::check::run(&plain, &req, &Ctx::default()).await;
    assert!(checked.ok(), "{:?} {:?}", checked.error, checked.damaged);
    assert_eq!(checked.snapshots_checked, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reads_that_fail_during_check_are_never_reported_as_damage() {
    let env = Env::new();
    let policy = load(&env, &env.policy);
    let repo = open(&policy).await;
    for _ in 0..2 {
        let out = ops::backup::run(&policy, &repo, &backup_request(), &Ctx::default()).await;
        assert!(out.error.is_none(), "{:?}", out.error);
    }
    let opener = Arc::new(backstop::seal::Opener::from_file(&env.identity).unwrap());
    for every in [3, 7, 20] {
        let store = Faulty::new(repo.store.clone(), false, every);
        let flaky = Repo::open(store.clone(), &policy.name).await.unwrap();
        let req = ops::check::Request {
            key: Some(ops::check::Key {
                opener: opener.clone(),
                dedup_key: None,
            }),
            read_data: true,
        };
        let out = ops::check::run(&flaky, &req, &Ctx::default()).await;
        assert!(
            out.damaged.is_empty(),
            "1 in {every}: false damage {:?}",
            out.damaged
        );
        assert!(
            store.failed.load(Ordering::SeqCst) > 0,
            "1 in {every}: no read failed"
        );
        let e = out.error.expect("a check that could not read says so");
        assert_eq!(e.kind, Kind::Failed, "{}", e.message);
        assert!(
            e.message.contains("check could not finish"),
            "{}",
            e.message
        );
        assert!(e.message.contains("connection reset"), "{}", e.message);
    }
    let req = ops::check::Request {
        key: None,
        read_data: true,
    };
    let out = ops::check::run(&repo, &req, &Ctx::default()).await;
    assert!(out.ok(), "{:?} {:?}", out.error, out.damaged);
}
