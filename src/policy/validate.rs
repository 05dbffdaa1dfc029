//! The policy validator: raw serde structs in, a validated [`Policy`] out, every problem
//! collected with its place in the file. `app.rs` and `tuning.rs` add the sections they own.

use super::raw::*;
use super::*;

pub(super) fn location(text: &str, offset: usize) -> (usize, usize) {
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

/// Turns the raw policy into a validated one, collecting every problem (with its file, line
/// and column) instead of stopping at the first; `${VAR}`s are expanded as it goes.
pub(super) struct Validator<'a> {
    pub(super) text: &'a str,
    pub(super) file: &'a str,
    pub(super) env: &'a dyn Fn(&str) -> Option<String>,
    pub(super) problems: Vec<String>,
    pub(super) resolve: Resolve,
    pub(super) unresolved: Vec<Unresolved>,
}

impl Validator<'_> {
    pub(super) fn problem(&mut self, span: Range<usize>, key: &str, msg: impl AsRef<str>) {
        let (l, c) = location(self.text, span.start);
        self.problems
            .push(format!("{}:{l}:{c}: {key}: {}", self.file, msg.as_ref()));
    }

    /// Whether an unset variable in `key` can wait until the value is used.
    pub(super) fn may_defer(&self, key: &str) -> bool {
        self.resolve == Resolve::OnlyUsed
            && (key.starts_with("notify.")
                || key.starts_with("storage.")
                || key == "database.url"
                || key == "verify.scratch_url")
    }

    pub(super) fn deferred(&self, prefix: &str) -> bool {
        self.unresolved.iter().any(|u| u.key.starts_with(prefix))
    }

    /// Expands `${VAR}`s; on a missing variable records a problem (or, where it may wait, an
    /// unresolved key) and returns an empty string.
    pub(super) fn expand(&mut self, s: &S, key: &str) -> String {
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
    pub(super) fn opt(&mut self, s: &Option<S>, key: &str) -> Option<String> {
        let before = self.unresolved.len();
        let value = s.as_ref().map(|s| self.expand(s, key));
        value.filter(|_| self.unresolved.len() == before)
    }

    /// A database URL: expanded, and refused (naming the characters, never the password) when
    /// its password holds an unencoded `@`, `#`, `/` or `?`, which would end it early.
    pub(super) fn db_url(&mut self, s: &S, key: &str) -> String {
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
    pub(super) fn secret(&mut self, s: &Option<S>, key: &str) -> Option<SecretString> {
        self.opt(s, key).map(SecretString::from)
    }

    pub(super) fn notify(&mut self, n: raw::RawNotify) -> Notify {
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

    pub(super) fn duration(&mut self, s: &Option<S>, key: &str, default: u64) -> Duration {
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

    pub(super) fn cron(&mut self, s: &Option<S>, key: &str) -> Option<Cron> {
        let s = s.as_ref()?;
        match Cron::parse(s.get_ref()) {
            Ok(c) => Some(c),
            Err(e) => {
                self.problem(s.span(), key, e);
                None
            }
        }
    }

    pub(super) fn policy(&mut self, raw: RawPolicy, path: &Path) -> Policy {
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

    pub(super) fn objectives(&mut self, raw: Option<RawObjectives>) -> Objectives {
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

    pub(super) fn schedule(&mut self, s: RawSchedule) -> Schedule {
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

    pub(super) fn database(&mut self, d: RawDatabase) -> Database {
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

    pub(super) fn retention(&mut self, r: RawRetention) -> Retention {
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

    pub(super) fn verify(&mut self, v: RawVerify) -> Verify {
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

    pub(super) fn storage(&mut self, s: RawStorage) -> StorageSource {
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

    pub(super) fn repository(&mut self, r: RawRepository) -> Repository {
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

    pub(super) fn recipients(&mut self, list: &Spanned<Vec<S>>) -> Vec<String> {
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
