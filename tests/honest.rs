//! Honest verdicts and no leaks: a malformed URL or a lowercase private key never shows a
//! secret; check with the identity proves meta.json against the manifest; misleading inputs
//! get one right message; health checks get only their own job's pings; an unreachable store
//! is not a damaged backup; every upload is confirmed; the record tells the truth about the
//! commit; recovery of backstop.json after a key rotation.

mod common;

use common::hooks::Receiver;
use common::s3::{Moto, Proxy};
use common::{run, run_json, Env, RepoSpec, FIXTURE_DB};
use serde_json::Value;
use std::time::{Duration, Instant};

/// Every `n`-character piece of `secret`: none may appear in what an operator or a receiver
/// sees.
fn pieces(secret: &str, n: usize) -> Vec<String> {
    let chars: Vec<char> = secret.chars().collect();
    chars.windows(n).map(|w| w.iter().collect()).collect()
}

fn assert_hidden(secret: &str, text: &str, what: &str) {
    assert_hidden_in(secret, 3, text, what);
}

/// [`assert_hidden`] with pieces of `n` characters: a random key's 3-character pieces are
/// English trigrams often enough (`nts` in "recipients") to fail for nothing.
fn assert_hidden_in(secret: &str, n: usize, text: &str, what: &str) {
    for p in pieces(secret, n) {
        assert!(
            !text.contains(&p),
            "{what} shows `{p}` of the secret: {text}"
        );
    }
}

#[test]
fn a_malformed_password_or_a_lowercase_private_key_is_never_shown() {
    let env = Env::new();
    let hooks = Receiver::start();
    // A password with unencoded `@`, `#`, `/` and `?`: every URL parser ends it early.
    let password = "Zq@Wv#Kp/Yx?Jm";
    let port = env.source.url(FIXTURE_DB);
    let port = port.rsplit(':').next().unwrap().split('/').next().unwrap();
    let bad_url = format!("postgres://postgres:{password}@127.0.0.1:{port}/{FIXTURE_DB}");
    let dir = env.dir.path().join("policies");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("test.toml");
    env.write_policy(
        &path,
        &format!(
            "\n[notify]\nwebhook = \"{}\"\nwebhook_format = \"json\"\n",
            hooks.url("/hook")
        ),
    );
    let with_bad = |args: &[&str]| {
        run(env
            .backstop()
            .env("SOURCE_DB_URL", &bad_url)
            .args(args)
            .arg(&path))
    };
    for args in [
        &["backup", "--json", "--policy"][..],
        &["policy", "validate"][..],
    ] {
        let (code, out, stderr) = with_bad(args);
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert_hidden(password, &out, "stdout");
        assert_hidden(password, &stderr, "stderr");
        assert!(
            stderr.contains("percent-encode") && stderr.contains("`@`") && stderr.contains("`#`"),
            "{stderr}"
        );
        assert!(!stderr.contains("server is running"), "{stderr}");
    }
    // A --db-url spelled the same way.
    let (code, out, stderr) = run(env
        .backstop()
        .args(["restore", "--json", "--db-url", &bad_url, "--policy"])
        .arg(&path));
    assert_eq!(code, 2, "{stderr}");
    assert_hidden(password, &format!("{out}{stderr}"), "restore");
    // The daemon refuses the policy and alerts: the alert shows no piece of it either.
    let (code, _, stderr) = run(env
        .backstop()
        .env("SOURCE_DB_URL", &bad_url)
        .args(["daemon", "--policies"])
        .arg(&dir));
    assert_eq!(code, 2, "{stderr}");
    assert_hidden(password, &stderr, "daemon stderr");
    let hits = hooks.hits();
    assert!(!hits.is_empty(), "no alert: {stderr}");
    for h in &hits {
        assert_hidden(password, &h.body, "webhook body");
    }

    // An age private key in lower case (the same key: bech32 ignores case) as a recipient.
    let out = common::bin().args(["keygen"]).output().expect("keygen");
    let identity = String::from_utf8_lossy(&out.stdout).to_string();
    let secret = identity
        .lines()
        .find(|l| l.starts_with("AGE-SECRET-KEY-"))
        .expect("keygen prints the identity")
        .to_lowercase();
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace(&env.recipient, &secret);
    std::fs::write(&path, text).unwrap();
    let tail = &secret["age-secret-key-1".len()..];
    for args in [
        &["policy", "validate"][..],
        &["init", "--policy"][..],
        &["backup", "--json", "--policy"][..],
        &["snapshots", "--json", "--policy"][..],
    ] {
        let (code, out, stderr) = run(env.backstop().args(args).arg(&path));
        assert_eq!(code, 2, "{args:?}: {stderr}");
        let seen = format!("{out}{stderr}").to_lowercase();
        assert_hidden_in(tail, 6, &seen, &format!("{args:?}"));
        assert!(seen.contains("private key"), "{args:?}: {stderr}");
    }
}

