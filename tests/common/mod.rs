//! Test harness: real PostgreSQL clusters (source with the fixture, scratch without its roles),
//! a repository in a temporary directory, and the real `backstop` binary driven as a user would.
#![allow(dead_code)]

pub mod documents;
pub mod hooks;
pub mod pg;
pub mod s3;
pub mod smtp;
pub mod supabase;

use assert_cmd::Command;
use pg::Cluster;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub const FIXTURE_DB: &str = "app";

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// Where a test's repository lives.
#[derive(Clone)]
pub enum RepoSpec {
    Local,
    /// `s3://bucket/prefix` at an S3 endpoint (the moto server, or a proxy in front of it).
    S3 {
        endpoint: String,
        bucket: String,
        prefix: String,
        object_lock_days: Option<u32>,
    },
}

pub struct Env {
    pub source: Cluster,
    pub scratch: Cluster,
    pub dir: tempfile::TempDir,
    pub repo: PathBuf,
    pub repo_spec: RepoSpec,
    pub identity: PathBuf,
    pub recipient: String,
    pub policy: PathBuf,
}

impl Env {
    /// Source cluster with the Supabase-shaped fixture in database `app`, a scratch cluster,
    /// an identity, a policy and an initialized local repository.
    pub fn new() -> Env {
        Self::with_repo(RepoSpec::Local)
    }

    /// The same with the repository in a bucket of an S3 server.
    pub fn with_repo(repo_spec: RepoSpec) -> Env {
        let env = Self::uninitialized(repo_spec);
        env.backstop()
            .args(["init", "--policy"])
            .arg(&env.policy)
            .assert()
            .success();
        env
    }

    /// [`Env::new`] with a source cluster that has `wal_level = logical`, for the change
    /// stream.
    pub fn logical(repo_spec: RepoSpec) -> Env {
        let env = Self::uninitialized_with(repo_spec, Cluster::start_logical);
        env.backstop()
            .args(["init", "--policy"])
            .arg(&env.policy)
            .assert()
            .success();
        env
    }

    /// Everything but `backstop init`.
    pub fn uninitialized(repo_spec: RepoSpec) -> Env {
        Self::uninitialized_with(repo_spec, Cluster::start)
    }

    fn uninitialized_with(repo_spec: RepoSpec, source: fn() -> Cluster) -> Env {
        let (source, scratch) = std::thread::scope(|s| {
            let a = s.spawn(source);
            let b = s.spawn(Cluster::start);
            (a.join().unwrap(), b.join().unwrap())
        });
        source.psql("postgres", &format!("create database {FIXTURE_DB}"));
        source.psql_file(FIXTURE_DB, &fixture("supabase.sql"));
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path().join("repo");
        let identity = dir.path().join("key.txt");
        let out = bin()
            .args(["keygen", "--out"])
            .arg(&identity)
            .assert()
            .success();
        let recipient = String::from_utf8_lossy(&out.get_output().stdout)
            .trim()
            .to_string();
        let policy = dir.path().join("test.toml");
        let env = Env {
            source,
            scratch,
            dir,
            repo,
            repo_spec,
            identity,
            recipient,
            policy,
        };
        env.write_policy(&env.policy, "");
        env
    }

    /// A policy for the fixture, with `extra` appended.
    pub fn write_policy(&self, path: &Path, extra: &str) {
        let repository = match &self.repo_spec {
            RepoSpec::Local => format!("url = \"{}\"", self.repo.display()),
            RepoSpec::S3 {
                bucket,
                prefix,
                object_lock_days,
                ..
            } => {
                let lock = object_lock_days
                    .map(|d| format!("\nobject_lock = {{ mode = \"governance\", days = {d} }}"))
                    .unwrap_or_default();
                format!(
                    "url = \"s3://{bucket}/{prefix}\"\nendpoint = \"${{S3_ENDPOINT}}\"\nregion = \"us-east-1\"\n\
                     access_key_id = \"${{S3_KEY_ID}}\"\nsecret_access_key = \"${{S3_SECRET}}\"{lock}"
                )
            }
        };
        let text = format!(
            r#"name = "test"

[objectives]
rpo = "24h"
rto = "1h"
retention = "35d"

[schedule]
backup = "0 3 * * *"
timezone = "Asia/Seoul"

[database]
url = "${{SOURCE_DB_URL}}"

[repository]
{repository}

[encryption]
recipients = ["{}"]
{extra}"#,
            self.recipient
        );
        std::fs::write(path, text).unwrap();
    }

