//! Loading a snapshot's database into a target server: the part that restore and verify share.
//!
//! Order of work: make sure the target database exists (created when missing) and is empty
//! (refused otherwise, unless `force`, which drops and recreates the target database, so the
//! result is exactly the snapshot: pg_restore's own `--clean` cannot drop every kind of object,
//! e.g. a partition's inherited primary key); create, as NOLOGIN, the roles the dump refers to that the target
//! server lacks; then load the dump, blobs fetched several ahead and each one checked (see
//! [`crate::repo::reader`]) before a byte of it reaches the server: table by table with
//! parallel workers ([`parallel`]), or from a checked spool with `pg_restore -j`, or streamed
//! into one pg_restore's stdin, whichever the snapshot and `[restore]` allow ([`choose_feed`]). Any
//! damaged blob stops the restore with the blob named; pg_restore reporting any error fails
//! the restore with its messages. A failed restore may leave a partly loaded target: say so.

mod parallel;
mod plan;

use super::{Phase, ProgressSink};
use crate::error::{Error, Result};
pub use crate::record::figures::RestoreDb;
use crate::repo::format::{DbManifest, Meta};
use crate::repo::reader::BlobReader;
use crate::repo::Repo;
use crate::seal::{BlobIds, Opener};
use crate::source::pgtools::{self, DbUrl};
use crate::source::postgres::{connect, connect_existing, quote_ident};
use futures::StreamExt;
use sha2::{Digest, Sha256};
use sqlx::{Connection, Executor, Row};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

pub struct DbTarget {
    pub url: DbUrl,
    pub force: bool,
    /// The target is the policy's own source database (same host, port and name): a
    /// non-empty one is dropped only with `force_source`, never with `force` alone.
    pub is_source: bool,
    pub force_source: bool,
}

/// What makes a target database non-empty: any relation (table, view, sequence, foreign
/// table), function or procedure, standalone type (enum, domain, range, composite), or schema
/// other than `public`, that no extension owns.
const NON_EMPTY: &str = "\
    with ext as (select classid, objid from pg_depend where deptype = 'e'), \
    user_ns as (select oid, nspname from pg_namespace \
                where nspname not in ('pg_catalog', 'information_schema') \
                  and nspname not like 'pg\\_toast%' and nspname not like 'pg\\_temp%') \
    select what from ( \
      select 'relation ' || n.nspname || '.' || c.relname as what from pg_class c \
        join user_ns n on n.oid = c.relnamespace \
        where c.relkind in ('r', 'p', 'v', 'm', 'S', 'f') \
          and (c.oid) not in (select objid from ext where classid = 'pg_class'::regclass) \
      union all \
      select 'function ' || n.nspname || '.' || p.proname from pg_proc p \
        join user_ns n on n.oid = p.pronamespace \
        where p.oid not in (select objid from ext where classid = 'pg_proc'::regclass) \
      union all \
      select 'type ' || n.nspname || '.' || t.typname from pg_type t \
        join user_ns n on n.oid = t.typnamespace \
        where (t.typtype in ('e', 'd', 'r', 'm') \
               or (t.typtype = 'c' and (select relkind from pg_class where oid = t.typrelid) = 'c')) \
          and t.oid not in (select objid from ext where classid = 'pg_type'::regclass) \
      union all \
      select 'schema ' || n.nspname from user_ns n \
        where n.nspname <> 'public' \
          and n.oid not in (select objid from ext where classid = 'pg_namespace'::regclass) \
    ) x order by 1";

