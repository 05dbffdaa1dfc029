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

/// The application's tables, the policy with `stream_section`, and `stream --setup`.
fn set_up(env: &Env, stream_section: &str) {
    env.source.psql(FIXTURE_DB, APP);
    env.write_policy(&env.policy, stream_section);
    let (code, _, stderr) = common::run(
        env.backstop()
            .args(["stream", "--setup", "--policy"])
            .arg(&env.policy),
    );
    assert_eq!(code, 0, "{stderr}");
}

/// `backstop stream --policy P` as the daemon or an operator runs it.
fn stream_command(env: &Env) -> Command {
    let mut c = Command::new(assert_cmd::cargo::cargo_bin("backstop"));
    c.current_dir(env.dir.path())
        .env("SOURCE_DB_URL", env.source.url(FIXTURE_DB))
        .env("BACKSTOP_CACHE_DIR", env.dir.path().join("cache"))
        .env("SCRATCH_URL", env.scratch.url("postgres"))
        .env("S3_KEY_ID", common::s3::KEY_ID)
        .env("S3_SECRET", common::s3::SECRET)
        .env("SUPABASE_KEY", common::supabase::KEY)
        .args(["stream", "--policy"])
        .arg(&env.policy);
    if let RepoSpec::S3 { endpoint, .. } = &env.repo_spec {
        c.env("S3_ENDPOINT", endpoint);
    }
    c
}

fn start_stream(env: &Env) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(env.dir.path().join("stream.log"))
        .unwrap();
    stream_command(env)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

fn stream_log(env: &Env) -> String {
    std::fs::read_to_string(env.dir.path().join("stream.log")).unwrap_or_default()
}

