//! `backstop daemon` against real PostgreSQL, a real webhook/health-check receiver on
//! loopback, and its own HTTP side: schedules firing every few seconds, catch-up, metrics that
//! match the run records, SIGHUP with a broken policy, one alert per failure streak, RPO breach
//! and recovery, and SIGTERM.

mod common;

use common::hooks::Receiver;
use common::smtp::Smtp;
use common::{Env, FIXTURE_DB};
use serde_json::Value;
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn get(port: u16, path: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    // In pieces, as clients may send it: the daemon reads up to the blank line.
    for piece in ["GET ", path, " HTTP/1.1\r\n", "host: x\r\n\r\n"] {
        s.write_all(piece.as_bytes()).unwrap();
        s.flush().unwrap();
    }
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out
        .split_whitespace()
        .nth(1)
        .unwrap_or("0")
        .parse()
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|x| x.1.to_string())
        .unwrap_or_default();
    (status, body)
}

/// A running daemon, its port (it binds port 0 and says which it got) and its log so far.
struct Daemon {
    child: Child,
    port: u16,
    log: std::sync::Arc<std::sync::Mutex<String>>,
}

fn start_daemon(env: &Env, dir: &Path, vars: &[(&str, &str)], grace: &str) -> Daemon {
    let mut c = Command::new(assert_cmd::cargo::cargo_bin("backstop"));
    c.envs(vars.iter().copied());
    c.current_dir(env.dir.path())
        .env("SOURCE_DB_URL", env.source.url(FIXTURE_DB))
        .env_remove("BACKSTOP_IDENTITY")
        .args(["daemon", "--policies"])
        .arg(dir)
        .args(["--listen", "127.0.0.1:0", "--grace", grace])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let stderr = child.stderr.take().unwrap();
    let sink = log.clone();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let mut l = sink.lock().unwrap();
            l.push_str(&line);
            l.push('\n');
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let port = loop {
        let text = log.lock().unwrap().clone();
        if let Some(rest) = text.split("listening on http://127.0.0.1:").nth(1) {
            break rest.lines().next().unwrap().trim().parse::<u16>().unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "the daemon never listened: {text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    Daemon { child, port, log }
}

fn stop_daemon(daemon: Daemon) -> String {
    stop_daemon_timed(daemon).0
}

/// SIGTERM, then the log and how long the daemon took to exit 0.
fn stop_daemon_timed(daemon: Daemon) -> (String, Duration) {
    let pid = daemon.child.id().to_string();
    let t = Instant::now();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let mut child = daemon.child;
    let status = child.wait().unwrap();
    let took = t.elapsed();
    std::thread::sleep(Duration::from_millis(200));
    let log = daemon.log.lock().unwrap().clone();
    assert_eq!(
        status.code(),
        Some(0),
        "the daemon did not exit 0 on SIGTERM: {log}"
    );
    (log, took)
}

/// Backup records of `policy`: (started_at, finished_at, ok).
fn backups(env: &Env, policy: &str) -> Vec<(String, String, bool)> {
    let mut out: Vec<(String, String, bool)> =
        common::files_under(&env.repo.join("runs").join(policy))
            .iter()
            .filter(|p| p.to_string_lossy().contains("-backup-"))
            .map(|p| {
                let r: Value = serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap();
                (
                    r["started_at"].as_str().unwrap().to_string(),
                    r["finished_at"].as_str().unwrap().to_string(),
                    r["ok"] == true,
                )
            })
            .collect();
    out.sort();
    out
}

fn wait_for(what: &str, secs: u64, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A storage-only policy named `name` backing up a small directory every `every` seconds.
fn storage_policy(env: &Env, dir: &Path, name: &str, schedule: &str) {
    let docs = env.dir.path().join(format!("docs-{name}/documents"));
    std::fs::create_dir_all(&docs).unwrap();
    std::fs::write(docs.join("menu.txt"), format!("menu of {name}")).unwrap();
    let path = dir.join(format!("{name}.toml"));
    env.write_policy(
        &path,
        &format!(
            "\n[storage]\nkind = \"dir\"\npath = \"{}\"\nbuckets = [\"documents\"]\n",
            docs.parent().unwrap().display()
        ),
    );
    let text = std::fs::read_to_string(&path).unwrap();
    let text = text
        .replacen("name = \"test\"", &format!("name = \"{name}\""), 1)
        .replace("[database]\nurl = \"${SOURCE_DB_URL}\"\n", "")
        .replace(
            "backup = \"0 3 * * *\"",
            &format!("backup = \"{schedule}\""),
        );
    std::fs::write(&path, text).unwrap();
}

/// Parses Prometheus text format: every sample line is `name{labels} value`, every family has
/// HELP and TYPE; returns the samples.
fn parse_metrics(text: &str) -> Vec<(String, f64)> {
    let mut samples = Vec::new();
    let mut typed = std::collections::BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut p = rest.split_whitespace();
            typed.insert(p.next().unwrap().to_string());
            assert!(matches!(p.next(), Some("gauge" | "counter")), "{line}");
            continue;
        }
        if line.starts_with("# HELP ") || line.is_empty() {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad sample line: {line}"));
        let name = series.split('{').next().unwrap();
        assert!(typed.contains(name), "{name} has no TYPE line");
        assert!(series.ends_with('}') && series.contains('{'), "{line}");
        samples.push((
            series.to_string(),
            value
                .parse::<f64>()
                .unwrap_or_else(|_| panic!("bad value: {line}")),
        ));
    }
    samples
}

fn sample(samples: &[(String, f64)], series: &str) -> Option<f64> {
    samples.iter().find(|(s, _)| s == series).map(|(_, v)| *v)
}

#[test]
fn the_daemon_runs_two_policies_on_time_catches_up_serves_metrics_and_survives_a_broken_reload() {
    let env = Env::new();
    let dir = env.dir.path().join("policies");
    std::fs::create_dir_all(&dir).unwrap();
    storage_policy(&env, &dir, "a", "*/3 * * * * *");
    storage_policy(&env, &dir, "b", "*/3 * * * * *");
    // c backs up daily; its last success is two days old, so it runs once at start.
    storage_policy(&env, &dir, "c", "0 3 * * *");
    let old = chrono::Utc::now() - chrono::Duration::days(2);
    let runs_c = env.repo.join("runs/c");
    std::fs::create_dir_all(&runs_c).unwrap();
    std::fs::write(
        runs_c.join(format!("{}-backup-old.json", old.format("%Y%m%dT%H%M%SZ"))),
        serde_json::json!({"kind": "backup", "ok": true, "started_at": old, "finished_at": old, "duration_s": 1.0}).to_string(),
    )
    .unwrap();

    let daemon = start_daemon(&env, &dir, &[], "20s");
    let port = daemon.port;
    assert_eq!(get(port, "/healthz").0, 200);
    wait_for("three backups of a and of b", 60, || {
        backups(&env, "a").iter().filter(|b| b.2).count() >= 3
            && backups(&env, "b").iter().filter(|b| b.2).count() >= 3
    });
    // No overlap within a policy.
    for p in ["a", "b"] {
        let runs = backups(&env, p);
        for w in runs.windows(2) {
            assert!(w[0].1 <= w[1].0, "{p}: runs overlap: {w:?}");
        }
    }
    // Catch-up: c ran once at start (plus its old record), never again.
    assert_eq!(backups(&env, "c").len(), 2, "{:?}", backups(&env, "c"));

    // /metrics parses, and its totals match the records once two scrapes agree.
    let mut matched = false;
    for _ in 0..40 {
        let first = parse_metrics(&get(port, "/metrics").1);
        let records = backups(&env, "a").iter().filter(|b| b.2).count() as f64;
        std::thread::sleep(Duration::from_millis(300));
        let second = parse_metrics(&get(port, "/metrics").1);
        let series = "backstop_runs_total{policy=\"a\",job=\"backup\",outcome=\"success\"}";
        if sample(&first, series) == sample(&second, series)
            && sample(&first, series) == Some(records)
        {
            assert_eq!(
                sample(&first, "backstop_rpo_seconds{policy=\"a\"}"),
                Some(86400.0)
            );
            assert!(
                sample(&first, "backstop_recovery_point_age_seconds{policy=\"a\"}").unwrap() < 10.0
            );
            assert_eq!(
                sample(
                    &first,
                    "backstop_last_run_success{policy=\"b\",job=\"backup\"}"
                ),
                Some(1.0)
            );
            assert!(sample(&first, "backstop_snapshots{policy=\"c\"}").unwrap() >= 1.0);
            matched = true;
            break;
        }
    }
    assert!(matched, "the metrics never matched the run records");

    // SIGHUP with a broken a.toml: a keeps running its old version.
    std::fs::write(dir.join("a.toml"), "name = \"a\"\n[objectives\n").unwrap();
    Command::new("kill")
        .args(["-HUP", &daemon.child.id().to_string()])
        .status()
        .unwrap();
    let before = backups(&env, "a").len();
    wait_for("a backup of a after the broken reload", 20, || {
        backups(&env, "a").len() >= before + 2
    });
    assert_eq!(get(port, "/healthz").0, 200);

    let stderr = stop_daemon(daemon);
    assert!(
        stderr.contains("does not load, its previous version (if any) keeps running"),
        "{stderr}"
    );
}

#[test]
fn one_alert_per_failure_streak_one_recovery_rpo_breach_and_health_pings() {
    let env = Env::new();
    env.source.psql("postgres", "create database tiny");
    env.source.psql("tiny", "create table t (id int primary key, note text); insert into t select g, 'n' || g from generate_series(1, 100) g");
    let hooks = Receiver::start();
    let smtp = Smtp::start();
    let smtp_url = smtp.url();
    let dir = env.dir.path().join("policies");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("tiny.toml");
    env.write_policy(
        &path,
        &format!(
            "\n[notify]\nwebhook = \"{}\"\nwebhook_format = \"json\"\nhealthcheck = \"{}\"\n\
             email = {{ smtp_url = \"${{SMTP_URL}}\", from = \"backstop@foodbiz.example\", to = [\"ops@foodbiz.example\", \"oncall@foodbiz.example\"] }}\n",
            hooks.url("/hook"),
            hooks.url("/hc")
        ),
    );
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("${SOURCE_DB_URL}", &env.source.url("tiny"))
        .replace("rpo = \"24h\"", "rpo = \"8s\"")
        .replace("backup = \"0 3 * * *\"", "backup = \"*/3 * * * * *\"");
    std::fs::write(&path, text).unwrap();
    // A first backup from the command line, so the daemon starts with a fresh recovery point.
    let out = env
        .backstop()
        .env("SMTP_URL", &smtp_url)
        .args(["backup", "--policy"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let daemon = start_daemon(&env, &dir, &[("SMTP_URL", &smtp_url)], "20s");
    wait_for("two daemon backups", 60, || {
        backups(&env, "test").iter().filter(|b| b.2).count() >= 3
    });
    env.source.stop();
    wait_for("three failed backups and an RPO breach", 60, || {
        let failed = backups(&env, "test").iter().filter(|b| !b.2).count();
        let breach = hooks
            .hits()
            .iter()
            .any(|h| h.body.contains("\"rpo_breach\""));
        failed >= 3 && breach
    });
    env.source.resume();
    wait_for("recovery", 60, || {
        let hits = hooks.hits();
        hits.iter().any(|h| h.body.contains("\"recovered\""))
            && hits.iter().any(|h| h.body.contains("\"rpo_recovered\""))
            && smtp.messages().len() >= 4
    });
    std::thread::sleep(Duration::from_secs(4));
    let log = stop_daemon(daemon);
    assert!(
        !log.contains(common::smtp::PASSWORD) && !log.contains(&smtp_url),
        "the SMTP secret is in the log: {log}"
    );

    // The same four events by email, each once, to both recipients, after logging in.
    let mails = smtp.messages();
    let subjects: Vec<String> = mails
        .iter()
        .map(|m| {
            assert_eq!(m["from"], "backstop@foodbiz.example");
            assert_eq!(
                m["to"],
                serde_json::json!(["ops@foodbiz.example", "oncall@foodbiz.example"])
            );
            assert_eq!(m["login"], common::smtp::USER);
            let data = m["data"].as_str().unwrap().replace("\r\n ", " ");
            data.lines()
                .find_map(|l| l.strip_prefix("Subject: "))
                .unwrap_or_else(|| panic!("no subject in {data}"))
                .to_string()
        })
        .collect();
    for event in ["failure", "recovered", "rpo_breach", "rpo_recovered"] {
        let prefix = format!("backstop {event}: policy test ");
        assert_eq!(
            subjects.iter().filter(|s| s.starts_with(&prefix)).count(),
            1,
            "{event} in {subjects:?}"
        );
    }
    assert_eq!(mails.len(), 4, "{subjects:?}");

    let hits = hooks.hits();
    let events: Vec<String> = hits
        .iter()
        .filter(|h| h.path == "/hook")
        .map(|h| {
            serde_json::from_str::<Value>(&h.body).unwrap()["event"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    for event in ["failure", "recovered", "rpo_breach", "rpo_recovered"] {
        assert_eq!(
            events.iter().filter(|e| *e == event).count(),
            1,
            "{event} in {events:?}"
        );
    }
    let failure = hits
        .iter()
        .find(|h| h.body.contains("\"failure\""))
        .unwrap();
    let failure: Value = serde_json::from_str(&failure.body).unwrap();
    assert_eq!(failure["policy"], "test");
    assert!(
        failure["error"].as_str().unwrap_or("").len() > 5,
        "{failure}"
    );
    // Health checks: start then success, and start then fail.
    let pings: Vec<&str> = hits
        .iter()
        .filter(|h| h.path.starts_with("/hc"))
        .map(|h| h.path.as_str())
        .collect();
    let joined = pings.join(" ");
    assert!(joined.contains("/hc/start /hc "), "{joined}");
    assert!(joined.contains("/hc/start /hc/fail"), "{joined}");
    let fail_ping = hits.iter().find(|h| h.path == "/hc/fail").unwrap();
    assert!(serde_json::from_str::<Value>(&fail_ping.body).unwrap()["ok"] == false);
}

#[test]
fn sigterm_during_a_long_backup_exits_within_the_grace_period_and_commits_nothing() {
    let env = Env::new();
    let dir = env.dir.path().join("policies");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("test.toml");
    env.write_policy(&path, "");
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("backup = \"0 3 * * *\"", "backup = \"*/2 * * * * *\"");
    std::fs::write(&path, text).unwrap();
    // A long backup: another session holds an exclusive lock on a table, so pg_dump waits.
    let mut holder = Command::new(common::pg::bindir().join("psql"))
        .args([
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            &env.source.url(FIXTURE_DB),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = holder.stdin.take().unwrap();
    writeln!(
        stdin,
        "begin; lock table public.orders in access exclusive mode; select 'lock' || 'ed';"
    )
    .unwrap();
    let mut reader = std::io::BufReader::new(holder.stdout.take().unwrap());
    let mut line = String::new();
    while !line.contains("locked") {
        line.clear();
        assert!(
            std::io::BufRead::read_line(&mut reader, &mut line).unwrap() > 0,
            "psql never took the lock"
        );
    }

    let daemon = start_daemon(&env, &dir, &[], "3s");
    wait_for("the backup to start", 60, || {
        daemon
            .log
            .lock()
            .unwrap()
            .contains("backup of policy test starts")
    });
    std::thread::sleep(Duration::from_secs(1));
    let (log, took) = stop_daemon_timed(daemon);
    assert!(
        took >= Duration::from_secs(3) && took < Duration::from_secs(13),
        "the daemon took {took:?} to stop with a 3s grace: {log}"
    );
    assert!(log.contains("grace period over: cancelling"), "{log}");
    drop(stdin);
    let _ = holder.wait();

    // Nothing committed: no snapshot, and the cancelled run's record says so.
    let (code, out, _) = common::run(
        env.backstop()
            .args(["snapshots", "--json", "--policy"])
            .arg(&path),
    );
    assert_eq!(code, 0);
    let list: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(list["snapshots"].as_array().unwrap().len(), 0, "{list}");
    let runs = backups(&env, "test");
    assert!(runs.iter().all(|r| !r.2), "{runs:?}");
    // The repository is usable at once: the next backup is not blocked by a stale lock.
    let (code, _, stderr) = common::run(env.backstop().args(["backup", "--policy"]).arg(&path));
    assert_eq!(code, 0, "{stderr}");
}

/// SIGTERM, then waits at most `limit` for the daemon to exit (killing it and failing after
/// that): its log and how long it took.
fn stop_daemon_within(daemon: Daemon, limit: Duration) -> (String, Duration) {
    let pid = daemon.child.id().to_string();
    let t = Instant::now();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let mut child = daemon.child;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if t.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the daemon was still running {limit:?} after SIGTERM: {}",
                daemon.log.lock().unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let took = t.elapsed();
    std::thread::sleep(Duration::from_millis(200));
    let log = daemon.log.lock().unwrap().clone();
    assert_eq!(status.code(), Some(0), "{log}");
    (log, took)
}

/// A policy of `env` in `dir` whose backup runs every `every` seconds.
fn frequent_policy(env: &Env, dir: &Path, every: u32) -> std::path::PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("test.toml");
    env.write_policy(&path, "");
    let text = std::fs::read_to_string(&path).unwrap().replace(
        "backup = \"0 3 * * *\"",
        &format!("backup = \"*/{every} * * * * *\""),
    );
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn a_cancelled_backup_stops_a_wrapped_pg_dump_and_the_child_that_holds_its_pipe() {
    let env = Env::new();
    let dir = env.dir.path().join("policies");
    let path = frequent_policy(&env, &dir, 2);
    // The wrapper's `sleep` holds the dump pipe open, as a `docker exec` would.
    let bindir = common::pg_wrapper(&env.dir.path().join("pgbin"), "pg_dump", "sleep 377.25");
    let daemon = start_daemon(
        &env,
        &dir,
        &[("BACKSTOP_PG_BINDIR", bindir.to_str().unwrap())],
        "3s",
    );
    wait_for("the wrapper's sleep", 60, || {
        !common::processes_with("sleep 377.25").is_empty()
    });
    let (log, took) = stop_daemon_within(daemon, Duration::from_secs(25));
    assert!(
        took < Duration::from_secs(13),
        "the daemon took {took:?} to stop with a 3s grace: {log}"
    );
    assert!(log.contains("grace period over: cancelling"), "{log}");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        common::processes_with("sleep 377.25"),
        Vec::<String>::new(),
        "the wrapper's child outlived the daemon"
    );
    assert!(env.meta_files().is_empty(), "a cancelled backup committed");
    let (code, _, stderr) = common::run(env.backstop().args(["backup", "--policy"]).arg(&path));
    assert_eq!(code, 0, "{stderr}");
}

#[test]
fn a_prune_and_another_policys_backup_due_together_in_one_daemon_both_succeed() {
    let env = Env::new();
    let dir = env.dir.path().join("policies");
    std::fs::create_dir_all(&dir).unwrap();
    storage_policy(&env, &dir, "a", "*/4 * * * * *");
    storage_policy(&env, &dir, "b", "0 3 * * *");
    // b prunes at the very seconds a backs up, in the same repository.
    let path = dir.join("b.toml");
    let text = std::fs::read_to_string(&path).unwrap().replace(
        "backup = \"0 3 * * *\"",
        "backup = \"0 3 * * *\"\nprune = \"*/4 * * * * *\"",
    ) + "\n[retention]\nkeep_last = 1\n";
    std::fs::write(&path, text).unwrap();
    let daemon = start_daemon(&env, &dir, &[], "20s");
    let records = |policy: &str, kind: &str| -> Vec<Value> {
        common::files_under(&env.repo.join("runs").join(policy))
            .iter()
            .filter(|p| p.to_string_lossy().contains(&format!("-{kind}-")))
            .map(|p| serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap())
            .collect()
    };
    wait_for("three backups of a and three prunes of b", 90, || {
        records("a", "backup").len() >= 3 && records("b", "prune").len() >= 3
    });
    let log = stop_daemon(daemon);
    for (policy, kind) in [("a", "backup"), ("b", "prune")] {
        for r in records(policy, kind) {
            assert_eq!(r["ok"], true, "{kind} of {policy} failed: {r}\n{log}");
        }
    }
    assert!(!log.contains("locked by another run"), "{log}");
}

#[test]
fn a_daemon_whose_only_policy_is_broken_exits_2_and_alerts() {
    let env = Env::new();
    let hooks = Receiver::start();
    let dir = env.dir.path().join("policies");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("test.toml");
    env.write_policy(
        &path,
        &format!(
            "\n[notify]\nwebhook = \"{}\"\nwebhook_format = \"json\"\n\n[databse]\nurl = \"x\"\n",
            hooks.url("/hook")
        ),
    );
    let out = Command::new(assert_cmd::cargo::cargo_bin("backstop"))
        .current_dir(env.dir.path())
        .env("SOURCE_DB_URL", env.source.url(FIXTURE_DB))
        .args(["daemon", "--policies"])
        .arg(&dir)
        .args(["--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("databse"), "{stderr}");
    assert!(stderr.contains("nothing to run"), "{stderr}");
    let hits = hooks.hits();
    let alert = hits
        .iter()
        .find(|h| h.path == "/hook")
        .unwrap_or_else(|| panic!("no alert: {stderr}"));
    let body: Value = serde_json::from_str(&alert.body).unwrap();
    assert_eq!(body["event"], "policy_load_error", "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("databse"),
        "{body}"
    );
}

/// `--json-log`: every line on stdout is one JSON object with its time (`at`).
#[test]
fn every_json_log_line_carries_its_time() {
    let env = Env::new();
    let dir = env.dir.path().join("policies");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("test.toml");
    env.write_policy(&path, "");
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("backup = \"0 3 * * *\"", "backup = \"*/2 * * * * *\"");
    std::fs::write(&path, text).unwrap();
    let mut child = Command::new(assert_cmd::cargo::cargo_bin("backstop"))
        .current_dir(env.dir.path())
        .env("SOURCE_DB_URL", env.source.url(FIXTURE_DB))
        .args(["daemon", "--json-log", "--grace", "5s", "--policies"])
        .arg(&dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let mut lines = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !lines.iter().any(|l: &String| l.contains("job_end")) {
        assert!(Instant::now() < deadline, "no job ended: {lines:?}");
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
            lines.push(line);
        }
    }
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    lines.extend(rx.try_iter());
    for line in &lines {
        let v: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not one JSON object ({e}): {line}"));
        let at = v["at"].as_str().unwrap_or_default();
        assert!(
            chrono::DateTime::parse_from_rfc3339(at).is_ok(),
            "no time in: {line}"
        );
    }
}
