//! The parallel load: each table loaded from its own chunks while they arrive, with no spool.
//!
//! A backup records where the dump's TOC ends and where each data block lies in its chunks
//! ([`DumpLayout`]). With it, and `[restore] jobs` above 1, a restore:
//! 1. fetches the chunks that hold the archive's header and TOC, and restores the schema
//!    (`pg_restore --section=pre-data`) from them alone: a TOC-only archive, in an unnamed
//!    file like the spool's (it holds the schema, never a row);
//! 2. meanwhile starts `jobs` workers, each on its own connection. A worker takes the next
//!    piece of work, largest first (a big table, or a run of small ones that lie side by side
//!    in the dump), fetches its chunks ahead (each one checked as everywhere: the stored size,
//!    age's MAC and the keyed id), strips the archive's framing and feeds the COPY text into
//!    the TOC entry's own `COPY ... FROM stdin` as pg_restore would. Nothing reaches the
//!    server before its chunk is checked, and a damaged or missing blob stops the restore
//!    naming it. Workers wait for the schema before their first COPY;
//! 3. sets the sequences (the `SEQUENCE SET` entries' own statements);
//! 4. builds indexes, constraints, triggers and policies and refreshes materialized views
//!    with `pg_restore --section=post-data --jobs=N` from the TOC-only archive, after all
//!    data, as pg_restore does (foreign keys included).
//!
//! pg_restore's three sections restored one after the other are its documented equivalent of
//! a whole restore. Each worker's session is set up the way pg_restore sets up its own (the
//! archive's client encoding, standard_conforming_strings and search_path, no statement or
//! lock timeout, `row_security = off` so that a policy can never filter a COPY silently), plus
//! `synchronous_commit = off`: a COPY's commit does not wait for its WAL to reach disk. The
//! loaded rows are the same; before the restore reports success, one synchronous commit of a
//! transaction with an id of its own flushes the WAL, every load's commit included.
//!
//! The whole-dump SHA-256 is not recomputed on this path (the chunks arrive out of order):
//! every chunk's plaintext is proved by its keyed id, and the manifest (authenticated by age)
//! lists the ids in order, which proves the same bytes.
//!
//! Large objects (a `BLOBS` block) are written by one worker with `lo_put`, in one transaction
//! per block, into the objects the schema step created (`lo_create`), as pg_restore writes them.
//!
//! What it does not take, and the spool path does (the log says which and why): snapshots
//! without a layout (taken by older versions), and any archive whose data section holds
//! anything but table data, large objects and sequence values, or whose TOC does not match the
//! layout.

use super::plan::{Plan, Table, Work};
use super::{watch, RestoreIssue, Watched};
use crate::error::{Error, Result};
use crate::ops::Bar;
use crate::repo::reader::BlobReader;
use crate::source::archive::Deframer;
use crate::source::pgtools::DbUrl;
use crate::source::postgres::connect;
use futures::StreamExt;
use sqlx::{Executor, PgConnection};
use std::collections::VecDeque;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// How each step of a parallel load went, for the caller's outcome.
pub(super) struct Loaded {
    pub(super) errors: Vec<RestoreIssue>,
    /// When the schema was in place, when the data was, and when the load ended.
    pub(super) schema_done: Duration,
    pub(super) data_done: Duration,
    pub(super) elapsed: Duration,
}

/// What a load step runs with.
pub(super) struct Step<'a> {
    pub(super) tool: &'a std::path::Path,
    pub(super) url: &'a DbUrl,
    pub(super) jobs: usize,
    pub(super) ahead: usize,
    pub(super) stop_on_error: bool,
    pub(super) start: Instant,
}

