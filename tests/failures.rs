//! Damage, interruption and bad input: each gets the documented exit code and a message that
//! names the problem, and none leaves a snapshot behind.

mod common;

use common::run;

use common::{bin, files_under, Env};
use std::time::{Duration, Instant};

#[test]
fn damage_is_detected_and_named() {
    let env = Env::new();
    let first = env.backup_json();
    let id = first["snapshot_id"].as_str().unwrap().to_string();

    // One flipped byte in one blob: restore exits 1 naming that blob.
    let blobs = files_under(&env.repo.join("blobs"));
    let victim = &blobs[blobs.len() / 2];
    let blob_id = victim.file_name().unwrap().to_string_lossy().to_string();
    let mut bytes = std::fs::read(victim).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x01;
    std::fs::write(victim, &bytes).unwrap();
    let (code, rec, stderr) = env.restore_json(&env.scratch.url("damaged"), &[]);
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(rec["ok"], false);
    assert!(
        stderr.contains(&format!(
            "blob {blob_id} is damaged: its stored bytes have SHA-256"
        )),
        "the restore names the stored bytes as what changed: {stderr}"
    );
    assert!(rec["error"].as_str().unwrap().contains(&blob_id));

    // A deleted blob is named too.
    bytes[at] ^= 0x01;
    std::fs::write(victim, &bytes).unwrap();
    std::fs::remove_file(victim).unwrap();
    let (code, _, stderr) = env.restore_json(&env.scratch.url("damaged2"), &[]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains(&format!("blob {blob_id} is missing")),
        "{stderr}"
    );

    // A wrong identity: exit 1, saying the key matches no recipient.
    let other = env.dir.path().join("other.txt");
    bin()
        .args(["keygen", "--out"])
        .arg(&other)
        .assert()
        .success();
    let (code, _, stderr) = run(env
        .backstop()
        .args(["restore", "--policy"])
        .arg(&env.policy)
        .args(["--db-url", &env.scratch.url("wrongkey")])
        .arg("--identity")
        .arg(&other));
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("matches none of the recipients"),
        "{stderr}"
    );

    // Removing a snapshot's meta.json hides the snapshot.
    let meta = env.repo.join(format!("snapshots/test/{id}/meta.json"));
    std::fs::remove_file(&meta).unwrap();
    let (code, out, _) = run(env
        .backstop()
        .args(["snapshots", "--json", "--policy"])
        .arg(&env.policy));
    assert_eq!(code, 0);
    let list: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(list["snapshots"].as_array().unwrap().len(), 0, "{list}");
    let (code, _, stderr) = run(env
        .backstop()
        .args(["restore", "--policy"])
        .arg(&env.policy)
        .args(["--db-url", &env.scratch.url("x"), "--snapshot", &id]));
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains(&format!("no snapshot {id}")), "{stderr}");
}

#[test]
fn a_killed_backup_leaves_no_snapshot_and_the_next_one_succeeds() {
    let env = Env::new();
    // Make the dump large enough to be caught mid-stream.
    env.source.psql(
        common::FIXTURE_DB,
        "create table public.bulk as select i, md5(i::text) || repeat(md5((i * 7)::text), 8) as t from generate_series(1, 400000) i",
    );
    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("backstop"))
        .current_dir(env.dir.path())
        .env("SOURCE_DB_URL", env.source.url(common::FIXTURE_DB))
        .args(["backup", "--policy"])
        .arg(&env.policy)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    // Count only blobs that are in place: `.tmp-*` files are writes still in flight.
    let stored = || {
        files_under(&env.repo.join("blobs"))
            .iter()
            .filter(|p| {
                !p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with(".tmp-")
            })
            .count()
    };
    while stored() < 3 {
        assert!(
            Instant::now() < deadline,
            "backup wrote no blobs within 60s"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "backup ended before it could be killed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(
        env.meta_files().is_empty(),
        "a killed backup left a snapshot"
    );

    let rec = env.backup_json();
    assert_eq!(rec["ok"], true);
    assert!(
        rec["db"]["blobs_reused"].as_u64().unwrap() >= 1,
        "blobs of the killed run were not reused: {rec}"
    );
    assert_eq!(env.meta_files().len(), 1);
}

