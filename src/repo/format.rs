//! The on-store documents (DESIGN.md, "Repository layout"). Fields may be added, never renamed.

use crate::seal::ChunkerParams;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub use crate::model::{Role, TableStat};

pub const FORMAT: u32 = 1;

/// `backstop.json`: public facts about the repository. No secrets.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RepoConfig {
    pub format: u32,
    pub created_at: DateTime<Utc>,
    pub tool_version: String,
    pub chunker: ChunkerParams,
    /// Hex salt keying blob ids (HMAC-SHA256) unless the policy sets `repository.dedup_key`.
    pub dedup_salt: String,
    /// The public keys the repository was created for (informational: each run seals to the
    /// policy's recipients).
    pub recipients: Vec<String>,
    pub blob_format: String,
}

/// A blob as stored: its id and the size and SHA-256 of its stored (sealed) bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BlobRef {
    pub id: String,
    pub size: u64,
    pub sha256: String,
}

/// A plaintext stream (a dump, a file) as the ordered list of its chunks.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StreamRef {
    pub bytes: u64,
    pub sha256: String,
    pub chunks: Vec<ChunkRef>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRef {
    pub id: String,
    pub len: u32,
}

/// `meta.json`: plaintext, written last. A snapshot exists iff its meta.json exists.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Meta {
    pub format: u32,
    pub id: String,
    pub policy: String,
    pub consistent_at: DateTime<Utc>,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub tool_version: String,
    pub db: Option<MetaDb>,
    pub storage: Option<MetaStorage>,
    /// Sum of the stored sizes of every blob this snapshot references (each counted once).
    pub bytes_referenced: u64,
    pub encryption: MetaEncryption,
    pub manifest: StoredObject,
    pub blobs: Vec<BlobRef>,
    /// The object-lock retention this snapshot's new objects were written with; absent on a
    /// store without object lock (and in older snapshots). Blobs reused from older snapshots
    /// keep their own, earlier dates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_lock: Option<MetaLock>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<MetaFiles>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git: Option<MetaGit>,
    /// The WAL position the dump's snapshot was taken at (`16/B374D848`): where the change
    /// stream joins it. Absent without a database, and in older snapshots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consistent_lsn: Option<String>,
    /// The dump's snapshot as `txid_current_snapshot()` gives it (`xmin:xmax:xip,...`): a
    /// streamed transaction is in the dump exactly when this snapshot sees it, so a replay
    /// applies each transaction once, neither lost nor twice, whatever the commit order
    /// around the snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_xids: Option<String>,
}

/// Counts of a snapshot's `[[files]]` sets (plaintext, like the rest of meta.json: no names).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MetaFiles {
    pub sets: u64,
    pub files: u64,
    pub bytes_plain: u64,
}

/// A snapshot's `[[git]]` repositories: their names, HEAD commits and ref counts are public
/// facts (the runbook and the report quote them without the identity).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MetaGit {
    pub repositories: Vec<GitSummary>,
    pub bytes_plain: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GitSummary {
    pub name: String,
    /// The commit HEAD pointed at; `None` for a repository whose HEAD names no commit.
    pub head: Option<String>,
    pub refs: u64,
}

