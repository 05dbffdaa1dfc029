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

pub use app::{exclude_glob, FileSet, GitLocation, GitSource, Runbook};
use raw::*;
pub use tuning::{parse_size, RestoreSettings, StreamSettings};

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

fn location(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rsplit('\n')
        .next()
        .map(|l| l.chars().count())
        .unwrap_or(0)
        + 1;
    (line, col)
}

struct Validator<'a> {
    text: &'a str,
    file: &'a str,
    env: &'a dyn Fn(&str) -> Option<String>,
    problems: Vec<String>,
    resolve: Resolve,
    unresolved: Vec<Unresolved>,
}

impl Validator<'_> {
    fn problem(&mut self, span: Range<usize>, key: &str, msg: impl AsRef<str>) {
        let (l, c) = location(self.text, span.start);
        self.problems
            .push(format!("{}:{l}:{c}: {key}: {}", self.file, msg.as_ref()));
    }

    /// Whether an unset variable in `key` can wait until the value is used.
    fn may_defer(&self, key: &str) -> bool {
        self.resolve == Resolve::OnlyUsed
            && (key.starts_with("notify.")
                || key.starts_with("storage.")
                || key == "database.url"
                || key == "verify.scratch_url")
    }

    fn deferred(&self, prefix: &str) -> bool {
        self.unresolved.iter().any(|u| u.key.starts_with(prefix))
    }

    /// Expands `${VAR}`s; on a missing variable records a problem (or, where it may wait, an
    /// unresolved key) and returns an empty string.
    fn expand(&mut self, s: &S, key: &str) -> String {
        let raw = s.get_ref();
        if raw.trim().is_empty() {
            self.problem(
                s.span(),
                key,
                "is empty: give it a value or leave the key out",
            );
            return String::new();
        }
        let mut out = String::new();
        let mut rest = raw.as_str();
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let Some(end) = after.find('}') else {
                self.problem(s.span(), key, "unclosed `${` (write ${NAME})");
                return String::new();
            };
            let name = &after[..end];
            let valid = !name.is_empty()
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !name.starts_with(|c: char| c.is_ascii_digit());
            if !valid {
                self.problem(
                    s.span(),
                    key,
                    format!("`${{{name}}}` is not a valid variable name"),
                );
                return String::new();
            }
            match (self.env)(name).filter(|v| !v.is_empty()) {
                Some(value) => out.push_str(&value),
                None if self.may_defer(key) => {
                    self.unresolved.push(Unresolved {
                        key: key.to_string(),
                        var: name.to_string(),
                    });
                    return String::new();
                }
                None => {
                    self.problem(
                        s.span(),
                        key,
                        format!("environment variable {name} is not set (or is empty)"),
                    );
                    return String::new();
                }
            }
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        out
    }

    /// An optional value; `None` also when its variable was left unresolved.
    fn opt(&mut self, s: &Option<S>, key: &str) -> Option<String> {
        let before = self.unresolved.len();
        let value = s.as_ref().map(|s| self.expand(s, key));
        value.filter(|_| self.unresolved.len() == before)
    }

    /// A database URL: expanded, and refused (naming the characters, never the password) when
    /// its password holds an unencoded `@`, `#`, `/` or `?`, which would end it early.
    fn db_url(&mut self, s: &S, key: &str) -> String {
        let url = self.expand(s, key);
        let bad = crate::util::unencoded_in_password(&url);
        if !bad.is_empty() {
            let list: Vec<String> = bad.iter().map(|c| format!("`{c}`")).collect();
            self.problem(
                s.span(),
                key,
                format!(
                    "the password in {} holds {} unencoded: percent-encode it (@ %40, # %23, / %2F, ? %3F)",
                    crate::util::mask_url(&url),
                    list.join(", ")
                ),
            );
        }
        url
    }

    /// [`Validator::opt`] for a secret: it prints as `[REDACTED]` in `Debug`.
    fn secret(&mut self, s: &Option<S>, key: &str) -> Option<SecretString> {
        self.opt(s, key).map(SecretString::from)
    }

    fn notify(&mut self, n: raw::RawNotify) -> Notify {
        let format = n
            .webhook_format
            .as_ref()
            .map(|f| f.get_ref().clone())
            .unwrap_or_else(|| "slack".into());
        if let Some(f) = &n.webhook_format {
            if f.get_ref() != "slack" && f.get_ref() != "json" {
                self.problem(f.span(), "notify.webhook_format", "must be slack or json");
            }
        }
        let on = match &n.on {
            None => DEFAULT_EVENTS.iter().map(|e| e.to_string()).collect(),
            Some(list) => {
                for e in list {
                    if !NOTIFY_EVENTS.contains(&e.get_ref().as_str()) {
                        self.problem(
                            e.span(),
                            "notify.on",
                            format!(
                                "unknown event `{}`; events are {}",
                                e.get_ref(),
                                NOTIFY_EVENTS.join(", ")
                            ),
                        );
                    }
                }
                list.iter().map(|e| e.get_ref().clone()).collect()
            }
        };
        let email = n.email.and_then(|e| {
            let smtp_url = self.secret(&Some(e.smtp_url.clone()), "notify.email.smtp_url")?;
            if !smtp_url.expose_secret().is_empty() {
                if let Err(problem) = smtp::check_url(smtp_url.expose_secret()) {
                    self.problem(e.smtp_url.span(), "notify.email.smtp_url", problem);
                }
            }
            for address in std::iter::once(&e.from).chain(&e.to) {
                if let Err(problem) = smtp::check_address(address.get_ref()) {
                    self.problem(address.span(), "notify.email", problem);
                }
            }
            if e.to.is_empty() {
                self.problem(e.from.span(), "notify.email.to", "names no recipient");
            }
            Some(Email {
                smtp_url,
                from: e.from.get_ref().clone(),
                to: e.to.iter().map(|t| t.get_ref().clone()).collect(),
            })
        });
        Notify {
            webhook: self.secret(&n.webhook, "notify.webhook"),
            webhook_format: format,
            healthcheck: self.secret(&n.healthcheck, "notify.healthcheck"),
            healthcheck_verify: self.secret(&n.healthcheck_verify, "notify.healthcheck_verify"),
            healthcheck_prune: self.secret(&n.healthcheck_prune, "notify.healthcheck_prune"),
            email,
            on,
        }
    }

    fn duration(&mut self, s: &Option<S>, key: &str, default: u64) -> Duration {
        match s {
            None => Duration::from_secs(default),
            Some(s) => match parse_duration(s.get_ref()) {
                Ok(d) => d,
                Err(e) => {
                    self.problem(s.span(), key, e);
                    Duration::from_secs(default)
                }
            },
        }
    }

    fn cron(&mut self, s: &Option<S>, key: &str) -> Option<Cron> {
        let s = s.as_ref()?;
        match Cron::parse(s.get_ref()) {
            Ok(c) => Some(c),
            Err(e) => {
                self.problem(s.span(), key, e);
                None
            }
        }
    }

    fn policy(&mut self, raw: RawPolicy, path: &Path) -> Policy {
        let name = self.name(&raw.name, "name", &mut std::collections::HashSet::new());
        let objectives = self.objectives(raw.objectives);
        let schedule = raw.schedule.map(|s| self.schedule(s));
        let database = raw.database.map(|d| self.database(d));
        let storage = raw.storage.map(|s| self.storage(s));
        if database.is_none() && storage.is_none() && raw.files.is_empty() && raw.git.is_empty() {
            self.problems.push(format!(
                "{}: policy backs up nothing: add a [database], [storage], [[files]] or [[git]] section",
                self.file
            ));
        }
        let repository = self.repository(raw.repository);
        let recipients = self.recipients(&raw.encryption.recipients);
        let retention = raw.retention.map(|r| self.retention(r));
        let verify = raw.verify.map(|v| self.verify(v)).unwrap_or_default();
        let notify = raw.notify.map(|n| self.notify(n));
        let files = self.files(raw.files);
        let git = self.git(raw.git);
        let runbook = self.runbook(raw.runbook);
        let restore = self.restore_settings(raw.restore);
        let stream_span = raw.stream.as_ref().map(|s| s.slot.span());
        let stream = self.stream_settings(raw.stream);
        if let (Some(span), None) = (stream_span, &database) {
            self.problem(
                span,
                "stream",
                "[stream] follows the database's changes: the policy needs [database]",
            );
        }
        Policy {
            name,
            path: path.to_path_buf(),
            objectives,
            schedule,
            database,
            storage,
            repository,
            recipients,
            retention,
            verify,
            notify,
            files,
            git,
            runbook,
            restore,
            stream,
            unresolved: Vec::new(),
        }
    }

    fn objectives(&mut self, raw: Option<RawObjectives>) -> Objectives {
        let o = raw.unwrap_or(RawObjectives {
            rpo: None,
            rto: None,
            retention: None,
        });
        Objectives {
            rpo: self.duration(&o.rpo, "objectives.rpo", 86_400),
            rto: self.duration(&o.rto, "objectives.rto", 3600),
            retention: self.duration(&o.retention, "objectives.retention", 35 * 86_400),
        }
    }

    fn schedule(&mut self, s: RawSchedule) -> Schedule {
        let timezone = match &s.timezone {
            None => Tz::UTC,
            Some(t) => parse_timezone(t.get_ref()).unwrap_or_else(|e| {
                self.problem(t.span(), "schedule.timezone", e);
                Tz::UTC
            }),
        };
        Schedule {
            backup: self.cron(&s.backup, "schedule.backup"),
            verify: self.cron(&s.verify, "schedule.verify"),
            prune: self.cron(&s.prune, "schedule.prune"),
            check: self.cron(&s.check, "schedule.check"),
            timezone,
            jitter: self.duration(&s.jitter, "schedule.jitter", 0),
            lock_wait: self.duration(&s.lock_wait, "schedule.lock_wait", 30 * 60),
        }
    }

    fn database(&mut self, d: RawDatabase) -> Database {
        let database = Database {
            url: self.db_url(&d.url, "database.url").into(),
            exclude_schemas: d
                .exclude_schemas
                .iter()
                .map(|s| self.expand(s, "database.exclude_schemas"))
                .collect(),
        };
        let url = database.url.expose_secret();
        let postgres = url.starts_with("postgres://") || url.starts_with("postgresql://");
        if !url.is_empty() && !postgres {
            self.problems.push(format!(
                "{}: database.url: must be a postgres:// or postgresql:// URL",
                self.file
            ));
        }
        database
    }

    fn retention(&mut self, r: RawRetention) -> Retention {
        Retention {
            keep_last: r.keep_last,
            keep_hourly: r.keep_hourly,
            keep_daily: r.keep_daily,
            keep_weekly: r.keep_weekly,
            keep_monthly: r.keep_monthly,
            keep_yearly: r.keep_yearly,
            keep_within: r
                .keep_within
                .as_ref()
                .map(|w| self.duration(&Some(w.clone()), "retention.keep_within", 0)),
        }
    }

    fn verify(&mut self, v: RawVerify) -> Verify {
        for q in &v.queries {
            if let Err(e) = crate::expect::parse_expect(q.expect.get_ref()) {
                self.problem(q.expect.span(), "verify.queries.expect", e);
            }
        }
        if let Some(r) = &v.read_data {
            if let Err(e) = crate::expect::parse_share(r.get_ref()) {
                self.problem(r.span(), "verify.read_data", e);
            }
        }
        Verify {
            scratch_url: v
                .scratch_url
                .as_ref()
                .map(|u| self.db_url(u, "verify.scratch_url").into()),
            identity: self.opt(&v.identity, "verify.identity").map(PathBuf::from),
            read_data: v.read_data.as_ref().map(|s| s.get_ref().clone()),
            queries: v
                .queries
                .iter()
                .map(|q| (q.sql.get_ref().clone(), q.expect.get_ref().clone()))
                .collect(),
            allow_missing_extensions: v
                .allow_missing_extensions
                .iter()
                .map(|s| s.get_ref().clone())
                .collect(),
        }
    }

    fn storage(&mut self, s: RawStorage) -> StorageSource {
        let known = match s.kind.get_ref().as_str() {
            "supabase" => Some(StorageKind::Supabase),
            "s3" => Some(StorageKind::S3),
            "dir" => Some(StorageKind::Dir),
            other => {
                self.problem(
                    s.kind.span(),
                    "storage.kind",
                    format!("`{other}` is not one of supabase, s3, dir"),
                );
                None
            }
        };
        // An unknown kind is one problem: what another kind would need is not asked for.
        let kind = known.unwrap_or(StorageKind::Dir);
        if s.buckets.is_empty() {
            self.problem(s.kind.span(), "storage.buckets", "list at least one bucket");
        }
        for b in &s.buckets {
            let name = b.get_ref();
            if name.is_empty() || name.contains(['/', '\\', '\0']) || name == "." || name == ".." {
                self.problem(
                    b.span(),
                    "storage.buckets",
                    format!(
                        "`{}` is not a bucket name: a bucket is one name, without `/`, and not `.` or `..`",
                        name.escape_debug()
                    ),
                );
            }
        }
        let path = self.opt(&s.path, "storage.path").map(PathBuf::from);
        let url = self.opt(&s.url, "storage.url");
        let key = self.secret(&s.key, "storage.key");
        match known {
            _ if self.deferred("storage.") => {}
            Some(StorageKind::Supabase) if url.is_none() || key.is_none() => self.problem(
                s.kind.span(),
                "storage",
                "kind = \"supabase\" needs url (the project URL) and key (a service-role key)",
            ),
            Some(StorageKind::Dir) if path.is_none() => {
                self.problem(s.kind.span(), "storage.path", "kind = \"dir\" needs path")
            }
            _ => {}
        }
        StorageSource {
            kind,
            url,
            key,
            buckets: s.buckets.iter().map(|b| b.get_ref().clone()).collect(),
            endpoint: self.opt(&s.endpoint, "storage.endpoint"),
            region: self.opt(&s.region, "storage.region"),
            access_key_id: self.opt(&s.access_key_id, "storage.access_key_id"),
            secret_access_key: self.secret(&s.secret_access_key, "storage.secret_access_key"),
            path,
            require_consistent: s.require_consistent.unwrap_or(false),
        }
    }

    fn repository(&mut self, r: RawRepository) -> Repository {
        let url = self.expand(&r.url, "repository.url");
        let location = match parse_location(&url) {
            Ok(l) => l,
            Err(e) => {
                if !url.is_empty() {
                    self.problem(r.url.span(), "repository.url", e);
                }
                Location::Dir(PathBuf::new())
            }
        };
        let zstd_level = match &r.zstd_level {
            None => DEFAULT_ZSTD_LEVEL,
            Some(l) if (1..=19).contains(l.get_ref()) => *l.get_ref() as i32,
            Some(l) => {
                self.problem(
                    l.span(),
                    "repository.zstd_level",
                    "must be between 1 and 19",
                );
                DEFAULT_ZSTD_LEVEL
            }
        };
        let connections = match &r.connections {
            None => 8,
            Some(c) if (1..=256).contains(c.get_ref()) => *c.get_ref() as usize,
            Some(c) => {
                self.problem(
                    c.span(),
                    "repository.connections",
                    "must be between 1 and 256",
                );
                8
            }
        };
        let checksums = match &r.checksums {
            None => "auto".to_string(),
            Some(c) if ["auto", "when_required", "always"].contains(&c.get_ref().as_str()) => {
                c.get_ref().clone()
            }
            Some(c) => {
                self.problem(
                    c.span(),
                    "repository.checksums",
                    "must be one of auto, when_required, always",
                );
                "auto".into()
            }
        };
        if r.object_lock.is_some() && matches!(location, Location::Dir(_)) {
            self.problem(
                r.url.span(),
                "repository.object_lock",
                "object lock needs an s3:// repository; a local directory cannot enforce retention",
            );
        }
        let object_lock = r.object_lock.as_ref().map(|l| {
            let mode = l.mode.get_ref().to_ascii_lowercase();
            if mode != "governance" && mode != "compliance" {
                self.problem(
                    l.mode.span(),
                    "repository.object_lock.mode",
                    "must be governance or compliance",
                );
            }
            if !(1..=36_500).contains(l.days.get_ref()) {
                self.problem(
                    l.days.span(),
                    "repository.object_lock.days",
                    "must be 1 to 36500",
                );
            }
            ObjectLock {
                mode,
                days: (*l.days.get_ref()).clamp(1, 36_500) as u32,
            }
        });
        Repository {
            url,
            location,
            endpoint: self.opt(&r.endpoint, "repository.endpoint"),
            region: self.opt(&r.region, "repository.region"),
            access_key_id: self.opt(&r.access_key_id, "repository.access_key_id"),
            secret_access_key: self.secret(&r.secret_access_key, "repository.secret_access_key"),
            object_lock,
            dedup_key: self.secret(&r.dedup_key, "repository.dedup_key"),
            zstd_level,
            checksums,
            connections,
        }
    }

    fn recipients(&mut self, list: &Spanned<Vec<S>>) -> Vec<String> {
        if list.get_ref().is_empty() {
            self.problem(
                list.span(),
                "encryption.recipients",
                "no recipient: backstop never writes plaintext; add an age public key (backstop keygen prints one)",
            );
        }
        let mut out = Vec::new();
        for r in list.get_ref() {
            if crate::util::is_age_secret(r.get_ref()) {
                // Never echo it: it is the secret that decrypts every backup.
                self.problem(
                    r.span(),
                    "encryption.recipients",
                    "this is an age PRIVATE key (AGE-SECRET-KEY-...), which must never be on the backup host: put its public key here (age1..., printed by `backstop keygen` or `age-keygen -y KEYFILE`) and keep the private key with the operators",
                );
                continue;
            }
            let value = self.expand(r, "encryption.recipients");
            if value.is_empty() {
                continue;
            }
            if crate::util::is_age_secret(&value) {
                self.problem(
                    r.span(),
                    "encryption.recipients",
                    "the variable holds an age PRIVATE key (AGE-SECRET-KEY-...), which must never be on the backup host: give it the public key (age1...) instead",
                );
                continue;
            }
            match crate::seal::parse_recipient(&value) {
                Ok(_) => out.push(value),
                Err(e) => self.problem(r.span(), "encryption.recipients", e.message),
            }
        }
        out
    }
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