/// Which tables differ between two fingerprints.
fn differ(a: &BTreeMap<String, String>, b: &BTreeMap<String, String>) -> Vec<String> {
    a.iter()
        .filter(|(k, v)| b.get(*k) != Some(v))
        .map(|(k, v)| format!("{k}: {v} vs {:?}", b.get(k)))
        .chain(
            b.keys()
                .filter(|k| !a.contains_key(*k))
                .map(|k| format!("{k} only in one")),
        )
        .collect()
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

/// Waits until the stream has sealed every transaction committed so far.
fn wait_sealed(env: &Env) {
    // The insert position: with synchronous_commit off (the test clusters), a commit may
    // still be in the WAL buffers, past the write position.
    let target = env
        .source
        .psql(FIXTURE_DB, "select pg_current_wal_insert_lsn()::text");
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
            "the stream did not seal up to {target} (confirmed {confirmed}): {}",
            stream_log(env)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn restore_to(env: &Env, db: &str, before: &str) -> (BTreeMap<String, String>, i64, Value) {
    let out = env
        .backstop()
        .env("RUST_LOG", "backstop=debug")
        .args([
            "restore", "--json", "--before", before, "--only", "db", "--policy",
        ])
        .arg(&env.policy)
        .args(["--db-url", &env.scratch.url(db)])
        .output()
        .unwrap();
    let (code, stderr) = (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).to_string(),
    );
    let mut rec: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    rec["debug_log"] = stderr
        .lines()
        .filter(|l| l.contains("transaction"))
        .collect::<Vec<_>>()
        .join("\n")
        .into();
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
    moments_round_trip(Env::logical(RepoSpec::Local));
}

#[test]
fn the_same_with_an_s3_repository() {
    let moto = common::s3::Moto::start();
    moto.create_bucket("backups", false);
    moments_round_trip(Env::logical(RepoSpec::S3 {
        endpoint: moto.endpoint(),
        bucket: "backups".into(),
        prefix: "prod".into(),
        object_lock_days: None,
    }));
}

fn moments_round_trip(env: Env) {
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
    let (_, list, _) = common::run_json(
        env.backstop()
            .args(["snapshots", "--json", "--policy"])
            .arg(&env.policy),
    );
    let span = &list["snapshots"][0]["stream"];
    assert!(span["transactions"].as_u64().unwrap() > 0, "{list}");
    assert!(span["last_commit_at"].is_string(), "{list}");
    sigkill(&mut stream);
    // Prune keeps what the stream needs, check proves the segments.
    let (code, _, stderr) =
        common::run(env.backstop().args(["prune", "--policy"]).arg(&env.policy));
    assert_eq!(code, 0, "{stderr}");
    let (code, rec, stderr) = common::run_json(
        env.backstop()
            .args(["check", "--read-data", "--json", "--policy"])
            .arg(&env.policy),
    );
    assert_eq!(code, 0, "{stderr}\n{rec}");
    let (r4, _, _) = restore_to(&env, "after_prune", "now");
    assert!(r4 == t3, "after prune, restore --before now differs");
}

#[test]
fn a_schema_change_is_exact_before_it_and_refused_after_it() {
    let env = Env::logical(RepoSpec::Local);
    set_up(&env, STREAM);
    let mut stream = start_stream(&env);
    env.backup_json();
    env.source.psql(
        FIXTURE_DB,
        "insert into public.ledger (account, amount) select g, g from generate_series(1, 50) g",
    );
    wait_sealed(&env);
    let (before, _) = fingerprint(&env);
    let at = chrono::Utc::now().to_rfc3339();
    std::thread::sleep(Duration::from_millis(1100));
    env.source.psql(
        FIXTURE_DB,
        "alter table public.ledger add column currency text default 'KRW'; \
         insert into public.ledger (account, amount, currency) values (1, 1, 'EUR')",
    );
    wait_sealed(&env);
    let (r, _, _) = restore_to(&env, "before_ddl", &at);
    assert!(r == before, "a restore before the schema change differs");
    let (code, rec, stderr) = env.restore_json(
        &env.scratch.url("after_ddl"),
        &["--before", "now", "--only", "db"],
    );
    assert_eq!(
        code, 2,
        "a restore after the schema change was not refused: {rec}"
    );
    assert!(
        stderr.contains("public.ledger")
            && stderr.contains("changed shape")
            && stderr.contains("nearest exact"),
        "{stderr}"
    );
    // A backup after the change is a new exact base.
    env.backup_json();
    env.source.psql(
        FIXTURE_DB,
        "insert into public.ledger (account, amount) values (2, 2)",
    );
    wait_sealed(&env);
    let (now, _) = fingerprint(&env);
    let (r, _, rec) = restore_to(&env, "after_new_base", "now");
    let segs: Vec<String> = common::files_under(&env.repo.join("streams/test"))
        .iter()
        .map(|p| {
            let v: Value = serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap();
            format!(
                "{} prev={} txns={} {}..{}",
                v["id"],
                v["previous_lsn"],
                v["transactions"],
                v["first_commit_at"],
                v["last_commit_at"]
            )
        })
        .collect();
    assert!(
        r == now,
        "a restore after the new base differs: {:?}\n{} {}\n{segs:#?}\n{:?}\n{}",
        differ(&r, &now),
        rec["stream"],
        rec["debug_log"],
        env.meta_files()
            .iter()
            .map(|m| {
                let v: Value = serde_json::from_slice(&std::fs::read(m).unwrap()).unwrap();
                format!(
                    "{} {} {} {}",
                    v["id"], v["consistent_at"], v["consistent_lsn"], v["snapshot_xids"]
                )
            })
            .collect::<Vec<_>>(),
        stream_log(&env)
    );
    sigkill(&mut stream);
}

#[test]
fn killed_at_spread_points_the_stream_loses_and_repeats_nothing() {
    let env = Env::logical(RepoSpec::Local);
    set_up(
        &env,
        &STREAM.replace("seal_every = \"2s\"", "seal_every = \"1s\""),
    );
    env.backup_json();
    let work = start_workload(&env, 40);
    for i in 0..20u64 {
        let mut stream = start_stream(&env);
        // Spread over a seal's whole cycle: reading, sealing, writing the json, confirming.
        std::thread::sleep(Duration::from_millis(300 + (i * 149) % 1700));
        sigkill(&mut stream);
    }
    finish_workload(work);
    let mut stream = start_stream(&env);
    wait_sealed(&env);
    sigkill(&mut stream);
    let (source, max) = fingerprint(&env);
    let (restored, seq, rec) = restore_to(&env, "after_kills", "now");
    assert!(
        restored == source,
        "after 20 kills the restore differs from the source"
    );
    assert!(seq >= max);
    assert!(rec["stream"]["segments"].as_u64().unwrap() > 1, "{rec}");
}

/// A stream killed while the server runs its query leaves a session that holds the slot's
/// lock until that query ends: the next stream waits for it and follows. A live stream's
/// lock is refused with exit 4.
#[test]
fn a_stream_started_after_a_killed_one_waits_for_its_session_and_a_live_one_is_refused() {
    let env = Env::logical(RepoSpec::Local);
    set_up(&env, STREAM);
    let held = || {
        env.source.psql(
            FIXTURE_DB,
            "select count(*) from pg_locks where locktype = 'advisory' and granted",
        ) != "0"
    };
    // What a killed stream leaves: a session that holds the lock, busy in a query, whose
    // client is gone.
    let started = Instant::now();
    let mut client = env
        .source
        .psql_command(FIXTURE_DB)
        .args([
            "-c",
            "select pg_advisory_lock(hashtext('backstop stream backstop_test')), pg_sleep(8)",
        ])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    while !held() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "psql took no lock"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    sigkill(&mut client);
    assert!(held(), "the session lost its lock with its client");
    let mut stream = start_stream(&env);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !stream_log(&env).contains("following slot") {
        assert!(
            stream.try_wait().unwrap().is_none(),
            "the stream ended instead of waiting for the killed one's session: {}",
            stream_log(&env)
        );
        assert!(Instant::now() < deadline, "{}", stream_log(&env));
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        started.elapsed() >= Duration::from_secs(8),
        "the stream followed before the old session ended"
    );
    let log = stream_log(&env);
    assert!(
        log.contains("running a query since") && log.contains("waiting up to"),
        "{log}"
    );

    // A second stream beside a live one: refused, exit 4, naming the slot.
    let second = Instant::now();
    let out = stream_command(&env).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(
        stderr.contains("another backstop stream already follows slot backstop_test"),
        "{stderr}"
    );
    assert!(second.elapsed() < Duration::from_secs(30), "{stderr}");
    assert!(stream.try_wait().unwrap().is_none(), "{}", stream_log(&env));
    sigkill(&mut stream);
}

#[test]
fn a_slot_that_holds_too_much_wal_raises_lag_then_is_dropped_and_the_primary_keeps_working() {
    let env = Env::logical(RepoSpec::Local);
    let hooks = common::hooks::Receiver::start();
    let policy = format!(
        "{STREAM}max_slot_lag = \"1MiB\"\ndrop_slot_at = \"48MiB\"\n\n[notify]\nwebhook = \"{}\"\nwebhook_format = \"json\"\n",
        hooks.url("/hook")
    );
    set_up(&env, &policy);
    let bulk = |rows: u32| {
        env.source.psql(
            FIXTURE_DB,
            &format!("insert into public.ledger (account, amount, big) select g % 200 + 1, 1, repeat(md5(g::text), 6) from generate_series(1, {rows}) g"),
        )
    };
    // The stream is stopped while the application writes: past max_slot_lag.
    bulk(20_000);
    let mut stream = start_stream(&env);
    let events = || {
        hooks
            .hits()
            .iter()
            .filter(|h| h.path == "/hook")
            .map(|h| {
                serde_json::from_str::<Value>(&h.body).unwrap()["event"]
                    .as_str()
                    .unwrap_or("")
                    .to_string()
            })
            .collect::<Vec<_>>()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while !events().iter().any(|e| e == "stream_lag") {
        assert!(Instant::now() < deadline, "no stream_lag alert");
        std::thread::sleep(Duration::from_millis(200));
    }
    sigkill(&mut stream);
    // Stopped again, far past drop_slot_at.
    bulk(400_000);
    let out = Command::new(assert_cmd::cargo::cargo_bin("backstop"))
        .current_dir(env.dir.path())
        .env("SOURCE_DB_URL", env.source.url(FIXTURE_DB))
        .args(["stream", "--policy"])
        .arg(&env.policy)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("dropped to protect the primary"),
        "{stderr}"
    );
    let seen = events();
    let lag = seen.iter().position(|e| e == "stream_lag").unwrap();
    let dropped = seen.iter().position(|e| e == "slot_dropped");
    assert!(dropped.is_some_and(|d| d > lag), "{seen:?}");
    assert_eq!(
        env.source
            .psql("postgres", "select count(*) from pg_replication_slots"),
        "0"
    );
    // The primary keeps working, updates and deletes of published tables included.
    env.source.psql(
        FIXTURE_DB,
        "update public.accounts set balance = 1 where id = 1; delete from public.ledger where id = 1",
    );
}

#[test]
fn verify_replays_the_stream_between_two_snapshots_and_compares() {
    let env = Env::logical(RepoSpec::Local);
    set_up(
        &env,
        &format!("{STREAM}\n[verify]\nscratch_url = \"${{SCRATCH_URL}}\"\n"),
    );
    let mut stream = start_stream(&env);
    env.backup_json();
    let work = start_workload(&env, 8);
    std::thread::sleep(Duration::from_secs(3));
    env.source.psql(FIXTURE_DB, "truncate public.audit_nopk");
    finish_workload(work);
    wait_sealed(&env);
    env.backup_json();
    let (code, rec, stderr) = common::run_json(
        env.backstop()
            .args(["verify", "--json", "--policy"])
            .arg(&env.policy),
    );
    assert_eq!(code, 0, "{stderr}\n{rec}");
    let checked = &rec["stream_checked"];
    assert_eq!(checked["tables_equal"], true, "{rec}");
    assert!(checked["transactions"].as_u64().unwrap() > 10, "{rec}");
    assert!(
        checked["tables_left_out"]
            .to_string()
            .contains("public.audit_nopk"),
        "{rec}"
    );

    // The report counts the stream's recovery points, and its own control.
    let report = || {
        let (_, r, _) = common::run_json(
            env.backstop()
                .args(["report", "--format", "json", "--window", "1d", "--policy"])
                .arg(&env.policy),
        );
        r["policies"][0]["controls"].as_array().unwrap().clone()
    };
    let control = |controls: &[Value], id: &str| {
        controls
            .iter()
            .find(|c| c["id"] == id)
            .cloned()
            .unwrap_or(Value::Null)
    };
    let controls = report();
    let cp = control(&controls, "continuous_protection");
    assert_eq!(cp["compliant"], true, "{cp}");
    assert!(cp["evidence"].to_string().contains("covered:"), "{cp}");
    let age = control(&controls, "last_recovery_point_age");
    assert!(age["observed"].as_str().unwrap().contains("s old"), "{age}");

    // The stream stopped past twice seal_every while changes flow: a gap, named.
    sigkill(&mut stream);
    let work = start_workload(&env, 6);
    finish_workload(work);
    let mut stream = start_stream(&env);
    wait_sealed(&env);
    let cp = control(&report(), "continuous_protection");
    assert_eq!(cp["compliant"], false, "{cp}");
    assert!(cp["evidence"].to_string().contains("gap:"), "{cp}");
    sigkill(&mut stream);

    // The HTML timeline draws the covered band, the gap and the proof, in headless Chromium
    // at a desktop and a phone width (the screenshots are kept as artifacts).
    let html = env.dir.path().join("report.html");
    let (code, _, stderr) = common::run(
        env.backstop()
            .args(["report", "--format", "html", "--window", "1d", "--out"])
            .arg(&html)
            .arg("--policy")
            .arg(&env.policy),
    );
    assert!(code == 0 || code == 3, "{stderr}");
    let profile = tempfile::tempdir().unwrap();
    let artifacts = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    for width in [1280, 390] {
        let png = artifacts.join(format!("report-stream-{width}.png"));
        let out = Command::new(common::chromium())
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(format!("--window-size={width},1600"))
            .arg(format!("--screenshot={}", png.display()))
            .arg("--dump-dom")
            .arg(format!("file://{}", html.display()))
            .output()
            .unwrap();
        let dom = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        for class in ["stream-covered", "stream-uncovered", "stream-proof"] {
            assert!(
                dom.contains(&format!(r#"class="{class}""#)),
                "{class} is not drawn at {width} px"
            );
        }
        assert!(
            std::fs::metadata(&png).unwrap().len() > 20_000,
            "{}",
            png.display()
        );
    }
}

/// Re-seals a segment of the stream without one transaction that updates `public.accounts`,
/// as only someone holding the identity could: every check of its bytes passes, and only the
/// replay's comparison can tell. Returns whether a transaction was dropped.
fn drop_one_accounts_update(env: &Env, segment: &std::path::Path) -> bool {
    use backstop::repo::streams::frame;
    use backstop::source::pgoutput::{decode, Message};
    use sha2::Digest;
    let mut seg: Value = serde_json::from_slice(&std::fs::read(segment).unwrap()).unwrap();
    let mut plain = Vec::new();
    for c in seg["chunks"].as_array().unwrap() {
        let id = c["id"].as_str().unwrap();
        plain.extend(common::bash_bytes(&format!(
            "age -d -i '{}' '{}' | zstd -dc",
            env.identity.display(),
            env.repo.join("blobs").join(&id[..2]).join(id).display()
        )));
    }
    let mut reader = frame::Reader::default();
    reader.feed(&plain);
    let mut frames = Vec::new();
    while let Some(f) = reader.next_frame() {
        frames.push(f);
    }
    // Relation oids of public.accounts, then the last transaction that updates it: an update
    // carries the whole new row, so a later update of the same account would hide the loss.
    let mut accounts = std::collections::HashSet::new();
    let (mut begin, mut updates, mut drop_range) = (None, false, None);
    for (i, (tag, payload)) in frames.iter().enumerate() {
        if *tag != frame::MESSAGE {
            continue;
        }
        let (_, _, data) = frame::split_message(payload).unwrap();
        match decode(data).unwrap() {
            Message::Relation(r) if r.name == "accounts" => {
                accounts.insert(r.oid);
            }
            Message::Begin { .. } => (begin, updates) = (Some(i), false),
            Message::Update { relation, .. } if accounts.contains(&relation) => updates = true,
            Message::Commit { .. } if updates => drop_range = begin.map(|b| (b, i)),
            _ => {}
        }
    }
    let Some((from, to)) = drop_range else {
        return false;
    };
    // The transaction's changes go; the relations it described stay (later ones need them).
    let mut altered = Vec::new();
    for (i, (tag, payload)) in frames.iter().enumerate() {
        let describes = *tag == frame::MESSAGE
            && matches!(
                decode(frame::split_message(payload).unwrap().2).unwrap(),
                Message::Relation(_) | Message::Type { .. }
            );
        if i < from || i > to || describes {
            frame::push(&mut altered, *tag, payload);
        }
    }
    let config: Value =
        serde_json::from_slice(&std::fs::read(env.repo.join("backstop.json")).unwrap()).unwrap();
    let mut h = sha2::Sha256::new();
    h.update(hex::decode(config["dedup_salt"].as_str().unwrap()).unwrap());
    h.update([0u8]);
    h.update(env.recipient.trim().as_bytes());
    let id = backstop::seal::BlobIds::new(&h.finalize()).id(&altered);
    let plain_path = env.dir.path().join("altered.plain");
    std::fs::write(&plain_path, &altered).unwrap();
    let blob = env.repo.join("blobs").join(&id[..2]).join(&id);
    std::fs::create_dir_all(blob.parent().unwrap()).unwrap();
    common::bash_ok(&format!(
        "zstd -qc '{}' | age -r '{}' > '{}'",
        plain_path.display(),
        env.recipient,
        blob.display()
    ));
    let sealed = std::fs::read(&blob).unwrap();
    seg["chunks"] = serde_json::json!([{"id": id, "len": altered.len()}]);
    seg["blobs"] = serde_json::json!([{"id": id, "size": sealed.len(), "sha256": hex::encode(sha2::Sha256::digest(&sealed))}]);
    seg["bytes_plain"] = altered.len().into();
    std::fs::write(segment, serde_json::to_vec_pretty(&seg).unwrap()).unwrap();
    true
}

#[test]
fn a_segment_resealed_without_one_transaction_fails_verify_naming_the_table() {
    let env = Env::logical(RepoSpec::Local);
    set_up(
        &env,
        &format!("{STREAM}\n[verify]\nscratch_url = \"${{SCRATCH_URL}}\"\n"),
    );
    let mut stream = start_stream(&env);
    env.backup_json();
    let work = start_workload(&env, 5);
    finish_workload(work);
    wait_sealed(&env);
    sigkill(&mut stream);
    env.backup_json();
    let mut segments = common::files_under(&env.repo.join("streams/test"));
    segments.sort();
    let dropped = segments
        .into_iter()
        .rev()
        .any(|s| drop_one_accounts_update(&env, &s));
    assert!(dropped, "no segment held an update of public.accounts");
    let (code, rec, stderr) = common::run_json(
        env.backstop()
            .args(["verify", "--json", "--policy"])
            .arg(&env.policy),
    );
    assert_eq!(code, 3, "{stderr}\n{rec}");
    assert_eq!(rec["stream_checked"]["tables_equal"], false, "{rec}");
    let problems = rec["problems"].to_string();
    assert!(
        problems.contains("public.accounts") && problems.contains("stream"),
        "{problems}"
    );
}

/// Documents at the stream's pace, with a directory source: objects uploaded, replaced and
/// deleted (each with its `storage.objects` row) while the stream runs are in the repository
/// within 2 × seal_every, and a restore to a moment between two uploads brings back exactly
/// the objects whose rows existed then, byte for byte.
#[test]
fn documents_follow_the_stream_and_a_restore_to_a_moment_brings_back_that_bucket() {
    let env = Env::logical(RepoSpec::Local);
    let docs = env.dir.path().join("docs");
    let storage = format!(
        "\n[storage]\nkind = \"dir\"\npath = \"{}\"\nbuckets = [\"documents\"]\n",
        docs.display()
    );
    documents_round_trip(&env, &docs, &storage);
}

/// The same through the Supabase Storage double (its objects live under the same kind of
/// tree, read over its REST API).
#[test]
fn documents_follow_the_stream_from_supabase_storage() {
    let env = Env::logical(RepoSpec::Local);
    let docs = env.dir.path().join("docs");
    std::fs::create_dir_all(docs.join("documents")).unwrap();
    let sb = common::supabase::Supabase::start(&docs);
    let storage = format!(
        "\n[storage]\nkind = \"supabase\"\nurl = \"{}\"\nkey = \"${{SUPABASE_KEY}}\"\nbuckets = [\"documents\"]\n",
        sb.url()
    );
    documents_round_trip(&env, &docs, &storage);
}

/// Objects uploaded, replaced and deleted under `docs` (each with its `storage.objects` row)
/// while the stream runs, then restored at a moment between two seals.
fn documents_round_trip(env: &Env, docs: &std::path::Path, storage: &str) {
    let bucket = docs.join("documents");
    std::fs::create_dir_all(&bucket).unwrap();
    let put = |name: &str, body: &str, row: &str| {
        std::fs::write(bucket.join(name), body).unwrap();
        env.source.psql(FIXTURE_DB, row);
    };
    env.source.psql(FIXTURE_DB, "delete from storage.objects");
    put(
        "menu.txt",
        "v1",
        "insert into storage.objects (id, bucket_id, name) values (gen_random_uuid(), 'documents', 'menu.txt')",
    );
    env.write_policy(&env.policy, &format!("{STREAM}{storage}"));
    let (code, _, stderr) = common::run(
        env.backstop()
            .args(["stream", "--setup", "--policy"])
            .arg(&env.policy),
    );
    assert_eq!(code, 0, "{stderr}");
    let mut stream = start_stream(env);
    env.backup_json();

    // First upload: a new object, and the menu replaced.
    put(
        "invoice 7.pdf",
        "%PDF invoice seven",
        "insert into storage.objects (id, bucket_id, name) values (gen_random_uuid(), 'documents', 'invoice 7.pdf')",
    );
    put(
        "menu.txt",
        "v2",
        "update storage.objects set metadata = '{\"v\": 2}' where name = 'menu.txt'",
    );
    wait_sealed(env);
    std::thread::sleep(Duration::from_millis(1100));
    let between = chrono::Utc::now().to_rfc3339();
    std::thread::sleep(Duration::from_millis(1100));

    // Second upload: the menu replaced again, the invoice deleted, a new note.
    put(
        "menu.txt",
        "v3",
        "update storage.objects set metadata = '{\"v\": 3}' where name = 'menu.txt'",
    );
    std::fs::remove_file(bucket.join("invoice 7.pdf")).unwrap();
    env.source.psql(
        FIXTURE_DB,
        "delete from storage.objects where name = 'invoice 7.pdf'",
    );
    put(
        "note.txt",
        "hello",
        "insert into storage.objects (id, bucket_id, name) values (gen_random_uuid(), 'documents', 'note.txt')",
    );
    wait_sealed(env);
    sigkill(&mut stream);

    // Each object was in the repository within 2 × seal_every (2 s) of its row's commit.
    let mut fetched = 0;
    for path in common::files_under(&env.repo.join("streams/test")) {
        let seg: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        let n = seg["documents"].as_u64().unwrap_or(0);
        if n == 0 {
            continue;
        }
        fetched += n;
        let time =
            |k: &str| chrono::DateTime::parse_from_rfc3339(seg[k].as_str().unwrap()).unwrap();
        let waited = time("sealed_at") - time("first_commit_at");
        assert!(
            waited <= chrono::Duration::seconds(4),
            "sealed {waited} after the commit: {seg}"
        );
        assert_eq!(seg["documents_failed"], serde_json::json!([]), "{seg}");
    }
    assert_eq!(
        fetched, 4,
        "two versions of the menu, the invoice and the note"
    );

    let restore = |db: &str, before: &str| {
        let dir = env.dir.path().join(format!("restored-{db}"));
        let (code, rec, stderr) = common::run_json(
            env.backstop()
                .args(["restore", "--json", "--before", before, "--policy"])
                .arg(&env.policy)
                .args(["--db-url", &env.scratch.url(db), "--storage-dir"])
                .arg(&dir),
        );
        assert_eq!(code, 0, "{stderr}\n{rec}");
        let mut files = BTreeMap::new();
        for f in common::files_under(&dir.join("documents")) {
            let name = f.file_name().unwrap().to_string_lossy().to_string();
            files.insert(name, std::fs::read_to_string(&f).unwrap());
        }
        let rows = env.scratch.psql(
            db,
            "select string_agg(name, ',' order by name) from storage.objects",
        );
        (files, rows)
    };
    let (files, rows) = restore("between", &between);
    assert_eq!(rows, "invoice 7.pdf,menu.txt");
    assert_eq!(
        files,
        BTreeMap::from([
            (
                "invoice 7.pdf".to_string(),
                "%PDF invoice seven".to_string()
            ),
            ("menu.txt".to_string(), "v2".to_string()),
        ])
    );
    let (files, rows) = restore("latest", "now");
    assert_eq!(rows, "menu.txt,note.txt");
    assert_eq!(
        files,
        BTreeMap::from([
            ("menu.txt".to_string(), "v3".to_string()),
            ("note.txt".to_string(), "hello".to_string()),
        ])
    );
}