/// Runs the plan: schema, data with `jobs` workers, sequences, then the post-data section.
/// With `stop_on_error`, the first error ends the load (the caller reports it); otherwise
/// every error is collected, as pg_restore without `--exit-on-error` would.
pub(super) async fn load(
    reader: &Arc<BlobReader>,
    plan: Plan,
    step: &Step<'_>,
    bar: Arc<dyn Bar>,
) -> Result<Loaded> {
    bar.inc(plan.toc_bytes);
    let objects = match plan.object_blocks {
        0 => String::new(),
        n => format!(" and {n} block(s) of large objects"),
    };
    tracing::info!(
        "parallel load: {} tables{objects} in {} pieces of work, {} workers, no spool",
        plan.tables,
        plan.work.len(),
        step.jobs
    );
    let (schema_tx, schema_rx) = tokio::sync::watch::channel(false);
    let queue = Arc::new(Mutex::new(VecDeque::from(plan.work)));
    let session = Arc::new(plan.session);
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..step.jobs.max(1) {
        let worker = Worker {
            reader: reader.clone(),
            queue: queue.clone(),
            url: step.url.clone(),
            session: session.clone(),
            schema: schema_rx.clone(),
            stop_on_error: step.stop_on_error,
            ahead: (step.ahead / step.jobs.max(1)).max(2),
            int_size: plan.int_size,
            bar: bar.clone(),
        };
        workers.spawn(worker.run());
    }
    let mut errors = Vec::new();
    match section(step, &plan.toc_file, "pre-data", 1).await {
        Ok(found) => errors.extend(found),
        Err(e) if step.stop_on_error => return Err(e),
        Err(e) => errors.push(issue(e.message, None)),
    }
    // The workers wait for this before their first COPY; a failed schema with
    // `stop_on_error` returned above, which stops them.
    let _ = schema_tx.send(true);
    let schema_done = step.start.elapsed();
    errors.extend(set_sequences(step, &session, &plan.sequences).await?);
    while let Some(joined) = workers.join_next().await {
        let found = joined.map_err(|e| Error::failed(format!("a load worker failed: {e}")))??;
        errors.extend(found);
    }
    let data_done = step.start.elapsed();
    match section(step, &plan.toc_file, "post-data", step.jobs).await {
        Ok(found) => errors.extend(found),
        Err(e) if step.stop_on_error => return Err(e),
        Err(e) => errors.push(issue(e.message, None)),
    }
    flush_wal(step.url).await?;
    Ok(Loaded {
        errors,
        schema_done,
        data_done,
        elapsed: step.start.elapsed(),
    })
}

/// Waits until every commit of the load is on the target's disk. The workers commit without
/// waiting (`synchronous_commit = off`), and the post-data step may have nothing to commit (a
/// dump without indexes or constraints). A transaction that takes a transaction id commits with
/// a record of its own, and a synchronous commit flushes the WAL up to it: everything before it.
async fn flush_wal(url: &DbUrl) -> Result<()> {
    let mut conn = connect(url).await?;
    conn.execute("SET synchronous_commit = on; SELECT pg_catalog.txid_current();")
        .await
        .map_err(|e| {
            Error::failed(format!(
                "making the restore into {} durable: {}",
                url.masked(),
                db_message(&e)
            ))
        })?;
    Ok(())
}

fn issue(error: String, command: Option<String>) -> RestoreIssue {
    RestoreIssue { error, command }
}

/// A database error's own message, or the error as text.
fn db_message(e: &sqlx::Error) -> String {
    match e.as_database_error() {
        Some(d) => format!("ERROR:  {}", d.message()),
        None => e.to_string(),
    }
}

/// Runs the sequences' `setval` statements on a session of its own.
async fn set_sequences(
    step: &Step<'_>,
    session: &str,
    sequences: &[String],
) -> Result<Vec<RestoreIssue>> {
    let mut found = Vec::new();
    if sequences.is_empty() {
        return Ok(found);
    }
    let mut conn = connect(step.url).await?;
    conn.execute(session)
        .await
        .map_err(|e| Error::failed(format!("setting up a session: {}", db_message(&e))))?;
    for statement in sequences {
        if let Err(e) = conn.execute(statement.as_str()).await {
            let failure = issue(
                format!("could not execute query: {}", db_message(&e)),
                Some(statement.trim().to_string()),
            );
            if step.stop_on_error {
                return Err(Error::failed(format!(
                    "restore into {} failed setting a sequence; the target may hold a partial restore: {} (command: {})",
                    step.url.masked(),
                    failure.error,
                    statement.trim()
                )));
            }
            found.push(failure);
        }
    }
    Ok(found)
}

