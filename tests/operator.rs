//! The operator on a recovery host: read-only commands and restore resolve only the `${VAR}`s
//! they use, `--no-notify` (or `BACKSTOP_NO_NOTIFY=1`) sends nothing, and `--json` prints one
//! JSON document on every failure.

mod common;

use assert_cmd::Command;
use common::hooks::Receiver;
use common::{bin, run, run_json, Env};
use serde_json::Value;

const NOTIFY: &str = "
[verify]
scratch_url = \"${SCRATCH_URL}\"

[notify]
webhook = \"${WEBHOOK_URL}\"
healthcheck_verify = \"${HC_URL}\"
";

/// `env.backstop()` with the notification variables pointing at `hooks`.
fn notifying(env: &Env, hooks: &Receiver) -> Command {
    let mut c = env.backstop();
    c.env("WEBHOOK_URL", hooks.url("/hook"))
        .env("HC_URL", hooks.url("/hc-verify"));
    c
}

/// `env.backstop()` on a host that knows only the identity and the repository.
fn recovery_host(env: &Env) -> Command {
    let mut c = env.backstop();
    for var in ["WEBHOOK_URL", "HC_URL", "SOURCE_DB_URL", "SCRATCH_URL"] {
        c.env_remove(var);
    }
    c
}

#[test]
fn read_only_commands_and_restore_resolve_only_the_variables_they_use() {
    let env = Env::new();
    env.write_policy(&env.policy, NOTIFY);
    let hooks = Receiver::start();
    let (code, _, stderr) = run(notifying(&env, &hooks)
        .args(["backup", "--policy"])
        .arg(&env.policy));
    assert_eq!(code, 0, "{stderr}");
    let p = env.policy.to_str().unwrap();

    let (code, rec, stderr) =
        run_json(recovery_host(&env).args(["snapshots", "--json", "--policy", p]));
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(rec["snapshots"].as_array().unwrap().len(), 1);
    let (code, rec, stderr) =
        run_json(recovery_host(&env).args(["report", "--format", "json", "--policy", p]));
    assert!(code == 0 || code == 3, "{stderr}");
    assert_eq!(rec["policies"][0]["name"], "test", "{rec}");
    for args in [
        &["runbook", "--policy", p][..],
        &["check", "--policy", p][..],
    ] {
        let (code, _, stderr) = run(recovery_host(&env).args(args));
        assert_eq!(code, 0, "{args:?}: {stderr}");
    }
    let target = env.scratch.url("restored");
    let (code, _, stderr) =
        run(recovery_host(&env).args(["restore", "--policy", p, "--db-url", &target]));
    assert_eq!(code, 0, "{stderr}");

    // A command that uses a variable still names it.
    let (code, _, stderr) = run(recovery_host(&env).args(["backup", "--policy", p]));
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("WEBHOOK_URL"), "{stderr}");
    let (code, _, stderr) = run(recovery_host(&env).args(["verify", "--policy", p]));
    assert_eq!(
        code, 2,
        "verify without --no-notify needs [notify]: {stderr}"
    );
    assert!(stderr.contains("WEBHOOK_URL"), "{stderr}");
    let (code, _, stderr) = run(recovery_host(&env).args(["--no-notify", "verify", "--policy", p]));
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("verify.scratch_url") && stderr.contains("SCRATCH_URL"),
        "{stderr}"
    );
    assert!(hooks.hits().is_empty(), "{:?}", hooks.hits());
}

#[test]
fn no_notify_sends_nothing_and_without_it_verify_pings() {
    let env = Env::new();
    env.write_policy(&env.policy, NOTIFY);
    let hooks = Receiver::start();
    let p = env.policy.to_str().unwrap();
    let (code, _, stderr) = run(notifying(&env, &hooks).args(["backup", "--policy", p]));
    assert_eq!(code, 0, "{stderr}");
    let backup_hits = hooks.hits().len();
    let (code, _, stderr) =
        run(notifying(&env, &hooks).args(["verify", "--no-notify", "--policy", p]));
    assert_eq!(code, 0, "{stderr}");
    let (code, _, stderr) = run(notifying(&env, &hooks)
        .env("BACKSTOP_NO_NOTIFY", "1")
        .args(["verify", "--policy", p]));
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(hooks.hits().len(), backup_hits, "{:?}", hooks.hits());
    let (code, _, stderr) = run(notifying(&env, &hooks).args(["verify", "--policy", p]));
    assert_eq!(code, 0, "{stderr}");
    assert!(
        hooks
            .hits()
            .iter()
            .any(|h| h.path.starts_with("/hc-verify")),
        "without --no-notify the verify pings: {:?}",
        hooks.hits()
    );
}

