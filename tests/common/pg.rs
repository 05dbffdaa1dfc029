//! Throwaway PostgreSQL clusters from the installed server binaries (initdb, pg_ctl), on free
//! loopback ports, stopped when dropped. One `initdb` per machine builds a template that each
//! cluster copies, which keeps a test's start-up under a second. As root, the server runs as
//! the `postgres` user (initdb refuses root).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

pub const PASSWORD: &str = "s3cret-Pa55";

/// The newest PostgreSQL server bin directory, or a failure saying how to get one.
pub fn bindir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let mut dirs: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let major = e.file_name().to_string_lossy().parse().ok()?;
                let bin = e.path().join("bin");
                bin.join("initdb").is_file().then_some((major, bin))
            })
            .collect();
        dirs.sort();
        match dirs.pop() {
            Some((_, d)) => d,
            None => panic!(
                "PostgreSQL server binaries (initdb, pg_ctl) not found under /usr/lib/postgresql/*/bin: \
                 run scripts/test.sh, which installs them, or `apt-get install postgresql`"
            ),
        }
    })
    .clone()
}

pub fn is_root() -> bool {
    static ROOT: OnceLock<bool> = OnceLock::new();
    *ROOT.get_or_init(|| {
        Command::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
            .unwrap_or(false)
    })
}

fn postgres_ids() -> (u32, u32) {
    let id = |flag: &str| -> u32 {
        let out = Command::new("id")
            .args([flag, "postgres"])
            .output()
            .expect("run id");
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or_else(|_| {
            panic!("running as root needs a `postgres` user for the test clusters: `apt-get install postgresql` creates it")
        })
    };
    (id("-u"), id("-g"))
}

/// A command for a server program, as the postgres user when we are root.
fn server_cmd(program: &str) -> Command {
    let path = bindir().join(program);
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(path);
        c
    } else {
        Command::new(path)
    }
}

fn give_to_postgres(path: &Path) {
    if is_root() {
        let (uid, gid) = postgres_ids();
        std::os::unix::fs::chown(path, Some(uid), Some(gid)).expect("chown to postgres");
    }
}

fn run(mut cmd: Command, what: &str) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Where clusters live: under the system temporary directory rather than the checkout, since
/// the server runs as `postgres` and must be able to reach its data directory whatever the
/// permissions of the folder the repository was cloned into.
fn tmp_root() -> PathBuf {
    let root = std::env::temp_dir().join("backstop-test-pg");
    std::fs::create_dir_all(&root).expect("create the clusters' directory");
    let _ = std::fs::set_permissions(&root, std::os::unix::fs::PermissionsExt::from_mode(0o755));
    root
}