/// One section of the TOC-only archive, restored by pg_restore with `jobs`. Returns the errors
/// it reported when it went on past them; an error when it stopped or failed without saying why.
async fn section(
    step: &Step<'_>,
    toc: &std::fs::File,
    name: &str,
    jobs: usize,
) -> Result<Vec<RestoreIssue>> {
    let mut cmd = std::process::Command::new(step.tool);
    cmd.arg("--verbose").arg(format!("--section={name}"));
    if jobs > 1 {
        cmd.arg(format!("--jobs={jobs}"));
    }
    if step.stop_on_error {
        cmd.arg("--exit-on-error");
    }
    step.url.configure(&mut cmd);
    cmd.arg("/dev/stdin");
    crate::child::prepare(&mut cmd);
    let handle = toc
        .try_clone()
        .map_err(|e| Error::failed(format!("handing the TOC to pg_restore: {e}")))?;
    let mut cmd = tokio::process::Command::from(cmd);
    cmd.stdin(Stdio::from(handle))
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| Error::failed(format!("cannot start {}: {e}", step.tool.display())))?;
    let mut group = crate::child::Group::of(child.id().unwrap_or(0));
    let stderr = child
        .stderr
        .take()
        .ok_or_else(|| Error::failed("pg_restore has no stderr"))?;
    let watched: Watched = watch(stderr, step.start).await;
    let status = child
        .wait()
        .await
        .map_err(|e| Error::failed(format!("waiting for pg_restore: {e}")))?;
    group.finished();
    let errors = super::scrubbed(&watched.errors, step.url);
    if !status.success() && (step.stop_on_error || errors.is_empty()) {
        return Err(super::failed(status, &errors, step.url).context(format!("the {name} section")));
    }
    Ok(errors)
}

/// One worker: its own session, loading pieces of work until none is left.
struct Worker {
    reader: Arc<BlobReader>,
    queue: Arc<Mutex<VecDeque<Work>>>,
    url: DbUrl,
    session: Arc<String>,
    schema: tokio::sync::watch::Receiver<bool>,
    stop_on_error: bool,
    ahead: usize,
    int_size: usize,
    bar: Arc<dyn Bar>,
}

impl Worker {
    async fn run(mut self) -> Result<Vec<RestoreIssue>> {
        let mut found = Vec::new();
        let mut conn: Option<PgConnection> = None;
        loop {
            let Some(work) = crate::util::lock(&self.queue).pop_front() else {
                return Ok(found);
            };
            // Fetched ahead, beside the COPY, from the moment the work is taken.
            let (tx, rx) = mpsc::channel(self.ahead);
            let chunks = self.reader.stream(work.chunks.clone(), self.ahead);
            let pump = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(async move {
                let mut chunks = std::pin::pin!(chunks);
                while let Some(c) = chunks.next().await {
                    let failed = c.is_err();
                    if tx.send(c).await.is_err() || failed {
                        break;
                    }
                }
            }));
            if conn.is_none() {
                let mut c = connect(&self.url).await?;
                c.execute(self.session.as_str()).await.map_err(|e| {
                    Error::failed(format!("setting up a load session: {}", db_message(&e)))
                })?;
                conn = Some(c);
            }
            if self.schema.wait_for(|ready| *ready).await.is_err() {
                return Ok(found); // the load stopped before the schema was in place
            }
            let mut cursor = Cursor {
                rx,
                chunk: Vec::new(),
                pos: 0,
                at: work.chunks_at,
            };
            let Some(conn) = conn.as_mut() else {
                return Ok(found);
            };
            for table in &work.tables {
                if let Some(failure) = self.copy_table(conn, table, &mut cursor).await? {
                    if self.stop_on_error {
                        return Err(Error::failed(format!(
                            "restore into {} failed loading {}; the target may hold a partial restore: {} (command: {})",
                            self.url.masked(),
                            table.label,
                            failure.error,
                            table.copy.trim()
                        )));
                    }
                    found.push(failure);
                }
            }
            drop(pump);
        }
    }

    /// Loads one table from the cursor. An error is the snapshot's or the connection's (it
    /// stops the load); a failure the server reported for this table is returned.
    async fn copy_table(
        &self,
        conn: &mut PgConnection,
        table: &Table,
        cursor: &mut Cursor,
    ) -> Result<Option<RestoreIssue>> {
        cursor.skip_to(table.start).await?;
        if table.objects {
            return self.large_objects(conn, table, cursor).await;
        }
        let failure = |e: sqlx::Error| {
            issue(
                format!("could not execute query: {}", db_message(&e)),
                Some(table.copy.trim().to_string()),
            )
        };
        let mut copy = match conn.copy_in_raw(&table.copy).await {
            Ok(c) => c,
            Err(e) if e.as_database_error().is_some() => {
                cursor.skip_to(table.end).await?;
                return Ok(Some(failure(e)));
            }
            Err(e) => return Err(Error::failed(format!("COPY into {}: {e}", table.label))),
        };
        let mut deframer = Deframer::new(self.int_size, table.dump_id);
        let mut payload = Vec::new();
        while let Some(piece) = cursor.next(table.end).await? {
            self.bar.inc(piece.len() as u64);
            payload.clear();
            deframer
                .feed(piece, &mut payload)
                .map_err(|e| Error::failed(format!("the dump's data for {}: {e}", table.label)))?;
            if !payload.is_empty() {
                copy.send(payload.as_slice())
                    .await
                    .map_err(|e| Error::failed(format!("COPY into {}: {e}", table.label)))?;
            }
        }
        if !deframer.is_done() {
            return Err(Error::failed(format!(
                "the dump's data for {} ends early",
                table.label
            )));
        }
        match copy.finish().await {
            Ok(_) => Ok(None),
            Err(e) if e.as_database_error().is_some() => Ok(Some(failure(e))),
            Err(e) => Err(Error::failed(format!("COPY into {}: {e}", table.label))),
        }
    }
}

