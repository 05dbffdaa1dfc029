//! Recovery must stay possible without backstop: the README's recipe, run exactly as written
//! with age, zstd, jq and pg_restore, restores the same data. And keys interoperate with the
//! stock age tools in both directions.

mod common;

use common::{table_contents, Env, FIXTURE_DB};
use std::process::Command;

fn need(tool: &str) {
    let ok = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(ok, "`{tool}` is not installed: run scripts/test.sh, which installs it (apt-get install age zstd jq)");
}

fn readme_recipe() -> String {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let start = readme
        .find("<!-- recipe:begin -->")
        .expect("recipe:begin marker in README.md");
    let end = readme
        .find("<!-- recipe:end -->")
        .expect("recipe:end marker in README.md");
    let block = &readme[start..end];
    let body = block.split_once("```bash\n").expect("bash block").1;
    body.rsplit_once("```")
        .expect("closing fence")
        .0
        .to_string()
}

#[test]
fn the_readme_recipe_restores_the_same_data() {
    for t in ["age", "zstd", "jq", "pg_restore", "psql"] {
        need(t);
    }
    let env = Env::new();
    env.backup_json();
    env.scratch.psql("postgres", "create database manual");
    let work = tempfile::tempdir().unwrap();
    let out = Command::new("bash")
        .arg("-c")
        .arg(readme_recipe())
        .current_dir(work.path())
        .env("REPO", &env.repo)
        .env("POLICY", "test")
        .env("KEY", &env.identity)
        .env("DB_URL", env.scratch.url("manual"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "recipe failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("db.dump: OK"));
    assert_eq!(
        table_contents(&env.source, FIXTURE_DB),
        table_contents(&env.scratch, "manual")
    );
    assert_eq!(
        env.source.schema_dump(FIXTURE_DB),
        env.scratch.schema_dump("manual")
    );
}

#[test]
fn age_keygen_identities_work_and_backstop_keys_work_with_age() {
    need("age");
    need("age-keygen");
    let dir = tempfile::tempdir().unwrap();
    // backstop keygen -> age: encrypt with age to the printed recipient, decrypt with age.
    let key = dir.path().join("backstop.key");
    let out = common::bin()
        .args(["keygen", "--out"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(out.status.success());
    let recipient = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&key).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    let sh = format!(
        "echo backstop-to-age | age -r {recipient} | age -d -i {}",
        key.display()
    );
    let out = Command::new("sh").arg("-c").arg(sh).output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "backstop-to-age",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // keygen refuses to overwrite a key.
    let out = common::bin()
        .args(["keygen", "--out"])
        .arg(&key)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));

    // age-keygen -> backstop: back up to its public key, restore with its identity file.
    let env = Env::new();
    let agekey = env.dir.path().join("age-keygen.txt");
    let out = Command::new("age-keygen")
        .arg("-o")
        .arg(&agekey)
        .output()
        .unwrap();
    assert!(out.status.success());
    let public = String::from_utf8_lossy(&out.stderr)
        .trim()
        .trim_start_matches("Public key:")
        .trim()
        .to_string();
    let policy = std::fs::read_to_string(&env.policy)
        .unwrap()
        .replace(&env.recipient, &public);
    std::fs::write(&env.policy, policy).unwrap();
    env.backup_json();
    let (code, rec, stderr) = env.restore_json(
        &env.scratch.url("from_age_keygen"),
        &["--identity", agekey.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(rec["ok"], true);
    assert_eq!(
        table_contents(&env.source, FIXTURE_DB),
        table_contents(&env.scratch, "from_age_keygen")
    );
}
