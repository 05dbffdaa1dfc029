//! Continuous protection: the database's committed transactions, followed through a logical
//! replication slot (`pgoutput`) and sealed into the repository as *segments* between the
//! nightly snapshots (DESIGN.md, "Continuous protection").
//!
//! Invariants:
//! * **Exactly once.** The slot is read without being consumed (peek) and confirmed only up to
//!   the end of the last transaction of a segment whose json is durably written. A stream killed
//!   at any moment reads again what was not confirmed; the transactions the last segment
//!   already holds (commit LSN below its end) are skipped, so none is sealed twice.
//! * **Chained.** Each segment names the end of the one before it (`previous_lsn`); a hole is
//!   a dropped slot, which `check` and the report name.
//! * **The primary comes first.** The WAL the slot holds is measured before every seal: past
//!   `max_slot_lag` a `stream_lag` event, past `drop_slot_at` the slot is dropped
//!   (`slot_dropped`) and the stream stops until `--setup` or the next backup re-creates it.
//! * **Schema changes are named, never hidden.** A relation whose shape changes is recorded in
//!   the segment (`schema_changes`): a restore into the window after it and before the next
//!   snapshot is refused, naming the nearest exact points.
//! * **Documents follow.** With `[storage]`, each object a transaction's `storage.objects` row
//!   inserts or updates is fetched into the segment as a DOCUMENT frame placed before that
//!   transaction's commit, so a replay takes it exactly when it applies the transaction; a
//!   fetch that fails is recorded in the frame and the segment's `documents_failed`.
//!
//! Why the SQL functions and not the replication protocol: `pg_logical_slot_peek_binary_changes`
//! and `pg_replication_slot_advance` run over the same ordinary, TLS-capable session as the
//! rest of backstop (hosted Supabase's direct connection included), need no second protocol
//! implementation, and make "confirmed only after sealed" one call after the segment's json.
//! The cost is latency (a seal every `seal_every`, not a push per transaction) and that each
//! read decodes from the slot's restart point, which every seal moves forward.

use super::{with_lock, Ctx};
use crate::error::{Error, Kind, Result};
use crate::policy::{Policy, StreamSettings};
use crate::repo::format::MetaEncryption;
use crate::repo::streams::{self, frame, SchemaChange, Segment, TableDelta};
use crate::repo::writer::BlobWriter;
use crate::repo::Repo;
use crate::source::pgoutput::{self, lsn_text, parse_lsn, Message};
use crate::source::pgtools::DbUrl;
use crate::source::postgres::connect;
use crate::source::slot;
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use secrecy::ExposeSecret;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// The most changes one read of the slot asks for (whole transactions: one larger than this
/// still comes whole).
const MAX_CHANGES: i32 = 200_000;

/// What the stream reports to its caller as it goes.
#[derive(Debug, Clone)]
pub enum Event {
    Sealed(Box<Segment>),
    /// The slot holds more WAL than `max_slot_lag`.
    Lag {
        bytes: i64,
        limit: u64,
    },
    /// Back under `max_slot_lag`.
    LagCleared {
        bytes: i64,
    },
    /// The slot held more than `drop_slot_at` and was dropped.
    SlotDropped {
        bytes: i64,
        limit: u64,
    },
    SchemaChanged(SchemaChange),
    /// The WAL the slot holds, measured before each seal.
    Held {
        bytes: i64,
    },
}

fn settings(policy: &Policy) -> Result<&StreamSettings> {
    policy.stream.as_ref().ok_or_else(|| {
        Error::input(format!(
            "policy {} has no [stream] section: add one to follow the database's changes",
            policy.name
        ))
    })
}

fn db_url(policy: &Policy) -> Result<DbUrl> {
    let db = policy
        .database
        .as_ref()
        .ok_or_else(|| Error::input(format!("policy {} has no [database]", policy.name)))?;
    DbUrl::parse(db.url.expose_secret())
}

fn exclude(policy: &Policy) -> Vec<String> {
    policy
        .database
        .as_ref()
        .map(|d| d.exclude_schemas.clone())
        .unwrap_or_default()
}

