//! Run records are read back as the types they were written as: a policy whose name contains
//! another kind's name is counted right, a missing repository is the operator's to fix, and a
//! daemon job that cannot start still leaves its record and alerts once.

mod common;

use common::hooks::Receiver;
use common::{run, run_json, Env, FIXTURE_DB};
use serde_json::Value;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn a_policy_named_like_a_kind_is_counted_by_the_report_and_the_metrics() {
    let env = Env::new();
    let path = env.dir.path().join("shop-backup-eu.toml");
    env.write_policy(
        &path,
        "\n[verify]\nscratch_url = \"postgres://nobody@127.0.0.1:1/none\"\n",
    );
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("name = \"test\"", "name = \"shop-backup-eu\"");
    std::fs::write(&path, text).unwrap();
    let metrics = env.dir.path().join("metrics.prom");
    let (code, _, stderr) = run(env
        .backstop()
        .args(["backup", "--metrics-file"])
        .arg(&metrics)
        .arg("--policy")
        .arg(&path));
    assert_eq!(code, 0, "{stderr}");
    let (code, _, _) = run(env.backstop().args(["verify", "--policy"]).arg(&path));
    assert_ne!(code, 0, "the verify's scratch server does not exist");
    let (code, _, stderr) = run(env
        .backstop()
        .args(["prune", "--metrics-file"])
        .arg(&metrics)
        .arg("--policy")
        .arg(&path));
    assert_eq!(code, 0, "{stderr}");
    let (_, report, _) = run_json(
        env.backstop()
            .args(["report", "--format", "json", "--window", "1d", "--policy"])
            .arg(&path),
    );
    let controls = report["policies"][0]["controls"].as_array().unwrap();
    let control = |id: &str| controls.iter().find(|c| c["id"] == id).unwrap().clone();
    assert_eq!(control("backup_success")["compliant"], true, "{report}");
    assert!(
        control("backup_success")["observed"]
            .as_str()
            .unwrap()
            .starts_with("1 of 1"),
        "{report}"
    );
    assert_eq!(control("verification_success")["compliant"], false);
    let text = std::fs::read_to_string(&metrics).unwrap();
    for line in [
        "backstop_runs_total{policy=\"shop-backup-eu\",job=\"backup\",outcome=\"success\"} 1",
        "backstop_runs_total{policy=\"shop-backup-eu\",job=\"backup\",outcome=\"failure\"} 0",
        "backstop_runs_total{policy=\"shop-backup-eu\",job=\"verify\",outcome=\"failure\"} 1",
        "backstop_runs_total{policy=\"shop-backup-eu\",job=\"prune\",outcome=\"success\"} 1",
    ] {
        assert!(text.contains(line), "no `{line}` in:\n{text}");
    }
}

#[test]
fn the_metrics_count_bytes_stored_by_files_and_git_too() {
    let rec: backstop::record::BackupRecord = serde_json::from_value(serde_json::json!({
        "kind": "backup", "ok": true,
        "db": {"bytes_stored": 1}, "storage": {"bytes_stored": 10},
        "files": {"bytes_stored": 100}, "git": {"bytes_stored": 1000, "repositories": []}
    }))
    .unwrap();
    assert_eq!(rec.bytes_stored(), 1111);
}

#[test]
fn a_report_on_a_repository_that_does_not_exist_exits_2() {
    let env = Env::uninitialized(common::RepoSpec::Local);
    let (code, _, stderr) = run(env.backstop().args(["report", "--policy"]).arg(&env.policy));
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("backstop init"), "{stderr}");
}

#[test]
fn a_daemon_verify_that_cannot_start_leaves_a_record_and_alerts_once() {
    let env = Env::new();
    env.backup_json();
    let hooks = Receiver::start();
    let dir = env.dir.path().join("policies");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("test.toml");
    env.write_policy(
        &path,
        &format!(
            "\n[verify]\nscratch_url = \"${{SCRATCH_URL}}\"\nidentity = \"{}\"\n\n[notify]\nwebhook = \"{}\"\nwebhook_format = \"json\"\n",
            env.dir.path().join("no-such-key.txt").display(),
            hooks.url("/hook")
        ),
    );
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("backup = \"0 3 * * *\"", "verify = \"*/2 * * * * *\"");
    std::fs::write(&path, text).unwrap();
    let mut daemon = Command::new(assert_cmd::cargo::cargo_bin("backstop"))
        .current_dir(env.dir.path())
        .env("SOURCE_DB_URL", env.source.url(FIXTURE_DB))
        .env("SCRATCH_URL", env.scratch.url("postgres"))
        .env_remove("BACKSTOP_IDENTITY")
        .args(["daemon", "--policies"])
        .arg(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let verifies = || {
        common::files_under(&env.repo.join("runs/test"))
            .into_iter()
            .filter(|p| p.to_string_lossy().contains("-verify-"))
            .map(|p| serde_json::from_slice::<Value>(&std::fs::read(p).unwrap()).unwrap())
            .collect::<Vec<_>>()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while verifies().len() < 3 {
        assert!(Instant::now() < deadline, "no three verify records");
        std::thread::sleep(Duration::from_millis(200));
    }
    Command::new("kill")
        .args(["-TERM", &daemon.id().to_string()])
        .status()
        .unwrap();
    let _ = daemon.wait();
    for r in verifies() {
        assert_eq!(r["ok"], false, "{r}");
        assert!(
            r["error"].as_str().unwrap().contains("no-such-key.txt"),
            "{r}"
        );
    }
    let alerts: Vec<Value> = hooks
        .hits()
        .iter()
        .filter(|h| h.path == "/hook")
        .map(|h| serde_json::from_str(&h.body).unwrap())
        .collect();
    let failures = alerts
        .iter()
        .filter(|a| a["event"] == "verify_failure")
        .count();
    assert_eq!(failures, 1, "{alerts:?}");
}
