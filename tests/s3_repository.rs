//! S3 repositories end to end, against the moto server on loopback: the foundation's round
//! trip, dedup and damage checks, a network cut mid-backup, concurrent runs, and the
//! misconfigurations an operator actually makes.

mod common;

use common::run;

use common::s3::{Moto, Proxy};
use common::{table_contents, Env, RepoSpec, FIXTURE_DB};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BUCKET: &str = "backups";

fn s3_env(endpoint: String, lock_days: Option<u32>) -> Env {
    Env::with_repo(RepoSpec::S3 {
        endpoint,
        bucket: BUCKET.into(),
        prefix: "prod".into(),
        object_lock_days: lock_days,
    })
}

fn add_bulk(env: &Env) {
    env.source.psql(
        FIXTURE_DB,
        "create table public.bulk as select i, md5(i::text) || repeat(md5((i * 7)::text), 8) as t from generate_series(1, 300000) i",
    );
}

fn spawn_backup(env: &Env, endpoint: &str) -> std::process::Child {
    Command::new(assert_cmd::cargo::cargo_bin("backstop"))
        .current_dir(env.dir.path())
        .env("SOURCE_DB_URL", env.source.url(FIXTURE_DB))
        .env("S3_ENDPOINT", endpoint)
        .env("S3_KEY_ID", common::s3::KEY_ID)
        .env("S3_SECRET", common::s3::SECRET)
        .args(["backup", "--policy"])
        .arg(&env.policy)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn s3_round_trip_with_object_lock_dedup_and_damage() {
    let moto = Moto::start();
    moto.create_bucket(BUCKET, true);
    let env = s3_env(moto.endpoint(), Some(2));

    let first = env.backup_json();
    let second = env.backup_json();
    let (s1, s2) = (
        first["db"]["bytes_stored"].as_u64().unwrap(),
        second["db"]["bytes_stored"].as_u64().unwrap(),
    );
    assert!(s2 * 20 < s1, "second backup stored {s2} bytes, first {s1}");
    assert!(second["db"]["blobs_reused"].as_u64().unwrap() > 0);

    let keys = moto.keys(BUCKET);
    assert!(keys.iter().all(|k| k.starts_with("prod/")), "{keys:?}");
    assert!(
        keys.iter().any(|k| k.starts_with("prod/runs/test/")),
        "no run records: {keys:?}"
    );
    assert!(
        !keys.iter().any(|k| k.starts_with("prod/locks/")),
        "a lock was left behind: {keys:?}"
    );
    // No object holds plaintext of the fixture; every immutable object is under retention.
    let c = moto.client();
    let rt = common::s3::rt();
    for k in &keys {
        let body = moto.get(BUCKET, k);
        for canary in [
            &b"FOODBIZ-CANARY-7f3a9c"[..],
            "김치찌개".as_bytes(),
            b"foodbiz.example",
        ] {
            assert!(
                !body.windows(canary.len()).any(|w| w == canary),
                "{k} holds plaintext"
            );
        }
        let head = rt
            .block_on(c.head_object().bucket(BUCKET).key(k).send())
            .unwrap();
        assert_eq!(
            head.object_lock_mode().map(|m| m.as_str()),
            Some("GOVERNANCE"),
            "{k} has no retention"
        );
    }

    let (code, rec, stderr) = env.restore_json(&env.scratch.url("from_s3"), &[]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(rec["snapshot_id"], second["snapshot_id"]);
    assert_eq!(
        table_contents(&env.source, FIXTURE_DB),
        table_contents(&env.scratch, "from_s3")
    );

    // One flipped byte in one blob: exit 1 naming it.
    let blob = keys
        .iter()
        .find(|k| k.starts_with("prod/blobs/"))
        .unwrap()
        .clone();
    let id = blob.rsplit('/').next().unwrap().to_string();
    let mut bytes = moto.get(BUCKET, &blob);
    let at = bytes.len() / 2;
    bytes[at] ^= 0x40;
    moto.put(BUCKET, &blob, bytes);
    let (code, _, stderr) = env.restore_json(&env.scratch.url("damaged"), &[]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains(&format!("blob {id} is damaged")),
        "{stderr}"
    );

    // Removing meta.json hides the snapshot.
    let sid = second["snapshot_id"].as_str().unwrap();
    moto.delete(BUCKET, &format!("prod/snapshots/test/{sid}/meta.json"));
    let (_, out, _) = run(env
        .backstop()
        .args(["snapshots", "--json", "--policy"])
        .arg(&env.policy));
    let list: serde_json::Value = serde_json::from_str(&out).unwrap();
    let ids: Vec<_> = list["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        ids,
        vec![first["snapshot_id"].as_str().unwrap().to_string()]
    );
}

#[test]
fn a_network_cut_fails_the_backup_and_the_next_one_reuses_what_was_uploaded() {
    let moto = Moto::start();
    moto.create_bucket(BUCKET, false);
    let proxy = Proxy::start(moto.port);
    let env = s3_env(proxy.endpoint(), None);
    add_bulk(&env);

    let child = spawn_backup(&env, &proxy.endpoint());
    let deadline = Instant::now() + Duration::from_secs(60);
    while moto
        .keys(BUCKET)
        .iter()
        .filter(|k| k.contains("/blobs/"))
        .count()
        < 5
    {
        assert!(Instant::now() < deadline, "no blobs uploaded within 60s");
        std::thread::sleep(Duration::from_millis(20));
    }
    proxy.cut();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("s3:") && stderr.contains("cannot reach"),
        "{stderr}"
    );
    let keys = moto.keys(BUCKET);
    assert!(
        !keys.iter().any(|k| k.ends_with("meta.json")),
        "a cut backup left a snapshot"
    );
    let uploaded = keys.iter().filter(|k| k.contains("/blobs/")).count();

    proxy.restore();
    let rec = env.backup_json();
    assert_eq!(rec["ok"], true);
    let reused = rec["db"]["blobs_reused"].as_u64().unwrap();
    // Every uploaded blob but the first, which holds pg_dump's header (dump time and TOC) and
    // so differs on every run, is reused.
    assert!(
        reused as usize >= uploaded - 1,
        "reused {reused} of {uploaded} uploaded blobs: {rec}"
    );
}

fn two_at_once(env: &Env, endpoint: &str) {
    add_bulk(env);
    let a = spawn_backup(env, endpoint);
    let b = spawn_backup(env, endpoint);
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    let mut codes = vec![a.status.code().unwrap(), b.status.code().unwrap()];
    codes.sort();
    let loser = if a.status.code() == Some(4) { &a } else { &b };
    let stderr = String::from_utf8_lossy(&loser.stderr);
    assert_eq!(codes, vec![0, 4], "{stderr}");
    assert!(
        stderr.contains("is locked by another run: backup run"),
        "{stderr}"
    );
}

#[test]
fn two_backups_at_once_one_completes_the_other_exits_4() {
    let local = Env::new();
    two_at_once(&local, "unused");
    assert_eq!(local.meta_files().len(), 1);
    assert!(
        !local.repo.join("locks/test.json").exists(),
        "lock left behind"
    );

    let moto = Moto::start();
    moto.create_bucket(BUCKET, false);
    let env = s3_env(moto.endpoint(), None);
    two_at_once(&env, &moto.endpoint());
    let keys = moto.keys(BUCKET);
    assert_eq!(keys.iter().filter(|k| k.ends_with("meta.json")).count(), 1);
    assert!(!keys.iter().any(|k| k.contains("/locks/")));
}

#[test]
fn misconfigured_s3_gets_clear_errors_and_leaves_nothing() {
    let moto = Moto::start();
    moto.create_bucket("plain", false);
    let spec = |bucket: &str, endpoint: String, lock: Option<u32>| RepoSpec::S3 {
        endpoint,
        bucket: bucket.into(),
        prefix: "prod".into(),
        object_lock_days: lock,
    };

    // A missing bucket: exit 2, naming it.
    let env = Env::uninitialized(spec("nope", moto.endpoint(), None));
    for cmd in ["init", "backup"] {
        let (code, _, stderr) = run(env.backstop().args([cmd, "--policy"]).arg(&env.policy));
        assert_eq!(code, 2, "{cmd}: {stderr}");
        assert!(
            stderr.contains("bucket nope") && stderr.contains("does not exist"),
            "{cmd}: {stderr}"
        );
    }

    // Object lock asked of a bucket without it: exit 2, and nothing written.
    let env = Env::uninitialized(spec("plain", moto.endpoint(), Some(7)));
    let (code, _, stderr) = run(env.backstop().args(["init", "--policy"]).arg(&env.policy));
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("bucket plain") && stderr.contains("does not have object lock enabled"),
        "{stderr}"
    );
    assert!(moto.keys("plain").is_empty());

    // An unreachable endpoint: exit 1, naming it.
    let port = common::pg::free_port();
    let env = Env::uninitialized(spec("plain", format!("http://127.0.0.1:{port}"), None));
    let (code, _, stderr) = run(env.backstop().args(["init", "--policy"]).arg(&env.policy));
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains(&format!("cannot reach http://127.0.0.1:{port}")),
        "{stderr}"
    );

    // Wrong credentials (a server that enforces authentication): exit 2, never echoing the secret.
    let strict = Moto::start_with(&[("INITIAL_NO_AUTH_ACTION_COUNT", "0")]);
    let env = Env::uninitialized(spec("plain", strict.endpoint(), None));
    let (code, out, stderr) = run(env.backstop().args(["init", "--policy"]).arg(&env.policy));
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("credentials were refused"), "{stderr}");
    assert!(!stderr.contains(common::s3::SECRET) && !out.contains(common::s3::SECRET));

    // A known key with a wrong secret (the server checks signatures): exit 2, refused.
    let (signed, key_id, secret) = Moto::with_user("plain");
    let env = Env::uninitialized(spec("plain", signed.endpoint(), None));
    let (code, _, stderr) = run(env
        .backstop()
        .env("S3_KEY_ID", &key_id)
        .env("S3_SECRET", "not-the-secret")
        .args(["init", "--policy"])
        .arg(&env.policy));
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("SignatureDoesNotMatch") && stderr.contains("credentials were refused"),
        "{stderr}"
    );
    // The right secret works there.
    let (code, _, stderr) = run(env
        .backstop()
        .env("S3_KEY_ID", &key_id)
        .env("S3_SECRET", &secret)
        .args(["init", "--policy"])
        .arg(&env.policy));
    assert_eq!(code, 0, "{stderr}");
}

