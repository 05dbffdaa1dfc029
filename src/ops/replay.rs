//! Replaying the change stream onto a restored snapshot: every transaction the snapshot does
//! not see, committed at or before the chosen time, in commit order, then the sequences.
//!
//! * **Exact join.** A streamed transaction is applied iff the base snapshot does not see it
//!   (its `txid_current_snapshot()`, recorded in meta.json as `snapshot_xids`): never lost,
//!   never twice, whatever the order of commits around the snapshot. Segments are read from a
//!   margin before the snapshot's time, since a transaction may commit a moment before the
//!   snapshot and still be invisible to it.
//! * **Refused, not different.** A hole in the chain after the base, a stream that began after
//!   the snapshot, or a table whose shape changed in between (DDL is not in the stream) ends the
//!   plan with an error naming the nearest exact points; a relation whose shape differs from
//!   the restored table stops the replay the same way.
//! * **As it was.** The replay runs with `session_replication_role = replica`, so the
//!   application's triggers and foreign keys do not fire a second time (they did on the
//!   primary, and their effects are in the stream), and identity columns keep their values
//!   (`OVERRIDING SYSTEM VALUE`). It commits every batch of about a megabyte of statements, at
//!   a transaction boundary: one transaction for hours of changes would make every update of a
//!   hot row (a counter, a branch total) walk all its earlier versions, and a failed replay
//!   leaves the target partial either way, which the error says, as a failed pg_restore does.
//!   Sequences are set forward to the values the stream recorded when the last segment used
//!   was sealed: at least as far as any value used.
//! * Every chunk is checked (age's MAC, the keyed id) before a byte of it is applied.

use crate::error::{Error, Result};
use crate::repo::format::{BlobRef, Meta};
use crate::repo::reader::BlobReader;
use crate::repo::streams::{frame, Segment};
use crate::repo::Repo;
use crate::seal::{BlobIds, Opener};
use crate::source::pgoutput::{
    self, lsn_text, parse_lsn, quote_ident, quote_literal, Message, Relation, Value,
};
use crate::source::pgtools::DbUrl;
use crate::source::postgres::{column, connect};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use sqlx::{Connection, Executor, PgConnection};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// How long before a snapshot's time a transaction it does not see may have committed.
pub const SCAN_MARGIN: chrono::Duration = chrono::Duration::minutes(10);

/// What a replay applied (the restore record's `stream`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Replayed {
    pub segments: u64,
    pub transactions: u64,
    pub replayed_to_lsn: Option<String>,
    pub last_commit_at: Option<DateTime<Utc>>,
    /// Storage objects the applied transactions' `storage.objects` rows named, in commit
    /// order (a later one replaces an earlier one of the same name).
    #[serde(skip)]
    pub documents: Vec<crate::repo::format::StorageObject>,
    /// Objects those transactions named that could not be fetched when sealed.
    #[serde(skip)]
    pub documents_failed: Vec<String>,
    /// The blobs of the segments read, which the documents' chunks are in.
    #[serde(skip)]
    pub blobs: Vec<BlobRef>,
}

/// A snapshot's `txid_current_snapshot()`: which transactions it sees.
#[derive(Debug, Clone)]
pub struct Visibility {
    xmin: u64,
    xmax: u64,
    running: HashSet<u64>,
}

impl Visibility {
    pub fn parse(text: &str) -> Option<Visibility> {
        let mut parts = text.trim().split(':');
        let xmin = parts.next()?.parse().ok()?;
        let xmax = parts.next()?.parse().ok()?;
        let running = parts
            .next()
            .unwrap_or("")
            .split(',')
            .filter(|x| !x.is_empty())
            .map(|x| x.parse())
            .collect::<std::result::Result<_, _>>()
            .ok()?;
        Some(Visibility {
            xmin,
            xmax,
            running,
        })
    }

    /// The full transaction id of a 32-bit one near this snapshot.
    fn widen(&self, xid: u32) -> u64 {
        let epoch = self.xmax >> 32;
        let full = (epoch << 32) | u64::from(xid);
        if full > self.xmax + (1 << 31) && epoch > 0 {
            full - (1 << 32)
        } else {
            full
        }
    }

    /// Whether the snapshot sees (holds the effects of) the transaction.
    pub fn sees(&self, xid: u32) -> bool {
        let x = self.widen(xid);
        x < self.xmin || (x < self.xmax && !self.running.contains(&x))
    }
}