/// What `--setup` did.
#[derive(Debug, Clone, Default)]
pub struct Setup {
    pub slot_created: bool,
    pub tables: Vec<String>,
    pub unprotected: Vec<(String, String)>,
}

/// Checks the server, creates the publication (with every table that can be published
/// safely) and the slot. Idempotent.
pub async fn setup(policy: &Policy) -> Result<Setup> {
    let s = settings(policy)?;
    let url = db_url(policy)?;
    let mut conn = connect(&url).await?;
    slot::check_server(&mut conn).await?;
    let publication = slot::ensure_publication(&mut conn, &s.publication, &exclude(policy)).await?;
    let slot_created = slot::ensure_slot(&mut conn, &s.slot).await?;
    Ok(Setup {
        slot_created,
        tables: publication.tables,
        unprotected: publication.unprotected,
    })
}

/// Before a backup of a policy with `[stream]`: re-creates the slot when it is missing (after
/// `slot_dropped`), before the dump's snapshot, so that the stream covers everything after
/// it. A failure is the backup's warning, never its failure.
pub async fn ensure_slot_before_backup(policy: &Policy) -> Option<String> {
    let s = policy.stream.as_ref()?;
    let attempt = async {
        let mut conn = connect(&db_url(policy)?).await?;
        if slot::slot_state(&mut conn, &s.slot).await?.is_some() {
            return Ok(false);
        }
        slot::check_server(&mut conn).await?;
        slot::ensure_publication(&mut conn, &s.publication, &exclude(policy)).await?;
        slot::ensure_slot(&mut conn, &s.slot).await
    };
    match attempt.await {
        Ok(true) => Some(format!(
            "slot {} did not exist (never set up, or dropped) and was created before the dump: the change stream covers this snapshot onwards once `backstop stream` follows it",
            s.slot
        )),
        Ok(false) => None,
        Err(e) => Some(format!(
            "slot {} could not be checked or created: {}",
            s.slot, e.message
        )),
    }
}

/// Drops the slot (the publication stays: it costs nothing). True when there was one.
pub async fn drop_slot(policy: &Policy) -> Result<bool> {
    let s = settings(policy)?;
    let mut conn = connect(&db_url(policy)?).await?;
    slot::drop_slot(&mut conn, &s.slot).await
}

/// The stream's state, from the server and the repository.
#[derive(Debug, Clone, Default)]
pub struct Status {
    pub slot: String,
    pub exists: bool,
    pub active: bool,
    pub confirmed_lsn: Option<String>,
    pub lag_bytes: Option<i64>,
    pub last_segment_at: Option<DateTime<Utc>>,
    pub last_commit_at: Option<DateTime<Utc>>,
    pub segments: u64,
    pub unprotected_tables: Vec<String>,
}

pub async fn status(policy: &Policy, repo: &Repo) -> Result<Status> {
    let s = settings(policy)?;
    let segments = streams::list(repo.store.as_ref(), &policy.name).await?;
    let last = segments.last();
    let mut out = Status {
        slot: s.slot.clone(),
        segments: segments.len() as u64,
        last_segment_at: last.map(|l| l.sealed_at),
        last_commit_at: last.map(|l| l.last_commit_at),
        unprotected_tables: last
            .map(|l| l.unprotected_tables.clone())
            .unwrap_or_default(),
        ..Status::default()
    };
    let mut conn = connect(&db_url(policy)?).await?;
    if let Some(state) = slot::slot_state(&mut conn, &s.slot).await? {
        out.exists = true;
        out.active = state.active || held_by_a_stream(&mut conn, &s.slot).await;
        out.confirmed_lsn = state.confirmed_lsn;
        out.lag_bytes = Some(state.retained_bytes);
    }
    let publication = slot::ensure_publication(&mut conn, &s.publication, &exclude(policy)).await;
    if let Ok(p) = publication {
        out.unprotected_tables = p.unprotected.into_iter().map(|(t, _)| t).collect();
    }
    Ok(out)
}

/// Whether a backstop stream holds the slot's advisory lock (it reads the slot between
/// seals, so the slot itself shows as inactive most of the time).
async fn held_by_a_stream(conn: &mut sqlx::PgConnection, slot: &str) -> bool {
    matches!(slot::holder(conn, slot).await, Ok(Some(_)))
}