/// Creates the database when missing; refuses a non-empty one unless forced. Returns whether
/// the database was created.
pub async fn prepare_target(target: &DbTarget) -> Result<bool> {
    let url = &target.url;
    let mut conn = match connect_existing(url).await? {
        Some(c) => c,
        None => {
            admin_execute(url, "CREATE DATABASE").await?;
            return Ok(true);
        }
    };
    let rows = sqlx::query(NON_EMPTY)
        .fetch_all(&mut conn)
        .await
        .map_err(|e| Error::failed(format!("inspecting {}: {e}", url.masked())))?;
    let _ = conn.close().await;
    if rows.is_empty() {
        return Ok(false);
    }
    if target.is_source && !target.force_source {
        return Err(Error::input(format!(
            "target database {} is the policy's own source database, and it is not empty ({} objects): a restore never drops it with --force. Restore into another database and switch the application over, or, to replace the source with the snapshot, pass --force-source",
            url.masked(),
            rows.len()
        )));
    }
    if !target.force && !target.is_source {
        let names: Vec<String> = rows
            .iter()
            .take(5)
            .filter_map(|r| r.try_get::<String, _>(0).ok())
            .collect();
        return Err(Error::input(format!(
            "target database {} is not empty ({} objects, e.g. {}): restore into an empty database, or pass --force to drop and recreate it",
            url.masked(),
            rows.len(),
            names.join(", ")
        )));
    }
    tracing::warn!(
        "--force: dropping and recreating database {}",
        url.database()
    );
    admin_execute(url, "DROP DATABASE").await?;
    admin_execute(url, "CREATE DATABASE").await?;
    Ok(true)
}

/// Runs `CREATE DATABASE` or `DROP DATABASE` for the target's database, from the server's
/// `postgres` database (or `template1` when the target is `postgres`).
async fn admin_execute(url: &DbUrl, verb: &str) -> Result<()> {
    let db = url.database();
    let admin_db = if db == "postgres" {
        "template1"
    } else {
        "postgres"
    };
    let mut admin = connect(&url.with_database(admin_db)).await?;
    let suffix = if verb == "DROP DATABASE" {
        " WITH (FORCE)"
    } else {
        ""
    };
    let sql = format!("{verb} {}{suffix}", quote_ident(&db));
    let result = admin.execute(sql.as_str()).await;
    let _ = admin.close().await;
    result.map_err(|e| Error::failed(format!("{verb} {db} on {}: {e}", url.masked())))?;
    tracing::info!(
        "{} database {db}",
        if suffix.is_empty() {
            "created"
        } else {
            "dropped"
        }
    );
    Ok(())
}

/// Creates the roles the dump refers to that the server lacks, as NOLOGIN roles.
pub async fn create_missing_roles(url: &DbUrl, manifest: &DbManifest) -> Result<Vec<String>> {
    let mut conn = connect(url).await?;
    let mut created = Vec::new();
    for role in &manifest.roles {
        let exists: bool = sqlx::query("select exists(select 1 from pg_roles where rolname = $1)")
            .bind(&role.name)
            .fetch_one(&mut conn)
            .await
            .map_err(|e| {
                Error::failed(format!(
                    "checking role {} on {}: {e}",
                    role.name,
                    url.masked()
                ))
            })?
            .try_get(0)
            .map_err(|e| {
                Error::failed(format!("reading pg_roles.rolname on {}: {e}", url.masked()))
            })?;
        if !exists {
            conn.execute(format!("CREATE ROLE {} NOLOGIN", quote_ident(&role.name)).as_str())
                .await
                .map_err(|e| {
                    Error::failed(format!(
                        "creating role {} on {} (the dump needs it): {e}",
                        role.name,
                        url.masked()
                    ))
                })?;
            created.push(role.name.clone());
        }
    }
    let _ = conn.close().await;
    if !created.is_empty() {
        tracing::info!(
            "created NOLOGIN roles the dump needs: {}",
            created.join(", ")
        );
    }
    Ok(created)
}

/// How to load a dump.
pub struct LoadOptions<'a> {
    /// Stop at pg_restore's first error (restore); or go on and report every error (verify).
    pub stop_on_error: bool,
    /// Blobs fetched ahead.
    pub ahead: usize,
    pub progress: &'a dyn ProgressSink,
    /// Jobs and spool (the policy's `[restore]`).
    pub restore: crate::policy::RestoreSettings,
}

