//! Policy files: TOML as in DESIGN.md, turned into a validated [`Policy`] in one place.
//!
//! Unknown keys are errors. Every problem is reported as `FILE:LINE:COLUMN: KEY: what is wrong`,
//! and validation collects all problems rather than stopping at the first (TOML syntax errors
//! excepted: the parser stops there). String values may contain `${VAR}`, expanded from the
//! environment; a variable that is unset or empty is an error naming it. Expanded values are
//! never echoed back, so a secret in the environment cannot leak through an error message.
//!
//! Choices where DESIGN.md is silent: `[objectives]` defaults to rpo 24h, rto 1h, retention
//! 35d; a policy needs `[database]`, `[storage]` or both; relative repository paths are taken
//! from the current directory; `repository.zstd_level` (1-19, default 1) sets compression.

use crate::error::{Error, Result};
use crate::schedule::{parse_timezone, Cron};
use crate::util::parse_duration;
use chrono_tz::Tz;
use secrecy::{ExposeSecret, SecretString};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::Spanned;

mod app;
mod raw;
pub mod smtp;
mod tuning;
mod validate;

pub use app::{exclude_glob, FileSet, GitLocation, GitSource, Runbook};
use raw::*;
pub use tuning::{parse_size, RestoreSettings, StreamSettings};
use validate::{location, Validator};

/// A validated policy. Secrets (URLs with passwords, keys) are held here in full; print them
/// only through [`crate::util::mask_url`].
#[derive(Debug, Clone)]
pub struct Policy {
    pub name: String,
    pub path: PathBuf,
    pub objectives: Objectives,
    pub schedule: Option<Schedule>,
    pub database: Option<Database>,
    pub storage: Option<StorageSource>,
    pub repository: Repository,
    pub recipients: Vec<String>,
    /// `[retention]`; `None` keeps every snapshot.
    pub retention: Option<Retention>,
    pub verify: Verify,
    pub notify: Option<Notify>,
    /// `[[files]]` sets.
    pub files: Vec<FileSet>,
    /// `[[git]]` repositories.
    pub git: Vec<GitSource>,
    pub runbook: Runbook,
    /// `[restore]`: parallel pg_restore and its spool.
    pub restore: RestoreSettings,
    /// `[stream]`: continuous protection through a logical replication slot.
    pub stream: Option<StreamSettings>,
    /// Keys left unresolved because their `${VAR}` is unset and the command does not use them
    /// ([`Resolve::OnlyUsed`]); [`Policy::require`] names the variable when one is used after all.
    pub unresolved: Vec<Unresolved>,
}

/// Which `${VAR}`s a load must resolve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Resolve {
    /// Every one: a job that backs up, prunes or notifies needs them all.
    #[default]
    All,
    /// Only those of the repository, the encryption and the objectives: read-only commands and
    /// restore (DESIGN.md). An unset variable in `[notify]` turns that notification off (said
    /// once on stderr); one in `[database] url`, `[storage]` or `[verify] scratch_url` is an
    /// error only where that value is used.
    OnlyUsed,
}

/// A key whose `${VAR}` was not set under [`Resolve::OnlyUsed`].
#[derive(Debug, Clone)]
pub struct Unresolved {
    pub key: String,
    pub var: String,
}