/// Follows the slot until `ctx` is cancelled (or the slot is dropped), sealing a segment at
/// least every `seal_every` while changes flow. Events go to `events` as they happen.
pub async fn follow(
    policy: &Policy,
    repo: &Repo,
    ctx: &Ctx,
    events: &tokio::sync::mpsc::UnboundedSender<Event>,
) -> Result<()> {
    let s = settings(policy)?;
    let url = db_url(policy)?;
    let mut conn = connect(&url).await?;
    slot::claim(&mut conn, &s.slot, &ctx.cancel).await?;
    if slot::slot_state(&mut conn, &s.slot).await?.is_none() {
        return Err(Error::input(format!(
            "slot {} does not exist: run `backstop stream --setup --policy {}` first",
            s.slot, policy.name
        )));
    }
    let mut chain = Chain::load(repo, &policy.name).await?;
    let mut lagging = false;
    tracing::info!(
        "following slot {} of {} (seal every {})",
        s.slot,
        url.masked(),
        crate::util::format_duration(s.seal_every)
    );
    loop {
        ctx.cancel.check()?;
        let state = slot::slot_state(&mut conn, &s.slot).await?.ok_or_else(|| {
            Error::failed(format!(
                "slot {} is gone: it was dropped; run `backstop stream --setup` to start again (the stream has a gap until the next backup)",
                s.slot
            ))
        })?;
        let held = state.retained_bytes;
        let _ = events.send(Event::Held { bytes: held });
        if held > s.drop_slot_at as i64 {
            slot::drop_slot(&mut conn, &s.slot).await?;
            let _ = events.send(Event::SlotDropped {
                bytes: held,
                limit: s.drop_slot_at,
            });
            return Err(Error::failed(format!(
                "slot {} held {} of WAL, past drop_slot_at ({}): it was dropped to protect the primary; the stream stopped until `backstop stream --setup` or the next backup",
                s.slot,
                crate::util::human_bytes(held.max(0) as u64),
                crate::util::human_bytes(s.drop_slot_at)
            )));
        }
        if held > s.max_slot_lag as i64 && !lagging {
            lagging = true;
            let _ = events.send(Event::Lag {
                bytes: held,
                limit: s.max_slot_lag,
            });
        } else if held <= s.max_slot_lag as i64 && lagging {
            lagging = false;
            let _ = events.send(Event::LagCleared { bytes: held });
        }
        let publication =
            slot::ensure_publication(&mut conn, &s.publication, &exclude(policy)).await?;
        let run_id = crate::util::new_id(Utc::now());
        let unprotected: Vec<String> = publication
            .unprotected
            .into_iter()
            .map(|(t, _)| t)
            .collect();
        // Where this read starts: the chain's end, or for the first segment the slot's own
        // confirmed position (its creation point), so that a base snapshot taken after it is
        // known to be covered.
        if chain.end.is_none() && chain.start.is_none() {
            chain.start = state.confirmed_lsn.as_deref().and_then(parse_lsn);
        }
        let sealing = seal_once(policy, s, repo, &mut conn, &mut chain, unprotected, &run_id);
        let sealed = with_lock(
            crate::repo::lock::Mode::Shared,
            repo,
            "stream",
            &run_id,
            ctx,
            ctx.cancel.run(sealing),
        )
        .await?;
        let full = sealed
            .as_ref()
            .is_some_and(|seg| seg.changes >= MAX_CHANGES as u64);
        if let Some(seg) = sealed {
            for change in &seg.schema_changes {
                let _ = events.send(Event::SchemaChanged(change.clone()));
            }
            let _ = events.send(Event::Sealed(Box::new(seg)));
        }
        if !full {
            tokio::select! {
                _ = tokio::time::sleep(s.seal_every) => {}
                _ = ctx.cancel.cancelled() => return Err(ctx.cancel.error()),
            }
        }
    }
}