#[test]
fn bad_input_gets_exit_codes_and_names_the_problem() {
    let env = Env::new();
    let dir = env.dir.path();
    let check = |text: &str, code: i32, needles: &[&str]| {
        let p = dir.join("bad.toml");
        std::fs::write(&p, text).unwrap();
        for args in [
            vec!["policy", "validate", "bad.toml"],
            vec!["backup", "--policy", "bad.toml"],
        ] {
            let (got, _, stderr) = run(env.backstop().args(&args));
            assert_eq!(got, code, "{args:?} on {text:?}: {stderr}");
            for n in needles {
                assert!(stderr.contains(n), "{args:?}: {n:?} not in {stderr}");
            }
        }
    };
    let good = std::fs::read_to_string(&env.policy).unwrap();
    check("name = \"x\"\n[database\n", 2, &["bad.toml:2:"]);
    check(
        &good.replace("[schedule]", "[schedule]\nbackups = \"0 3 * * *\""),
        2,
        &["bad.toml:", "unknown field `backups`"],
    );
    check(
        &good.replace("0 3 * * *", "0 3 * * * * * *"),
        2,
        &["schedule.backup", "fields"],
    );
    check(
        &good.replace("${SOURCE_DB_URL}", "${NOT_SET_ANYWHERE}"),
        2,
        &["database.url", "NOT_SET_ANYWHERE"],
    );
    let (code, out, _) = run(env.backstop().args(["policy", "validate"]).arg(&env.policy));
    assert_eq!(code, 0);
    assert!(out.starts_with("OK"));

    // An unreachable database: exit 1, the URL named with its password masked.
    let port = common::pg::free_port();
    let url = format!(
        "postgres://postgres:{}@127.0.0.1:{port}/app",
        common::pg::PASSWORD
    );
    let (code, out, stderr) = run(env
        .backstop()
        .env("SOURCE_DB_URL", &url)
        .args(["backup", "--json", "--policy"])
        .arg(&env.policy));
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains(&format!(
            "cannot connect to database postgres://postgres:***@127.0.0.1:{port}/app"
        )),
        "{stderr}"
    );
    assert!(!stderr.contains(common::pg::PASSWORD) && !out.contains(common::pg::PASSWORD));
    let rec: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(rec["ok"], false);
    assert!(rec["snapshot_id"].is_null());

    // A refused login: exit 2, like every refused credential; the password never shown.
    let wrong = env
        .source
        .url(common::FIXTURE_DB)
        .replace(common::pg::PASSWORD, "wrong-pass-987");
    let (code, out, stderr) = run(env
        .backstop()
        .env("SOURCE_DB_URL", &wrong)
        .args(["backup", "--json", "--policy"])
        .arg(&env.policy));
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("refused the login"), "{stderr}");
    assert!(!stderr.contains("wrong-pass-987") && !out.contains("wrong-pass-987"));

    // Restore without an identity, and before any snapshot.
    let (code, _, stderr) = run(env
        .backstop()
        .env_remove("BACKSTOP_IDENTITY")
        .args(["restore", "--policy"])
        .arg(&env.policy)
        .args(["--db-url", &env.scratch.url("x")]));
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("BACKSTOP_IDENTITY"), "{stderr}");

    // A backup into a repository that was never initialized.
    let p = dir.join("noinit.toml");
    std::fs::write(
        &p,
        good.replace(
            &env.repo.display().to_string(),
            &dir.join("nowhere").display().to_string(),
        ),
    )
    .unwrap();
    let (code, _, stderr) = run(env.backstop().args(["backup", "--policy"]).arg(&p));
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("backstop init"), "{stderr}");

    assert!(env.meta_files().is_empty(), "bad input left a snapshot");
    // Every failed backup that reached the repository left a run record saying so.
    let runs = files_under(&env.repo.join("runs"));
    assert!(!runs.is_empty());
    for r in runs {
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(r).unwrap()).unwrap();
        assert_eq!(v["ok"], false);
        assert!(!v.to_string().contains(common::pg::PASSWORD));
    }
}