    /// The binary, with the environment a policy of this test needs.
    pub fn backstop(&self) -> Command {
        let mut c = bin();
        c.current_dir(self.dir.path())
            .env("SOURCE_DB_URL", self.source.url(FIXTURE_DB))
            .env("BACKSTOP_IDENTITY", &self.identity)
            .env("S3_KEY_ID", s3::KEY_ID)
            .env("S3_SECRET", s3::SECRET)
            .env("SUPABASE_KEY", supabase::KEY)
            .env("SCRATCH_URL", self.scratch.url("postgres"))
            .env("BACKSTOP_CACHE_DIR", self.dir.path().join("cache"))
            .env_remove("RUST_LOG");
        if let RepoSpec::S3 { endpoint, .. } = &self.repo_spec {
            c.env("S3_ENDPOINT", endpoint);
        }
        c
    }

    pub fn backup_json(&self) -> serde_json::Value {
        let out = self
            .backstop()
            .args(["backup", "--json", "--policy"])
            .arg(&self.policy)
            .assert()
            .success();
        serde_json::from_slice(&out.get_output().stdout)
            .expect("backup --json prints one JSON document")
    }

    pub fn restore_json(
        &self,
        target_url: &str,
        extra: &[&str],
    ) -> (i32, serde_json::Value, String) {
        let out = self
            .backstop()
            .args(["restore", "--json", "--policy"])
            .arg(&self.policy)
            .args(["--db-url", target_url])
            .args(extra)
            .output()
            .unwrap();
        let json = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
        (
            out.status.code().unwrap_or(-1),
            json,
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    }

    /// Runs a jq filter over a snapshot's decrypted manifest (with the stock age, zstd and jq),
    /// `which` being a snapshot id or `latest`; returns the output trimmed.
    pub fn snapshot_manifest_query(&self, which: &str, filter: &str) -> String {
        let mut metas: Vec<(String, PathBuf)> = self
            .meta_files()
            .into_iter()
            .map(|p| {
                let v: serde_json::Value =
                    serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
                (v["consistent_at"].as_str().unwrap().to_string(), p)
            })
            .collect();
        metas.sort();
        let meta = if which == "latest" {
            metas.last().unwrap().1.clone()
        } else {
            metas
                .iter()
                .find(|(_, p)| p.to_string_lossy().contains(which))
                .unwrap()
                .1
                .clone()
        };
        let manifest = meta.with_file_name("manifest.age");
        bash_ok(&format!(
            "age -d -i '{}' '{}' | zstd -dc | jq -r '{}'",
            self.identity.display(),
            manifest.display(),
            filter
        ))
    }

    /// Rewrites a snapshot's manifest with a jq filter (decrypt with the stock age, edit,
    /// compress and encrypt again to the policy's recipient), and its meta.json's record of
    /// the manifest's size and SHA-256 to match: a manifest that says something else than the
    /// blobs, as only someone holding the identity could write.
    pub fn rewrite_manifest(&self, which: &str, filter: &str) {
        let id = self.snapshot_manifest_query(which, ".snapshot_id");
        let meta = self
            .meta_files()
            .into_iter()
            .find(|p| p.to_string_lossy().contains(&id))
            .unwrap();
        let manifest = meta.with_file_name("manifest.age");
        bash_ok(&format!(
            "set -eo pipefail; age -d -i '{}' '{m}' | zstd -dc | jq -c '{filter}' | zstd -qc | age -r '{}' > '{m}.new' && mv '{m}.new' '{m}'",
            self.identity.display(),
            self.recipient,
            m = manifest.display(),
        ));
        let bytes = std::fs::read(&manifest).unwrap();
        use sha2::Digest;
        let mut m: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&meta).unwrap()).unwrap();
        m["manifest"]["size"] = bytes.len().into();
        m["manifest"]["sha256"] = hex::encode(sha2::Sha256::digest(&bytes)).into();
        std::fs::write(&meta, serde_json::to_vec(&m).unwrap()).unwrap();
    }

    /// Every snapshot's meta.json in the repository.
    pub fn meta_files(&self) -> Vec<PathBuf> {
        files_under(&self.repo.join("snapshots"))
            .into_iter()
            .filter(|p| p.ends_with("meta.json"))
            .collect()
    }
}