/// One error pg_restore reported, with the command that failed.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RestoreIssue {
    pub error: String,
    pub command: Option<String>,
}

pub struct LoadOutcome {
    pub figures: RestoreDb,
    pub errors: Vec<RestoreIssue>,
    /// download and decrypt_decompress (work summed over parallel fetches), then schema,
    /// data_load and index_constraint_build (wall time, from pg_restore's progress).
    pub phases: Vec<Phase>,
    /// From the first download to pg_restore's exit.
    pub elapsed: Duration,
}

#[derive(Default)]
struct Watched {
    data_at: Option<Duration>,
    post_at: Option<Duration>,
    errors: Vec<RestoreIssue>,
}

const POST_DATA: [&str; 7] = [
    "creating INDEX",
    "creating CONSTRAINT",
    "creating FK CONSTRAINT",
    "creating TRIGGER",
    "creating INDEX ATTACH",
    "creating RULE",
    "creating POLICY",
];

/// Reads pg_restore's verbose stderr, timing its phases and collecting its errors.
async fn watch(stderr: tokio::process::ChildStderr, start: Instant) -> Watched {
    let mut p = Watched::default();
    let mut lines = BufReader::new(stderr).lines();
    let mut in_command = false;
    while let Ok(Some(line)) = lines.next_line().await {
        let at = start.elapsed();
        if let Some(e) = line.strip_prefix("pg_restore: error: ") {
            in_command = false;
            if p.errors.len() < 1000 {
                p.errors.push(RestoreIssue {
                    error: e.to_string(),
                    command: None,
                });
            }
        } else if let Some(c) = line.strip_prefix("Command was: ") {
            in_command = true;
            if let Some(last) = p.errors.last_mut() {
                last.command = Some(c.to_string());
            }
        } else if line.starts_with("pg_restore: ") {
            in_command = false;
            if p.data_at.is_none() && line.contains("processing data for table") {
                p.data_at = Some(at);
            }
            if p.post_at.is_none()
                && p.data_at.is_some()
                && POST_DATA.iter().any(|k| line.contains(k))
            {
                p.post_at = Some(at);
            }
        } else if in_command {
            if let Some(cmd) = p.errors.last_mut().and_then(|e| e.command.as_mut()) {
                if cmd.len() < 4000 {
                    cmd.push('\n');
                    cmd.push_str(&line);
                }
            }
        }
    }
    p
}

/// How the dump reaches the target.
enum Feed {
    /// Each table loaded from its own chunks by parallel workers (see [`parallel`]).
    Parallel(plan::Plan),
    /// Streamed into pg_restore's stdin, one job.
    Stream,
    /// A checked spool file, `-j jobs`: unnamed (see [`spool_dump`]).
    Spool(std::fs::File, usize),
}