/// Where the sealed chain ends, and the shapes of the relations it has seen.
struct Chain {
    /// The end of the last sealed transaction: the slot is confirmed up to here.
    end: Option<u64>,
    /// Before the first segment: where the slot starts.
    start: Option<u64>,
    relations: BTreeMap<String, String>,
    last_commit_at: Option<DateTime<Utc>>,
}

impl Chain {
    async fn load(repo: &Repo, policy: &str) -> Result<Chain> {
        let segments = streams::list(repo.store.as_ref(), policy).await?;
        let last = segments.last();
        Ok(Chain {
            end: last.and_then(|l| parse_lsn(&l.last_lsn)),
            start: None,
            relations: last.map(|l| l.relations.clone()).unwrap_or_default(),
            last_commit_at: last.map(|l| l.last_commit_at),
        })
    }
}

/// A relation's shape: its columns' names, types and type modifiers, hashed.
fn shape(r: &pgoutput::Relation) -> String {
    let mut h = Sha256::new();
    for c in &r.columns {
        h.update(format!(
            "{}\0{}\0{}\0{}\n",
            c.name, c.type_oid, c.type_modifier, c.key
        ));
    }
    hex::encode(&h.finalize()[..8])
}

/// What one read of the slot found, as it streams into the writer.
#[derive(Default)]
struct Tally {
    first_lsn: Option<u64>,
    end: Option<u64>,
    first_commit_at: Option<DateTime<Utc>>,
    last_commit_at: Option<DateTime<Utc>>,
    transactions: u64,
    changes: u64,
    skipped: u64,
    tables: BTreeMap<String, TableDelta>,
    names: HashMap<u32, String>,
    schema_changes: Vec<SchemaChange>,
    rows: u64,
    documents: u64,
    documents_failed: Vec<String>,
}

/// Where `storage.objects` keeps an object's bucket and name: its relation and the columns'
/// positions, once the stream has described it.
struct ObjectsRelation {
    oid: u32,
    bucket: usize,
    name: usize,
}

impl ObjectsRelation {
    fn of(r: &pgoutput::Relation) -> Option<ObjectsRelation> {
        if r.schema != "storage" || r.name != "objects" {
            return None;
        }
        let at = |col: &str| r.columns.iter().position(|c| c.name == col);
        Some(ObjectsRelation {
            oid: r.oid,
            bucket: at("bucket_id")?,
            name: at("name")?,
        })
    }

    /// The bucket and name a new row names.
    fn names(&self, relation: u32, row: &[pgoutput::Value]) -> Option<(String, String)> {
        let text = |i: usize| match row.get(i) {
            Some(pgoutput::Value::Text(t)) => Some(t.clone()),
            _ => None,
        };
        (relation == self.oid).then_some(())?;
        Some((text(self.bucket)?, text(self.name)?))
    }
}

/// Fetches the objects a transaction's `storage.objects` rows name into the segment, as
/// DOCUMENT frames placed before its commit (so a replay takes them exactly when it applies
/// the transaction). A fetch that fails after the retries is recorded, never skipped silently.
async fn fetch_documents(
    source: &dyn crate::source::storage::StorageSource,
    writer: &Arc<BlobWriter>,
    names: Vec<(String, String)>,
    batch: &mut Vec<u8>,
    tally: &mut Tally,
) -> Result<()> {
    for (bucket, name) in names {
        let fetched = super::documents::fetch_object(source, writer, &bucket, &name).await;
        let document = match fetched {
            Ok(object) => {
                tally.documents += 1;
                streams::Document {
                    bucket,
                    name,
                    object: Some(object),
                    error: None,
                }
            }
            Err(e) => {
                tracing::warn!("storage object {bucket}/{name}: {}", e.message);
                tally
                    .documents_failed
                    .push(format!("{bucket}/{name}: {}", e.message));
                streams::Document {
                    bucket,
                    name,
                    object: None,
                    error: Some(e.message),
                }
            }
        };
        let json = serde_json::to_vec(&document)
            .map_err(|e| Error::failed(format!("encoding a stream document: {e}")))?;
        frame::push(batch, frame::DOCUMENT, &json);
    }
    Ok(())
}

