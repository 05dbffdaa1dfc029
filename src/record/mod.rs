//! The `--json` documents and run records (DESIGN.md, "Records"): plain data below the
//! operations, which build them from their outcomes (each `From<&Outcome>` lives with its
//! operation), and which the report, metrics, notifications and the daemon read back as these
//! types. Fields may be added, never renamed. No secrets: URLs appear with their password
//! masked.

pub mod figures;

use chrono::{DateTime, Utc};
pub use figures::*;
use serde::{Deserialize, Serialize};

pub(crate) const TOOL_VERSION: &str = env!("CARGO_PKG_VERSION");

/// What a run was: the `kind` of its record, and the segment of its key between the time and
/// the run id (`runs/<policy>/<time>-<kind>-<id>.json`).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Job {
    #[default]
    Backup,
    Restore,
    Verify,
    Check,
    Prune,
    Snapshots,
    Report,
    Stream,
}

impl Job {
    pub fn as_str(self) -> &'static str {
        match self {
            Job::Backup => "backup",
            Job::Restore => "restore",
            Job::Verify => "verify",
            Job::Check => "check",
            Job::Prune => "prune",
            Job::Snapshots => "snapshots",
            Job::Report => "report",
            Job::Stream => "stream",
        }
    }

    pub fn parse(text: &str) -> Option<Job> {
        [
            Job::Backup,
            Job::Restore,
            Job::Verify,
            Job::Check,
            Job::Prune,
            Job::Snapshots,
            Job::Report,
            Job::Stream,
        ]
        .into_iter()
        .find(|j| j.as_str() == text)
    }
}

impl std::fmt::Display for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What every run record holds, whatever its kind: read from any record (the other fields
/// are ignored) by what judges runs alone (the last outcome, run counts and times).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Header {
    pub kind: Job,
    pub ok: bool,
    pub policy: String,
    pub run_id: String,
    pub snapshot_id: Option<String>,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub duration_s: f64,
    /// A verify's measured restore time and its verdict against the RTO.
    pub restore_s: Option<f64>,
    pub rto_met: Option<bool>,
    pub error: Option<String>,
}

/// `stream --status --json` (and the record of a stream's end): the slot, its lag and the
/// sealed segments.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct StreamRecord {
    pub kind: Job,
    pub ok: bool,
    pub policy: String,
    pub slot: String,
    /// The slot exists and a reader holds it (a backstop stream between its reads too).
    pub active: bool,
    pub exists: bool,
    pub confirmed_lsn: Option<String>,
    /// WAL the slot holds back on the primary.
    pub lag_bytes: Option<i64>,
    pub last_segment_at: Option<DateTime<Utc>>,
    pub last_commit_at: Option<DateTime<Utc>>,
    pub segments: u64,
    pub unprotected_tables: Vec<String>,
    /// `--setup`: whether the slot was created now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slot_created: Option<bool>,
    /// `--setup`: the tables the publication holds.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tables: Vec<String>,
    pub error: Option<String>,
}

/// A `report` run record: one policy's verdict over a window, with its controls.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ReportRecord {
    pub kind: Job,
    pub ok: bool,
    pub policy: String,
    pub run_id: String,
    pub window: Option<ReportWindow>,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub compliant: bool,
    pub controls: Vec<serde_json::Value>,
    pub tool_version: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ReportWindow {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
}

