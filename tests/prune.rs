//! Prune end to end: the plan, the sweep, what it frees, that everything kept still restores
//! and checks, crash states, object lock on S3 (moto), and bad input.

mod common;

use common::run_json as run;

use common::{table_contents, Env, RepoSpec, FIXTURE_DB};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

fn prune(env: &Env, args: &[&str]) -> (i32, Value, String) {
    run(env
        .backstop()
        .args(["prune", "--json", "--policy"])
        .arg(&env.policy)
        .args(args))
}

/// A policy whose retention window is 2 s, with `rules` as its `[retention]`, backing up the
/// database and a documents directory (`docs(env)`).
fn with_rules(env: &Env, rules: &str) {
    std::fs::create_dir_all(docs(env).join("documents")).unwrap();
    let storage = format!(
        "\n[storage]\nkind = \"dir\"\npath = \"{}\"\nbuckets = [\"documents\"]\n",
        docs(env).display()
    );
    env.write_policy(&env.policy, &format!("{storage}{rules}"));
    let text = std::fs::read_to_string(&env.policy).unwrap();
    std::fs::write(
        &env.policy,
        text.replace("retention = \"35d\"", "retention = \"2s\""),
    )
    .unwrap();
}

/// Three backups, each after new incompressible rows, so each has blobs of its own.
fn three_backups(env: &Env) -> Vec<String> {
    (0..3)
        .map(|i| {
            env.source.psql(
                FIXTURE_DB,
                &format!("create table public.churn_{i} as select g, decode(md5(random()::text) || md5(random()::text), 'hex') as b from generate_series(1, 20000) g"),
            );
            env.backup_json()["snapshot_id"].as_str().unwrap().to_string()
        })
        .collect()
}

fn docs(env: &Env) -> std::path::PathBuf {
    env.dir.path().join("docs")
}

/// Three storage-only backups (fast), each after `scan.bin` was rewritten with new
/// incompressible bytes, so each has blobs of its own.
fn three_storage_backups(env: &Env) -> Vec<String> {
    (0..3)
        .map(|_| {
            let data: Vec<u8> = (0..300_000u32).map(|_| rand_byte()).collect();
            std::fs::write(docs(env).join("documents/scan.bin"), data).unwrap();
            let (code, rec, stderr) = run(env
                .backstop()
                .args(["backup", "--only", "storage", "--json", "--policy"])
                .arg(&env.policy));
            assert_eq!(code, 0, "{stderr}");
            rec["snapshot_id"].as_str().unwrap().to_string()
        })
        .collect()
}

fn rand_byte() -> u8 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static STATE: AtomicU64 = AtomicU64::new(0x9E37_79B9_7F4A_7C15);
    let mut x =
        STATE.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed) ^ std::process::id() as u64;
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    (x & 0xff) as u8
}

/// A policy keeping one snapshot, on an S3 repository in `bucket` of `moto`, with three
/// backups made and their retention window (2 s) passed.
fn s3_history(moto: &common::s3::Moto, bucket: &str, lock_days: Option<u32>) -> (Env, Vec<String>) {
    let env = Env::with_repo(RepoSpec::S3 {
        endpoint: moto.endpoint(),
        bucket: bucket.into(),
        prefix: "prod".into(),
        object_lock_days: lock_days,
    });
    with_rules(&env, "\n[retention]\nkeep_last = 1\n");
    let ids = three_storage_backups(&env);
    std::thread::sleep(std::time::Duration::from_secs(3));
    (env, ids)
}

/// Blob id -> stored size, of every meta.json in the repository.
fn referenced(env: &Env) -> BTreeMap<String, BTreeMap<String, u64>> {
    env.meta_files()
        .iter()
        .map(|p| {
            let m: Value = serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap();
            let blobs = m["blobs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| {
                    (
                        b["id"].as_str().unwrap().to_string(),
                        b["size"].as_u64().unwrap(),
                    )
                })
                .collect();
            (m["id"].as_str().unwrap().to_string(), blobs)
        })
        .collect()
}

fn check_clean(env: &Env) {
    let (code, rec, stderr) = run(env
        .backstop()
        .args(["check", "--read-data", "--json", "--policy"])
        .arg(&env.policy));
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(rec["damaged"], serde_json::json!([]), "{rec}");
}

