//! Change-stream segments: `streams/<policy>/<segment id>.json`, plaintext, written last (a
//! segment exists iff its json does), after every blob of its sealed change stream is durable.
//!
//! A segment id is `<first LSN>-<last LSN>` in 16 hex digits each, so ids sort in WAL order
//! and the chain reads as a listing. Each segment names the end of the one before it
//! (`previous_lsn`): the stream is confirmed on the server only up to what a committed segment
//! holds, so the chain has no hole unless the slot was dropped, which `check` and the report
//! name.
//!
//! The sealed stream is a sequence of frames, `tag (1 byte) | length (4 bytes, big endian) |
//! payload`: `M` holds one pgoutput message with its LSN and transaction id (`lsn u64 | xid
//! u32 | message`), `Q` the sequences' values read when the segment was sealed (JSON). The
//! json here holds only what an auditor needs: LSNs, commit times, counts per table, the
//! blobs with their stored sizes and SHA-256.

use super::format::{BlobRef, ChunkRef, MetaEncryption};
use crate::error::{Error, Result};
use crate::store::Store;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub const SEGMENT_FORMAT: u32 = 1;

/// One table's changes in a segment.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TableDelta {
    pub inserted: u64,
    pub updated: u64,
    pub deleted: u64,
    pub truncated: u64,
}

/// A relation whose shape changed in the stream: a restore after it (and before the next
/// snapshot) cannot be exact, and is refused.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SchemaChange {
    pub table: String,
    /// The first transaction that uses the new shape.
    pub lsn: String,
    pub commit_at: DateTime<Utc>,
    /// The last transaction before it: the nearest exact point.
    pub last_exact_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Segment {
    pub format: u32,
    pub id: String,
    pub policy: String,
    /// The first message's LSN and the end of the last transaction (where the slot was
    /// confirmed after this segment).
    pub first_lsn: String,
    pub last_lsn: String,
    /// The end of the segment before it, `None` for the first after a set-up.
    pub previous_lsn: Option<String>,
    pub first_commit_at: DateTime<Utc>,
    pub last_commit_at: DateTime<Utc>,
    pub sealed_at: DateTime<Utc>,
    pub transactions: u64,
    pub changes: u64,
    /// Row changes per table (`schema.table`).
    pub tables: BTreeMap<String, TableDelta>,
    /// The newest snapshot when it was sealed: the one it continues.
    pub base_snapshot: Option<String>,
    /// Each streamed table's shape, as a hash: a change of shape is noticed across restarts.
    pub relations: BTreeMap<String, String>,
    pub schema_changes: Vec<SchemaChange>,
    /// Tables the stream does not protect (no replica identity, or not publishable).
    pub unprotected_tables: Vec<String>,
    /// The sealed stream: plaintext bytes and the chunks in order.
    pub bytes_plain: u64,
    pub chunks: Vec<ChunkRef>,
    pub blobs: Vec<BlobRef>,
    pub encryption: MetaEncryption,
    /// Storage objects fetched because their `storage.objects` row was inserted or updated in
    /// this segment (their content is in the segment's blobs, their names only in its sealed
    /// stream).
    #[serde(default)]
    pub documents: u64,
    /// Objects whose fetch failed after the retries, as `bucket/name: error` (a
    /// `storage_consistency` problem of this span).
    #[serde(default)]
    pub documents_failed: Vec<String>,
}

/// A storage object whose `storage.objects` row a transaction inserted or updated: its content
/// as fetched when the segment was sealed, or why it could not be.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Document {
    pub bucket: String,
    pub name: String,
    pub object: Option<crate::repo::format::StorageObject>,
    pub error: Option<String>,
}

/// `<first>-<last>`, each LSN in 16 hex digits.
pub fn segment_id(first: u64, last: u64) -> String {
    format!("{first:016X}-{last:016X}")
}

pub fn key(policy: &str, id: &str) -> String {
    format!("streams/{policy}/{id}.json")
}

/// Every segment of `policy`, in WAL order. A json that does not parse is an error naming it:
/// a segment is evidence and part of a chain.
pub async fn list(store: &dyn Store, policy: &str) -> Result<Vec<Segment>> {
    list_under(store, &format!("streams/{policy}/")).await
}

/// Every segment of every policy in the repository (what prune must keep the blobs of).
pub async fn list_all(store: &dyn Store) -> Result<Vec<Segment>> {
    list_under(store, "streams/").await
}

