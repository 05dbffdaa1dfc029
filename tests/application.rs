//! `[[files]]` and `[[git]]` sources: a config tree (nested directories, a symlink, a 0600
//! secret, an empty file, a name that is not UTF-8, an excluded file) and two git repositories
//! (branches, annotated and lightweight tags; one read through a `file://` url) round-trip
//! through backup and restore exactly; an unchanged second backup stores almost nothing; verify
//! passes, and names a flipped byte of a file's blob and refs that differ from the record; bad
//! input fails before anything is read.

mod common;

use common::{run, run_json, Env};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.com")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.com")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A repository with main, feature and release branches, an annotated and a lightweight tag,
/// and a 300 KB incompressible file.
fn make_repo(dir: &Path, seed: u64) {
    std::fs::create_dir_all(dir).unwrap();
    git(dir, &["init", "-q", "-b", "main"]);
    std::fs::write(dir.join("app.py"), "print('hello')\n").unwrap();
    std::fs::write(dir.join("model.bin"), random_bytes(300_000, seed)).unwrap();
    git(dir, &["add", "."]);
    git(dir, &["commit", "-q", "-m", "first"]);
    git(dir, &["tag", "-a", "v1.0", "-m", "release 1.0"]);
    git(dir, &["checkout", "-q", "-b", "feature"]);
    std::fs::write(dir.join("feature.py"), "x = 1\n").unwrap();
    git(dir, &["add", "."]);
    git(dir, &["commit", "-q", "-m", "feature"]);
    git(dir, &["tag", "light"]);
    git(dir, &["checkout", "-q", "-b", "release", "main"]);
    std::fs::write(dir.join("CHANGES"), "1.0.1\n").unwrap();
    git(dir, &["commit", "-q", "-am", "x", "--allow-empty"]);
    git(dir, &["checkout", "-q", "main"]);
}

/// `refname commit` of every branch and tag (tags peeled to what they name, and as objects).
fn refs(dir: &Path, prefix: &str) -> Vec<String> {
    let mut out: Vec<String> = git(
        dir,
        &["for-each-ref", "--format=%(refname) %(objectname)", prefix],
    )
    .lines()
    .map(str::to_string)
    .collect();
    out.sort();
    out
}

