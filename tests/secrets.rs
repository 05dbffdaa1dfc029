//! Secrets never reach a message: every command, on success and on failure, is run with
//! distinctive secrets in its environment (database passwords, the Supabase key, the
//! dedup_key, a webhook URL, the age identity), and every output, record and repository file
//! is searched for them.

mod common;

use common::documents::{sync_rows, write_tree, BUCKET};
use common::supabase::Supabase;
use common::{files_under, Env};

/// Extra environment of one run.
type Vars = Vec<(&'static str, String)>;

const DEDUP: &str = "Dedup-Distinct-7777";
const WEBHOOK: &str = "https://hooks.example/services/T0/B0/Hook-Secret-5555";

#[test]
fn no_command_prints_or_stores_a_secret_even_when_it_fails() {
    let env = Env::new();
    let src = tempfile::tempdir().unwrap();
    let files = write_tree(src.path());
    sync_rows(&env, &files);
    let sb = Supabase::start(src.path());
    env.write_policy(
        &env.policy,
        &format!(
            "\n[storage]\nkind = \"supabase\"\nurl = \"{}\"\nkey = \"${{SUPABASE_KEY}}\"\nbuckets = [\"{BUCKET}\"]\n\n[verify]\nscratch_url = \"${{SCRATCH_URL}}\"\n\n[notify]\nwebhook = \"${{WEBHOOK}}\"\n",
            sb.url()
        ),
    );
    // dedup_key goes into [repository].
    let text = std::fs::read_to_string(&env.policy)
        .unwrap()
        .replace("\n[encryption]", "dedup_key = \"${DEDUP}\"\n\n[encryption]");
    std::fs::write(&env.policy, text).unwrap();
    let identity = std::fs::read_to_string(&env.identity).unwrap();
    let private = identity
        .lines()
        .find(|l| l.starts_with("AGE-SECRET-KEY-"))
        .unwrap()
        .to_string();
    let secrets = [
        common::pg::PASSWORD,
        common::supabase::KEY,
        DEDUP,
        "Hook-Secret-5555",
        &private["AGE-SECRET-KEY-".len()..],
    ];
    let other_key = env.dir.path().join("other-key.txt");
    let out_dir = env.dir.path().join("restored-docs");
    let wrong_pw = env
        .source
        .url(common::FIXTURE_DB)
        .replace(common::pg::PASSWORD, "Wrong-Pw-4444");
    let target = env.scratch.url("secretsrestore");
    let p = env.policy.to_str().unwrap().to_string();
    let runs: Vec<(Vec<&str>, Vars)> = vec![
        (vec!["keygen", "--out", other_key.to_str().unwrap()], vec![]),
        (vec!["policy", "validate", &p], vec![]),
        (vec!["init", "--policy", &p], vec![]),
        (vec!["backup", "--json", "--policy", &p], vec![]),
        (vec!["snapshots", "--json", "--policy", &p], vec![]),
        (vec!["verify", "--json", "--policy", &p], vec![]),
        (
            vec!["check", "--json", "--read-data", "--policy", &p],
            vec![],
        ),
        (
            vec![
                "restore",
                "--json",
                "--policy",
                &p,
                "--db-url",
                &target,
                "--storage-dir",
            ],
            vec![],
        ),
        // Failures: a refused database login, a wrong identity, a refused storage key.
        (
            vec!["backup", "--json", "--policy", &p],
            vec![("SOURCE_DB_URL", wrong_pw.clone())],
        ),
        (
            vec![
                "restore", "--json", "--policy", &p, "--db-url", &target, "--force",
            ],
            vec![("BACKSTOP_IDENTITY", other_key.display().to_string())],
        ),
        (
            vec!["backup", "--json", "--policy", &p],
            vec![("SUPABASE_KEY", "Wrong-Key-3333".to_string())],
        ),
    ];
    let mut saw_failure = 0;
    for (args, extra_env) in runs {
        let mut cmd = env.backstop();
        cmd.env("DEDUP", DEDUP).env("WEBHOOK", WEBHOOK);
        for (k, v) in &extra_env {
            cmd.env(k, v);
        }
        let mut args = args.clone();
        let out_arg = out_dir.display().to_string();
        if args.last() == Some(&"--storage-dir") {
            args.push(&out_arg);
        }
        let out = cmd.args(&args).output().unwrap();
        if !out.status.success() {
            saw_failure += 1;
        }
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        for s in secrets
            .iter()
            .chain(["Wrong-Pw-4444", "Wrong-Key-3333"].iter())
        {
            assert!(
                !text.contains(s),
                "{args:?} printed a secret ({s}):\n{text}"
            );
        }
    }
    assert_eq!(saw_failure, 3, "the three failure cases must fail");
    for f in files_under(&env.repo) {
        if f.to_string_lossy().contains("/blobs/") {
            continue; // sealed
        }
        let body = String::from_utf8_lossy(&std::fs::read(&f).unwrap()).to_string();
        for s in secrets
            .iter()
            .chain(["Wrong-Pw-4444", "Wrong-Key-3333"].iter())
        {
            assert!(!body.contains(s), "{} holds a secret ({s})", f.display());
        }
    }
}

/// Secrets written as literals in every secret-bearing key, an inline `email` table included,
/// are masked by what they are, not by where they sit: the runbook (Markdown and HTML), the
/// report, the records and the logs show none of them.
#[test]
fn literal_secrets_in_every_secret_key_never_show() {
    let env = Env::new();
    let receiver = common::hooks::Receiver::start();
    let db_url = env.source.url(common::FIXTURE_DB);
    let scratch = env.scratch.url("postgres");
    let secrets = [
        ("webhook", receiver.url("/hook/Webhook-Literal-1111")),
        ("healthcheck", receiver.url("/ping/Ping-Literal-2222")),
        ("dedup", "Dedup-Literal-3333".to_string()),
        ("smtp", "Smtp-Literal-4444".to_string()),
    ];
    env.write_policy(
        &env.policy,
        &format!(
            "\n[verify]\nscratch_url = \"{scratch}\"\n\n[notify]\nwebhook = \"{}\"\nhealthcheck = \"{}\"\nemail = {{ smtp_url = \"smtps://ops:{}@127.0.0.1:1\", from = \"backstop@foodbiz.example\", to = [\"ops@foodbiz.example\"] }}\n",
            secrets[0].1, secrets[1].1, secrets[3].1
        ),
    );
    let text = std::fs::read_to_string(&env.policy)
        .unwrap()
        .replace("${SOURCE_DB_URL}", &db_url)
        .replace(
            "\n[encryption]",
            &format!("dedup_key = \"{}\"\n\n[encryption]", secrets[2].1),
        );
    std::fs::write(&env.policy, text).unwrap();
    let password = common::pg::PASSWORD;
    let mut seen = String::new();
    let p = env.policy.to_str().unwrap();
    let runs: [&[&str]; 6] = [
        &["backup", "--json", "--policy", p],
        &["runbook", "--policy", p],
        &["runbook", "--format", "html", "--policy", p],
        &["report", "--format", "markdown", "--policy", p],
        &["report", "--format", "html", "--policy", p],
        &["snapshots", "--json", "--policy", p],
    ];
    for args in runs {
        let (code, out, err) = common::run(env.backstop().args(args));
        assert!(code == 0 || code == 3, "{args:?}: {err}");
        seen.push_str(&out);
        seen.push_str(&err);
    }
    for f in files_under(&env.repo.join("runs")) {
        seen.push_str(&std::fs::read_to_string(f).unwrap());
    }
    assert!(
        seen.contains("Recovery runbook"),
        "the runbook was not made"
    );
    for (what, secret) in secrets
        .iter()
        .map(|(w, s)| (*w, s.rsplit('/').next().unwrap().to_string()))
        .chain([("the database password", password.to_string())])
    {
        assert!(
            !seen.contains(&secret),
            "{what} ({secret}) is shown:\n{seen}"
        );
    }
}