/// Object-lock retention as a snapshot recorded it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MetaLock {
    pub mode: String,
    pub days: u32,
    /// When its meta.json, manifest and new blobs may be deleted, at the earliest.
    pub until: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MetaDb {
    pub tables: u64,
    pub rows: u64,
    pub bytes_plain: u64,
    pub server_version: String,
    /// `name version` of each extension the database has: what a new server must offer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extensions: Vec<String>,
    /// The names of the roles its objects refer to: what a new cluster must have.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MetaStorage {
    pub objects: u64,
    pub bytes_plain: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MetaEncryption {
    pub scheme: String,
    pub recipients: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredObject {
    pub key: String,
    pub size: u64,
    pub sha256: String,
}

/// `manifest.age`: everything needed to restore, encrypted.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub snapshot_id: String,
    pub policy: String,
    pub consistent_at: DateTime<Utc>,
    pub database: Option<DbManifest>,
    pub storage: Option<StorageManifest>,
    /// What a reader needs of the repository to check this snapshot's blobs, kept inside the
    /// encrypted manifest so that an identity alone restores it, and `init --recover` can
    /// rebuild a lost backstop.json. Absent in manifests of older versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository: Option<ManifestRepo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<FilesManifest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git: Option<GitManifest>,
}

impl Manifest {
    /// Every chunk the snapshot is made of: the dump, the storage objects, the files and the
    /// git bundles. Its meta.json must list each of their blobs (prune keeps only those).
    pub fn chunks(&self) -> impl Iterator<Item = &ChunkRef> {
        let db = self.database.iter().flat_map(|d| d.dump.chunks.iter());
        let storage = self
            .storage
            .iter()
            .flat_map(|s| s.objects.iter().flat_map(|o| o.chunks.iter()));
        let files = self
            .files
            .iter()
            .flat_map(|f| f.sets.iter().flat_map(|s| s.entries.iter()))
            .flat_map(|e| e.chunks.iter());
        let git = self
            .git
            .iter()
            .flat_map(|g| g.repositories.iter().flat_map(|r| r.bundle.chunks.iter()));
        db.chain(storage).chain(files).chain(git)
    }
}

/// The `[[files]]` sets of a snapshot.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FilesManifest {
    /// When the files were read (the database's time is the snapshot's `consistent_at`).
    pub read_at: Option<DateTime<Utc>>,
    pub sets: Vec<FileSetManifest>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FileSetManifest {
    pub name: String,
    /// The paths and globs as the policy gave them.
    pub paths: Vec<String>,
    /// The absolute paths they matched: a restore to the source writes under these only.
    pub roots: Vec<String>,
    /// Directories before their contents, in path order.
    pub entries: Vec<FileEntry>,
}

/// One file, directory or symbolic link. Paths are absolute; a path (or link target) that is
/// not UTF-8 is also kept exactly as `path_hex` (`target_hex`), which a restore uses.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FileEntry {
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_hex: Option<String>,
    /// `file`, `dir` or `symlink`.
    pub kind: String,
    /// Permission bits (`st_mode & 0o7777`).
    pub mode: u32,
    pub mtime: i64,
    pub mtime_ns: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
    #[serde(default)]
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chunks: Vec<ChunkRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_hex: Option<String>,
}

/// The `[[git]]` repositories of a snapshot, each as one `git bundle create --all`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct GitManifest {
    /// When the repositories were bundled.
    pub read_at: Option<DateTime<Utc>>,
    pub repositories: Vec<GitBundle>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct GitBundle {
    pub name: String,
    /// The local path or url it was read from.
    pub source: String,
    pub head: Option<String>,
    /// `(commit, refname)` as the bundle's header lists them, HEAD included, sorted by name.
    pub refs: Vec<(String, String)>,
    pub bundle: StreamRef,
}

/// The repository facts a manifest carries (encrypted, like the rest of it).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ManifestRepo {
    /// Hex key the snapshot's blob ids are HMAC-keyed with.
    pub blob_id_key: String,
    /// backstop.json's salt and chunker when the snapshot was made.
    pub dedup_salt: String,
    pub chunker: ChunkerParams,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DbManifest {
    pub database: String,
    pub server_version: String,
    pub server_version_num: i32,
    pub pg_dump_version: String,
    /// `custom` (pg_dump -Fc, uncompressed: compression happens per chunk).
    pub dump_format: String,
    pub exclude_schemas: Vec<String>,
    pub dump: StreamRef,
    pub tables: Vec<TableStat>,
    /// Roles the dumped objects refer to (owners, grantees, policy roles).
    pub roles: Vec<Role>,
    /// `pg_dumpall --roles-only --no-role-passwords`, for manual recovery.
    pub roles_sql: String,
    /// `name version` of each extension.
    #[serde(default)]
    pub extensions: Vec<String>,
    /// The database's `bytea_output` when it was dumped: how bytea values read as COPY text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytea_output: Option<String>,
    /// The database's `lc_monetary` when it was dumped: how money values read as COPY text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lc_monetary: Option<String>,
    /// Where the dump's TOC ends and each data block lies, found by the archive scan as the
    /// dump streamed past: what lets a restore load each table from its own chunks. Absent in
    /// snapshots of older versions, and when the scan could not read the archive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layout: Option<DumpLayout>,
}

