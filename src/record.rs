//! The `--json` documents and run records (DESIGN.md, "Records"). Fields may be added, never
//! renamed. No secrets: URLs appear with their password masked.

use chrono::{DateTime, Utc};
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct Phase {
    pub name: String,
    pub duration_s: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct BackupRecord {
    pub kind: &'static str,
    pub ok: bool,
    pub snapshot_id: Option<String>,
    pub policy: String,
    pub consistent_at: Option<DateTime<Utc>>,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub duration_s: f64,
    pub db: Option<BackupDb>,
    pub storage: Option<BackupStorage>,
    pub phases: Vec<Phase>,
    pub warnings: Vec<String>,
    pub tool_version: &'static str,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct BackupDb {
    pub tables: u64,
    pub rows: u64,
    pub bytes_plain: u64,
    pub bytes_stored: u64,
    pub blobs_new: u64,
    pub blobs_reused: u64,
    pub server_version: String,
    pub pg_dump_version: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct BackupStorage {
    pub objects: u64,
    pub bytes_plain: u64,
    pub bytes_stored: u64,
    pub objects_new: u64,
    pub objects_reused: u64,
    pub mismatches: Mismatches,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Mismatches {
    pub missing_in_bucket: Vec<String>,
    pub missing_in_table: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RestoreRecord {
    pub kind: &'static str,
    pub ok: bool,
    pub snapshot_id: Option<String>,
    pub policy: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub duration_s: f64,
    pub target: Option<String>,
    pub db: Option<RestoreDb>,
    pub storage: Option<RestoreStorage>,
    pub phases: Vec<Phase>,
    pub tool_version: &'static str,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct RestoreDb {
    pub tables: u64,
    pub rows: u64,
    pub bytes: u64,
    pub database_created: bool,
    pub roles_created: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct RestoreStorage {
    pub objects: u64,
    pub bytes: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct SnapshotsRecord {
    pub kind: &'static str,
    pub policy: String,
    pub snapshots: Vec<SnapshotEntry>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SnapshotEntry {
    pub id: String,
    pub consistent_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub db: Option<SnapshotDb>,
    pub storage: Option<SnapshotStorage>,
    pub bytes_referenced: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct SnapshotDb {
    pub tables: u64,
    pub rows: u64,
    pub bytes_plain: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct SnapshotStorage {
    pub objects: u64,
    pub bytes_plain: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct VerifyRecord {
    pub kind: &'static str,
    pub ok: bool,
    pub snapshot_id: Option<String>,
    pub policy: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub duration_s: f64,
    /// The measured restore time (RTO): first download to the end of pg_restore.
    pub restore_s: Option<f64>,
    /// The policy's objective, in seconds.
    pub rto_s: f64,
    pub rto_met: Option<bool>,
    pub tables: Vec<crate::verify::TableCheck>,
    pub objects_checked: u64,
    pub objects_read: u64,
    pub objects_failed: u64,
    pub queries: Vec<crate::verify::QueryCheck>,
    pub problems: Vec<String>,
    pub missing_extensions: Vec<String>,
    pub expected_failures: Vec<String>,
    pub phases: Vec<Phase>,
    pub scratch_database: Option<String>,
    pub kept: bool,
    pub tool_version: &'static str,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CheckRecord {
    pub kind: &'static str,
    pub ok: bool,
    pub policy: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub duration_s: f64,
    pub snapshots_checked: u64,
    pub blobs_checked: u64,
    pub bytes_read: u64,
    pub read_data: bool,
    pub decrypted: bool,
    pub damaged: Vec<Damaged>,
    pub tool_version: &'static str,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Damaged {
    pub blob: String,
    pub problem: String,
    pub snapshots: Vec<String>,
}