impl Policy {
    /// Every value the policy loads as a secret, with its key: what must never be shown,
    /// wherever in the file it was written (an inline table included).
    pub fn secrets(&self) -> Vec<(&'static str, &str)> {
        let mut out: Vec<(&'static str, Option<&SecretString>)> = Vec::new();
        if let Some(d) = &self.database {
            out.push(("database.url", Some(&d.url)));
        }
        if let Some(st) = &self.storage {
            out.push(("storage.key", st.key.as_ref()));
            out.push(("storage.secret_access_key", st.secret_access_key.as_ref()));
        }
        let r = &self.repository;
        out.push(("repository.secret_access_key", r.secret_access_key.as_ref()));
        out.push(("repository.dedup_key", r.dedup_key.as_ref()));
        out.push(("verify.scratch_url", self.verify.scratch_url.as_ref()));
        if let Some(n) = &self.notify {
            out.push(("notify.webhook", n.webhook.as_ref()));
            out.push(("notify.healthcheck", n.healthcheck.as_ref()));
            out.push(("notify.healthcheck_verify", n.healthcheck_verify.as_ref()));
            out.push(("notify.healthcheck_prune", n.healthcheck_prune.as_ref()));
            out.push((
                "notify.email.smtp_url",
                n.email.as_ref().map(|e| &e.smtp_url),
            ));
        }
        out.into_iter()
            .filter_map(|(k, v)| Some((k, v?.expose_secret())))
            .filter(|(_, v)| !v.is_empty())
            .collect()
    }

    /// Refuses, naming the variable, when a key under `prefix` (`database.url`, `storage.`,
    /// `verify.scratch_url`) was left unresolved by the load.
    pub fn require(&self, prefix: &str) -> Result<()> {
        match self.unresolved.iter().find(|u| u.key.starts_with(prefix)) {
            None => Ok(()),
            Some(u) => Err(Error::input(format!(
                "{}: {}: environment variable {} is not set (or is empty), and this command needs it",
                self.path.display(),
                u.key,
                u.var
            ))),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Objectives {
    pub rpo: Duration,
    pub rto: Duration,
    pub retention: Duration,
}

#[derive(Debug, Clone)]
pub struct Schedule {
    pub backup: Option<Cron>,
    pub verify: Option<Cron>,
    pub prune: Option<Cron>,
    /// `check --read-data`, with the identity where `[verify] identity` (or
    /// `BACKSTOP_IDENTITY`) gives one on the daemon's host.
    pub check: Option<Cron>,
    pub timezone: Tz,
    /// Each start is delayed by a random amount up to this (`jitter = "5m"`; zero by default).
    pub jitter: Duration,
    /// How long a scheduled job waits for a lock that another process holds before it fails
    /// (`lock_wait = "30m"` by default). Jobs of one daemon always wait for each other.
    pub lock_wait: Duration,
}

#[derive(Debug, Clone)]
pub struct Database {
    /// Holds the password: shown only through `DbUrl::masked`.
    pub url: SecretString,
    pub exclude_schemas: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct StorageSource {
    pub kind: StorageKind,
    pub url: Option<String>,
    pub key: Option<SecretString>,
    pub buckets: Vec<String>,
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<SecretString>,
    pub path: Option<PathBuf>,
    pub require_consistent: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageKind {
    Supabase,
    S3,
    Dir,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    Dir(PathBuf),
    S3 { bucket: String, prefix: String },
}

#[derive(Debug, Clone)]
pub struct Repository {
    pub url: String,
    pub location: Location,
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<SecretString>,
    pub object_lock: Option<ObjectLock>,
    pub dedup_key: Option<SecretString>,
    pub zstd_level: i32,
    pub checksums: String,
    pub connections: usize,
}

/// zstd level 1: on the benchmark's app-shaped dump (256 KiB chunks) it used 25% less CPU than
/// level 3 and stored 3% fewer bytes (165.0 MB against 169.8 MB for a 1,000 MiB dump); on two
/// cores, where pg_dump and the server compete for the same CPUs, the CPU is the backup's time.
pub const DEFAULT_ZSTD_LEVEL: i32 = 1;

impl Repository {
    /// The store this repository lives in, as the store module takes it.
    pub fn store_config(&self) -> crate::store::StoreConfig {
        use crate::store::{s3, StoreConfig};
        match &self.location {
            Location::Dir(path) => StoreConfig::Dir(path.clone()),
            Location::S3 { bucket, prefix } => StoreConfig::S3(s3::S3Config {
                bucket: bucket.clone(),
                prefix: prefix.clone(),
                endpoint: self.endpoint.clone(),
                region: self.region.clone(),
                access_key_id: self.access_key_id.clone(),
                secret_access_key: self.secret_access_key.clone(),
                object_lock: self.object_lock.as_ref().map(|l| (l.mode.clone(), l.days)),
                checksums: self.checksums.clone(),
                connections: self.connections,
                part_size: s3::PART_SIZE,
            }),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ObjectLock {
    pub mode: String,
    pub days: u32,
}

#[derive(Debug, Clone, Default)]
pub struct Retention {
    pub keep_last: Option<u32>,
    pub keep_hourly: Option<u32>,
    pub keep_daily: Option<u32>,
    pub keep_weekly: Option<u32>,
    pub keep_monthly: Option<u32>,
    pub keep_yearly: Option<u32>,
    pub keep_within: Option<Duration>,
}

#[derive(Debug, Clone, Default)]
pub struct Verify {
    pub scratch_url: Option<SecretString>,
    /// The age identity file verify uses when neither `--identity` nor `BACKSTOP_IDENTITY`
    /// names one: for a verify host's daemon (never set it on the backup host).
    pub identity: Option<PathBuf>,
    pub read_data: Option<String>,
    pub queries: Vec<(String, String)>,
    pub allow_missing_extensions: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Notify {
    pub webhook: Option<SecretString>,
    /// `slack` (default) or `json`.
    pub webhook_format: String,
    /// healthchecks.io-style ping URL of the backup job.
    pub healthcheck: Option<SecretString>,
    /// The ping URLs of the verify and prune jobs; each job pings only its own check.
    pub healthcheck_verify: Option<SecretString>,
    pub healthcheck_prune: Option<SecretString>,
    pub email: Option<Email>,
    /// Events to send (see [`NOTIFY_EVENTS`]).
    pub on: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Email {
    pub smtp_url: SecretString,
    pub from: String,
    pub to: Vec<String>,
}

/// Every event `[notify] on` may name.
pub const NOTIFY_EVENTS: [&str; 11] = [
    "failure",
    "recovered",
    "success",
    "verify_failure",
    "rto_breach",
    "rpo_breach",
    "rpo_recovered",
    "policy_load_error",
    "stream_lag",
    "stream_stopped",
    "slot_dropped",
];

/// Events sent when `on` is not given: all but `success`.
pub const DEFAULT_EVENTS: [&str; 10] = [
    "failure",
    "recovered",
    "verify_failure",
    "rpo_breach",
    "rpo_recovered",
    "rto_breach",
    "policy_load_error",
    "stream_lag",
    "stream_stopped",
    "slot_dropped",
];

/// Finds a policy: a path as given, or a name looked up as `DIR/NAME.toml` where DIR is
/// `--policies`, `BACKSTOP_POLICIES` or `policies`.
pub fn resolve(arg: &str, policies_dir: Option<&Path>) -> PathBuf {
    let as_path = PathBuf::from(arg);
    if arg.contains('/') || arg.ends_with(".toml") || as_path.is_file() {
        return as_path;
    }
    policies_dir_or_default(policies_dir).join(format!("{arg}.toml"))
}

/// The error for a policy name that names no file: the names the directory holds, the closest
/// one as "did you mean", and where the directory is set when it is the default.
pub fn unknown_name(arg: &str, policies_dir: Option<&Path>) -> Error {
    let dir = policies_dir_or_default(policies_dir);
    let names: Vec<String> = files_in(&dir)
        .unwrap_or_default()
        .iter()
        .filter_map(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .collect();
    let mut message = format!("no policy named `{arg}` in {}", dir.display());
    let closest = names
        .iter()
        .map(|n| (crate::util::edit_distance(arg, n), n))
        .filter(|(d, n)| *d <= 2.max(n.len() / 3))
        .min();
    if let Some((_, n)) = closest {
        message.push_str(&format!(": did you mean `{n}`?"));
    }
    if names.is_empty() {
        message.push_str(" (it holds no *.toml)");
    } else {
        message.push_str(&format!(" (it holds: {})", names.join(", ")));
    }
    let default = policies_dir.is_none() && std::env::var_os("BACKSTOP_POLICIES").is_none();
    if default {
        message.push_str(
            "; policies are looked up in ./policies unless --policies DIR or BACKSTOP_POLICIES names another directory, or pass the policy file's path",
        );
    }
    Error::input(message)
}

/// The policies directory: `--policies`, else `BACKSTOP_POLICIES`, else `./policies`.
pub fn policies_dir_or_default(given: Option<&Path>) -> PathBuf {
    given
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os("BACKSTOP_POLICIES").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("policies"))
}

/// Every `*.toml` in `dir`, sorted; an error when the directory cannot be read.
pub fn files_in(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::input(format!(
                "the policies directory {} does not exist",
                dir.display()
            )),
            _ => Error::input(format!(
                "cannot read the policies directory {}: {e}",
                dir.display()
            )),
        })?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    Ok(files)
}

pub fn load(path: &Path) -> Result<Policy> {
    load_resolving(path, Resolve::All)
}

/// [`load`], resolving only the `${VAR}`s that `resolve` asks for.
pub fn load_resolving(path: &Path, resolve: Resolve) -> Result<Policy> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::input(format!("cannot read policy {}: {e}", path.display())))?;
    parse_resolving(&text, path, &|name| std::env::var(name).ok(), resolve)
}

/// Parses and validates a policy text; `env` looks up `${VAR}`s.
pub fn parse(text: &str, path: &Path, env: &dyn Fn(&str) -> Option<String>) -> Result<Policy> {
    parse_resolving(text, path, env, Resolve::All)
}

fn parse_resolving(
    text: &str,
    path: &Path,
    env: &dyn Fn(&str) -> Option<String>,
    resolve: Resolve,
) -> Result<Policy> {
    let file = path.display().to_string();
    let raw: RawPolicy = toml::from_str(text).map_err(|e| {
        let at = e.span().map(|s| location(text, s.start));
        // The line itself names the key a wrong value belongs to.
        let line = at
            .and_then(|(l, _)| text.lines().nth(l.saturating_sub(1)))
            .map(|l| format!(" (in `{}`)", crate::util::mask_age_secrets(l.trim())))
            .unwrap_or_default();
        let (l, c) = at.unwrap_or((1, 1));
        Error::input(format!("{file}:{l}:{c}: {}{line}", e.message().trim()))
    })?;
    let mut v = Validator {
        text,
        file: &file,
        env,
        problems: Vec::new(),
        resolve,
        unresolved: Vec::new(),
    };
    let mut policy = v.policy(raw, path);
    policy.unresolved = v.unresolved;
    if v.problems.is_empty() {
        Ok(policy)
    } else {
        Err(Error::input(v.problems.join("\n")))
    }
}

/// The `[notify]` of a policy file that does not load as a whole (a typo elsewhere), so that
/// the daemon can say so where the policy's own alerts go. `None` when that table itself does
/// not load either.
pub fn notify_of_broken(path: &Path) -> Option<Notify> {
    let text = std::fs::read_to_string(path).ok()?;
    let table: toml::Table = toml::from_str(&text).ok()?;
    let mut only = toml::Table::new();
    only.insert("notify".into(), table.get("notify")?.clone());
    let text = toml::to_string(&only).ok()?;
    let raw: raw::RawNotifyOnly = toml::from_str(&text).ok()?;
    let env = |name: &str| std::env::var(name).ok();
    let file = path.display().to_string();
    let mut v = Validator {
        text: &text,
        file: &file,
        env: &env,
        problems: Vec::new(),
        resolve: Resolve::All,
        unresolved: Vec::new(),
    };
    let notify = v.notify(raw.notify?);
    v.problems.is_empty().then_some(notify)
}

/// `s3://bucket/prefix`, `file:///abs/path`, or a plain path.
pub fn parse_location(url: &str) -> std::result::Result<Location, String> {
    if let Some(rest) = url.strip_prefix("s3://") {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(format!(
                "`{url}` names no bucket (write s3://bucket/prefix)"
            ));
        }
        return Ok(Location::S3 {
            bucket: bucket.to_string(),
            prefix: prefix.trim_matches('/').to_string(),
        });
    }
    if let Some(rest) = url.strip_prefix("file://") {
        if !rest.starts_with('/') {
            return Err(format!(
                "`{url}`: a file:// URL needs an absolute path (file:///var/backups/x)"
            ));
        }
        return Ok(Location::Dir(PathBuf::from(rest)));
    }
    if url.contains("://") {
        return Err(format!(
            "`{url}`: unsupported scheme (use s3://, file:// or a plain path)"
        ));
    }
    if url.is_empty() {
        return Err("empty repository URL".into());
    }
    Ok(Location::Dir(PathBuf::from(url)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p";

    fn env(name: &str) -> Option<String> {
        match name {
            "DB_URL" => Some("postgres://u:pw@localhost/db".into()),
            "REPO" => Some("/tmp/repo".into()),
            _ => None,
        }
    }

    fn minimal(extra: &str) -> String {
        format!(
            "name = \"t\"\n[database]\nurl = \"${{DB_URL}}\"\n[repository]\nurl = \"${{REPO}}\"\n[encryption]\nrecipients = [\"{KEY}\"]\n{extra}"
        )
    }

    fn err(text: &str) -> String {
        parse(text, Path::new("p.toml"), &env).unwrap_err().message
    }

    #[test]
    fn minimal_policy_parses_with_defaults() {
        let p = parse(&minimal(""), Path::new("p.toml"), &env).unwrap();
        let db = p.database.clone().unwrap();
        assert_eq!(db.url.expose_secret(), "postgres://u:pw@localhost/db");
        // Secrets stay out of Debug output.
        let shown = format!("{p:?}");
        assert!(!shown.contains("u:pw@"), "{shown}");
        assert_eq!(p.repository.location, Location::Dir("/tmp/repo".into()));
        assert_eq!(p.objectives.rpo, Duration::from_secs(86_400));
        assert_eq!(p.repository.zstd_level, 1);
    }

    #[test]
    fn unknown_key_names_file_line_column_and_key() {
        let e = err(&minimal("[verify]\nscratch = 1\n"));
        assert!(e.starts_with("p.toml:9:1:"), "{e}");
        assert!(e.contains("unknown field `scratch`"), "{e}");
    }

    #[test]
    fn missing_variable_is_named() {
        let e = err(&minimal("[notify]\nwebhook = \"${SLACK_WEBHOOK_URL}\"\n"));
        assert!(
            e.contains(
                "p.toml:9:11: notify.webhook: environment variable SLACK_WEBHOOK_URL is not set"
            ),
            "{e}"
        );
    }

    #[test]
    fn collects_every_problem() {
        let e = err(&minimal(
            "[objectives]\nrpo = \"24x\"\n[schedule]\nbackup = \"0 3 * *\"\ntimezone = \"Nowhere/City\"\n",
        ));
        assert_eq!(e.lines().count(), 3, "{e}");
        assert!(e.contains("p.toml:9:7: objectives.rpo:"), "{e}");
        assert!(e.contains("schedule.backup: `0 3 * *` has 4 fields"), "{e}");
        assert!(e.contains("schedule.timezone:"), "{e}");
    }

    #[test]
    fn email_addresses_and_smtp_url_are_checked_without_echoing_the_url() {
        let e = err(&minimal(
            "[notify]\nemail = { smtp_url = \"http://u:hunter2@mail.example\", from = \"not an address\", to = [] }\n",
        ));
        assert!(
            e.contains("notify.email.smtp_url") && e.contains("smtp://"),
            "{e}"
        );
        assert!(
            e.contains("`not an address` is not an email address"),
            "{e}"
        );
        assert!(e.contains("notify.email.to: names no recipient"), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
        let ok = minimal(
            "[notify]\nemail = { smtp_url = \"smtps://u:p@mail.example\", from = \"Backstop <b@x.example>\", to = [\"ops@x.example\"] }\n",
        );
        assert!(parse(&ok, Path::new("p.toml"), &env).is_ok());
    }

    #[test]
    fn broken_toml_has_a_position() {
        let e = err("name = \"t\"\n[database\n");
        assert!(e.starts_with("p.toml:2:"), "{e}");
    }

    #[test]
    fn recipients_are_required_and_checked() {
        let text = minimal("").replace(KEY, "age1notakey");
        assert!(err(&text).contains("encryption.recipients"));
        let text = minimal("").replace(&format!("\"{KEY}\""), "");
        assert!(err(&text).contains("never writes plaintext"));
    }

    #[test]
    fn locations() {
        assert_eq!(
            parse_location("s3://b/x/y/").unwrap(),
            Location::S3 {
                bucket: "b".into(),
                prefix: "x/y".into()
            }
        );
        assert_eq!(
            parse_location("file:///var/b").unwrap(),
            Location::Dir("/var/b".into())
        );
        assert!(parse_location("gs://b").is_err());
        assert!(parse_location("file://rel").is_err());
    }

    #[test]
    fn resolves_names_and_paths() {
        assert_eq!(resolve("x/y.toml", None), PathBuf::from("x/y.toml"));
        assert_eq!(
            resolve("prod", Some(Path::new("/etc/p"))),
            PathBuf::from("/etc/p/prod.toml")
        );
    }
}