/// The segments a restore from `base` to `until` replays, in order; or why such a restore
/// cannot be exact, naming the nearest exact points.
pub fn plan<'a>(
    base: &Meta,
    segments: &'a [Segment],
    until: DateTime<Utc>,
    next_snapshot: Option<&Meta>,
) -> Result<Vec<&'a Segment>> {
    let refuse = |why: String| {
        let later = next_snapshot
            .map(|n| {
                format!(
                    ", or snapshot {} (consistent at {})",
                    n.id,
                    n.consistent_at.to_rfc3339()
                )
            })
            .unwrap_or_default();
        Error::input(format!(
            "a restore to {} cannot be exact: {why}; the nearest exact points are snapshot {} (consistent at {}){later}",
            until.to_rfc3339(),
            base.id,
            base.consistent_at.to_rfc3339()
        ))
    };
    let (Some(base_lsn), Some(_)) = (
        base.consistent_lsn.as_deref().and_then(parse_lsn),
        base.snapshot_xids.as_deref().and_then(Visibility::parse),
    ) else {
        return Err(refuse(format!(
            "snapshot {} was taken before this backstop recorded where the stream joins it",
            base.id
        )));
    };
    let from = base.consistent_at - SCAN_MARGIN;
    let chosen: Vec<&Segment> = segments
        .iter()
        .filter(|s| s.last_commit_at >= from && s.first_commit_at <= until)
        .collect();
    // Everything committed after the snapshot must be in the chain: it began at or before
    // the snapshot's position, and has no hole up to `until`.
    let Some(first) = chosen.first() else {
        return Ok(Vec::new());
    };
    let began = first.previous_lsn.as_deref().and_then(parse_lsn);
    if began.is_none_or(|b| b > base_lsn) {
        return Err(refuse(format!(
            "the stream's sealed segments begin at {}, after the snapshot's position {}",
            began
                .map(lsn_text)
                .unwrap_or_else(|| first.first_lsn.clone()),
            lsn_text(base_lsn)
        )));
    }
    for pair in chosen.windows(2) {
        if pair[1].previous_lsn.as_deref() != Some(pair[0].last_lsn.as_str()) {
            let exact = pair[0].last_commit_at.min(until);
            return Err(Error::input(format!(
                "a restore to {} cannot be exact: the stream has a hole after {} (segment {} ends there, the next begins at {}; was the slot dropped?); the nearest exact point is --before {}",
                until.to_rfc3339(),
                pair[0].last_lsn,
                pair[0].id,
                pair[1].previous_lsn.as_deref().unwrap_or(&pair[1].first_lsn),
                exact.to_rfc3339()
            )));
        }
    }
    for seg in &chosen {
        for change in &seg.schema_changes {
            if change.commit_at > base.consistent_at && change.commit_at <= until {
                let before = change
                    .last_exact_at
                    .map(|t| format!("--before {}", t.to_rfc3339()))
                    .unwrap_or_else(|| format!("snapshot {}", base.id));
                let later = next_snapshot
                    .map(|n| {
                        format!(
                            ", or --snapshot {} (consistent at {})",
                            n.id,
                            n.consistent_at.to_rfc3339()
                        )
                    })
                    .unwrap_or_default();
                return Err(Error::input(format!(
                    "a restore to {} cannot be exact: table {} changed shape at {} (DDL is not in the change stream), so the window from then until the next snapshot is not covered; the nearest exact points are {before}{later}",
                    until.to_rfc3339(),
                    change.table,
                    change.commit_at.to_rfc3339()
                )));
            }
        }
    }
    Ok(chosen)
}

/// What the replay needs to know of a restored table.
struct Target {
    /// Columns that are `GENERATED ALWAYS AS IDENTITY`: never SET by an UPDATE.
    identity_always: HashSet<String>,
}

/// Where the segments are read from, and with what.
pub struct Reading<'a> {
    pub repo: &'a Repo,
    pub opener: Arc<Opener>,
    /// The policy's `dedup_key`, when it sets one (blob ids are keyed with it).
    pub dedup_key: Option<&'a str>,
    /// Blobs fetched ahead.
    pub ahead: usize,
}

/// Where a replay stops.
pub enum Until {
    /// Every transaction committed at or before this time.
    Time(DateTime<Utc>),
    /// Exactly the transactions a later snapshot sees (`snapshot_xids`): the database as that
    /// snapshot was taken, which verify compares with its recorded checksums.
    Snapshot(Visibility),
}

