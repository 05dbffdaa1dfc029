//! Continuous protection against a real PostgreSQL with `wal_level = logical`: the stream is
//! set up, follows a pgbench workload while a base backup is taken, survives a SIGKILL, and a
//! restore to any marked moment (and to now) equals the source at that moment.

mod common;

use common::{table_contents, Env, RepoSpec, FIXTURE_DB};
use serde_json::Value;
use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const STREAM: &str =
    "\n[stream]\nslot = \"backstop_test\"\npublication = \"backstop_test\"\nseal_every = \"2s\"\n";

const APP: &str = "
create table public.ledger (id bigint generated always as identity primary key, account int not null, amount numeric(12,2), note text, big text);
create table public.accounts (id int primary key, balance numeric(14,2) not null default 0, touched timestamptz);
insert into public.accounts select g, 0, null from generate_series(1, 200) g;
create table public.audit_nopk (account int, at timestamptz);
insert into public.audit_nopk select g, now() from generate_series(1, 200) g;
";

/// The pgbench script: inserts with RETURNING, updates, deletes, and an update of a table
/// without a primary key (which the stream must leave unpublished, or the application breaks).
const WORKLOAD: &str = "\\set aid random(1, 200)
\\set amt random(1, 1000)
insert into public.ledger (account, amount, note) values (:aid, :amt / 10.0, 'pay ' || :aid) returning id;
update public.accounts set balance = balance + :amt, touched = now() where id = :aid;
delete from public.ledger where id = (select min(id) from public.ledger where account = :aid) and random() < 0.3;
update public.audit_nopk set at = now() where account = :aid;
";

fn start_workload(env: &Env, seconds: u64) -> Child {
    let script = env.dir.path().join("workload.sql");
    std::fs::write(&script, WORKLOAD).unwrap();
    Command::new(common::pg::bindir().join("pgbench"))
        .args([
            "-n",
            "-c",
            "2",
            "-R",
            "60",
            "-T",
            &seconds.to_string(),
            "-f",
        ])
        .arg(&script)
        .arg(env.source.url(FIXTURE_DB))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("pgbench (from PostgreSQL's server packages)")
}

fn finish_workload(child: Child) {
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the workload saw an error: {stderr}");
    assert!(
        !stderr.contains("ERROR"),
        "the workload saw an error: {stderr}"
    );
}

