//! The figures a run record carries: plain data, written by the operations (which re-export
//! them where they were defined) and read back by the report, metrics and notifications.

use crate::repo::format::GitSummary;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
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

/// What a backup stored of the buckets (the record's `storage`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct BackupStorage {
    pub objects: u64,
    pub bytes_plain: u64,
    pub bytes_stored: u64,
    pub objects_new: u64,
    pub objects_reused: u64,
    pub mismatches: Mismatches,
    /// Listed objects the source's protocol cannot fetch at all, each with why; every other
    /// object is backed up.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unfetchable: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Mismatches {
    pub missing_in_bucket: Vec<String>,
    pub missing_in_table: Vec<String>,
}

/// One damaged or missing object, and the snapshots that need it.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Damaged {
    pub blob: String,
    pub problem: String,
    pub snapshots: Vec<String>,
}

/// What a restore loaded into the database (the record's `db`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct RestoreDb {
    pub tables: u64,
    pub rows: u64,
    pub bytes: u64,
    pub database_created: bool,
    pub roles_created: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct RestoreStorage {
    pub objects: u64,
    pub bytes: u64,
    /// Objects whose names were written under a mapped path (`restore-names.tsv`).
    pub names_mapped: u64,
    /// Objects that could not be restored, each with why.
    pub failed: Vec<String>,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct TableCheck {
    pub name: String,
    pub expected_rows: u64,
    pub restored_rows: Option<u64>,
    pub checksum_ok: bool,
    pub note: Option<String>,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct QueryCheck {
    pub sql: String,
    pub result: String,
    pub ok: bool,
}

/// The record's `stream_checked`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct StreamChecked {
    /// The older snapshot (restored) and the newer one (compared with).
    pub from: String,
    pub to: String,
    /// The newer snapshot's time: the stream is proven up to here.
    pub to_consistent_at: Option<chrono::DateTime<chrono::Utc>>,
    pub transactions: u64,
    pub tables_equal: bool,
    /// The tables compared, and those the stream does not carry (left out).
    pub tables_compared: u64,
    pub tables_left_out: Vec<String>,
}

/// A named part of a run and how long it took.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Phase {
    pub name: String,
    pub duration_s: f64,
}

/// The record's `files` section.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct FilesFigures {
    pub sets: u64,
    pub files: u64,
    pub bytes_plain: u64,
    pub bytes_stored: u64,
}

/// What a files restore did.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct FilesRestored {
    pub sets: u64,
    /// Regular files (directories and links are restored too, not counted).
    pub files: u64,
    pub bytes: u64,
    /// The same bytes, under the name backup records use (DESIGN.md's `files` section).
    pub bytes_plain: u64,
    /// What this run wrote to the store: nothing, for a restore.
    pub bytes_stored: u64,
    /// Entries that could not be restored, each with why; the others were.
    pub failed: Vec<String>,
}

/// The record's `git` section.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct GitFigures {
    pub repositories: Vec<GitSummary>,
    pub bytes_plain: u64,
    pub bytes_stored: u64,
}

/// What a git restore did.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct GitRestored {
    pub repositories: Vec<GitSummary>,
    /// Bytes of the bundles written.
    pub bytes_plain: u64,
    /// What this run wrote to the store: nothing, for a restore.
    pub bytes_stored: u64,
}

/// What a replay of the change stream applied (the restore record's `stream`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ReplayFigures {
    pub segments: u64,
    pub transactions: u64,
    pub replayed_to_lsn: Option<String>,
    pub last_commit_at: Option<DateTime<Utc>>,
}