/// Runs one command against the repository behind `proxy` while it cuts answers: once, then
/// every tenth. Each run must succeed and each must actually have met a cut.
fn under_cuts(proxy: &Proxy, what: &str, mut cmd: impl FnMut(&str) -> (i32, String)) {
    for (case, once, every) in [("one cut", 1, 0), ("10% cut", 0, 10)] {
        proxy.cut_bodies(once, every);
        let before = proxy.cuts();
        let (code, stderr) = cmd(&format!("{what}{once}"));
        proxy.cut_bodies(0, 0);
        assert_eq!(code, 0, "{what}, {case}: {stderr}");
        assert!(proxy.cuts() > before, "{what}, {case}: nothing was cut");
    }
}

#[test]
fn cut_answers_are_read_again_by_restore_verify_and_check() {
    let moto = Moto::start();
    moto.create_bucket(BUCKET, false);
    let proxy = Proxy::start(moto.port);
    let env = s3_env(proxy.endpoint(), None);
    env.backup_json();
    let expected = table_contents(&env.source, FIXTURE_DB);

    under_cuts(&proxy, "restore", |db| {
        let (code, rec, stderr) = env.restore_json(&env.scratch.url(db), &[]);
        if code == 0 {
            assert_eq!(table_contents(&env.scratch, db), expected, "{rec}");
        }
        (code, stderr)
    });
    under_cuts(&proxy, "verify", |_| {
        let (code, out, stderr) = run(env
            .backstop()
            .args(["verify", "--json", "--policy"])
            .arg(&env.policy)
            .arg("--scratch-url")
            .arg(env.scratch.url("postgres")));
        let rec: serde_json::Value = serde_json::from_str(&out).unwrap();
        if code == 0 {
            let tables = rec["tables"].as_array().unwrap();
            assert!(tables.len() > 5, "{rec}");
            assert!(tables.iter().all(|t| t["checksum_ok"] == true), "{rec}");
        }
        (code, stderr)
    });
    under_cuts(&proxy, "check", |_| {
        let (code, out, stderr) = run(env
            .backstop()
            .args(["check", "--read-data", "--json", "--policy"])
            .arg(&env.policy));
        let rec: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(rec["damaged"], serde_json::json!([]), "{rec}");
        (code, stderr)
    });
}