/// The initdb'd template, made once per machine and PostgreSQL version.
fn template() -> PathBuf {
    static T: OnceLock<PathBuf> = OnceLock::new();
    T.get_or_init(|| {
        let root = tmp_root();
        let version = bindir().parent().unwrap().file_name().unwrap().to_string_lossy().to_string();
        let dir = root.join(format!("pg-template-{version}"));
        let lock = File::create(root.join("pg-template.lock")).expect("lock file");
        lock.lock().expect("lock template");
        if !dir.join("PG_VERSION").exists() {
            let build = root.join(format!("pg-template-{version}.building"));
            let _ = std::fs::remove_dir_all(&build);
            std::fs::create_dir_all(&build).unwrap();
            give_to_postgres(&build);
            let pwfile = build.join("pwfile");
            std::fs::write(&pwfile, PASSWORD).unwrap();
            give_to_postgres(&pwfile);
            let data = build.join("data");
            let mut c = server_cmd("initdb");
            c.arg("-D").arg(&data).args([
                "-U", "postgres", "--auth=scram-sha-256", "--no-locale", "-E", "UTF8", "--no-sync",
            ]);
            c.arg(format!("--pwfile={}", pwfile.display()));
            run(c, "initdb");
            let conf = "\nlisten_addresses = '127.0.0.1'\nfsync = off\nsynchronous_commit = off\nfull_page_writes = off\nmax_connections = 40\nshared_buffers = 64MB\n";
            let mut f = std::fs::OpenOptions::new().append(true).open(data.join("postgresql.conf")).unwrap();
            std::io::Write::write_all(&mut f, conf.as_bytes()).unwrap();
            std::fs::rename(&data, &dir).unwrap();
            let _ = std::fs::remove_dir_all(&build);
        }
        dir
    })
    .clone()
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct Cluster {
    pub port: u16,
    data: PathBuf,
    _dir: tempfile::TempDir,
}

impl Cluster {
    pub fn start() -> Cluster {
        Self::start_with("")
    }

    /// A cluster for logical replication (`wal_level = logical`), as a change stream needs.
    pub fn start_logical() -> Cluster {
        Self::start_with("-c wal_level=logical -c max_replication_slots=8 -c max_wal_senders=8")
    }

    pub fn start_with(options: &str) -> Cluster {
        let template = template();
        let dir = tempfile::Builder::new()
            .prefix("pg-")
            .tempdir_in(tmp_root())
            .unwrap();
        give_to_postgres(dir.path());
        let data = dir.path().join("data");
        run(
            {
                let mut c = Command::new("cp");
                c.arg("-a").arg(&template).arg(&data);
                c
            },
            "copy cluster template",
        );
        let port = free_port();
        let mut c = server_cmd("pg_ctl");
        c.arg("-D")
            .arg(&data)
            .args(["-w", "-t", "60", "-l"])
            .arg(dir.path().join("log"));
        c.arg("-o")
            .arg(format!("-p {port} -k {} {options}", dir.path().display()));
        c.arg("start");
        let cluster = Cluster {
            port,
            data,
            _dir: dir,
        };
        run(c, "pg_ctl start");
        cluster
    }

    /// Stops the server (fast shutdown); [`Cluster::resume`] starts it again on its port.
    pub fn stop(&self) {
        let mut c = server_cmd("pg_ctl");
        c.arg("-D")
            .arg(&self.data)
            .args(["-m", "fast", "-w", "stop"]);
        run(c, "pg_ctl stop");
    }

    pub fn resume(&self) {
        let mut c = server_cmd("pg_ctl");
        c.arg("-D")
            .arg(&self.data)
            .args(["-w", "-t", "60", "-l"])
            .arg(self._dir.path().join("log"));
        c.arg("-o").arg(format!(
            "-p {} -k {}",
            self.port,
            self._dir.path().display()
        ));
        c.arg("start");
        run(c, "pg_ctl start");
    }

    pub fn url(&self, db: &str) -> String {
        format!(
            "postgres://postgres:{PASSWORD}@127.0.0.1:{}/{db}",
            self.port
        )
    }

    /// psql against a database of this cluster, stopping at the first error.
    pub fn psql_command(&self, db: &str) -> Command {
        let mut c = Command::new(bindir().join("psql"));
        c.args([
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
        ])
        .arg("-p")
        .arg(self.port.to_string())
        .arg("-d")
        .arg(db)
        .env("PGPASSWORD", PASSWORD);
        c
    }

    pub fn try_psql(&self, db: &str, sql: &str) -> Result<String, String> {
        let out = self
            .psql_command(db)
            .args(["-A", "-t", "-c", sql])
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim_end().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).to_string())
        }
    }

    pub fn psql(&self, db: &str, sql: &str) -> String {
        self.try_psql(db, sql)
            .unwrap_or_else(|e| panic!("psql {sql:.80}: {e}"))
    }

    pub fn psql_file(&self, db: &str, file: &Path) {
        let out = self.psql_command(db).arg("-f").arg(file).output().unwrap();
        assert!(
            out.status.success(),
            "loading {}: {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `pg_dump --schema-only`, without the lines that differ between any two dumps.
    pub fn schema_dump(&self, db: &str) -> String {
        let out = Command::new(bindir().join("pg_dump"))
            .args(["--schema-only", "-h", "127.0.0.1", "-U", "postgres", "-p"])
            .arg(self.port.to_string())
            .arg(db)
            .env("PGPASSWORD", PASSWORD)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| {
                !l.starts_with("--")
                    && !l.starts_with("\\restrict")
                    && !l.starts_with("\\unrestrict")
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let mut c = server_cmd("pg_ctl");
        c.arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "-w", "stop"]);
        let _ = c.output();
    }
}