pub fn bin() -> Command {
    Command::cargo_bin("backstop").unwrap()
}

/// Runs a bash script that must succeed; its stdout, trimmed.
pub fn bash_ok(script: &str) -> String {
    let out = std::process::Command::new("bash")
        .arg("-c")
        .arg(script)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Runs `backstop ARGS POLICY` as a user without root's power to read every file (the
/// postgres user, when the tests run as root); its exit code and stderr.
pub fn as_unprivileged(env: &Env, policy: &Path, args: &[&str]) -> (i32, String) {
    let bin = assert_cmd::cargo::cargo_bin("backstop");
    let mut c = if pg::is_root() {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(env.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut c = std::process::Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin);
        c
    } else {
        std::process::Command::new(bin)
    };
    let out = c
        .current_dir(env.dir.path())
        .env(
            "BACKSTOP_CACHE_DIR",
            env.dir.path().join("cache-unprivileged"),
        )
        .args(args)
        .arg(policy)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

/// Runs `cmd` to its end: exit code (-1 for a signal), stdout, stderr.
pub fn run(cmd: &mut Command) -> (i32, String, String) {
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

/// [`run`] with stdout parsed as JSON (`Null` when it is not).
pub fn run_json(cmd: &mut Command) -> (i32, serde_json::Value, String) {
    let (code, out, err) = run(cmd);
    (
        code,
        serde_json::from_str(&out).unwrap_or(serde_json::Value::Null),
        err,
    )
}

pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Row count and an order-independent content digest of every user table, computed
/// independently of backstop (sorted row texts, md5).
pub fn table_contents(c: &Cluster, db: &str) -> BTreeMap<String, String> {
    let list = c.psql(
        db,
        "select format('%I.%I', n.nspname, c.relname) from pg_class c join pg_namespace n on n.oid = c.relnamespace \
         where c.relkind in ('r', 'm') and n.nspname not in ('pg_catalog', 'information_schema') \
           and n.nspname not like 'pg_toast%' order by 1",
    );
    list.lines()
        .map(|t| {
            let v = c.psql(
                db,
                &format!("select count(*) || ':' || coalesce(md5(string_agg(x::text, E'\\n' order by x::text)), '') from {t} x"),
            );
            (t.to_string(), v)
        })
        .collect()
}

pub fn sequences(c: &Cluster, db: &str) -> String {
    c.psql(
        db,
        "select schemaname, sequencename, last_value from pg_sequences order by 1, 2",
    )
}

pub fn policies(c: &Cluster, db: &str) -> String {
    c.psql(db, "select schemaname, tablename, policyname, roles::text, cmd, qual, with_check from pg_policies order by 1, 2, 3")
}

/// Live (not zombie) processes whose command line contains `needle`: their command lines.
pub fn processes_with(needle: &str) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let p = e.path();
        let Ok(cmdline) = std::fs::read(p.join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let zombie = std::fs::read_to_string(p.join("stat"))
            .map(|s| s.rsplit_once(") ").is_some_and(|(_, r)| r.starts_with('Z')))
            .unwrap_or(true);
        if cmdline.contains(needle) && !zombie {
            out.push(cmdline);
        }
    }
    out
}

/// A `BACKSTOP_PG_BINDIR` in `dir` holding a wrapper `name` that runs the shell lines `before`
/// and then the real program, as operators' wrappers (`docker exec`, `sudo -u postgres`) do;
/// `--version` goes straight through. Returns the directory.
pub fn pg_wrapper(dir: &Path, name: &str, before: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).unwrap();
    let real = pg::bindir().join(name);
    let script = dir.join(name);
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\ncase \"$1\" in --version) exec '{r}' --version;; esac\n{before}\nexec '{r}' \"$@\"\n",
            r = real.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    dir.to_path_buf()
}

/// Runs a bash script that must succeed; its stdout as bytes.
pub fn bash_bytes(script: &str) -> Vec<u8> {
    let out = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!("set -o pipefail; {script}"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Headless Chromium's path; a test that needs it fails saying how to install it.
pub fn chromium() -> PathBuf {
    for name in ["chromium", "chromium-browser", "google-chrome"] {
        if let Ok(out) = std::process::Command::new("which").arg(name).output() {
            if out.status.success() {
                return PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            }
        }
    }
    panic!("headless Chromium is needed for the HTML report test: run scripts/test.sh, which installs Debian's `chromium` package (apt-get install chromium)");
}