/// Writes the dump to a spool file in `dir`, each chunk checked on arrival and the whole
/// against the manifest's SHA-256 before pg_restore sees a byte of it. The outer error is the
/// snapshot's (a damaged blob, a cancellation); the inner one the spool's own (it cannot be
/// created or written, e.g. a full disk), which the caller falls back from.
///
/// pg_dump wrote to a pipe, so the TOC has no data offsets. A thread beside the writer reads
/// the chunks as they pass, hashing the whole and finding where each data block starts, and
/// the offsets are written into the spool's TOC once it is checked, as pg_dump does for a
/// file: each parallel worker then seeks to its table instead of reading from the start.
/// Without them pg_restore still works, only slower, so a failure to find them is logged.
///
/// The spool holds the plaintext dump, so it never has a name that could outlive the process:
/// it is an unnamed file in `dir` (`O_TMPFILE`, or created and unlinked at once where the file
/// system lacks it), and pg_restore reads it as its stdin under the name `/dev/stdin`, which
/// it and each of its workers open again as a file of their own (`/proc/self/fd/0`), so they
/// seek independently. A SIGKILL at any moment leaves nothing behind: the kernel frees the
/// file with the last descriptor. Spools that older versions named `.backstop-spool-*` and
/// left in `dir` are removed when a spool is made there.
async fn spool_dump(
    reader: &Arc<BlobReader>,
    meta: &Meta,
    manifest: &DbManifest,
    dir: &std::path::Path,
    ahead: usize,
    progress: &dyn crate::ops::Bar,
) -> Result<std::result::Result<std::fs::File, String>> {
    let problem = |e: std::io::Error| format!("the spool in {} failed: {e}", dir.display());
    let d = dir.to_path_buf();
    let _ = tokio::task::spawn_blocking(move || remove_named_spools(&d)).await;
    let file = match tempfile::tempfile_in(dir) {
        Ok(f) => f,
        Err(e) => return Ok(Err(problem(e))),
    };
    let handle = match file.try_clone() {
        Ok(h) => h,
        Err(e) => return Ok(Err(problem(e))),
    };
    let mut out = tokio::fs::File::from_std(handle);
    out.set_max_buf_size(SPOOL_WRITE);
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(ahead.max(2));
    let beside = std::thread::spawn(move || {
        let mut hasher = Sha256::new();
        let mut next = || {
            let batch = rx.blocking_recv()?;
            hasher.update(&batch);
            Some(batch)
        };
        let offsets = crate::source::archive::data_offsets(
            crate::source::archive::ChannelReader::new(&mut next),
        );
        while next().is_some() {} // a parse that stopped early still hashes the rest
        (offsets, hasher)
    });
    let mut chunks = reader.stream(manifest.dump.chunks.clone(), ahead);
    let mut written = 0u64;
    let mut failed = None;
    while let Some(item) = chunks.next().await {
        let plain = item?;
        written += plain.len() as u64;
        if let Err(e) = out.write_all(&plain).await {
            failed = Some(problem(e));
            break;
        }
        progress.inc(plain.len() as u64);
        if tx.send(plain).await.is_err() {
            break; // the thread beside ended, which it does only by panicking
        }
    }
    drop(tx);
    if failed.is_none() {
        failed = out.flush().await.err().map(problem);
    }
    let (offsets, hasher) = tokio::task::spawn_blocking(move || beside.join())
        .await
        .ok()
        .and_then(|joined| joined.ok())
        .ok_or_else(|| Error::failed("the spool's checking thread failed"))?;
    if let Some(problem) = failed {
        return Ok(Err(problem));
    }
    check_whole(meta, manifest, written, hasher)?;
    let handle = file.try_clone();
    let filled = tokio::task::spawn_blocking(move || {
        let offsets = offsets?;
        let handle = handle.map_err(|e| e.to_string())?;
        offsets.write_to(&handle).map(|()| offsets.len())
    })
    .await
    .map_err(|e| Error::failed(format!("filling the spool's data offsets: {e}")))?;
    match filled {
        Ok(n) => tracing::debug!("filled in {n} data offsets in the spool's TOC"),
        Err(e) => tracing::warn!("could not fill in the spool's data offsets ({e}): pg_restore's workers will scan for their tables"),
    }
    Ok(Ok(file))
}

/// Removes the named spools (`.backstop-spool-*`) that versions before the unnamed spool left
/// in `dir` when they were killed: each holds a plaintext dump.
fn remove_named_spools(dir: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        if e.file_name()
            .to_string_lossy()
            .starts_with(".backstop-spool-")
        {
            match std::fs::remove_file(e.path()) {
                Ok(()) => tracing::warn!(
                    "removed {}, a plaintext spool an interrupted restore left behind",
                    e.path().display()
                ),
                Err(err) => tracing::warn!("could not remove {}: {err}", e.path().display()),
            }
        }
    }
}

/// The most of the spool handed to the blocking pool in one write: a chunk or more.
const SPOOL_WRITE: usize = 4 << 20;