#[test]
fn an_unreadable_table_is_named_with_the_grant_it_needs() {
    let env = Env::new();
    env.source.psql(
        common::FIXTURE_DB,
        "create role limited login password 'limited-pw'; grant usage on schema public, auth, storage to limited; \
         grant select on all tables in schema public, auth to limited; grant select on storage.buckets to limited",
    );
    let url = format!(
        "postgres://limited:limited-pw@127.0.0.1:{}/app",
        env.source.port
    );
    let (code, _, stderr) = run(env
        .backstop()
        .env("SOURCE_DB_URL", &url)
        .args(["backup", "--policy"])
        .arg(&env.policy));
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("table storage.objects: role limited may not read it (GRANT SELECT ON storage.objects TO limited)"), "{stderr}");
    assert!(env.meta_files().is_empty());

    // With the grant, row-level security is what stands in the way.
    env.source.psql(
        common::FIXTURE_DB,
        "grant select on storage.objects to limited",
    );
    let (code, _, stderr) = run(env
        .backstop()
        .env("SOURCE_DB_URL", &url)
        .args(["backup", "--policy"])
        .arg(&env.policy));
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("table storage.objects: row-level security would hide rows from role limited (ALTER ROLE limited BYPASSRLS"), "{stderr}");
    assert!(env.meta_files().is_empty());
}

/// Regression: blob ids did not depend on the recipients, so after a key rotation a new
/// snapshot referenced blobs sealed to the old key, which its own key could not open.
#[test]
fn a_key_rotation_seals_content_again_under_the_new_key() {
    let env = Env::new();
    let old = env.backup_json();
    let new_key = env.dir.path().join("new-key.txt");
    let out = bin()
        .args(["keygen", "--out"])
        .arg(&new_key)
        .output()
        .unwrap();
    let new_recipient = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let policy = std::fs::read_to_string(&env.policy)
        .unwrap()
        .replace(&env.recipient, &new_recipient);
    std::fs::write(&env.policy, policy).unwrap();

    let rotated = env.backup_json();
    assert_eq!(rotated["db"]["blobs_reused"], 0, "{rotated}");
    let (code, _, stderr) = env.restore_json(
        &env.scratch.url("rotated"),
        &["--identity", new_key.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        common::table_contents(&env.source, common::FIXTURE_DB),
        common::table_contents(&env.scratch, "rotated")
    );
    // The old snapshot still needs the old key.
    let (code, _, stderr) = env.restore_json(
        &env.scratch.url("old"),
        &[
            "--identity",
            new_key.to_str().unwrap(),
            "--snapshot",
            old["snapshot_id"].as_str().unwrap(),
        ],
    );
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("matches none of the recipients"),
        "{stderr}"
    );
}