/// Every command with `--json` prints one document with `ok: false` and its kind when it
/// fails, whether the policy does not load or the repository does not exist.
#[test]
fn json_on_every_failure() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key.txt");
    let out = bin().args(["keygen", "--out"]).arg(&key).output().unwrap();
    let recipient = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let policy = dir.path().join("norepo.toml");
    std::fs::write(
        &policy,
        format!(
            "name = \"norepo\"\n[database]\nurl = \"${{NOT_SET_DB_URL}}\"\n[repository]\nurl = \"{}\"\n[encryption]\nrecipients = [\"{recipient}\"]\n",
            dir.path().join("missing-repo").display()
        ),
    )
    .unwrap();
    let missing = dir.path().join("no-such-policy.toml");
    let scratch = "postgres://nobody@127.0.0.1:1/none";
    let commands: [(&str, &[&str]); 8] = [
        ("backup", &["backup", "--json"]),
        ("snapshots", &["snapshots", "--json"]),
        ("restore", &["restore", "--json", "--db-url", scratch]),
        ("verify", &["verify", "--json", "--scratch-url", scratch]),
        ("check", &["check", "--json"]),
        ("prune", &["prune", "--json"]),
        ("stream", &["stream", "--status", "--json"]),
        ("report", &["report", "--format", "json"]),
    ];
    for (kind, args) in commands {
        for p in [&missing, &policy] {
            let out = bin()
                .current_dir(dir.path())
                .env("BACKSTOP_IDENTITY", &key)
                .env_remove("NOT_SET_DB_URL")
                .args(args)
                .arg("--policy")
                .arg(p)
                .output()
                .unwrap();
            let code = out.status.code().unwrap_or(-1);
            let stdout = String::from_utf8_lossy(&out.stdout);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_ne!(code, 0, "{kind} on {}: {stderr}", p.display());
            let doc: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
                panic!(
                    "{kind} on {}: not one JSON document ({e}): {stdout:?}; {stderr}",
                    p.display()
                )
            });
            assert_eq!(doc["ok"], false, "{kind}: {doc}");
            assert_eq!(doc["kind"], kind, "{doc}");
            let error = doc["error"].as_str().unwrap_or_default();
            assert!(
                !error.is_empty(),
                "{kind} on {}: no error in {doc}",
                p.display()
            );
        }
    }
}

/// A verify given an identity file that is none of the recipients is the operator's mistake:
/// exit 2, said on the terminal, no `verify_failure` alert. The same key from the daemon, or a
/// snapshot that the right key cannot open, still alerts (tests/failures.rs, tests/records.rs).
#[test]
fn verify_with_a_wrong_identity_file_exits_2_without_an_alert() {
    let env = Env::new();
    env.write_policy(&env.policy, NOTIFY);
    let hooks = Receiver::start();
    let p = env.policy.to_str().unwrap();
    let (code, _, stderr) = run(notifying(&env, &hooks).args(["backup", "--policy", p]));
    assert_eq!(code, 0, "{stderr}");
    let before = hooks.hits().len();
    let other = env.dir.path().join("other.txt");
    bin()
        .args(["keygen", "--out"])
        .arg(&other)
        .assert()
        .success();
    let (code, rec, stderr) = run_json(
        notifying(&env, &hooks)
            .args(["verify", "--json", "--policy", p, "--identity"])
            .arg(&other),
    );
    assert_eq!(code, 2, "{stderr}");
    assert_eq!(rec["ok"], false);
    assert!(stderr.contains("is not one of the recipients"), "{stderr}");
    assert_eq!(hooks.hits().len(), before, "{:?}", hooks.hits());
}

/// The messages a tired operator meets say what to do.
#[test]
fn messages_for_a_tired_operator() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key.txt");
    let out = bin().args(["keygen", "--out"]).arg(&key).output().unwrap();
    let recipient = String::from_utf8_lossy(&out.stdout).trim().to_string();
    std::fs::create_dir_all(dir.path().join("policies")).unwrap();
    std::fs::write(
        dir.path().join("policies/dbonly.toml"),
        format!(
            "name = \"dbonly\"\n[database]\nurl = \"postgres://u@127.0.0.1:1/x\"\n[repository]\nurl = \"{}\"\n[encryption]\nrecipients = [\"{recipient}\"]\n",
            dir.path().join("repo").display()
        ),
    )
    .unwrap();
    let backstop = |args: &[&str]| {
        let mut c = bin();
        c.current_dir(dir.path())
            .env_remove("BACKSTOP_POLICIES")
            .args(args);
        run(&mut c)
    };
    // A mistyped name: the names there, the closest one, and where names are looked up.
    let (code, _, stderr) = backstop(&["snapshots", "--policy", "dbonyl"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("did you mean `dbonly`?"), "{stderr}");
    assert!(
        stderr.contains("--policies DIR or BACKSTOP_POLICIES"),
        "{stderr}"
    );
    // A repository that does not exist: init with the policy's real name.
    let (code, _, stderr) = backstop(&["snapshots", "--policy", "dbonly"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("create it with `backstop init --policy dbonly`"),
        "{stderr}"
    );
    // Durations: months and milliseconds are not units, and the message says what to write.
    let (code, _, stderr) = backstop(&["prune", "--policy", "dbonly", "--wait", "1mo"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("months are not a unit") && stderr.contains("30d"),
        "{stderr}"
    );
    let missing = dir.path().join("nowhere");
    let (code, _, stderr) = backstop(&[
        "daemon",
        "--grace",
        "1ms",
        "--policies",
        missing.to_str().unwrap(),
    ]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("whole seconds"), "{stderr}");
    // The daemon on a directory that does not exist says so.
    let (code, _, stderr) = backstop(&["daemon", "--policies", missing.to_str().unwrap()]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("does not exist"), "{stderr}");
    // The usage line shows only what is required.
    let (_, usage, _) = backstop(&["backup", "--help"]);
    let line = usage.lines().find(|l| l.starts_with("Usage:")).unwrap();
    assert!(!line.contains("--policies"), "{line}");
}