/// Applies the planned segments onto `target` (already holding the base snapshot).
pub async fn replay(
    from: &Reading<'_>,
    base: &Meta,
    segments: &[&Segment],
    until: Until,
    target: &DbUrl,
) -> Result<Replayed> {
    let (repo, opener, dedup_key, ahead) = (from.repo, &from.opener, from.dedup_key, from.ahead);
    let mut out = Replayed::default();
    if segments.is_empty() {
        return Ok(out);
    }
    let visibility = base
        .snapshot_xids
        .as_deref()
        .and_then(Visibility::parse)
        .ok_or_else(|| Error::failed(format!("snapshot {} has no snapshot_xids", base.id)))?;
    let mut conn = connect(target).await?;
    conn.execute("SET session_replication_role = replica")
        .await
        .map_err(|e| {
            Error::failed(format!(
                "replaying into {}: cannot set session_replication_role = replica ({e}): the replay needs a superuser, so that the application's triggers do not fire twice",
                target.masked()
            ))
        })?;
    let (until, upto) = match until {
        Until::Time(t) => (t, None),
        Until::Snapshot(v) => (DateTime::<Utc>::MAX_UTC, Some(v)),
    };
    let mut state = State {
        visibility,
        upto,
        until,
        relations: HashMap::new(),
        targets: HashMap::new(),
        in_txn: None,
        sql: String::new(),
        sequences: Vec::new(),
        done: false,
    };
    for seg in segments {
        let key = repo.blob_id_key(dedup_key, &seg.encryption.recipients)?;
        let refs: Vec<BlobRef> = seg.blobs.clone();
        if seg.documents > 0 || !seg.documents_failed.is_empty() {
            out.blobs.extend(refs.iter().cloned());
        }
        let reader = Arc::new(BlobReader::from_refs(
            repo.store.clone(),
            opener.clone(),
            BlobIds::new(&key),
            refs,
            &format!("segment {}", seg.id),
        ));
        let mut chunks = reader.stream(seg.chunks.clone(), ahead);
        let mut frames = frame::Reader::default();
        let was_done = state.done;
        while let Some(plain) = chunks.next().await {
            frames.feed(&plain?);
            while let Some((tag, payload)) = frames.next_frame() {
                state
                    .frame(&mut conn, target, tag, &payload, &mut out)
                    .await?;
            }
        }
        if frames.leftover() > 0 {
            return Err(Error::failed(format!(
                "segment {} ends inside a frame: its stream is cut short",
                seg.id
            )));
        }
        if !was_done {
            out.segments += 1;
        }
        if state.done {
            break;
        }
    }
    state.flush(&mut conn, target).await?;
    for (name, value) in &state.sequences {
        let sql = format!(
            "SELECT setval({lit}, {value}, true) FROM {name} WHERE last_value < {value}",
            lit = quote_literal(name),
        );
        conn.execute(sql.as_str())
            .await
            .map_err(|e| sql_error(target, e))?;
    }
    let _ = conn.close().await;
    Ok(out)
}

fn sql_error(target: &DbUrl, e: sqlx::Error) -> Error {
    Error::failed(format!(
        "replaying the change stream into {} failed: {e}; the target holds the base snapshot and part of the stream: restore again with --force",
        target.masked()
    ))
}

struct State {
    visibility: Visibility,
    /// With a later snapshot as the end: only the transactions it sees.
    upto: Option<Visibility>,
    until: DateTime<Utc>,
    relations: HashMap<u32, Relation>,
    targets: HashMap<String, Target>,
    /// The transaction being read: applied or skipped.
    in_txn: Option<bool>,
    sql: String,
    /// The last sequence values seen (of the last segment read).
    sequences: Vec<(String, i64)>,
    /// Past `until`: nothing more is applied.
    done: bool,
}

/// Statements sent in one round trip.
const BATCH: usize = 1 << 20;