#[test]
fn check_with_the_identity_proves_meta_json_against_the_manifest_and_inputs_do_not_mislead() {
    let env = Env::new();
    env.backup_json();
    let meta = env.meta_files().pop().unwrap();
    let mut m: Value = serde_json::from_slice(&std::fs::read(&meta).unwrap()).unwrap();
    let dropped = m["blobs"].as_array_mut().unwrap().remove(0);
    let dropped = dropped["id"].as_str().unwrap().to_string();
    std::fs::write(&meta, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
    let (code, rec, stderr) = run_json(
        env.backstop()
            .args(["check", "--json", "--policy"])
            .arg(&env.policy)
            .arg("--identity")
            .arg(&env.identity),
    );
    assert_eq!(code, 3, "{stderr}");
    let named =
        rec["damaged"].as_array().unwrap().iter().any(|d| {
            d["blob"] == dropped.as_str() && d["problem"].as_str().unwrap().contains("prune")
        });
    assert!(named, "{rec}");

    // restore --force never drops the policy's own source database.
    let (code, rec, stderr) = env.restore_json(&env.source.url(FIXTURE_DB), &["--force"]);
    assert_eq!(code, 2, "{stderr}\n{rec}");
    assert!(stderr.contains("--force-source"), "{stderr}");
    assert!(!stderr.contains("pass --force to"), "{stderr}");
    let spelled = env.source.url(FIXTURE_DB).replace("127.0.0.1", "localhost");
    let (code, _, stderr) = env.restore_json(&spelled, &["--force"]);
    assert_eq!(code, 2, "{stderr}");

    // An unknown storage kind is one message, not two.
    env.write_policy(
        &env.policy,
        "\n[storage]\nkind = \"ftp\"\nbuckets = [\"documents\"]\n",
    );
    let (code, _, stderr) = run(env.backstop().args(["policy", "validate"]).arg(&env.policy));
    assert_eq!(code, 2);
    assert!(stderr.contains("`ftp` is not one of"), "{stderr}");
    assert!(!stderr.contains("needs path"), "{stderr}");
}

#[test]
fn an_object_named_dotdot_is_named_and_everything_else_is_backed_up() {
    let env = Env::new();
    let root = env.dir.path().join("supabase");
    let double = common::supabase::Supabase::start(&root);
    for (name, body) in [
        ("..", "dots"),
        ("menu.txt", "kimchi"),
        ("a/b.txt", "bibimbap"),
    ] {
        let p = double.object_path("documents", name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, body).unwrap();
    }
    env.write_policy(
        &env.policy,
        &format!(
            "\n[storage]\nkind = \"supabase\"\nurl = \"{}\"\nkey = \"${{SUPABASE_KEY}}\"\nbuckets = [\"documents\"]\n",
            double.url()
        ),
    );
    let (code, rec, stderr) = run_json(
        env.backstop()
            .args(["backup", "--only", "storage", "--json", "--policy"])
            .arg(&env.policy),
    );
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(rec["storage"]["objects"], 2, "{rec}");
    let unfetchable = rec["storage"]["unfetchable"].to_string();
    assert!(
        unfetchable.contains("documents/..") && unfetchable.contains("S3"),
        "{rec}"
    );
    assert!(stderr.contains("not backed up"), "{stderr}");
}

#[test]
fn each_health_check_gets_only_its_own_jobs_pings() {
    let env = Env::new();
    let hooks = Receiver::start();
    env.write_policy(
        &env.policy,
        &format!(
            "\n[verify]\nscratch_url = \"${{SCRATCH_URL}}\"\n\n[notify]\nhealthcheck = \"{}\"\nhealthcheck_verify = \"{}\"\n",
            hooks.url("/hc-backup"),
            hooks.url("/hc-verify")
        ),
    );
    for args in [
        &["backup", "--policy"][..],
        &["verify", "--policy"][..],
        &["prune", "--policy"][..],
    ] {
        let (code, _, stderr) = run(env.backstop().args(args).arg(&env.policy));
        assert_eq!(code, 0, "{args:?}: {stderr}");
    }
    let hits = hooks.hits();
    let kinds = |prefix: &str| -> Vec<String> {
        hits.iter()
            .filter(|h| h.path.starts_with(prefix) && !h.path.ends_with("/start"))
            .map(|h| {
                serde_json::from_str::<Value>(&h.body).unwrap()["kind"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect()
    };
    assert_eq!(kinds("/hc-backup"), vec!["backup"], "{:?}", hits.len());
    assert_eq!(kinds("/hc-verify"), vec!["verify"]);
    assert_eq!(
        hits.iter().filter(|h| h.path.ends_with("/start")).count(),
        2,
        "a start ping per job that has a check, none for prune"
    );
}

const BUCKET: &str = "backups";

fn s3_env(endpoint: String) -> Env {
    Env::with_repo(RepoSpec::S3 {
        endpoint,
        bucket: BUCKET.into(),
        prefix: "prod".into(),
        object_lock_days: None,
    })
}

#[test]
fn an_unreachable_store_is_not_a_damaged_backup() {
    let moto = Moto::start();
    moto.create_bucket(BUCKET, false);
    let proxy = Proxy::start(moto.port);
    let env = s3_env(proxy.endpoint());
    let docs = env.dir.path().join("bucket/documents");
    std::fs::create_dir_all(&docs).unwrap();
    for i in 0..40 {
        std::fs::write(
            docs.join(format!("{i}.bin")),
            common::documents::bytes(400_000, i),
        )
        .unwrap();
    }
    env.write_policy(
        &env.policy,
        &format!(
            "\n[storage]\nkind = \"dir\"\npath = \"{}\"\nbuckets = [\"documents\"]\n",
            docs.parent().unwrap().display()
        ),
    );
    env.backup_json();
    for args in [
        vec!["verify", "--read-data", "all", "--json", "--scratch-url"],
        vec!["check", "--read-data", "--json"],
    ] {
        let mut cmd = std::process::Command::new(assert_cmd::cargo::cargo_bin("backstop"));
        cmd.current_dir(env.dir.path())
            .env("SOURCE_DB_URL", env.source.url(FIXTURE_DB))
            .env("BACKSTOP_IDENTITY", &env.identity)
            .env("S3_ENDPOINT", proxy.endpoint())
            .env("S3_KEY_ID", common::s3::KEY_ID)
            .env("S3_SECRET", common::s3::SECRET)
            .args(&args);
        if args[0] == "verify" {
            cmd.arg(env.scratch.url("postgres"));
        }
        let child = cmd
            .arg("--policy")
            .arg(&env.policy)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(if args[0] == "verify" {
            2500
        } else {
            300
        }));
        proxy.cut();
        let out = child.wait_with_output().unwrap();
        proxy.restore();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let rec: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(out.status.code(), Some(1), "{}: {stderr}\n{rec}", args[0]);
        assert_eq!(rec["ok"], false);
        if args[0] == "verify" {
            assert_eq!(rec["problems"], serde_json::json!([]), "{rec}");
            assert_eq!(rec["objects_failed"], 0, "{rec}");
        } else {
            assert_eq!(rec["damaged"], serde_json::json!([]), "{rec}");
        }
    }
}

#[test]
fn uploads_are_confirmed_byte_for_byte_and_the_record_tells_the_truth_about_the_commit() {
    let moto = Moto::start();
    moto.create_bucket(BUCKET, false);
    let proxy = Proxy::start(moto.port);
    let env = s3_env(proxy.endpoint());
    // One flipped byte in every fifth blob body on its way to the store.
    proxy.flip_request_bodies(5);
    let (code, rec, stderr) = run_json(
        env.backstop()
            .args(["backup", "--json", "--policy"])
            .arg(&env.policy),
    );
    proxy.flip_request_bodies(0);
    let flipped = proxy
        .faults()
        .flipped
        .load(std::sync::atomic::Ordering::SeqCst);
    assert!(flipped > 0, "nothing was flipped");
    assert!(code == 0 || code == 1, "{stderr}");
    let direct = |args: &[&str]| {
        run_json(
            env.backstop()
                .env("S3_ENDPOINT", moto.endpoint())
                .args(args)
                .arg("--policy")
                .arg(&env.policy),
        )
    };
    let (code, check, stderr) = direct(&["check", "--read-data", "--json"]);
    assert_eq!(code, 0, "{stderr}\n{check}\nbackup: {rec}");
    assert_eq!(check["damaged"], serde_json::json!([]));

    // Every answer to the meta.json write lost: the snapshot is committed, and the record says
    // so.
    proxy.drop_answers(Some("meta.json"));
    let started = Instant::now();
    let (code, rec, stderr) = run_json(
        env.backstop()
            .args(["backup", "--json", "--policy"])
            .arg(&env.policy),
    );
    proxy.drop_answers(None);
    assert!(
        proxy
            .faults()
            .dropped
            .load(std::sync::atomic::Ordering::SeqCst)
            > 0
    );
    let (_, list, _) = direct(&["snapshots", "--json"]);
    let ids: Vec<String> = list["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(rec["ok"], true, "{rec}");
    let id = rec["snapshot_id"].as_str().unwrap();
    assert!(ids.iter().any(|i| i == id), "{ids:?} lacks {id}");
    assert!(started.elapsed() < Duration::from_secs(120));
}

#[test]
fn backstop_json_is_recovered_with_the_older_key_after_a_rotation() {
    let env = Env::new();
    env.backup_json();
    let old_identity = env.identity.clone();
    let new_identity = env.dir.path().join("key2.txt");
    let out = common::bin()
        .args(["keygen", "--out"])
        .arg(&new_identity)
        .output()
        .unwrap();
    let new_recipient = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let text = std::fs::read_to_string(&env.policy)
        .unwrap()
        .replace(&env.recipient, &new_recipient);
    std::fs::write(&env.policy, text).unwrap();
    env.backup_json();
    std::fs::remove_file(env.repo.join("backstop.json")).unwrap();
    let (code, _, stderr) = run(env
        .backstop()
        .args(["init", "--recover", "--identity"])
        .arg(&old_identity)
        .arg("--policy")
        .arg(&env.policy));
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("from the manifest of snapshot"), "{stderr}");
    assert!(env.repo.join("backstop.json").exists());
}