/// The reassembled dump is exactly the one the manifest records.
fn check_whole(meta: &Meta, manifest: &DbManifest, written: u64, hasher: Sha256) -> Result<()> {
    let sha = hex::encode(hasher.finalize());
    if written != manifest.dump.bytes || sha != manifest.dump.sha256 {
        return Err(Error::failed(format!(
            "the dump of snapshot {} reassembled to {written} bytes with SHA-256 {sha}, but the manifest records {} bytes with {}",
            meta.id, manifest.dump.bytes, manifest.dump.sha256
        )));
    }
    Ok(())
}

/// Chooses the feed, saying which and why: with `jobs` above 1, the parallel load where the
/// snapshot and its archive allow it, else a spool with `jobs` where it can be written; else
/// the stream.
async fn choose_feed(
    reader: &Arc<BlobReader>,
    meta: &Meta,
    manifest: &DbManifest,
    options: &LoadOptions<'_>,
    progress: &dyn crate::ops::Bar,
) -> Result<Feed> {
    let settings = &options.restore;
    if settings.jobs <= 1 {
        tracing::info!("restore.jobs = 1: streaming the dump into one pg_restore");
        return Ok(Feed::Stream);
    }
    let dir = settings
        .spool_dir
        .clone()
        .unwrap_or_else(std::env::temp_dir);
    match plan::plan(reader, manifest, &dir, settings.jobs, options.ahead).await? {
        Ok(plan) => return Ok(Feed::Parallel(plan)),
        Err(why) => tracing::info!("not the parallel load ({why}): the spool path instead"),
    }
    if manifest.dump.bytes > settings.spool_max {
        tracing::info!(
            "the dump ({}) is larger than restore.spool_max ({}): streaming it into one pg_restore",
            crate::util::human_bytes(manifest.dump.bytes),
            crate::util::human_bytes(settings.spool_max)
        );
        return Ok(Feed::Stream);
    }
    match spool_dump(reader, meta, manifest, &dir, options.ahead, progress).await? {
        Ok(file) => Ok(Feed::Spool(file, settings.jobs)),
        Err(problem) => {
            tracing::warn!("{problem}: streaming the dump into one pg_restore instead");
            Ok(Feed::Stream)
        }
    }
}

/// pg_restore on the target, with what its stdin is: the spool (with `--jobs`), or a pipe
/// for the stream.
fn pg_restore_command(
    tool: &std::path::Path,
    feed: &Feed,
    target: &DbTarget,
    options: &LoadOptions<'_>,
) -> Result<(std::process::Command, Stdio)> {
    let mut cmd = std::process::Command::new(tool);
    cmd.arg("--verbose");
    if options.stop_on_error {
        cmd.arg("--exit-on-error");
    }
    target.url.configure(&mut cmd);
    let stdin = match feed {
        Feed::Stream | Feed::Parallel(_) => Stdio::piped(),
        Feed::Spool(file, jobs) => {
            cmd.arg(format!("--jobs={jobs}")).arg("/dev/stdin");
            tracing::info!("pg_restore with {jobs} jobs from a checked spool");
            let handle = file
                .try_clone()
                .map_err(|e| Error::failed(format!("handing the spool to pg_restore: {e}")))?;
            Stdio::from(handle)
        }
    };
    Ok((cmd, stdin))
}

/// How a streamed feed ended.
enum Fed {
    Whole,
    /// pg_restore closed its end (it failed; its messages say why).
    PipeClosed,
    /// A chunk could not be read or proved.
    Failed(Error),
}

