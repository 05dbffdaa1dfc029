//! Finding PostgreSQL client programs and running them without exposing passwords.
//!
//! A dump must be made by a pg_dump whose major version is at least the server's, and read back
//! by a pg_restore at least as new as the pg_dump that wrote it. Candidates come from
//! `BACKSTOP_PG_BINDIR`, `/usr/lib/postgresql/*/bin` (Debian's layout) and `PATH`; the newest
//! major wins. Passwords go to children through `PGPASSWORD`, never on the command line, where
//! any user of the host could read them.

use crate::error::{Error, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Debug, Clone)]
pub struct PgTool {
    pub path: PathBuf,
    pub major: u32,
    pub version: String,
}

/// Parses the output of `pg_dump --version` (`pg_dump (PostgreSQL) 15.18 (Debian ...)`).
pub fn parse_version(output: &str) -> Option<(u32, String)> {
    let version = output.split_whitespace().nth(2)?;
    let major = version
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()?;
    Some((major, version.to_string()))
}

fn candidates(name: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(dir) = std::env::var_os("BACKSTOP_PG_BINDIR") {
        out.push(Path::new(&dir).join(name));
    }
    if let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") {
        for e in entries.flatten() {
            out.push(e.path().join("bin").join(name));
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            out.push(dir.join(name));
        }
    }
    out.into_iter().filter(|p| p.is_file()).collect()
}

/// The newest `name` (pg_dump, pg_restore, pg_dumpall) with major version >= `min_major`.
pub fn find(name: &str, min_major: u32) -> Result<PgTool> {
    let mut found: Vec<PgTool> = candidates(name)
        .into_iter()
        .filter_map(|path| {
            let mut cmd = Command::new(&path);
            crate::child::prepare(&mut cmd);
            let out = cmd.arg("--version").output().ok()?;
            let (major, version) = parse_version(&String::from_utf8_lossy(&out.stdout))?;
            Some(PgTool {
                path,
                major,
                version,
            })
        })
        .collect();
    found.sort_by_key(|t| std::cmp::Reverse(t.major));
    match found.first() {
        None => Err(Error::failed(format!(
            "{name} not found (looked in BACKSTOP_PG_BINDIR, /usr/lib/postgresql/*/bin and PATH): install the PostgreSQL client, e.g. apt-get install postgresql-client-{min_major}"
        ))),
        Some(t) if t.major < min_major => Err(Error::failed(format!(
            "the newest {name} found is {} ({}), older than the PostgreSQL {min_major} it must work with: install postgresql-client-{min_major} or point BACKSTOP_PG_BINDIR at a newer bin directory",
            t.version,
            t.path.display()
        ))),
        Some(t) => Ok(t.clone()),
    }
}

/// A database URL. Holds the password; shows it to no one.
#[derive(Clone)]
pub struct DbUrl {
    url: url::Url,
}

impl std::fmt::Debug for DbUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.masked())
    }
}

impl DbUrl {
    pub fn parse(text: &str) -> Result<DbUrl> {
        let bad = crate::util::unencoded_in_password(text);
        if !bad.is_empty() {
            let names: Vec<String> = bad
                .iter()
                .map(|c| {
                    format!(
                        "`{c}` (write {})",
                        crate::util::percent_encode(&c.to_string())
                    )
                })
                .collect();
            return Err(Error::input(format!(
                "the password in database URL {} holds {} unencoded, which ends it early: percent-encode {} in the password",
                crate::util::mask_url(text),
                names.join(", "),
                if bad.len() == 1 { "it" } else { "them" }
            )));
        }
        let url = url::Url::parse(text).map_err(|e| {
            Error::input(format!(
                "database URL {} is not a valid URL ({e}); write postgres://USER:PASSWORD@HOST:PORT/DBNAME",
                crate::util::mask_url(text)
            ))
        })?;
        if !matches!(url.scheme(), "postgres" | "postgresql") {
            return Err(Error::input(format!(
                "database URL {} must start with postgres:// or postgresql://",
                crate::util::mask_url(text)
            )));
        }
        Ok(DbUrl { url })
    }

    pub fn full(&self) -> &str {
        self.url.as_str()
    }

    pub fn masked(&self) -> String {
        crate::util::mask_url(self.url.as_str())
    }