impl State {
    async fn frame(
        &mut self,
        conn: &mut PgConnection,
        url: &DbUrl,
        tag: u8,
        payload: &[u8],
        out: &mut Replayed,
    ) -> Result<()> {
        if tag == frame::DOCUMENT {
            if self.in_txn == Some(true) {
                let d: crate::repo::streams::Document =
                    serde_json::from_slice(payload).map_err(|e| {
                        Error::failed(format!("a stream document is not readable: {e}"))
                    })?;
                match (d.object, d.error) {
                    (Some(object), _) => out.documents.push(object),
                    (None, error) => out.documents_failed.push(format!(
                        "{}/{}: {}",
                        d.bucket,
                        d.name,
                        error.unwrap_or_default()
                    )),
                }
            }
            return Ok(());
        }
        if tag == frame::SEQUENCES {
            self.sequences = serde_json::from_slice(payload).map_err(|e| {
                Error::failed(format!("the stream's sequences are not readable: {e}"))
            })?;
            return Ok(());
        }
        let Some((_lsn, xid, data)) = frame::split_message(payload) else {
            return Err(Error::failed("a stream frame is cut short"));
        };
        let message = pgoutput::decode(data).map_err(|e| Error::failed(e.to_string()))?;
        match message {
            Message::Relation(r) => {
                self.relations.insert(r.oid, r);
            }
            Message::Type { .. } | Message::Other(_) => {}
            Message::Begin { commit_time, .. } => {
                if commit_time > self.until {
                    self.done = true;
                }
                let wanted = self.upto.as_ref().is_none_or(|u| u.sees(xid));
                self.in_txn = Some(!self.done && wanted && !self.visibility.sees(xid));
                tracing::debug!(
                    "transaction {xid} committed {}: {}",
                    commit_time.to_rfc3339(),
                    match self.in_txn {
                        Some(true) => "applied",
                        _ if self.done => "after the chosen time",
                        _ => "in the base snapshot",
                    }
                );
            }
            Message::Commit {
                end_lsn,
                commit_time,
                ..
            } => {
                if self.in_txn == Some(true) {
                    out.transactions += 1;
                    out.replayed_to_lsn = Some(lsn_text(end_lsn));
                    out.last_commit_at = Some(commit_time);
                    if self.sql.len() >= BATCH {
                        self.flush(conn, url).await?;
                    }
                }
                self.in_txn = None;
            }
            change => {
                if self.in_txn == Some(true) {
                    self.apply(conn, url, change).await?;
                }
            }
        }
        Ok(())
    }

    async fn flush(&mut self, conn: &mut PgConnection, url: &DbUrl) -> Result<()> {
        if self.sql.is_empty() {
            return Ok(());
        }
        let sql = std::mem::take(&mut self.sql);
        conn.execute(sql.as_str())
            .await
            .map_err(|e| sql_error(url, e))?;
        Ok(())
    }

    fn relation(&self, oid: u32) -> Result<&Relation> {
        self.relations.get(&oid).ok_or_else(|| {
            Error::failed(format!(
                "the stream changes relation {oid} before describing it: the segment is incomplete"
            ))
        })
    }

    /// The restored table behind a relation, checked once: the same columns (names and
    /// order, generated ones aside) or the replay stops, naming the table.
    async fn target(&mut self, conn: &mut PgConnection, url: &DbUrl, r: &Relation) -> Result<()> {
        let name = r.qualified();
        if self.targets.contains_key(&name) {
            return Ok(());
        }
        self.flush(conn, url).await?;
        let rows = sqlx::query(
            "select a.attname::text, a.attidentity::text from pg_attribute a \
             where a.attrelid = to_regclass($1) and a.attnum > 0 and not a.attisdropped \
               and a.attgenerated = '' order by a.attnum",
        )
        .bind(&name)
        .fetch_all(&mut *conn)
        .await
        .map_err(|e| sql_error(url, e))?;
        let mut columns = Vec::new();
        let mut identity_always = HashSet::new();
        for row in &rows {
            let col: String = column(row, 0, "attname")?;
            let identity: String = column(row, 1, "attidentity")?;
            if identity == "a" {
                identity_always.insert(col.clone());
            }
            columns.push(col);
        }
        let streamed: Vec<String> = r.columns.iter().map(|c| c.name.clone()).collect();
        if columns != streamed {
            return Err(Error::input(format!(
                "table {} in the restored database has columns ({}) but the stream's changes have ({}): its shape changed after the snapshot (DDL is not in the change stream); restore to a time before the change, or from a later snapshot",
                r.display(),
                columns.join(", "),
                streamed.join(", ")
            )));
        }
        self.targets.insert(name, Target { identity_always });
        Ok(())
    }