/// The dump's shape: its first `toc_bytes` bytes are the archive's header and table of
/// contents; each data block starts and ends at a place in its chunks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DumpLayout {
    pub toc_bytes: u64,
    pub blocks: Vec<DataBlock>,
}

/// One TOC entry's data block, from its block-type byte to the end of its closing zero length.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataBlock {
    pub dump_id: i64,
    /// `TABLE DATA`, or `BLOBS` (large objects).
    pub desc: String,
    pub schema: String,
    pub name: String,
    pub start: ChunkPos,
    /// Exclusive: the first byte after the block.
    pub end: ChunkPos,
}

/// A place in a stream: the index of a chunk in its list, and an offset into that chunk's
/// plaintext (an end position may equal the chunk's length).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkPos {
    pub chunk: u32,
    pub offset: u32,
}

impl StreamRef {
    /// Where each chunk starts in the stream, and the stream's end last.
    pub fn chunk_starts(&self) -> Vec<u64> {
        let mut at = 0u64;
        let mut starts = Vec::with_capacity(self.chunks.len() + 1);
        for c in &self.chunks {
            starts.push(at);
            at += u64::from(c.len);
        }
        starts.push(at);
        starts
    }

    /// The place of stream offset `at`: in the chunk holding it, or at the end of the last
    /// chunk for the stream's end. `None` past the end.
    pub fn position(starts: &[u64], at: u64) -> Option<ChunkPos> {
        let end = *starts.last()?;
        if at > end {
            return None;
        }
        let i = match starts.binary_search(&at) {
            Ok(i) if i + 1 < starts.len() => i,
            Ok(i) | Err(i) => i.checked_sub(1)?,
        };
        Some(ChunkPos {
            chunk: u32::try_from(i).ok()?,
            offset: u32::try_from(at - starts[i]).ok()?,
        })
    }

    /// The stream offset of a place, when it lies within the stream.
    pub fn offset(starts: &[u64], pos: ChunkPos) -> Option<u64> {
        let i = pos.chunk as usize;
        let at = starts.get(i)? + u64::from(pos.offset);
        (i + 1 < starts.len() && at <= starts[i + 1]).then_some(at)
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StorageManifest {
    pub objects: Vec<StorageObject>,
    /// `bucket/name` of storage.objects rows without an object, at backup time.
    #[serde(default)]
    pub missing_in_bucket: Vec<String>,
    /// `bucket/name` of objects without a storage.objects row, at backup time.
    #[serde(default)]
    pub missing_in_table: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StorageObject {
    pub bucket: String,
    pub name: String,
    pub size: u64,
    pub sha256: String,
    pub content_type: Option<String>,
    pub cache_control: Option<String>,
    pub etag: Option<String>,
    pub version: Option<String>,
    pub chunks: Vec<ChunkRef>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_and_offsets_are_each_other_s_inverse() {
        let stream = StreamRef {
            bytes: 10,
            sha256: String::new(),
            chunks: [4u32, 1, 5]
                .iter()
                .map(|&len| ChunkRef {
                    id: String::new(),
                    len,
                })
                .collect(),
        };
        let starts = stream.chunk_starts();
        assert_eq!(starts, [0, 4, 5, 10]);
        let at = |chunk, offset| Some(ChunkPos { chunk, offset });
        assert_eq!(StreamRef::position(&starts, 0), at(0, 0));
        assert_eq!(StreamRef::position(&starts, 3), at(0, 3));
        assert_eq!(StreamRef::position(&starts, 4), at(1, 0));
        assert_eq!(StreamRef::position(&starts, 9), at(2, 4));
        assert_eq!(StreamRef::position(&starts, 10), at(2, 5), "the end");
        assert_eq!(StreamRef::position(&starts, 11), None);
        for x in 0..=10 {
            let p = StreamRef::position(&starts, x).unwrap();
            assert_eq!(StreamRef::offset(&starts, p), Some(x));
        }
        assert_eq!(
            StreamRef::offset(
                &starts,
                ChunkPos {
                    chunk: 1,
                    offset: 2
                }
            ),
            None
        );
        assert_eq!(
            StreamRef::offset(
                &starts,
                ChunkPos {
                    chunk: 3,
                    offset: 0
                }
            ),
            None
        );
    }
}