impl Worker {
    /// Writes a block's large objects in one transaction, as pg_restore does. Returns a failure
    /// the server reported (the rest of the block is passed over).
    async fn large_objects(
        &self,
        conn: &mut PgConnection,
        table: &Table,
        cursor: &mut Cursor,
    ) -> Result<Option<RestoreIssue>> {
        let mut deframer = Deframer::large_objects(self.int_size, table.dump_id);
        let mut failed = None;
        if let Err(e) = conn.execute("BEGIN").await {
            failed = Some(e);
        }
        while let Some(piece) = cursor.next(table.end).await? {
            self.bar.inc(piece.len() as u64);
            let objects = deframer
                .feed_objects(piece)
                .map_err(|e| Error::failed(format!("the dump's large objects: {e}")))?;
            for o in objects {
                if failed.is_some() {
                    break;
                }
                let put = sqlx::query("SELECT pg_catalog.lo_put($1, $2, $3)")
                    .bind(sqlx::postgres::types::Oid(o.oid))
                    .bind(o.at as i64)
                    .bind(o.data)
                    .execute(&mut *conn)
                    .await;
                failed = put.err();
            }
        }
        if !deframer.is_done() {
            return Err(Error::failed("the dump's large objects end early"));
        }
        let end = if failed.is_some() {
            "ROLLBACK"
        } else {
            "COMMIT"
        };
        if let Err(e) = conn.execute(end).await {
            failed.get_or_insert(e);
        }
        Ok(failed.map(|e| {
            issue(
                format!("could not restore large objects: {}", db_message(&e)),
                Some("SELECT pg_catalog.lo_put(...)".into()),
            )
        }))
    }
}

/// A place in a piece of work's chunks as they arrive.
struct Cursor {
    rx: mpsc::Receiver<Result<Vec<u8>>>,
    chunk: Vec<u8>,
    /// How much of `chunk` has been read.
    pos: usize,
    /// Where `chunk` starts in the dump.
    at: u64,
}

impl Cursor {
    /// The next bytes before `limit` (a place in the dump), from the chunk at hand or the next
    /// one; `None` at `limit`.
    async fn next(&mut self, limit: u64) -> Result<Option<&[u8]>> {
        while self.pos == self.chunk.len() && self.at + (self.pos as u64) < limit {
            let next =
                self.rx.recv().await.ok_or_else(|| {
                    Error::failed("the dump's chunks ended before a table's data")
                })??;
            self.at += self.chunk.len() as u64;
            self.chunk = next;
            self.pos = 0;
        }
        let here = self.at + self.pos as u64;
        if here >= limit {
            return Ok(None);
        }
        let n = (self.chunk.len() - self.pos).min((limit - here) as usize);
        let piece = &self.chunk[self.pos..self.pos + n];
        self.pos += n;
        Ok(Some(piece))
    }

    /// Passes over the bytes before `to`.
    async fn skip_to(&mut self, to: u64) -> Result<()> {
        while self.next(to).await?.is_some() {}
        Ok(())
    }
}