/// Reads what the slot holds past the chain's end, seals it as one segment and confirms the
/// slot after the segment's json is written. `None` when there was nothing new.
async fn seal_once(
    policy: &Policy,
    s: &StreamSettings,
    repo: &Repo,
    conn: &mut sqlx::PgConnection,
    chain: &mut Chain,
    unprotected: Vec<String>,
    run_id: &str,
) -> Result<Option<Segment>> {
    let (sealer, _) = super::policy_sealer(policy, repo)?;
    let writer = Arc::new(BlobWriter::new(repo, sealer, policy.repository.connections).await?);
    // Documents follow at the stream's pace where the policy backs up a bucket.
    let documents = match &policy.storage {
        Some(cfg) => Some(crate::source::storage::open(cfg).await?),
        None => None,
    };
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(16);
    let reader = crate::source::archive::ChannelReader::new(move || rx.blocking_recv());
    let write = writer.write_stream(reader, "the change stream", &|_| {});
    let resume = chain.end;
    // Everything committed before this position is in what the read below returns (it decodes
    // up to the flushed WAL), unless the read stops at MAX_CHANGES.
    let flushed = slot::flush_lsn(conn).await?;
    let mut decoding = Decoding::new(resume, &mut chain.relations, chain.last_commit_at);
    let produce = async {
        let mut rows = Box::pin(slot::peek(conn, &s.slot, &s.publication, MAX_CHANGES));
        let mut batch = Vec::with_capacity(1 << 20);
        while let Some(change) = rows.try_next().await? {
            decoding.tally.rows += 1;
            let message = pgoutput::decode(&change.data)
                .map_err(|e| Error::failed(format!("slot {}: {e}", s.slot)))?;
            let keep = decoding.take(change.lsn, &message);
            let names = std::mem::take(&mut decoding.committed_documents);
            if let Some(source) = documents.as_deref().filter(|_| !names.is_empty()) {
                fetch_documents(source, &writer, names, &mut batch, &mut decoding.tally).await?;
            }
            if !keep {
                continue;
            }
            decoding.tally.first_lsn.get_or_insert(change.lsn);
            frame::push(
                &mut batch,
                frame::MESSAGE,
                &frame::message(change.lsn, change.xid, &change.data),
            );
            if batch.len() >= 1 << 20 {
                let full = std::mem::replace(&mut batch, Vec::with_capacity(1 << 20));
                send(&tx, full).await?;
            }
        }
        drop(rows);
        if decoding.tally.transactions > 0 {
            let sequences = slot::sequences(conn).await?;
            let json = serde_json::to_vec(&sequences)
                .map_err(|e| Error::failed(format!("encoding the sequences: {e}")))?;
            frame::push(&mut batch, frame::SEQUENCES, &json);
        }
        if !batch.is_empty() {
            send(&tx, batch).await?;
        }
        drop(tx);
        Ok::<(), Error>(())
    };
    let (written, produced) = tokio::join!(write, produce);
    produced?;
    let (stream, _stats) = written?;
    let tally = decoding.tally;
    // A read that returned everything up to `flushed` lets the slot be confirmed that far,
    // past WAL with no transaction of the publication (and past transactions in progress,
    // which the slot still decodes whole when they commit), so that an idle database's slot
    // holds no WAL.
    let complete = tally.rows < MAX_CHANGES as u64;
    let Some(end) = tally.end else {
        confirm_idle(conn, &s.slot, resume, complete.then_some(flushed)).await?;
        return Ok(None);
    };
    let base_snapshot = repo.newest_snapshot_id(&policy.name).await?;
    let segment = Segment {
        previous_lsn: resume.or(chain.start).map(lsn_text),
        relations: chain.relations.clone(),
        base_snapshot,
        unprotected_tables: unprotected,
        bytes_plain: stream.bytes,
        chunks: stream.chunks,
        blobs: writer.used(),
        ..segment_of(policy, tally, end)
    };
    let body = serde_json::to_vec_pretty(&segment)
        .map_err(|e| Error::failed(format!("encoding segment {}: {e}", segment.id)))?;
    // The commit point: the lock read back, then the json, then the slot.
    crate::repo::lock::confirm(repo.store.as_ref(), run_id).await?;
    let key = streams::key(&policy.name, &segment.id);
    repo.commit_object(&key, body, &format!("segment {}", segment.id))
        .await?;
    confirm(conn, &s.slot, if complete { end.max(flushed) } else { end }).await?;
    chain.end = Some(end);
    chain.last_commit_at = Some(segment.last_commit_at);
    tracing::info!(
        "sealed segment {}: {} transactions, {} changes, last commit {}",
        segment.id,
        segment.transactions,
        segment.changes,
        segment.last_commit_at.to_rfc3339()
    );
    Ok(Some(segment))
}