#[test]
fn prune_removes_what_retention_drops_frees_exactly_the_unreferenced_and_keeps_restorable() {
    let env = Env::new();
    with_rules(&env, "\n[retention]\nkeep_last = 1\n");
    let ids = three_backups(&env);
    std::thread::sleep(std::time::Duration::from_secs(3));
    let before = referenced(&env);
    let newest: BTreeSet<&String> = before[&ids[2]].keys().collect();
    let mut expected_free = BTreeMap::new();
    for id in &ids[..2] {
        for (blob, size) in &before[id] {
            if !newest.contains(blob) {
                expected_free.insert(blob.clone(), *size);
            }
        }
    }
    assert!(!expected_free.is_empty());

    // Bad input first: nothing deleted, exit 2.
    let (code, _, stderr) = prune(&env, &["--snapshot", "nope"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("--snapshot nope: no such snapshot"),
        "{stderr}"
    );
    let (code, _, stderr) = prune(&env, &["--snapshot", &ids[2]]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("retention floor keeps it (newest"),
        "{stderr}"
    );
    assert_eq!(env.meta_files().len(), 3);

    let (code, plan, stderr) = prune(&env, &["--dry-run"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(plan["dry_run"], true);
    assert_eq!(
        plan["snapshots_removed"],
        serde_json::json!([ids[1], ids[0]]),
        "{plan}"
    );
    assert_eq!(plan["snapshots_kept"][0]["id"], ids[2].as_str());
    assert_eq!(
        plan["blobs_unreferenced"],
        expected_free.len() as u64,
        "{plan}"
    );
    assert!(stderr.contains(&format!("remove  {}", ids[0])), "{stderr}");
    assert_eq!(env.meta_files().len(), 3, "a dry run deleted something");

    let (code, rec, stderr) = prune(&env, &[]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(rec["kind"], "prune");
    assert_eq!(rec["blobs_deleted"], expected_free.len() as u64, "{rec}");
    assert_eq!(
        rec["bytes_freed"],
        expected_free.values().sum::<u64>(),
        "{rec}"
    );
    assert_eq!(rec["manifests_deleted"], 2, "{rec}");
    assert_eq!(referenced(&env).keys().collect::<Vec<_>>(), vec![&ids[2]]);
    for blob in expected_free.keys() {
        assert!(!env.repo.join("blobs").join(&blob[..2]).join(blob).exists());
    }
    let records = common::files_under(&env.repo.join("runs/test"));
    assert!(records
        .iter()
        .any(|p| p.to_string_lossy().contains("-prune-")));

    check_clean(&env);
    let (code, _, stderr) = env.restore_json(&env.scratch.url("after_prune"), &[]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        table_contents(&env.source, FIXTURE_DB),
        table_contents(&env.scratch, "after_prune")
    );

    // Idempotent: the next prune removes nothing.
    let (code, rec, stderr) = prune(&env, &[]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(rec["snapshots_removed"], serde_json::json!([]));
    assert_eq!(rec["blobs_deleted"], 0);
}

#[test]
fn a_crashed_prune_leaves_a_clean_repository_and_the_next_one_finishes() {
    let env = Env::new();
    with_rules(&env, "\n[retention]\nkeep_last = 1\n");
    let ids = three_storage_backups(&env);
    std::thread::sleep(std::time::Duration::from_secs(3));
    // The state a prune killed after step 1 leaves: one meta.json gone, its manifest and
    // blobs still there.
    let dir = env.repo.join("snapshots/test").join(&ids[0]);
    std::fs::remove_file(dir.join("meta.json")).unwrap();
    check_clean(&env);
    // Killed after step 2: the manifest gone too.
    std::fs::remove_file(dir.join("manifest.age")).unwrap();
    check_clean(&env);
    let (code, rec, stderr) = prune(&env, &[]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        rec["snapshots_removed"],
        serde_json::json!([ids[1]]),
        "{rec}"
    );
    assert!(rec["blobs_deleted"].as_u64().unwrap() > 0, "{rec}");
    check_clean(&env);
    // No blob is left that no snapshot references.
    let alive: BTreeSet<String> = referenced(&env)
        .values()
        .flat_map(|b| b.keys().cloned())
        .collect();
    let stored: BTreeSet<String> = common::files_under(&env.repo.join("blobs"))
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().to_string())
        .collect();
    assert_eq!(stored, alive);
}

#[test]
fn without_retention_everything_is_kept_and_bad_rules_are_refused() {
    let env = Env::new();
    env.backup_json();
    let (code, rec, stderr) = prune(&env, &[]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(rec["snapshots_removed"], serde_json::json!([]));
    assert!(
        stderr.contains("has no [retention]: every snapshot is kept"),
        "{stderr}"
    );

    for (rules, needle) in [
        ("keep_daily = -1", "keep_daily"),
        ("keep_daily = \"seven\"", "keep_daily"),
        ("keep_dayly = 7", "keep_dayly"),
        ("keep_within = \"two weeks\"", "retention.keep_within"),
    ] {
        env.write_policy(&env.policy, &format!("\n[retention]\n{rules}\n"));
        let (code, _, stderr) = prune(&env, &[]);
        assert_eq!(code, 2, "{rules}: {stderr}");
        assert!(
            stderr.contains(needle) && stderr.contains("test.toml:"),
            "{rules}: {stderr}"
        );
        let (code, _, stderr) = run(env.backstop().args(["policy", "validate"]).arg(&env.policy));
        assert_eq!(code, 2, "{rules}: {stderr}");
    }
    assert_eq!(env.meta_files().len(), 1);
}

#[test]
fn on_s3_with_object_lock_nothing_locked_is_deleted_and_the_dates_are_listed() {
    let moto = common::s3::Moto::start();
    moto.create_bucket("locked", true);
    let (env, ids) = s3_history(&moto, "locked", Some(1));
    let keys_before = moto.keys("locked");
    let (code, rec, stderr) = prune(&env, &[]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        rec["snapshots_removed"],
        serde_json::json!([ids[1], ids[0]]),
        "{rec}"
    );
    assert_eq!(rec["blobs_deleted"], 0, "{rec}");
    assert_eq!(rec["bytes_freed"], 0, "{rec}");
    let locked = rec["locked_until"].as_array().unwrap();
    let meta = format!("snapshots/test/{}/meta.json", ids[0]);
    let entry = locked
        .iter()
        .find(|l| l["key"] == meta.as_str())
        .unwrap_or_else(|| panic!("{rec}"));
    let until = chrono::DateTime::parse_from_rfc3339(entry["until"].as_str().unwrap()).unwrap();
    let left = until.with_timezone(&chrono::Utc) - chrono::Utc::now();
    assert!(
        left > chrono::Duration::hours(23) && left <= chrono::Duration::days(1),
        "{until}"
    );
    // Nothing locked was deleted: every object is still there, with every version.
    let keys_after = moto.keys("locked");
    for k in keys_before
        .iter()
        .filter(|k| !k.contains("/locks/") && !k.contains("/runs/"))
    {
        assert!(keys_after.contains(k), "{k} was deleted under retention");
    }
    // The snapshots stay listed until their lock passes.
    let (_, list, _) = run(env
        .backstop()
        .args(["snapshots", "--json", "--policy"])
        .arg(&env.policy));
    assert_eq!(list["snapshots"].as_array().unwrap().len(), 3, "{list}");
}

#[test]
fn on_s3_without_lock_prune_frees_what_it_says() {
    let moto = common::s3::Moto::start();
    moto.create_bucket("plain", false);
    let (env, ids) = s3_history(&moto, "plain", None);
    let (code, plan, stderr) = prune(&env, &["--dry-run"]);
    assert_eq!(code, 0, "{stderr}");
    let (code, rec, stderr) = prune(&env, &[]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(rec["blobs_deleted"], plan["blobs_unreferenced"], "{rec}");
    assert_eq!(rec["bytes_freed"], plan["bytes_unreferenced"], "{rec}");
    assert!(rec["bytes_freed"].as_u64().unwrap() > 0);
    let keys = moto.keys("plain");
    let gone = format!("snapshots/test/{}/", ids[0]);
    assert!(!keys.iter().any(|k| k.contains(&gone)), "{keys:?}");
    let out = env.dir.path().join("restored");
    let (code, _, stderr) = run(env
        .backstop()
        .args(["restore", "--only", "storage", "--policy"])
        .arg(&env.policy)
        .arg("--storage-dir")
        .arg(&out));
    assert_eq!(code, 0, "{stderr}");
    let name = "documents/scan.bin";
    assert_eq!(
        std::fs::read(out.join(name)).unwrap(),
        std::fs::read(docs(&env).join(name)).unwrap()
    );
}

fn spawn(env: &Env, args: &[&str]) -> std::process::Child {
    std::process::Command::new(assert_cmd::cargo::cargo_bin("backstop"))
        .current_dir(env.dir.path())
        .env("SOURCE_DB_URL", env.source.url(FIXTURE_DB))
        .env("BACKSTOP_IDENTITY", &env.identity)
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

fn copy_tree(from: &std::path::Path, to: &std::path::Path) {
    let _ = std::fs::remove_dir_all(to);
    let ok = std::process::Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap()
        .success();
    assert!(ok, "cp -a {} {}", from.display(), to.display());
}

/// Blobs stored, and blobs the snapshots reference: equal once a sweep is complete.
fn stored_and_referenced(env: &Env) -> (BTreeSet<String>, BTreeSet<String>) {
    let alive = referenced(env)
        .values()
        .flat_map(|b| b.keys().cloned())
        .collect();
    let stored = common::files_under(&env.repo.join("blobs"))
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().to_string())
        .collect();
    (stored, alive)
}

#[test]
fn prune_killed_at_16_points_leaves_check_clean_and_the_next_prune_finishes() {
    let env = Env::new();
    with_rules(&env, "\n[retention]\nkeep_last = 1\n");
    three_storage_backups(&env);
    std::thread::sleep(std::time::Duration::from_secs(3));
    let template = env.dir.path().join("template");
    copy_tree(&env.repo, &template);
    let policy = env.policy.to_str().unwrap().to_string();
    let t = std::time::Instant::now();
    assert_eq!(prune(&env, &[]).0, 0);
    let whole = t.elapsed();
    let mut interrupted = 0;
    for trial in 0..16u32 {
        copy_tree(&template, &env.repo);
        let mut child = spawn(&env, &["prune", "--policy", &policy]);
        // Spread over the first three quarters of a whole prune, so most kills land midway.
        std::thread::sleep(whole * trial / 20);
        let _ = child.kill();
        let status = child.wait().unwrap();
        if !status.success() {
            interrupted += 1;
        }
        check_clean(&env);
        let (code, _, stderr) = prune(&env, &[]);
        assert_eq!(code, 0, "trial {trial}: {stderr}");
        let (stored, alive) = stored_and_referenced(&env);
        assert_eq!(stored, alive, "trial {trial}: the sweep was not finished");
        assert_eq!(env.meta_files().len(), 1, "trial {trial}");
        let manifests = common::files_under(&env.repo.join("snapshots"))
            .into_iter()
            .filter(|p| p.ends_with("manifest.age"))
            .count();
        assert_eq!(manifests, 1, "trial {trial}: an orphaned manifest is left");
    }
    assert!(
        interrupted >= 6,
        "only {interrupted} of 16 prunes were killed midway"
    );
}

#[test]
fn prune_while_another_policy_backs_up_exits_4_and_deletes_nothing_it_commits() {
    let env = Env::new();
    with_rules(&env, "\n[retention]\nkeep_last = 1\n");
    three_storage_backups(&env);
    env.source.psql(
        FIXTURE_DB,
        "create table public.bulk as select i, md5(i::text) || repeat(md5((i * 7)::text), 8) as t from generate_series(1, 300000) i",
    );
    let other = env.dir.path().join("other.toml");
    env.write_policy(&other, "");
    let text = std::fs::read_to_string(&other).unwrap();
    std::fs::write(
        &other,
        text.replacen("name = \"test\"", "name = \"other\"", 1),
    )
    .unwrap();
    std::thread::sleep(std::time::Duration::from_secs(3));

    let backup = spawn(&env, &["backup", "--policy", other.to_str().unwrap()]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while common::files_under(&env.repo.join("locks")).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the backup never locked"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let (code, rec, stderr) = prune(&env, &[]);
    let out = backup.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(code == 4 || code == 0, "{stderr}");
    if code == 4 {
        assert!(
            stderr.contains("locked by another run: backup run"),
            "{stderr}"
        );
        assert_eq!(rec["blobs_deleted"], 0);
    }
    check_clean(&env);
    let (code, _, stderr) = prune(&env, &[]);
    assert_eq!(code, 0, "{stderr}");
    check_clean(&env);
    let metas = referenced(&env);
    assert_eq!(
        metas.len(),
        2,
        "the other policy's snapshot and test's newest"
    );
}

#[test]
fn prune_killed_midway_on_s3_leaves_check_clean_and_the_next_prune_finishes() {
    let moto = common::s3::Moto::start();
    moto.create_bucket("plain", false);
    let (env, _) = s3_history(&moto, "plain", None);
    let template: Vec<(String, Vec<u8>)> = moto
        .keys("plain")
        .into_iter()
        .filter(|k| !k.contains("/runs/"))
        .map(|k| {
            let body = moto.get("plain", &k);
            (k, body)
        })
        .collect();
    let reset = || {
        for k in moto.keys("plain") {
            moto.delete("plain", &k);
        }
        for (k, body) in &template {
            moto.put("plain", k, body.clone());
        }
    };
    let policy = env.policy.to_str().unwrap().to_string();
    let t = std::time::Instant::now();
    assert_eq!(prune(&env, &[]).0, 0);
    let whole = t.elapsed();
    // With the 16 local trials above, 20 in all.
    for trial in 0..4u32 {
        reset();
        let mut child = spawn(&env, &["prune", "--policy", &policy]);
        std::thread::sleep(whole * trial / 3);
        let _ = child.kill();
        child.wait().unwrap();
        check_clean(&env);
        let (code, rec, stderr) = prune(&env, &[]);
        assert_eq!(code, 0, "trial {trial}: {stderr}");
        assert_eq!(rec["snapshots_kept"].as_array().unwrap().len(), 1, "{rec}");
        let keys = moto.keys("plain");
        let metas: Vec<&String> = keys.iter().filter(|k| k.ends_with("meta.json")).collect();
        let manifests = keys.iter().filter(|k| k.ends_with("manifest.age")).count();
        assert_eq!((metas.len(), manifests), (1, 1), "trial {trial}: {keys:?}");
        let meta: Value = serde_json::from_slice(&moto.get("plain", metas[0])).unwrap();
        let alive: BTreeSet<&str> = meta["blobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["id"].as_str().unwrap())
            .collect();
        let stored: BTreeSet<&str> = keys
            .iter()
            .filter(|k| k.contains("/blobs/"))
            .map(|k| k.rsplit('/').next().unwrap())
            .collect();
        assert_eq!(stored, alive, "trial {trial}: the sweep was not finished");
    }
}

#[test]
fn on_a_versioned_bucket_prune_removes_every_version_not_only_adds_a_marker() {
    let moto = common::s3::Moto::start();
    moto.create_bucket("versioned", false);
    moto.enable_versioning("versioned");
    let (env, ids) = s3_history(&moto, "versioned", None);
    let (code, plan, stderr) = prune(&env, &["--dry-run"]);
    assert_eq!(code, 0, "{stderr}");
    let (code, rec, stderr) = prune(&env, &[]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(rec["bytes_freed"], plan["bytes_unreferenced"], "{rec}");
    assert!(rec["blobs_deleted"].as_u64().unwrap() > 0, "{rec}");
    let versions = moto.versions("versioned");
    let gone = format!("snapshots/test/{}/", ids[0]);
    assert!(
        !versions.iter().any(|(k, _)| k.contains(&gone)),
        "a version or marker of the removed snapshot is left: {versions:?}"
    );
    assert!(
        !versions.iter().any(|(_, marker)| *marker),
        "delete markers left: {versions:?}"
    );
    let blobs = versions
        .iter()
        .filter(|(k, _)| k.contains("/blobs/"))
        .count();
    assert_eq!(
        blobs,
        moto.keys("versioned")
            .iter()
            .filter(|k| k.contains("/blobs/"))
            .count()
    );
}