fn start_stream(env: &Env) -> Child {
    Command::new(assert_cmd::cargo::cargo_bin("backstop"))
        .current_dir(env.dir.path())
        .env("SOURCE_DB_URL", env.source.url(FIXTURE_DB))
        .env("BACKSTOP_CACHE_DIR", env.dir.path().join("cache"))
        .args(["stream", "--policy"])
        .arg(&env.policy)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// The source's tables (the unprotected one aside) and the ledger's sequence, at a moment the
/// workload is paused.
fn fingerprint(env: &Env) -> (BTreeMap<String, String>, i64) {
    let mut t = table_contents(&env.source, FIXTURE_DB);
    t.remove("public.audit_nopk");
    let max: i64 = env
        .source
        .psql(FIXTURE_DB, "select coalesce(max(id), 0) from public.ledger")
        .parse()
        .unwrap();
    (t, max)
}

fn segments(env: &Env) -> Vec<Value> {
    common::files_under(&env.repo.join("streams/test"))
        .iter()
        .map(|p| serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap())
        .collect()
}

/// Waits until the stream has sealed every transaction committed so far.
fn wait_sealed(env: &Env) {
    let target = env
        .source
        .psql(FIXTURE_DB, "select pg_current_wal_lsn()::text");
    let lsn = |t: &str| {
        let (a, b) = t.split_once('/').unwrap();
        (u64::from_str_radix(a, 16).unwrap() << 32) | u64::from_str_radix(b, 16).unwrap()
    };
    let want = lsn(&target);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let confirmed = env.source.psql(
            "postgres",
            "select coalesce(confirmed_flush_lsn::text, '0/0') from pg_replication_slots where slot_name = 'backstop_test'",
        );
        if !confirmed.is_empty() && lsn(&confirmed) >= want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the stream did not seal up to {target} (confirmed {confirmed})"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn restore_to(env: &Env, db: &str, before: &str) -> (BTreeMap<String, String>, i64, Value) {
    let (code, rec, stderr) =
        env.restore_json(&env.scratch.url(db), &["--before", before, "--only", "db"]);
    assert_eq!(code, 0, "restore --before {before}: {stderr}\n{rec}");
    let mut t = table_contents(&env.scratch, db);
    t.remove("public.audit_nopk");
    let seq: i64 = env
        .scratch
        .psql(db, "select last_value from public.ledger_id_seq")
        .parse()
        .unwrap();
    (t, seq, rec)
}

fn sigkill(child: &mut Child) {
    Command::new("kill")
        .args(["-KILL", &child.id().to_string()])
        .status()
        .unwrap();
    let _ = child.wait();
}

#[test]
fn a_restore_to_any_moment_between_snapshots_equals_the_source_then() {
    let env = Env::logical(RepoSpec::Local);
    env.source.psql(FIXTURE_DB, APP);
    env.write_policy(&env.policy, STREAM);
    let (code, out, stderr) = common::run_json(
        env.backstop()
            .args(["stream", "--setup", "--json", "--policy"])
            .arg(&env.policy),
    );
    assert_eq!(code, 0, "{stderr}");
    let unprotected = out["unprotected_tables"].to_string();
    assert!(unprotected.contains("public.audit_nopk"), "{out}");
    assert!(stderr.contains("public.audit_nopk"), "{stderr}");
    // Idempotent.
    let (code, _, stderr) = common::run(
        env.backstop()
            .args(["stream", "--setup", "--policy"])
            .arg(&env.policy),
    );
    assert_eq!(code, 0, "{stderr}");

    let mut stream = start_stream(&env);
    let work = start_workload(&env, 12);
    std::thread::sleep(Duration::from_secs(3));
    // The base backup, taken while the workload and the stream run.
    env.backup_json();
    // A truncate and a 100,000-row transaction, then the stream is killed mid-way.
    env.source.psql(
        FIXTURE_DB,
        "begin; insert into public.ledger (account, amount, note, big) select g % 200 + 1, 1, 'bulk', repeat('x', 50) from generate_series(1, 100000) g; commit;",
    );
    std::thread::sleep(Duration::from_secs(2));
    sigkill(&mut stream);
    let mut stream = start_stream(&env);
    finish_workload(work);
    wait_sealed(&env);
    let (t1, max1) = fingerprint(&env);
    let at1 = chrono::Utc::now().to_rfc3339();
    std::thread::sleep(Duration::from_millis(1100));

    let work = start_workload(&env, 6);
    std::thread::sleep(Duration::from_secs(2));
    env.source
        .psql(FIXTURE_DB, "truncate public.accounts; insert into public.accounts select g, g, now() from generate_series(1, 50) g");
    finish_workload(work);
    wait_sealed(&env);
    let (t2, max2) = fingerprint(&env);
    let at2 = chrono::Utc::now().to_rfc3339();
    std::thread::sleep(Duration::from_millis(1100));
    env.source.psql(
        FIXTURE_DB,
        "insert into public.ledger (account, amount) values (7, 7)",
    );
    wait_sealed(&env);
    let (t3, max3) = fingerprint(&env);

    let (r1, seq1, rec1) = restore_to(&env, "at_t1", &at1);
    assert!(
        r1 == t1,
        "restore --before T1 differs from the source at T1"
    );
    assert!(seq1 >= max1, "sequence {seq1} behind id {max1}");
    assert!(
        rec1["stream"]["transactions"].as_u64().unwrap() > 0,
        "{rec1}"
    );
    let (r2, seq2, _) = restore_to(&env, "at_t2", &at2);
    assert!(
        r2 == t2,
        "restore --before T2 differs from the source at T2"
    );
    assert!(seq2 >= max2);
    let (r3, seq3, rec3) = restore_to(&env, "at_now", "now");
    assert!(r3 == t3, "restore --before now differs from the source");
    assert!(seq3 >= max3);
    assert!(rec3["stream"]["replayed_to_lsn"].is_string(), "{rec3}");

    let (code, status, stderr) = common::run_json(
        env.backstop()
            .args(["stream", "--status", "--json", "--policy"])
            .arg(&env.policy),
    );
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(status["kind"], "stream");
    assert!(status["segments"].as_u64().unwrap() >= 3, "{status}");
    assert!(status["last_commit_at"].is_string(), "{status}");
    assert!(!segments(&env).is_empty());
    sigkill(&mut stream);
}