/// Streams the dump's chunks, each checked, into pg_restore's stdin. Returns the bytes written,
/// their hash, and how the feed ended.
async fn feed_stream(
    reader: &Arc<BlobReader>,
    manifest: &DbManifest,
    stdin: &mut tokio::process::ChildStdin,
    options: &LoadOptions<'_>,
    progress: &dyn crate::ops::Bar,
) -> (u64, Sha256, Fed) {
    let mut chunks = reader.stream(manifest.dump.chunks.clone(), options.ahead);
    let mut hasher = Sha256::new();
    let mut written = 0u64;
    while let Some(item) = chunks.next().await {
        match item {
            Ok(plain) => {
                hasher.update(&plain);
                written += plain.len() as u64;
                if stdin.write_all(&plain).await.is_err() {
                    return (written, hasher, Fed::PipeClosed);
                }
                progress.inc(plain.len() as u64);
            }
            Err(e) => return (written, hasher, Fed::Failed(e)),
        }
    }
    (written, hasher, Fed::Whole)
}

/// pg_restore's errors with the target's password scrubbed from them.
fn scrubbed(errors: &[RestoreIssue], url: &DbUrl) -> Vec<RestoreIssue> {
    let password = url.password().unwrap_or_default();
    let scrub = |t: &str| crate::util::scrub(t, &[&password]);
    errors
        .iter()
        .map(|e| RestoreIssue {
            error: scrub(&e.error),
            command: e.command.as_deref().map(scrub),
        })
        .collect()
}

/// The error of a pg_restore that failed, with its first errors.
fn failed(status: std::process::ExitStatus, errors: &[RestoreIssue], url: &DbUrl) -> Error {
    let text: Vec<String> = errors
        .iter()
        .take(5)
        .map(|e| match &e.command {
            Some(c) => format!("{} (command: {})", e.error, c.lines().next().unwrap_or("")),
            None => e.error.clone(),
        })
        .collect();
    Error::failed(format!(
        "pg_restore into {} failed ({status}); the target may hold a partial restore: {}",
        url.masked(),
        text.join("; ")
    ))
}

/// The load's phases: fetch and open (as the reader's work), the spool if there was one, and
/// pg_restore's schema, data and index phases as its messages marked them.
fn load_phases(
    reader: &BlobReader,
    watched: &Watched,
    elapsed: Duration,
    spooled: Option<Duration>,
) -> Vec<Phase> {
    let (download, open) = reader.work_times();
    let spooled_at = spooled.unwrap_or_default();
    let data_at = watched.data_at.unwrap_or(elapsed).max(spooled_at);
    let post_at = watched.post_at.unwrap_or(elapsed).max(data_at);
    let phase = |name: &str, d: Duration| Phase {
        name: name.into(),
        duration_s: crate::util::secs(d),
    };
    let mut phases = vec![
        phase("download", download),
        phase("decrypt_decompress", open),
    ];
    if let Some(d) = spooled {
        phases.push(phase("spool", d));
    }
    phases.extend([
        phase("schema", data_at.saturating_sub(spooled_at)),
        phase("data_load", post_at - data_at),
        phase("index_constraint_build", elapsed - post_at),
    ]);
    phases
}

/// The outcome of a parallel load: its schema, data and post-data steps are the phases.
fn parallel_outcome(
    reader: &BlobReader,
    manifest: &DbManifest,
    l: parallel::Loaded,
) -> LoadOutcome {
    let (download, open) = reader.work_times();
    let phase = |name: &str, d: Duration| Phase {
        name: name.into(),
        duration_s: crate::util::secs(d),
    };
    LoadOutcome {
        figures: RestoreDb {
            tables: manifest.tables.len() as u64,
            rows: manifest.tables.iter().map(|t| t.rows).sum(),
            bytes: manifest.dump.bytes,
            database_created: false,
            roles_created: Vec::new(),
        },
        errors: l.errors,
        phases: vec![
            phase("download", download),
            phase("decrypt_decompress", open),
            phase("schema", l.schema_done),
            phase("data_load", l.data_done.saturating_sub(l.schema_done)),
            phase(
                "index_constraint_build",
                l.elapsed.saturating_sub(l.data_done),
            ),
        ],
        elapsed: l.elapsed,
    }
}