    async fn apply(&mut self, conn: &mut PgConnection, url: &DbUrl, change: Message) -> Result<()> {
        let oid = match &change {
            Message::Insert { relation, .. }
            | Message::Update { relation, .. }
            | Message::Delete { relation, .. } => Some(*relation),
            _ => None,
        };
        if let Some(oid) = oid {
            let r = self.relation(oid)?.clone();
            self.target(conn, url, &r).await?;
        }
        let sql = match change {
            Message::Insert { relation, new } => {
                let r = self.relation(relation)?;
                let (names, values): (Vec<String>, Vec<String>) = r
                    .columns
                    .iter()
                    .zip(&new)
                    .filter(|(_, v)| **v != Value::Unchanged)
                    .map(|(c, v)| (quote_ident(&c.name), literal(v)))
                    .unzip();
                format!(
                    "INSERT INTO {} ({}) OVERRIDING SYSTEM VALUE VALUES ({});\n",
                    r.qualified(),
                    names.join(", "),
                    values.join(", ")
                )
            }
            Message::Update { relation, old, new } => {
                let r = self.relation(relation)?;
                let t = &self.targets[&r.qualified()];
                let sets: Vec<String> = r
                    .columns
                    .iter()
                    .zip(&new)
                    .filter(|(c, v)| {
                        **v != Value::Unchanged && !t.identity_always.contains(&c.name)
                    })
                    .map(|(c, v)| format!("{} = {}", quote_ident(&c.name), literal(v)))
                    .collect();
                if sets.is_empty() {
                    return Ok(());
                }
                let key = old.as_ref().unwrap_or(&new);
                format!(
                    "UPDATE {} SET {} WHERE {};\n",
                    r.qualified(),
                    sets.join(", "),
                    locate(r, key)
                )
            }
            Message::Delete { relation, old } => {
                let r = self.relation(relation)?;
                format!("DELETE FROM {} WHERE {};\n", r.qualified(), locate(r, &old))
            }
            Message::Truncate {
                relations,
                cascade,
                restart_identity,
            } => {
                let names: Vec<String> = relations
                    .iter()
                    .map(|o| self.relation(*o).map(Relation::qualified))
                    .collect::<Result<_>>()?;
                format!(
                    "TRUNCATE {}{}{};\n",
                    names.join(", "),
                    if restart_identity {
                        " RESTART IDENTITY"
                    } else {
                        ""
                    },
                    if cascade { " CASCADE" } else { "" }
                )
            }
            _ => return Ok(()),
        };
        self.sql.push_str(&sql);
        if self.sql.len() >= BATCH * 4 {
            self.flush(conn, url).await?;
        }
        Ok(())
    }
}

fn literal(v: &Value) -> String {
    match v {
        Value::Null => "NULL".into(),
        Value::Text(t) => quote_literal(t),
        Value::Unchanged => "DEFAULT".into(),
    }
}

/// The WHERE clause that finds one row: by its key columns, or (replica identity FULL, every
/// column sent) by every column's text, one row of any duplicates.
fn locate(r: &Relation, values: &[Value]) -> String {
    let keyed: Vec<String> = r
        .columns
        .iter()
        .zip(values)
        .filter(|(c, v)| c.key && **v != Value::Unchanged)
        .map(|(c, v)| match v {
            Value::Null => format!("{} IS NULL", quote_ident(&c.name)),
            _ => format!("{} = {}", quote_ident(&c.name), literal(v)),
        })
        .collect();
    if r.replica_identity != b'f' {
        return keyed.join(" AND ");
    }
    let all: Vec<String> = r
        .columns
        .iter()
        .zip(values)
        .filter(|(_, v)| **v != Value::Unchanged)
        .map(|(c, v)| match v {
            Value::Null => format!("{} IS NULL", quote_ident(&c.name)),
            _ => format!("{}::text = {}", quote_ident(&c.name), literal(v)),
        })
        .collect();
    format!(
        "ctid = (SELECT ctid FROM {} WHERE {} LIMIT 1)",
        r.qualified(),
        all.join(" AND ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn visibility_follows_the_snapshot() {
        let v = Visibility::parse("100:105:101,103").unwrap();
        assert!(v.sees(99) && v.sees(100) && v.sees(102) && v.sees(104));
        assert!(!v.sees(101) && !v.sees(103) && !v.sees(105) && !v.sees(200));
        let empty = Visibility::parse("7:7:").unwrap();
        assert!(empty.sees(6) && !empty.sees(7));
        // Past a wraparound: the epoch of xmax applies.
        let e = Visibility::parse(&format!("{}:{}:", (1u64 << 32) + 5, (1u64 << 32) + 9)).unwrap();
        assert!(e.sees(4) && !e.sees(9) && e.sees(u32::MAX));
        assert!(Visibility::parse("junk").is_none());
    }
}