/// The config tree; returns its root.
fn make_config(root: &Path) -> PathBuf {
    let etc = root.join("etc/foodbiz");
    std::fs::create_dir_all(etc.join("nested/deeper")).unwrap();
    std::fs::create_dir_all(etc.join("cache")).unwrap();
    std::fs::write(etc.join("app.yaml"), "db: postgres\nworkers: 4\n").unwrap();
    std::fs::write(
        etc.join("nested/deeper/limits.conf"),
        random_bytes(200_000, 7),
    )
    .unwrap();
    std::fs::write(etc.join("secret.env"), "OPENAI_API_KEY=sk-test\n").unwrap();
    std::fs::set_permissions(
        etc.join("secret.env"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    std::fs::write(etc.join("empty.txt"), "").unwrap();
    let odd = etc.join(std::ffi::OsStr::from_bytes(b"caf\xe9.conf"));
    std::fs::write(&odd, "latin-1 name\n").unwrap();
    std::fs::write(etc.join("scratch.tmp"), "excluded").unwrap();
    std::fs::write(etc.join("cache/blob"), "excluded too").unwrap();
    std::os::unix::fs::symlink("app.yaml", etc.join("current.yaml")).unwrap();
    // An mtime with nanoseconds, in the past.
    let t = filetime::FileTime::from_unix_time(1_700_000_000, 123_456_789);
    filetime::set_file_mtime(etc.join("app.yaml"), t).unwrap();
    etc
}

struct App {
    env: Env,
    etc: PathBuf,
    api: PathBuf,
    web: PathBuf,
    policy: PathBuf,
}

fn app(extra_files: &str) -> App {
    app_with(extra_files, "")
}

/// `with`: more policy text; the database section is kept only when `with` asks for it.
fn app_with(extra_files: &str, with: &str) -> App {
    let env = Env::new();
    let root = env.dir.path().join("host");
    let etc = make_config(&root);
    let api = root.join("srv/api");
    let web = root.join("srv/web");
    make_repo(&api, 1);
    make_repo(&web, 2);
    let policy = env.dir.path().join("app.toml");
    env.write_policy(
        &policy,
        &format!(
            "\n[[files]]\nname = \"config\"\npaths = [\"{}\", \"{}/*.none\"]\nexclude = [\"*.tmp\", \"**/cache/**\"]\n{extra_files}\n\
             [[git]]\nname = \"api\"\nrepo = \"{}\"\n\n[[git]]\nname = \"web\"\nurl = \"file://{}\"\n{with}",
            etc.display(),
            etc.display(),
            api.display(),
            web.display()
        ),
    );
    if !with.contains("keep_database") {
        let text = std::fs::read_to_string(&policy)
            .unwrap()
            .replace("[database]\nurl = \"${SOURCE_DB_URL}\"\n", "");
        std::fs::write(&policy, text).unwrap();
    }
    App {
        env,
        etc,
        api,
        web,
        policy,
    }
}

/// Bytes under the repository's snapshots and blobs (what a backup adds).
fn stored_bytes(repo: &Path) -> u64 {
    ["snapshots", "blobs"]
        .iter()
        .flat_map(|d| common::files_under(&repo.join(d)))
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum()
}

fn assert_same_tree(original: &Path, restored: &Path) {
    for entry in common::files_under(original) {
        let rel = entry.strip_prefix(original).unwrap();
        let s = rel.to_string_lossy();
        if s.ends_with(".tmp") || s.starts_with("cache/") {
            assert!(
                std::fs::symlink_metadata(restored.join(rel)).is_err(),
                "{s} is excluded but was restored"
            );
            continue;
        }
        let (a, b) = (
            std::fs::symlink_metadata(&entry).unwrap(),
            std::fs::symlink_metadata(restored.join(rel)).unwrap_or_else(|e| panic!("{s}: {e}")),
        );
        assert_eq!(a.file_type(), b.file_type(), "{s}");
        if a.file_type().is_symlink() {
            assert_eq!(
                std::fs::read_link(&entry).unwrap(),
                std::fs::read_link(restored.join(rel)).unwrap(),
                "{s}"
            );
            continue;
        }
        assert_eq!(a.mode() & 0o7777, b.mode() & 0o7777, "mode of {s}");
        assert_eq!(
            (a.mtime(), a.mtime_nsec()),
            (b.mtime(), b.mtime_nsec()),
            "mtime of {s}"
        );
        assert_eq!(
            std::fs::read(&entry).unwrap(),
            std::fs::read(restored.join(rel)).unwrap(),
            "content of {s}"
        );
    }
}

#[test]
fn files_and_git_round_trip_dedupe_and_verify_detects_tampering() {
    let a = app("");
    let env = &a.env;
    let (code, rec, stderr) = run_json(
        env.backstop()
            .args(["backup", "--json", "--policy"])
            .arg(&a.policy),
    );
    assert_eq!(code, 0, "{stderr}");
    // Regular files: app.yaml, limits.conf, secret.env, empty.txt and the odd name.
    assert_eq!(rec["files"]["sets"], 1, "{rec}");
    assert_eq!(rec["files"]["files"], 5, "{rec}");
    assert!(
        rec["warnings"].to_string().contains("matches nothing"),
        "{rec}"
    );
    let repos = rec["git"]["repositories"].as_array().unwrap();
    assert_eq!(repos.len(), 2);
    let api_head = git(&a.api, &["rev-parse", "HEAD"]).trim().to_string();
    assert_eq!(repos[0]["name"], "api");
    assert_eq!(repos[0]["head"], api_head.as_str());
    assert_eq!(repos[0]["refs"], 5, "{rec}"); // 3 branches, 2 tags
    let (_, list, _) = run_json(
        env.backstop()
            .args(["snapshots", "--json", "--policy"])
            .arg(&a.policy),
    );
    assert_eq!(list["snapshots"][0]["files"]["files"], 5, "{list}");
    assert_eq!(
        list["snapshots"][0]["git"]["repositories"][1]["name"],
        "web"
    );

    // An unchanged second backup stores under 5% of the first.
    let first = stored_bytes(&env.repo);
    let (code, rec2, stderr) = run_json(
        env.backstop()
            .args(["backup", "--json", "--policy"])
            .arg(&a.policy),
    );
    assert_eq!(code, 0, "{stderr}");
    let added = stored_bytes(&env.repo) - first;
    assert!(
        (added as f64) < 0.05 * first as f64,
        "the unchanged backup added {added} bytes to {first}: {rec2}"
    );
    assert_eq!(rec2["files"]["bytes_stored"], 0, "{rec2}");
    assert_eq!(rec2["git"]["bytes_stored"], 0, "{rec2}");

    // Restore files and git into directories.
    let out = env.dir.path().join("restored");
    let (code, rec, stderr) = run_json(
        env.backstop()
            .args(["restore", "--json", "--policy"])
            .arg(&a.policy)
            .arg("--files-dir")
            .arg(out.join("files"))
            .arg("--git-dir")
            .arg(out.join("git")),
    );
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(rec["files"]["files"], 5, "{rec}");
    let restored_etc = out
        .join("files/config")
        .join(a.etc.strip_prefix("/").unwrap());
    assert_same_tree(&a.etc, &restored_etc);
    for (name, original) in [("api", &a.api), ("web", &a.web)] {
        let clone = out.join("git").join(name);
        assert_eq!(
            refs(&clone, "refs/heads"),
            refs(original, "refs/heads"),
            "{name}"
        );
        assert_eq!(
            refs(&clone, "refs/tags"),
            refs(original, "refs/tags"),
            "{name}"
        );
        // A plain clone of the restored bundle has every ref at the original commit.
        let mirror = out.join(format!("{name}-mirror"));
        let status = Command::new("git")
            .args(["clone", "-q", "--mirror"])
            .arg(out.join("git").join(format!("{name}.bundle")))
            .arg(&mirror)
            .status()
            .unwrap();
        assert!(status.success());
        assert_eq!(refs(&mirror, "refs/heads"), refs(original, "refs/heads"));
        assert_eq!(refs(&mirror, "refs/tags"), refs(original, "refs/tags"));
    }
    // A second restore into the same place is refused without --force.
    let (code, _, stderr) = run(env
        .backstop()
        .args(["restore", "--only", "files", "--policy"])
        .arg(&a.policy)
        .arg("--files-dir")
        .arg(out.join("files")));
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("exists"), "{stderr}");

    // Verify passes and checks every file and bundle.
    let verify = || {
        run_json(
            env.backstop()
                .args(["verify", "--json", "--read-data", "all", "--policy"])
                .arg(&a.policy),
        )
    };
    let (code, rec, stderr) = verify();
    assert_eq!(code, 0, "{rec} {stderr}");
    assert_eq!(rec["files_checked"], 5, "{rec}");
    assert_eq!(rec["git_checked"], 2, "{rec}");

    // A flipped byte of a file's blob is named.
    let id = env.snapshot_manifest_query(
        "latest",
        ".files.sets[0].entries[] | select(.size > 100000) | .chunks[0].id",
    );
    let blob = env.repo.join("blobs").join(&id[..2]).join(&id);
    let original = std::fs::read(&blob).unwrap();
    let mut bytes = original.clone();
    bytes[200] ^= 0x01;
    std::fs::write(&blob, &bytes).unwrap();
    let (code, rec, _) = verify();
    assert_eq!(code, 3, "{rec}");
    let problems = rec["problems"].to_string();
    assert!(
        problems.contains(&id) && problems.contains("limits.conf"),
        "{problems}"
    );
    std::fs::write(&blob, &original).unwrap();

    // Recorded refs that differ from the bundle's are named.
    env.rewrite_manifest(
        "latest",
        ".git.repositories[0].refs[1][0] = \"0000000000000000000000000000000000000000\"",
    );
    let (code, rec, _) = verify();
    assert_eq!(code, 3, "{rec}");
    assert!(
        rec["problems"]
            .to_string()
            .contains("git repository api: the bundle's refs differ"),
        "{rec}"
    );
}

#[test]
fn bad_files_and_git_input_fails_before_the_backup_starts() {
    let a = app("required = true\n");
    let env = &a.env;
    let backup = |policy: &Path| run(env.backstop().args(["backup", "--policy"]).arg(policy));
    // A glob that matches nothing, with required = true.
    let (code, _, stderr) = backup(&a.policy);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("matches nothing (the set has required = true)"),
        "{stderr}"
    );
    // A path that does not exist.
    let text = std::fs::read_to_string(&a.policy).unwrap();
    let missing = env.dir.path().join("missing.toml");
    std::fs::write(
        &missing,
        text.replace("required = true\n", "")
            .replace("/*.none\"", "/nowhere\""),
    )
    .unwrap();
    let (code, _, stderr) = backup(&missing);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("nowhere does not exist"), "{stderr}");
    // A git url that needs credentials.
    let auth = common::hooks::Receiver::start_answering(
        "401 Unauthorized\r\nwww-authenticate: Basic realm=\"git\"",
    );
    let creds = env.dir.path().join("creds.toml");
    std::fs::write(
        &creds,
        text.replace("required = true\n", "").replace(
            &format!("file://{}", a.web.display()),
            &auth.url("/web.git"),
        ),
    )
    .unwrap();
    let (code, _, stderr) = backup(&creds);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("needs credentials"), "{stderr}");
    // A password in a git url is refused at load.
    let pw = env.dir.path().join("pw.toml");
    std::fs::write(
        &pw,
        text.replace("required = true\n", "").replace(
            &format!("file://{}", a.web.display()),
            "https://u:hunter2@git.example/web.git",
        ),
    )
    .unwrap();
    let (code, _, stderr) = backup(&pw);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("git.url") && !stderr.contains("hunter2"),
        "{stderr}"
    );
    // An unreadable file, named with the permission to grant. (Root reads everything, so as
    // root the backup runs as the postgres user.)
    let locked = a.etc.join("nested/locked.key");
    std::fs::write(&locked, "x").unwrap();
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o000)).unwrap();
    let readable = env.dir.path().join("readable.toml");
    std::fs::write(&readable, text.replace("required = true\n", "")).unwrap();
    let (code, stderr) =
        common::as_unprivileged(env, &readable, &["backup", "--only", "files", "--policy"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("locked.key") && stderr.contains("setfacl"),
        "{stderr}"
    );
    // Nothing was committed by any of them.
    let (_, list, _) = run_json(
        env.backstop()
            .args(["snapshots", "--json", "--policy"])
            .arg(&readable),
    );
    assert_eq!(
        list["snapshots"].as_array().map(Vec::len),
        Some(0),
        "{list}"
    );
}