/// Sends `signal` to a child and returns its exit code, stdout and stderr.
fn signal_and_wait(child: std::process::Child, signal: &str) -> (i32, String, String) {
    std::process::Command::new("kill")
        .args([&format!("-{signal}"), &child.id().to_string()])
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

fn spawn(env: &Env, args: &[&str]) -> std::process::Child {
    std::process::Command::new(assert_cmd::cargo::cargo_bin("backstop"))
        .current_dir(env.dir.path())
        .env("SOURCE_DB_URL", env.source.url(common::FIXTURE_DB))
        .env("BACKSTOP_IDENTITY", &env.identity)
        .args(args)
        .arg("--policy")
        .arg(&env.policy)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

fn wait_for(what: &str, child: &mut std::process::Child, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        assert!(child.try_wait().unwrap().is_none(), "ended before {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn sigterm_and_sigint_during_backup_and_restore_leave_a_record_and_release_the_lock() {
    let env = Env::new();
    env.source.psql(
        common::FIXTURE_DB,
        "create table public.bulk as select i, md5(i::text) || repeat(md5((i * 7)::text), 8) as t from generate_series(1, 300000) i",
    );
    let blobs = || files_under(&env.repo.join("blobs")).len();
    let runs = || files_under(&env.repo.join("runs")).len();
    for signal in ["TERM", "INT"] {
        let code = if signal == "TERM" { 143 } else { 130 };
        let mut child = spawn(&env, &["backup", "--json"]);
        let before = blobs();
        wait_for("the backup to store blobs", &mut child, || {
            blobs() >= before + 2
        });
        let runs_before = runs();
        let (got, stdout, stderr) = signal_and_wait(child, signal);
        assert_eq!(got, code, "SIG{signal}: {stderr}");
        let rec: serde_json::Value = serde_json::from_str(&stdout).expect("one JSON document");
        assert_eq!(rec["ok"], false);
        assert!(rec["snapshot_id"].is_null());
        let error = rec["error"].as_str().unwrap();
        assert!(
            error.contains(&format!("interrupted by SIG{signal}")),
            "{error}"
        );
        assert_eq!(runs(), runs_before + 1, "no run record was written");
        assert!(
            env.meta_files().is_empty(),
            "an interrupted backup committed"
        );
        assert!(
            files_under(&env.repo.join("locks")).is_empty(),
            "the lock stayed"
        );
    }
    // The next run starts at once: no lock to wait for or take over.
    let started = Instant::now();
    let rec = env.backup_json();
    assert_eq!(rec["ok"], true);
    assert!(started.elapsed() < Duration::from_secs(60));

    let target = env.scratch.url("stopped");
    let mut child = spawn(&env, &["restore", "--json", "--db-url", &target]);
    let scratch = &env.scratch;
    wait_for("the restore to load data", &mut child, || {
        scratch.psql(
            "postgres",
            "select count(*) from pg_database where datname = 'stopped'",
        ) == "1"
            && scratch.psql(
                "stopped",
                "select count(*) from pg_class where relname = 'bulk' and relkind = 'r'",
            ) == "1"
    });
    let (got, stdout, stderr) = signal_and_wait(child, "INT");
    assert_eq!(got, 130, "{stderr}");
    // pg_restore and its workers stopped with the run: nothing writes into the target after
    // backstop said it stopped.
    std::thread::sleep(Duration::from_secs(1));
    // Only this test's pg_restore (its target's port): tests run side by side.
    let port = format!("127.0.0.1:{}/", env.scratch.port);
    let ours: Vec<String> = common::processes_with("pg_restore")
        .into_iter()
        .filter(|c| c.contains(&port))
        .collect();
    assert_eq!(
        ours,
        Vec::<String>::new(),
        "pg_restore outlived the interrupted restore"
    );
    let rec: serde_json::Value = serde_json::from_str(&stdout).expect("one JSON document");
    assert_eq!(rec["ok"], false);
    let error = rec["error"].as_str().unwrap();
    assert!(
        error.contains("interrupted by SIGINT")
            && error.contains("partial restore")
            && error.contains("--force"),
        "{error}"
    );
    assert!(
        files_under(&env.repo.join("locks")).is_empty(),
        "the lock stayed"
    );
    let (code, rec, stderr) = env.restore_json(&target, &["--force"]);
    assert_eq!(code, 0, "{stderr}\n{rec}");
}

#[test]
fn a_backup_whose_lock_is_removed_mid_dump_commits_nothing() {
    let env = Env::new();
    let bindir = common::pg_wrapper(&env.dir.path().join("pgbin"), "pg_dump", "sleep 10");
    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("backstop"))
        .current_dir(env.dir.path())
        .env("SOURCE_DB_URL", env.source.url(common::FIXTURE_DB))
        .env("BACKSTOP_PG_BINDIR", &bindir)
        .args(["backup", "--json", "--policy"])
        .arg(&env.policy)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let locks = || files_under(&env.repo.join("locks"));
    wait_for("the backup's lock", &mut child, || !locks().is_empty());
    std::thread::sleep(Duration::from_secs(2));
    for l in locks() {
        std::fs::remove_file(l).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let rec: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rec["ok"], false);
    assert!(rec["snapshot_id"].is_null(), "{rec}");
    assert!(
        rec["error"].as_str().unwrap().contains("lock lost"),
        "{rec}"
    );
    assert!(
        env.meta_files().is_empty(),
        "a backup without its lock committed"
    );
}

#[test]
fn no_plaintext_spool_or_partial_file_outlives_a_killed_restore_or_verify() {
    let env = Env::new();
    let spool = env.dir.path().join("spool");
    std::fs::create_dir_all(&spool).unwrap();
    let docs = env.dir.path().join("bucket/documents");
    std::fs::create_dir_all(&docs).unwrap();
    // A large object, so that a restore is caught while writing it.
    common::bash_ok(&format!(
        "head -c 64000000 /dev/urandom > '{}/big.bin'",
        docs.display()
    ));
    env.source.psql(
        common::FIXTURE_DB,
        "create table public.bulk as select i, md5(i::text) || repeat(md5((i * 7)::text), 8) as t from generate_series(1, 300000) i",
    );
    env.write_policy(
        &env.policy,
        &format!(
            "\n[storage]\nkind = \"dir\"\npath = \"{}\"\nbuckets = [\"documents\"]\n\n\
             [restore]\njobs = 2\nspool_dir = \"{}\"\n",
            docs.parent().unwrap().display(),
            spool.display()
        ),
    );
    env.backup_json();
    // A snapshot that takes the spool path (as those of versions before the dump layout do).
    env.rewrite_manifest("latest", "del(.database.layout)");
    // A spool an older version left with a name (the campaign found them 0600 and plaintext).
    std::fs::write(spool.join(".backstop-spool-old"), b"plaintext").unwrap();
    let named = || std::fs::read_dir(&spool).unwrap().count();

    for (i, args) in [
        vec!["restore", "--only", "db", "--db-url"],
        vec!["verify", "--scratch-url"],
    ]
    .into_iter()
    .enumerate()
    {
        let target = if i == 0 {
            env.scratch.url("killed")
        } else {
            env.scratch.url("postgres")
        };
        let mut full = args.clone();
        full.push(&target);
        let mut child = spawn(&env, &full);
        let pid = child.id();
        // The spool is written and pg_restore reads it: only then is it worth killing.
        let deadline = Instant::now() + Duration::from_secs(60);
        // This test's pg_restore (its target's port): tests run side by side.
        let ours = format!("127.0.0.1:{}/", env.scratch.port);
        while !common::processes_with("pg_restore")
            .iter()
            .any(|c| c.contains("/dev/stdin") && c.contains(&ours))
        {
            assert!(Instant::now() < deadline, "pg_restore never started");
            if child.try_wait().unwrap().is_some() {
                let out = child.wait_with_output().unwrap();
                panic!(
                    "{} ended before pg_restore started: {}",
                    args[0],
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(
            named(),
            0,
            "the spool (or an old one) has a name in {spool:?}"
        );
        std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()
            .unwrap();
        let _ = child.wait();
        assert_eq!(named(), 0, "a killed {} left a spool", args[0]);
    }

    // A restore of the documents killed mid-file leaves a partial file; the next restore into
    // the same directory removes it.
    let out_dir = env.dir.path().join("restored-docs");
    let mut child = spawn(
        &env,
        &[
            "restore",
            "--only",
            "storage",
            "--storage-dir",
            out_dir.to_str().unwrap(),
        ],
    );
    let partial = || {
        files_under(&out_dir)
            .into_iter()
            .filter(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with(".backstop-tmp-")
            })
            .collect::<Vec<_>>()
    };
    wait_for("a partial file", &mut child, || !partial().is_empty());
    child.kill().unwrap();
    let _ = child.wait();
    assert!(!partial().is_empty());
    let (code, _, stderr) = common::run(
        env.backstop()
            .args(["restore", "--only", "storage", "--force", "--storage-dir"])
            .arg(&out_dir)
            .arg("--policy")
            .arg(&env.policy),
    );
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        partial(),
        Vec::<std::path::PathBuf>::new(),
        "a partial file was kept"
    );
    assert_eq!(
        std::fs::read(out_dir.join("documents/big.bin")).unwrap(),
        std::fs::read(docs.join("big.bin")).unwrap()
    );
}