    pub fn password(&self) -> Option<String> {
        self.url
            .password()
            .map(crate::util::percent_decode)
            .or_else(|| {
                self.url
                    .query_pairs()
                    .find(|(k, _)| k == "password")
                    .map(|(_, v)| v.into_owned())
            })
    }

    /// The database name (the URL's path), or the user name as libpq defaults it.
    pub fn database(&self) -> String {
        let path = crate::util::percent_decode(self.url.path().trim_start_matches('/'));
        if path.is_empty() {
            crate::util::percent_decode(self.url.username())
        } else {
            path
        }
    }

    /// Whether two URLs name the same database: host (loopback spellings alike, case
    /// ignored), port (5432 when absent) and database name.
    pub fn same_database(&self, other: &DbUrl) -> bool {
        let host = |u: &url::Url| {
            let h = u.host_str().unwrap_or("localhost").to_ascii_lowercase();
            match h.as_str() {
                "127.0.0.1" | "[::1]" | "::1" | "localhost" | "" => "localhost".to_string(),
                _ => h,
            }
        };
        let port = |u: &url::Url| u.port().unwrap_or(5432);
        host(&self.url) == host(&other.url)
            && port(&self.url) == port(&other.url)
            && self.database() == other.database()
    }

    pub fn with_database(&self, db: &str) -> DbUrl {
        let mut url = self.url.clone();
        url.set_path(&format!("/{}", crate::util::percent_encode(db)));
        DbUrl { url }
    }

    /// The URL without its password, in the user part or as a `password=` query parameter,
    /// for libpq programs: their command line is visible to every user of the host, so the
    /// password goes in PGPASSWORD.
    pub fn for_libpq(&self) -> String {
        let mut url = self.url.clone();
        let _ = url.set_password(None);
        if url.query_pairs().any(|(k, _)| k == "password") {
            let kept: Vec<(String, String)> = url
                .query_pairs()
                .filter(|(k, _)| k != "password")
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect();
            if kept.is_empty() {
                url.set_query(None);
            } else {
                url.query_pairs_mut().clear().extend_pairs(kept);
            }
        }
        url.to_string()
    }

    /// Configures a libpq child: connection string argument, password in the environment,
    /// never a prompt.
    pub fn configure(&self, cmd: &mut Command) {
        cmd.arg(format!("--dbname={}", self.for_libpq()));
        cmd.arg("--no-password");
        cmd.env_remove("PGPASSWORD");
        if let Some(pw) = self.password() {
            cmd.env("PGPASSWORD", pw);
        }
        if std::env::var_os("PGCONNECT_TIMEOUT").is_none() {
            cmd.env("PGCONNECT_TIMEOUT", "30");
        }
    }
}

/// Runs a child to completion in its own process group, capturing stdout; fails with its
/// stderr (secrets scrubbed). Dropped before the end, the child's whole group is stopped.
pub async fn run_capture(cmd: Command, what: &str, secrets: &[&str]) -> Result<String> {
    let out = crate::child::output(cmd)
        .await
        .map_err(|e| Error::failed(format!("cannot run {what}: {e}")))?;
    if !out.status.success() {
        let stderr = crate::util::scrub(&String::from_utf8_lossy(&out.stderr), secrets);
        return Err(Error::failed(format!(
            "{what} failed ({}): {}",
            out.status,
            stderr.trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert_eq!(
            parse_version("pg_dump (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)\n"),
            Some((15, "15.18".into()))
        );
        assert_eq!(
            parse_version("pg_restore (PostgreSQL) 17beta1"),
            Some((17, "17beta1".into()))
        );
        assert_eq!(parse_version("garbage"), None);
    }

    #[test]
    fn urls_keep_passwords_out_of_sight() {
        let u = DbUrl::parse("postgres://app:p%40ss@db:5432/prod%20db?sslmode=require").unwrap();
        assert_eq!(u.password().unwrap(), "p@ss");
        assert_eq!(u.database(), "prod db");
        assert_eq!(
            u.masked(),
            "postgres://app:***@db:5432/prod%20db?sslmode=require"
        );
        assert_eq!(
            u.for_libpq(),
            "postgres://app@db:5432/prod%20db?sslmode=require"
        );
        assert_eq!(u.with_database("postgres").database(), "postgres");
        assert_eq!(format!("{u:?}"), u.masked());
        assert!(DbUrl::parse("mysql://x@y/z").is_err());
        assert!(!DbUrl::parse("nope").unwrap_err().message.contains("p@ss"));
    }
}