/// The fenced `sh` blocks of the runbook's full-disaster-recovery section, in order.
fn disaster_recovery_blocks(runbook: &str) -> String {
    let section = runbook
        .split("\n## 3. Full disaster recovery")
        .nth(1)
        .expect("no full disaster recovery section")
        .split("\n## ")
        .next()
        .unwrap();
    let mut script = String::new();
    for block in section.split("```sh\n").skip(1) {
        script.push_str(block.split("\n```").next().unwrap());
        script.push('\n');
    }
    script
}

#[test]
fn the_runbook_recovers_everything_when_run_as_written() {
    let docs = tempfile::tempdir().unwrap();
    let a = app_with(
        "",
        &format!(
            "\n[storage]\nkind = \"dir\"\npath = \"{}\"\nbuckets = [\"documents\"]\n\n[runbook]\nredeploy = \"\"\"\nsystemctl restart foodbiz-api\n\"\"\"\n# keep_database\n\n[verify]\nscratch_url = \"${{SCRATCH_URL}}\"\n\n[notify]\nwebhook = \"${{WEBHOOK_URL}}\"\nhealthcheck = \"${{HC_URL}}\"\nhealthcheck_verify = \"${{HC_URL}}\"\n",
            docs.path().display()
        ),
    );
    let env = &a.env;
    let hooks = common::hooks::Receiver::start();
    let files = common::documents::write_tree(docs.path());
    common::documents::sync_rows(env, &files);
    let (code, _, stderr) = run(env
        .backstop()
        .env("WEBHOOK_URL", hooks.url("/hook"))
        .env("HC_URL", hooks.url("/hc"))
        .args(["backup", "--policy"])
        .arg(&a.policy));
    assert_eq!(code, 0, "{stderr}");
    let sent_by_production = hooks.hits().len();

    let out = env.dir.path().join("runbook.md");
    let (code, _, stderr) = run(env
        .backstop()
        .args(["runbook", "--policy"])
        .arg(&a.policy)
        .arg("--out")
        .arg(&out));
    assert_eq!(code, 0, "{stderr}");
    let runbook = std::fs::read_to_string(&out).unwrap();
    for part in [
        "## 1. The identity",
        "## 2. Prerequisites",
        "## 4. Rollback to an earlier point",
        "## 5. Recovering one bucket object or one file",
        "## 6. Dependency recovery",
        "## 7. Confirming the recovery worked",
        "## 8. The manual path, without backstop",
        "## 9. Redeploy and rollback of the application",
        "systemctl restart foodbiz-api",
        "plpgsql",
        &env.recipient,
    ] {
        assert!(
            runbook.contains(part),
            "the runbook lacks {part}:\n{runbook}"
        );
    }
    let (code, html, _) = run(env
        .backstop()
        .args(["runbook", "--format", "html", "--policy"])
        .arg(&a.policy));
    assert_eq!(code, 0);
    assert!(
        html.starts_with("<!doctype html>")
            && html.contains(">3. Full disaster recovery on a new host</h2>")
    );

    // Run the disaster recovery as written, on a fresh database and an empty directory, with
    // only the identity, the target and the directory: not the source's URL, not the webhook's.
    let script = disaster_recovery_blocks(&runbook);
    let restore_dir = env.dir.path().join("new-host");
    let bin_dir = assert_cmd::cargo::cargo_bin("backstop")
        .parent()
        .unwrap()
        .to_path_buf();
    let path = format!(
        "{}:{}:{}",
        bin_dir.display(),
        common::pg::bindir().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let work = tempfile::tempdir().unwrap();
    let out = Command::new("bash")
        .args(["-euo", "pipefail", "-c", &script])
        .current_dir(work.path())
        .env_clear()
        .env("PATH", &path)
        .env("HOME", work.path())
        .env("BACKSTOP_IDENTITY", &env.identity)
        .env("TARGET_DB_URL", env.scratch.url("recovered"))
        .env("RESTORE_DIR", &restore_dir)
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success(),
        "the runbook failed as written:\n{script}\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
    );
    assert!(stdout.contains("rows without object: 0"), "{stdout}");
    assert!(stdout.contains("objects without row: 0"), "{stdout}");

    // Everything is back.
    assert_eq!(
        common::table_contents(&env.source, common::FIXTURE_DB),
        common::table_contents(&env.scratch, "recovered")
    );
    let restored = common::documents::read_tree(&restore_dir.join("storage/documents"));
    assert_eq!(restored.len(), files.len());
    assert!(restored == files, "the documents differ");
    assert_same_tree(
        &a.etc,
        &restore_dir
            .join("files/config")
            .join(a.etc.strip_prefix("/").unwrap()),
    );
    for (name, original) in [("api", &a.api), ("web", &a.web)] {
        let clone = restore_dir.join("git").join(name);
        assert_eq!(refs(&clone, "refs/heads"), refs(original, "refs/heads"));
        assert_eq!(refs(&clone, "refs/tags"), refs(original, "refs/tags"));
    }

    // Sections 4, 5 and 7 as written (a rollback to a point, one object, one file, then
    // verify), on the same host, with production's webhook and health-check URLs set: nothing
    // reaches them. Section 4's example time becomes now.
    let rollback = runbook
        .split("\n## 4. ")
        .nth(1)
        .and_then(|s| s.split("```text\n").nth(1))
        .and_then(|s| s.split("\n```").next())
        .expect("section 4 has a command block")
        .replace("2026-01-31 03:00", "now");
    let (object, bytes) = files.iter().next().unwrap();
    let one = runbook
        .split("\n## 5. ")
        .nth(1)
        .and_then(|s| s.split("```text\n").nth(1))
        .and_then(|s| s.split("\n```").next())
        .expect("section 5 has a command block")
        .replace("PATH/OF/OBJECT", object);
    let verify = runbook
        .split("\n## 7. ")
        .nth(1)
        .and_then(|s| s.split('`').find(|c| c.starts_with("backstop verify")))
        .expect("section 7 names the verify command")
        .to_string();
    let out = Command::new("bash")
        .args([
            "-euo",
            "pipefail",
            "-c",
            &format!("{rollback}\n{one}\n{verify}\n"),
        ])
        .current_dir(work.path())
        .env_clear()
        .env("PATH", &path)
        .env("HOME", work.path())
        .env("BACKSTOP_IDENTITY", &env.identity)
        .env("RESTORE_DIR", &restore_dir)
        .env("SCRATCH_DB_URL", env.scratch.url("postgres"))
        .env("TARGET_DB_URL", env.scratch.url("rolled_back"))
        .env("WEBHOOK_URL", hooks.url("/hook"))
        .env("HC_URL", hooks.url("/hc"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "sections 4, 5 and 7 failed as written:\n{rollback}\n{one}\n{verify}\n--- stderr\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        common::table_contents(&env.source, common::FIXTURE_DB),
        common::table_contents(&env.scratch, "rolled_back")
    );
    let copied = work
        .path()
        .join(std::path::Path::new(object).file_name().unwrap());
    assert_eq!(&std::fs::read(&copied).unwrap(), bytes);
    assert!(restore_dir.join("one-file/config").is_dir());
    assert_eq!(
        hooks.hits().len(),
        sent_by_production,
        "the recovery host notified: {:?}",
        hooks.hits()
    );
}
