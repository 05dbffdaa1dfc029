//! The policy file as written: serde structs that mirror the TOML, with spans kept for
//! error positions. Unknown keys are rejected here (`deny_unknown_fields`); everything else is
//! checked by the validator in the parent module.

use serde::Deserialize;
use toml::Spanned;

pub(super) type S = Spanned<String>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPolicy {
    pub(super) name: S,
    pub(super) objectives: Option<RawObjectives>,
    pub(super) schedule: Option<RawSchedule>,
    pub(super) database: Option<RawDatabase>,
    pub(super) storage: Option<RawStorage>,
    pub(super) repository: RawRepository,
    pub(super) encryption: RawEncryption,
    pub(super) retention: Option<RawRetention>,
    pub(super) verify: Option<RawVerify>,
    pub(super) notify: Option<RawNotify>,
    #[serde(default)]
    pub(super) files: Vec<RawFiles>,
    #[serde(default)]
    pub(super) git: Vec<RawGit>,
    pub(super) runbook: Option<RawRunbook>,
    pub(super) restore: Option<RawRestore>,
    pub(super) stream: Option<RawStream>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStream {
    pub(super) slot: S,
    pub(super) publication: S,
    pub(super) seal_every: Option<S>,
    pub(super) max_slot_lag: Option<S>,
    pub(super) drop_slot_at: Option<S>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRestore {
    pub(super) jobs: Option<Spanned<i64>>,
    pub(super) spool_dir: Option<S>,
    pub(super) spool_max: Option<S>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFiles {
    pub(super) name: S,
    pub(super) paths: Spanned<Vec<S>>,
    #[serde(default)]
    pub(super) exclude: Vec<S>,
    pub(super) required: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGit {
    pub(super) name: S,
    pub(super) repo: Option<S>,
    pub(super) url: Option<S>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRunbook {
    pub(super) redeploy: Option<S>,
    pub(super) rollback: Option<S>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawObjectives {
    pub(super) rpo: Option<S>,
    pub(super) rto: Option<S>,
    pub(super) retention: Option<S>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSchedule {
    pub(super) backup: Option<S>,
    pub(super) verify: Option<S>,
    pub(super) prune: Option<S>,
    pub(super) check: Option<S>,
    pub(super) timezone: Option<S>,
    pub(super) jitter: Option<S>,
    pub(super) lock_wait: Option<S>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDatabase {
    pub(super) url: S,
    #[serde(default)]
    pub(super) exclude_schemas: Vec<S>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStorage {
    pub(super) kind: S,
    pub(super) url: Option<S>,
    pub(super) key: Option<S>,
    #[serde(default)]
    pub(super) buckets: Vec<S>,
    pub(super) endpoint: Option<S>,
    pub(super) region: Option<S>,
    pub(super) access_key_id: Option<S>,
    pub(super) secret_access_key: Option<S>,
    pub(super) path: Option<S>,
    pub(super) require_consistent: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRepository {
    pub(super) url: S,
    pub(super) endpoint: Option<S>,
    pub(super) region: Option<S>,
    pub(super) access_key_id: Option<S>,
    pub(super) secret_access_key: Option<S>,
    pub(super) object_lock: Option<RawObjectLock>,
    pub(super) dedup_key: Option<S>,
    pub(super) zstd_level: Option<Spanned<i64>>,
    pub(super) checksums: Option<S>,
    pub(super) connections: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawObjectLock {
    pub(super) mode: S,
    pub(super) days: Spanned<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEncryption {
    pub(super) recipients: Spanned<Vec<S>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRetention {
    pub(super) keep_last: Option<u32>,
    pub(super) keep_hourly: Option<u32>,
    pub(super) keep_daily: Option<u32>,
    pub(super) keep_weekly: Option<u32>,
    pub(super) keep_monthly: Option<u32>,
    pub(super) keep_yearly: Option<u32>,
    pub(super) keep_within: Option<S>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawVerify {
    pub(super) scratch_url: Option<S>,
    pub(super) identity: Option<S>,
    pub(super) read_data: Option<S>,
    #[serde(default)]
    pub(super) queries: Vec<RawQuery>,
    #[serde(default)]
    pub(super) allow_missing_extensions: Vec<S>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawQuery {
    pub(super) sql: S,
    pub(super) expect: S,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNotify {
    pub(super) webhook: Option<S>,
    pub(super) webhook_format: Option<S>,
    pub(super) healthcheck: Option<S>,
    pub(super) healthcheck_verify: Option<S>,
    pub(super) healthcheck_prune: Option<S>,
    pub(super) email: Option<RawEmail>,
    pub(super) on: Option<Vec<S>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEmail {
    pub(super) smtp_url: S,
    pub(super) from: S,
    pub(super) to: Vec<S>,
}

/// A policy file that does not load, read for its `[notify]` table alone.
#[derive(Deserialize)]
pub(super) struct RawNotifyOnly {
    pub(super) notify: Option<RawNotify>,
}