/// Hands a batch of frames to the segment's writer.
async fn send(tx: &tokio::sync::mpsc::Sender<Vec<u8>>, batch: Vec<u8>) -> Result<()> {
    tx.send(batch)
        .await
        .map_err(|_| Error::failed("the change stream's writer stopped"))
}

/// A read that found nothing new. Transactions already sealed (a restart after the json was
/// written but before the slot was confirmed) are confirmed now, and past WAL the read saw
/// whole (`flushed`, when it was complete). Before the first segment the slot stays where it
/// was created: that is where the chain begins, and a snapshot taken after it is covered (a
/// restart would otherwise begin the chain later, past a snapshot taken in between).
async fn confirm_idle(
    conn: &mut sqlx::PgConnection,
    slot_name: &str,
    resume: Option<u64>,
    flushed: Option<u64>,
) -> Result<()> {
    let upto = match (flushed, resume) {
        (Some(f), Some(_)) => Some(f),
        _ => resume,
    };
    if let Some(upto) = upto.filter(|u| resume.is_none_or(|r| *u >= r)) {
        confirm(conn, slot_name, upto).await?;
    }
    Ok(())
}

/// What one seal's read keeps from message to message: the tally of what it sealed, the
/// transaction it is in, and the documents that transaction's `storage.objects` rows name.
struct Decoding<'a> {
    /// The end of the chain: transactions that end before it are sealed already.
    resume: Option<u64>,
    /// The shapes of the relations the chain knows (a changed one is a schema change).
    known: &'a mut BTreeMap<String, String>,
    tally: Tally,
    skipping: bool,
    txn: Option<(u64, DateTime<Utc>)>,
    last_commit: Option<DateTime<Utc>>,
    objects: Option<ObjectsRelation>,
    txn_documents: Vec<(String, String)>,
    /// The documents of the transaction that just committed, to fetch before going on.
    committed_documents: Vec<(String, String)>,
}