/// The error's message, with any age private key masked (defence in depth: validation
/// already refuses one where a public key belongs).
pub(crate) fn error_text(e: &Option<crate::error::Error>) -> Option<String> {
    e.as_ref()
        .map(|e| crate::util::mask_age_secrets(&e.message))
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct BackupRecord {
    pub kind: Job,
    pub ok: bool,
    pub snapshot_id: Option<String>,
    pub policy: String,
    /// The run's id: its record is `runs/<policy>/<time>-<kind>-<run id>.json`.
    pub run_id: String,
    pub consistent_at: Option<DateTime<Utc>>,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub duration_s: f64,
    pub db: Option<BackupDb>,
    pub storage: Option<BackupStorage>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub files: Option<FilesFigures>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub git: Option<GitFigures>,
    pub phases: Vec<Phase>,
    pub warnings: Vec<String>,
    /// Blobs that older snapshots reference but the store had lost, uploaded again.
    pub blobs_reuploaded: u64,
    pub tool_version: String,
    pub error: Option<String>,
}

impl BackupRecord {
    /// What the run newly stored, over every part: database, storage, files and git.
    pub fn bytes_stored(&self) -> u64 {
        self.db.as_ref().map_or(0, |d| d.bytes_stored)
            + self.storage.as_ref().map_or(0, |s| s.bytes_stored)
            + self.files.as_ref().map_or(0, |f| f.bytes_stored)
            + self.git.as_ref().map_or(0, |g| g.bytes_stored)
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct RestoreRecord {
    pub kind: Job,
    pub ok: bool,
    pub snapshot_id: Option<String>,
    pub policy: String,
    /// The run's id: its record is `runs/<policy>/<time>-<kind>-<run id>.json`.
    pub run_id: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub duration_s: f64,
    pub target: Option<String>,
    pub db: Option<RestoreDb>,
    pub storage: Option<RestoreStorage>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub files: Option<FilesRestored>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub git: Option<GitRestored>,
    /// What the change stream's replay applied after the snapshot (`--before TIME`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream: Option<ReplayFigures>,
    pub phases: Vec<Phase>,
    pub tool_version: String,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct SnapshotsRecord {
    pub kind: Job,
    pub policy: String,
    pub snapshots: Vec<SnapshotEntry>,
    /// Snapshots whose meta.json is damaged: listed, never used.
    pub damaged: Vec<crate::repo::DamagedMeta>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct SnapshotEntry {
    pub id: String,
    pub consistent_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub db: Option<SnapshotDb>,
    pub storage: Option<SnapshotStorage>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub files: Option<crate::repo::format::MetaFiles>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub git: Option<crate::repo::format::MetaGit>,
    pub bytes_referenced: u64,
    /// What the change stream covers after this snapshot (until the next one): a restore to
    /// any moment in it replays the stream.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream: Option<StreamSpan>,
}

/// The sealed commits of the change stream that follow a snapshot.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct StreamSpan {
    pub segments: u64,
    pub transactions: u64,
    pub first_commit_at: Option<DateTime<Utc>>,
    pub last_commit_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct SnapshotDb {
    pub tables: u64,
    pub rows: u64,
    pub bytes_plain: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct SnapshotStorage {
    pub objects: u64,
    pub bytes_plain: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct VerifyRecord {
    pub kind: Job,
    pub ok: bool,
    pub snapshot_id: Option<String>,
    pub policy: String,
    /// The run's id: its record is `runs/<policy>/<time>-<kind>-<run id>.json`.
    pub run_id: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub duration_s: f64,
    /// The measured restore time (RTO): first download to the end of pg_restore.
    pub restore_s: Option<f64>,
    /// The policy's objective, in seconds.
    pub rto_s: f64,
    pub rto_met: Option<bool>,
    pub tables: Vec<TableCheck>,
    pub objects_checked: u64,
    pub objects_read: u64,
    pub objects_failed: u64,
    pub queries: Vec<QueryCheck>,
    pub problems: Vec<String>,
    /// Storage objects whose names a restore to a directory would map.
    pub names_mapped: Vec<String>,
    pub files_checked: u64,
    pub git_checked: u64,
    /// The change stream replayed from the snapshot before to this one and compared with this
    /// one's checksums: `{from, to, transactions, tables_equal}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream_checked: Option<StreamChecked>,
    pub notes: Vec<String>,
    pub missing_extensions: Vec<String>,
    pub expected_failures: Vec<String>,
    pub phases: Vec<Phase>,
    pub scratch_database: Option<String>,
    /// Temporary databases of killed verifies that this one dropped.
    pub leftovers_dropped: Vec<String>,
    pub kept: bool,
    pub tool_version: String,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct CheckRecord {
    pub kind: Job,
    pub ok: bool,
    pub policy: String,
    /// The run's id: its record is `runs/<policy>/<time>-<kind>-<run id>.json`.
    pub run_id: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub duration_s: f64,
    pub snapshots_checked: u64,
    pub blobs_checked: u64,
    pub bytes_read: u64,
    pub read_data: bool,
    pub decrypted: bool,
    pub damaged: Vec<Damaged>,
    pub tool_version: String,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct KeptSnapshot {
    pub id: String,
    pub reasons: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct LockedObject {
    pub key: String,
    pub until: DateTime<Utc>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct PruneRecord {
    pub kind: Job,
    pub ok: bool,
    pub policy: String,
    /// The run's id: its record is `runs/<policy>/<time>-<kind>-<run id>.json`.
    pub run_id: String,
    pub dry_run: bool,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub duration_s: f64,
    pub snapshots_kept: Vec<KeptSnapshot>,
    pub snapshots_removed: Vec<String>,
    /// Change-stream segments removed (they end before every kept snapshot).
    pub segments_removed: Vec<String>,
    /// What the plan found unreferenced (a dry run's "would free").
    pub blobs_unreferenced: u64,
    pub bytes_unreferenced: u64,
    pub blobs_deleted: u64,
    pub bytes_freed: u64,
    pub manifests_deleted: u64,
    pub locked_until: Vec<LockedObject>,
    pub notes: Vec<String>,
    pub phases: Vec<Phase>,
    pub tool_version: String,
    pub error: Option<String>,
}