/// Loads the snapshot's dump into pg_restore on the (prepared) target: from a checked spool
/// with `-j` jobs (see [`crate::policy::RestoreSettings`]), or streamed.
pub async fn load_dump(
    repo: &Repo,
    meta: &Meta,
    manifest: &DbManifest,
    opener: Arc<Opener>,
    ids: BlobIds,
    target: &DbTarget,
    options: &LoadOptions<'_>,
) -> Result<LoadOutcome> {
    let dump_major = pgtools::parse_version(&format!("x y {}", manifest.pg_dump_version))
        .map(|(m, _)| m)
        .unwrap_or(0);
    let tool = pgtools::find("pg_restore", dump_major)?;
    let start = Instant::now();
    let reader = Arc::new(BlobReader::new(repo.store.clone(), opener, ids, meta));
    let progress = options.progress.bar("restore", Some(manifest.dump.bytes));
    let feed = choose_feed(&reader, meta, manifest, options, progress.as_ref()).await?;
    let feed = match feed {
        Feed::Parallel(plan) => {
            let step = parallel::Step {
                tool: &tool.path,
                url: &target.url,
                jobs: options.restore.jobs,
                ahead: options.ahead,
                stop_on_error: options.stop_on_error,
                start,
            };
            let bar: Arc<dyn crate::ops::Bar> = Arc::from(progress);
            let loaded = parallel::load(&reader, plan, &step, bar.clone()).await;
            bar.finish();
            return loaded.map(|l| parallel_outcome(&reader, manifest, l));
        }
        other => other,
    };
    let spooled_at = start.elapsed();
    let spooled = matches!(feed, Feed::Spool(..));
    let (mut std_cmd, stdin) = pg_restore_command(&tool.path, &feed, target, options)?;
    // Its own process group: a cancelled restore stops pg_restore and all its workers.
    crate::child::prepare(&mut std_cmd);
    let mut cmd = tokio::process::Command::from(std_cmd);
    cmd.stdin(stdin)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| Error::failed(format!("cannot start {}: {e}", tool.path.display())))?;
    let mut group = crate::child::Group::of(child.id().unwrap_or(0));
    let stderr = child
        .stderr
        .take()
        .ok_or_else(|| Error::failed("pg_restore has no stderr"))?;
    let watcher = tokio::spawn(watch(stderr, start));

    let mut pipe_closed = false;
    let written = match &feed {
        Feed::Spool(..) | Feed::Parallel(_) => manifest.dump.bytes,
        Feed::Stream => {
            let mut stdin = child
                .stdin
                .take()
                .ok_or_else(|| Error::failed("pg_restore has no stdin"))?;
            let fed = feed_stream(&reader, manifest, &mut stdin, options, progress.as_ref()).await;
            let (written, hasher, end) = fed;
            pipe_closed = matches!(end, Fed::PipeClosed);
            if let Fed::Failed(e) = end {
                group.stop();
                return Err(e.context(format!(
                    "restore into {} stopped; the target may hold a partial restore",
                    target.url.masked()
                )));
            }
            drop(stdin);
            if !pipe_closed {
                check_whole(meta, manifest, written, hasher)?;
            }
            written
        }
    };
    progress.finish();
    let status = child
        .wait()
        .await
        .map_err(|e| Error::failed(format!("waiting for pg_restore: {e}")))?;
    group.finished();
    drop(feed);
    let elapsed = start.elapsed();
    let watched = watcher.await.unwrap_or_default();
    let errors = scrubbed(&watched.errors, &target.url);
    if !status.success() && (options.stop_on_error || errors.is_empty()) || pipe_closed {
        return Err(failed(status, &errors, &target.url));
    }
    let phases = load_phases(&reader, &watched, elapsed, spooled.then_some(spooled_at));
    Ok(LoadOutcome {
        figures: RestoreDb {
            tables: manifest.tables.len() as u64,
            rows: manifest.tables.iter().map(|t| t.rows).sum(),
            bytes: written,
            database_created: false,
            roles_created: Vec::new(),
        },
        errors,
        phases,
        elapsed,
    })
}