async fn list_under(store: &dyn Store, prefix: &str) -> Result<Vec<Segment>> {
    use futures::{StreamExt, TryStreamExt};
    let mut keys: Vec<String> = store
        .list(prefix)
        .await?
        .into_iter()
        .map(|e| e.key)
        .filter(|k| k.ends_with(".json"))
        .collect();
    keys.sort();
    let bodies: Vec<(String, Option<Vec<u8>>)> = futures::stream::iter(keys)
        .map(|k| async move { store.get_opt(&k).await.map(|b| (k, b)) })
        .buffered(16)
        .try_collect()
        .await?;
    let mut out = Vec::new();
    for (key, body) in bodies {
        let Some(body) = body else { continue };
        let seg: Segment = serde_json::from_slice(&body).map_err(|e| {
            Error::new(
                crate::error::Kind::Damaged,
                format!("{key} is not a readable segment: {e}"),
            )
        })?;
        out.push(seg);
    }
    Ok(out)
}

/// Frames of a sealed change stream.
pub mod frame {
    pub const MESSAGE: u8 = b'M';
    pub const SEQUENCES: u8 = b'Q';
    /// A storage object of the transaction it is in ([`super::Document`], JSON).
    pub const DOCUMENT: u8 = b'D';

    /// Appends one frame to `out`.
    pub fn push(out: &mut Vec<u8>, tag: u8, payload: &[u8]) {
        out.push(tag);
        out.extend((payload.len() as u32).to_be_bytes());
        out.extend_from_slice(payload);
    }

    /// A message frame's payload: LSN, transaction id, the pgoutput message.
    pub fn message(lsn: u64, xid: u32, data: &[u8]) -> Vec<u8> {
        let mut p = Vec::with_capacity(12 + data.len());
        p.extend(lsn.to_be_bytes());
        p.extend(xid.to_be_bytes());
        p.extend_from_slice(data);
        p
    }

    /// Splits a message frame's payload.
    pub fn split_message(p: &[u8]) -> Option<(u64, u32, &[u8])> {
        if p.len() < 12 {
            return None;
        }
        let mut lsn = [0u8; 8];
        lsn.copy_from_slice(&p[..8]);
        let mut xid = [0u8; 4];
        xid.copy_from_slice(&p[8..12]);
        Some((u64::from_be_bytes(lsn), u32::from_be_bytes(xid), &p[12..]))
    }

    /// Reads frames from plaintext arriving in pieces.
    #[derive(Default)]
    pub struct Reader {
        buf: Vec<u8>,
        at: usize,
    }

    impl Reader {
        pub fn feed(&mut self, bytes: &[u8]) {
            if self.at > 0 && self.at == self.buf.len() {
                self.buf.clear();
                self.at = 0;
            } else if self.at > (1 << 20) {
                self.buf.drain(..self.at);
                self.at = 0;
            }
            self.buf.extend_from_slice(bytes);
        }

        /// The next whole frame, if it has arrived.
        pub fn next_frame(&mut self) -> Option<(u8, Vec<u8>)> {
            let rest = &self.buf[self.at..];
            if rest.len() < 5 {
                return None;
            }
            let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
            if rest.len() < 5 + len {
                return None;
            }
            let frame = (rest[0], rest[5..5 + len].to_vec());
            self.at += 5 + len;
            Some(frame)
        }

        /// Bytes left that make no whole frame (a stream cut short).
        pub fn leftover(&self) -> usize {
            self.buf.len() - self.at
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_survive_any_split() {
        let mut all = Vec::new();
        frame::push(&mut all, frame::MESSAGE, &frame::message(7, 9, b"hello"));
        frame::push(&mut all, frame::SEQUENCES, b"[]");
        for cut in 0..all.len() {
            let mut r = frame::Reader::default();
            r.feed(&all[..cut]);
            let mut got = Vec::new();
            while let Some(f) = r.next_frame() {
                got.push(f);
            }
            r.feed(&all[cut..]);
            while let Some(f) = r.next_frame() {
                got.push(f);
            }
            assert_eq!(got.len(), 2, "cut at {cut}");
            assert_eq!(frame::split_message(&got[0].1), Some((7, 9, &b"hello"[..])));
            assert_eq!(r.leftover(), 0);
        }
        assert!(segment_id(1, 2) < segment_id(2, 1));
    }
}