impl<'a> Decoding<'a> {
    fn new(
        resume: Option<u64>,
        known: &'a mut BTreeMap<String, String>,
        last_commit: Option<DateTime<Utc>>,
    ) -> Decoding<'a> {
        Decoding {
            resume,
            known,
            tally: Tally::default(),
            skipping: false,
            txn: None,
            last_commit,
            objects: None,
            txn_documents: Vec::new(),
            committed_documents: Vec::new(),
        }
    }

    /// Takes one message into the tally; whether its frame goes into the segment.
    fn take(&mut self, lsn: u64, message: &Message) -> bool {
        let keep = match message {
            Message::Begin {
                final_lsn,
                commit_time,
                ..
            } => {
                self.skipping = self.resume.is_some_and(|r| *final_lsn < r);
                self.txn = Some((*final_lsn, *commit_time));
                !self.skipping
            }
            // Relations and types are kept even in a transaction already sealed: the
            // segment must describe every relation its transactions use.
            Message::Relation(r) => {
                self.relation(lsn, r);
                true
            }
            Message::Type { .. } => true,
            _ if self.skipping => false,
            Message::Insert { relation, new } | Message::Update { relation, new, .. } => {
                let d = delta(&mut self.tally, *relation);
                if matches!(message, Message::Insert { .. }) {
                    d.inserted += 1;
                } else {
                    d.updated += 1;
                }
                let named = self.objects.as_ref().and_then(|o| o.names(*relation, new));
                if let Some(n) = named.filter(|n| !self.txn_documents.contains(n)) {
                    self.txn_documents.push(n);
                }
                true
            }
            Message::Delete { relation, .. } => {
                delta(&mut self.tally, *relation).deleted += 1;
                true
            }
            Message::Truncate { relations, .. } => {
                for r in relations {
                    delta(&mut self.tally, *r).truncated += 1;
                }
                true
            }
            Message::Commit {
                end_lsn,
                commit_time,
                ..
            } => {
                self.committed_documents = std::mem::take(&mut self.txn_documents);
                let tally = &mut self.tally;
                tally.transactions += 1;
                tally.end = Some(*end_lsn);
                tally.first_commit_at.get_or_insert(*commit_time);
                tally.last_commit_at = Some(*commit_time);
                self.last_commit = Some(*commit_time);
                true
            }
            Message::Other(_) => false,
        };
        if matches!(message, Message::Commit { .. }) && self.skipping {
            self.tally.skipped += 1;
        }
        if keep
            && !matches!(
                message,
                Message::Begin { .. }
                    | Message::Commit { .. }
                    | Message::Relation(_)
                    | Message::Type { .. }
            )
        {
            self.tally.changes += 1;
        }
        keep
    }

    /// A relation described again: a schema change if its shape differs from the one known.
    fn relation(&mut self, lsn: u64, r: &pgoutput::Relation) {
        let name = r.display();
        let now = shape(r);
        match self.known.get(&name) {
            Some(before) if *before != now && !self.skipping => {
                let (lsn, at) = self.txn.unwrap_or((lsn, Utc::now()));
                self.tally.schema_changes.push(SchemaChange {
                    table: name.clone(),
                    lsn: lsn_text(lsn),
                    commit_at: at,
                    last_exact_at: self.last_commit,
                });
            }
            _ => {}
        }
        self.known.insert(name.clone(), now);
        self.tally.names.insert(r.oid, name);
        if let Some(o) = ObjectsRelation::of(r) {
            self.objects = Some(o);
        }
    }
}

/// A segment of what a seal's read tallied, up to `end`; the caller fills in where it sits
/// in the chain and what it was written as.
fn segment_of(policy: &Policy, tally: Tally, end: u64) -> Segment {
    let first = tally.first_lsn.unwrap_or(end);
    Segment {
        format: streams::SEGMENT_FORMAT,
        id: streams::segment_id(first, end),
        policy: policy.name.clone(),
        first_lsn: lsn_text(first),
        last_lsn: lsn_text(end),
        previous_lsn: None,
        first_commit_at: tally.first_commit_at.unwrap_or_else(Utc::now),
        last_commit_at: tally.last_commit_at.unwrap_or_else(Utc::now),
        sealed_at: Utc::now(),
        transactions: tally.transactions,
        changes: tally.changes,
        tables: tally.tables,
        base_snapshot: None,
        relations: BTreeMap::new(),
        schema_changes: tally.schema_changes,
        unprotected_tables: Vec::new(),
        bytes_plain: 0,
        chunks: Vec::new(),
        blobs: Vec::new(),
        encryption: MetaEncryption {
            scheme: "age-x25519".into(),
            recipients: policy.recipients.clone(),
        },
        documents: tally.documents,
        documents_failed: tally.documents_failed,
    }
}

fn delta(tally: &mut Tally, relation: u32) -> &mut TableDelta {
    let name = tally
        .names
        .get(&relation)
        .cloned()
        .unwrap_or_else(|| format!("relation {relation}"));
    tally.tables.entry(name).or_default()
}

/// Confirms the slot up to `lsn` unless it already is (advancing backwards is refused).
async fn confirm(conn: &mut sqlx::PgConnection, slot_name: &str, lsn: u64) -> Result<()> {
    let state = slot::slot_state(conn, slot_name).await?;
    let confirmed = state
        .and_then(|s| s.confirmed_lsn)
        .and_then(|l| parse_lsn(&l))
        .unwrap_or(0);
    if lsn > confirmed {
        slot::advance(conn, slot_name, lsn).await?;
    }
    Ok(())
}

/// The error of a stream that found its slot busy with another reader.
pub fn is_locked(e: &Error) -> bool {
    e.kind == Kind::Locked
}
