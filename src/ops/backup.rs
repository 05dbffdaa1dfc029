//! The backup operation: database, then storage buckets -> sealed blobs -> manifest ->
//! meta.json.
//!
//! The run fills its outcome as it goes, so a failure still reports what was done and where it
//! stopped. Nothing is committed unless every part succeeded and the run still holds its lock:
//! the snapshot appears (meta.json is written) only as the very last step, and that step is
//! never cut short by a cancellation (a cancellation before it means no snapshot; after it
//! started, the commit finishes and the outcome says so).

use super::{with_shared_lock, Ctx, Phase, ProgressSink, RunTimes};
use crate::error::{Error, Result};
use crate::model::TableStat;
use crate::policy::Policy;
pub use crate::record::figures::BackupDb;
use crate::repo::format::StreamRef;
use crate::repo::format::{
    DbManifest, FilesManifest, GitManifest, Manifest, ManifestRepo, Meta, MetaDb, MetaEncryption,
    MetaFiles, MetaGit, MetaLock, MetaStorage, StorageManifest, StoredObject, FORMAT,
};
use crate::repo::writer::{BlobWriter, WriteStats};
use crate::repo::Repo;
use crate::source::archive::{self, Scan};
use crate::source::copytext::METHOD_COPY;
use crate::source::pgtools::{self, DbUrl};
use crate::source::postgres::{Session, TableRef};
use chrono::{DateTime, Utc};
use secrecy::ExposeSecret;
use std::collections::{BTreeSet, HashMap};
use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

/// One part of a snapshot (`--only`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Only {
    Db,
    Storage,
    Files,
    Git,
}

/// What to back up.
#[derive(Debug, Clone, Default)]
pub struct Request {
    /// Only one part; every part the policy names when `None`.
    pub only: Option<Only>,
}

pub use super::documents::{BackupStorage, Mismatches};

/// What a backup run did. `snapshot_id` is set iff a snapshot was committed.
#[derive(Debug)]
pub struct Outcome {
    pub times: RunTimes,
    pub policy: String,
    pub snapshot_id: Option<String>,
    pub consistent_at: Option<DateTime<Utc>>,
    pub db: Option<BackupDb>,
    pub storage: Option<BackupStorage>,
    pub files: Option<super::files::FilesFigures>,
    pub git: Option<super::git::GitFigures>,
    pub phases: Vec<Phase>,
    pub warnings: Vec<String>,
    /// Blobs that committed snapshots name but the store had lost, uploaded again by this run.
    pub blobs_reuploaded: u64,
    pub error: Option<Error>,
}

impl Outcome {
    fn new(policy: &str) -> Outcome {
        Outcome {
            times: RunTimes::start(),
            policy: policy.to_string(),
            snapshot_id: None,
            consistent_at: None,
            db: None,
            storage: None,
            files: None,
            git: None,
            phases: Vec::new(),
            warnings: Vec::new(),
            blobs_reuploaded: 0,
            error: None,
        }
    }

    /// A run that could not start (the policy or the repository could not be opened).
    pub fn not_started(policy: &str, error: Error) -> Outcome {
        let mut out = Outcome::new(policy);
        out.error = Some(error);
        out.times.finish();
        out
    }

    pub fn ok(&self) -> bool {
        self.error.is_none()
    }
}

/// Backs up what the policy names into the repository, under a shared lock.
pub async fn run(policy: &Policy, repo: &Repo, req: &Request, ctx: &Ctx) -> Outcome {
    let ctx = ctx.for_run();
    let mut out = Outcome::new(&policy.name);
    let run_id = out.times.run_id.clone();
    // Files and git repositories are checked before the repository is touched: a missing
    // path, an unreadable file or a repository that needs credentials fails the run at once.
    let file_plans = match precheck(policy, req).await {
        Ok(plans) => plans,
        Err(e) => {
            out.times.finish();
            out.error = Some(e);
            return out;
        }
    };
    let result = with_shared_lock(
        repo,
        "backup",
        &run_id,
        &ctx,
        backup(policy, repo, req, file_plans, &ctx, &run_id, &mut out),
    )
    .await;
    out.times.finish();
    if let Err(e) = result {
        out.error = Some(e);
    }
    out
}

fn wants(req: &Request, part: Only) -> bool {
    req.only.is_none_or(|o| o == part)
}

/// Plans the `[[files]]` sets and checks the `[[git]]` repositories, when the run backs them up.
async fn precheck(
    policy: &Policy,
    req: &Request,
) -> Result<Option<Vec<crate::source::files::Planned>>> {
    if !policy.git.is_empty() && wants(req, Only::Git) {
        super::git::check(&policy.git).await?;
    }
    if !policy.files.is_empty() && wants(req, Only::Files) {
        return Ok(Some(super::files::plan(&policy.files).await?));
    }
    Ok(None)
}

/// The parts the run backs up (the policy's, narrowed by `--only`).
struct Chosen {
    db: bool,
    storage: bool,
    git: bool,
}

fn choose(policy: &Policy, req: &Request, files: bool) -> Result<Chosen> {
    let chosen = Chosen {
        db: policy.database.is_some() && wants(req, Only::Db),
        storage: policy.storage.is_some() && wants(req, Only::Storage),
        git: !policy.git.is_empty() && wants(req, Only::Git),
    };
    if !chosen.db && !chosen.storage && !files && !chosen.git {
        return Err(Error::input(format!(
            "policy {} has nothing to back up with {}",
            policy.name,
            match req.only {
                Some(Only::Db) => "--only db (it has no [database])",
                Some(Only::Storage) => "--only storage (it has no [storage])",
                Some(Only::Files) => "--only files (it has no [[files]])",
                Some(Only::Git) => "--only git (it has no [[git]])",
                None => "these options",
            }
        )));
    }
    Ok(chosen)
}

/// The buckets the run backs up, and their source, opened with its key and buckets checked
/// before the dump starts: a refused key or a missing bucket fails the run at once, not after
/// the whole dump.
async fn open_buckets(
    policy: &Policy,
    chosen: &Chosen,
) -> Result<(
    Vec<String>,
    Option<Box<dyn crate::source::storage::StorageSource>>,
)> {
    let Some(cfg) = policy.storage.as_ref().filter(|_| chosen.storage) else {
        return Ok((Vec::new(), None));
    };
    let source = crate::source::storage::open(cfg).await?;
    source.check_buckets(&cfg.buckets).await?;
    Ok((cfg.buckets.clone(), Some(source)))
}

/// What a snapshot holds, part by part, as the steps give it: the manifest's and meta.json's
/// halves of each part.
#[derive(Default)]
struct Parts {
    database: Option<DbManifest>,
    meta_db: Option<MetaDb>,
    storage: Option<StorageManifest>,
    meta_storage: Option<MetaStorage>,
    files: Option<FilesManifest>,
    meta_files: Option<MetaFiles>,
    git: Option<GitManifest>,
    meta_git: Option<MetaGit>,
    /// Where the change stream joins the dump: its WAL position and the transactions it sees.
    stream_join: Option<(String, String)>,
}

impl Parts {
    /// The database's halves of the manifest and meta.json; returns the figures and the
    /// storage.objects rows the dump saw.
    fn take_dump(&mut self, dumped: Dumped) -> (BackupDb, Option<BTreeSet<String>>) {
        let Dumped {
            manifest,
            consistent_lsn,
            snapshot_xids,
            figures,
            storage_rows,
            ..
        } = dumped;
        self.stream_join = Some((consistent_lsn, snapshot_xids));
        self.meta_db = Some(MetaDb {
            tables: figures.tables,
            rows: figures.rows,
            bytes_plain: figures.bytes_plain,
            server_version: manifest.server_version.clone(),
            extensions: manifest.extensions.clone(),
            roles: manifest.roles.iter().map(|r| r.name.clone()).collect(),
        });
        self.database = Some(manifest);
        (figures, storage_rows)
    }

    /// The `[[files]]` sets' halves of the manifest and meta.json; returns the figures.
    fn take_files(
        &mut self,
        manifest: FilesManifest,
        figures: super::files::FilesFigures,
        read_at: DateTime<Utc>,
    ) -> super::files::FilesFigures {
        self.meta_files = Some(MetaFiles {
            sets: figures.sets,
            files: figures.files,
            bytes_plain: figures.bytes_plain,
        });
        self.files = Some(FilesManifest {
            read_at: Some(read_at),
            ..manifest
        });
        figures
    }

    /// The git repositories' halves of the manifest and meta.json; returns the figures.
    fn take_git(
        &mut self,
        manifest: GitManifest,
        figures: super::git::GitFigures,
        read_at: DateTime<Utc>,
    ) -> super::git::GitFigures {
        self.meta_git = Some(MetaGit {
            repositories: figures.repositories.clone(),
            bytes_plain: figures.bytes_plain,
        });
        self.git = Some(GitManifest {
            read_at: Some(read_at),
            ..manifest
        });
        figures
    }

    /// The snapshot's manifest: the parts' halves, and how the repository keys and chunks
    /// (what a restore needs to find the blobs).
    fn manifest(
        &mut self,
        policy: &Policy,
        repo: &Repo,
        snapshot_id: &str,
        consistent_at: DateTime<Utc>,
        dedup_key: &[u8],
    ) -> Manifest {
        Manifest {
            format: FORMAT,
            snapshot_id: snapshot_id.to_string(),
            policy: policy.name.clone(),
            consistent_at,
            database: self.database.take(),
            storage: self.storage.take(),
            repository: Some(ManifestRepo {
                blob_id_key: hex::encode(dedup_key),
                dedup_salt: repo.config.dedup_salt.clone(),
                chunker: repo.config.chunker,
                created_at: repo.config.created_at,
            }),
            files: self.files.take(),
            git: self.git.take(),
        }
    }

    /// The buckets' halves of the manifest and meta.json.
    fn take_storage(
        &mut self,
        objects: Vec<crate::repo::format::StorageObject>,
        figures: &BackupStorage,
    ) {
        self.meta_storage = Some(MetaStorage {
            objects: figures.objects,
            bytes_plain: figures.bytes_plain,
        });
        self.storage = Some(StorageManifest {
            objects,
            missing_in_bucket: figures.mismatches.missing_in_bucket.clone(),
            missing_in_table: figures.mismatches.missing_in_table.clone(),
        });
    }
}

/// The parts, each filled into `out` as it is done; the snapshot is committed last.
#[allow(clippy::too_many_arguments)]
async fn backup(
    policy: &Policy,
    repo: &Repo,
    req: &Request,
    file_plans: Option<Vec<crate::source::files::Planned>>,
    ctx: &Ctx,
    snapshot_id: &str,
    out: &mut Outcome,
) -> Result<()> {
    let (sealer, dedup_key) = super::policy_sealer(policy, repo)?;
    let chosen = choose(policy, req, file_plans.is_some())?;
    let (buckets, source) = open_buckets(policy, &chosen).await?;
    let writer =
        Arc::new(BlobWriter::new(repo, sealer.clone(), policy.repository.connections).await?);
    let mut parts = Parts::default();
    let mut consistent_at = out.times.started_at;
    let mut db_names = None;
    if let Some(db) = policy.database.as_ref().filter(|_| chosen.db) {
        let url = DbUrl::parse(db.url.expose_secret())?;
        if let Some(note) = super::stream::ensure_slot_before_backup(policy).await {
            tracing::warn!("{note}");
            out.warnings.push(note);
        }
        let dumped = ctx
            .cancel
            .run(dump_database(
                &url,
                &db.exclude_schemas,
                &buckets,
                &writer,
                ctx.progress.as_ref(),
                out,
            ))
            .await?;
        consistent_at = dumped.consistent_at;
        let (figures, names) = parts.take_dump(dumped);
        out.db = Some(figures);
        db_names = names;
    }
    out.consistent_at = Some(consistent_at);

    let cache = crate::cache::load(&repo.store.describe(), &policy.name);
    let mut new_index = cache.clone();
    if let (Some(cfg), Some(source)) = (policy.storage.as_ref(), source) {
        let t = Instant::now();
        let done = ctx
            .cancel
            .run(super::documents::backup(
                source.as_ref(),
                &buckets,
                &writer,
                &cache,
                db_names.as_ref(),
            ))
            .await?;
        out.warnings
            .extend(storage_warnings(&done.figures, cfg.require_consistent)?);
        parts.take_storage(done.objects, &done.figures);
        new_index.objects = done.index.objects;
        out.storage = Some(done.figures);
        out.phases.push(Phase::since("storage", t));
    }

    if let Some(plans) = file_plans {
        let t = Instant::now();
        let read_at = Utc::now();
        let done = ctx
            .cancel
            .run(super::files::backup(&policy.files, plans, &writer, &cache))
            .await?;
        out.warnings.extend(done.warnings);
        new_index.files = done.index;
        out.files = Some(parts.take_files(done.manifest, done.figures, read_at));
        out.phases.push(Phase::since("files", t));
    }
    if chosen.git {
        let t = Instant::now();
        let read_at = Utc::now();
        let done = ctx
            .cancel
            .run(super::git::backup(&policy.git, &writer, &cache))
            .await?;
        new_index.git = done.index;
        out.git = Some(parts.take_git(done.manifest, done.figures, read_at));
        out.phases.push(Phase::since("git", t));
    }

    let t = Instant::now();
    let manifest = parts.manifest(policy, repo, snapshot_id, consistent_at, &dedup_key);
    let meta = snapshot_meta(policy, snapshot_id, out, parts, writer.used());
    out.blobs_reuploaded = writer.reuploaded();
    if out.blobs_reuploaded > 0 {
        out.warnings.push(format!(
            "{} blobs that older snapshots reference were missing from the repository and were uploaded again; run `backstop check` to see which older snapshots are damaged",
            out.blobs_reuploaded
        ));
    }
    // The last point at which a cancellation or a lost lock stops the run: the lock is read
    // back, whenever its last refresh was.
    ctx.cancel.check()?;
    crate::repo::lock::confirm(repo.store.as_ref(), snapshot_id).await?;
    let (meta, meta_size) = repo.commit(&manifest, &sealer, meta).await?;
    writer.committed(repo, &meta, meta_size);
    out.phases.push(Phase::since("commit", t));
    out.snapshot_id = Some(snapshot_id.to_string());
    crate::cache::save(&repo.store.describe(), &policy.name, &new_index);
    Ok(())
}

/// The warnings a bucket backup gives (objects it could not fetch, buckets and storage.objects
/// that disagree); an error instead where the policy requires them to agree.
fn storage_warnings(figures: &BackupStorage, require_consistent: bool) -> Result<Vec<String>> {
    let mut warnings: Vec<String> = figures
        .unfetchable
        .iter()
        .map(|why| format!("storage object not backed up: {why}"))
        .collect();
    let m = &figures.mismatches;
    if !m.missing_in_bucket.is_empty() || !m.missing_in_table.is_empty() {
        let examples: Vec<&str> = (m.missing_in_bucket.iter().chain(&m.missing_in_table))
            .take(3)
            .map(String::as_str)
            .collect();
        let text = format!(
            "{} storage.objects rows have no object in the bucket, {} objects have no row (e.g. {})",
            m.missing_in_bucket.len(),
            m.missing_in_table.len(),
            examples.join(", ")
        );
        if require_consistent {
            return Err(Error::failed(format!(
                "the buckets and storage.objects disagree and storage.require_consistent is set: {text}"
            )));
        }
        warnings.push(text);
    }
    for w in &warnings {
        tracing::warn!("{w}");
    }
    Ok(warnings)
}

/// meta.json of the snapshot the run is about to commit (its manifest's place filled in by
/// the commit).
fn snapshot_meta(
    policy: &Policy,
    snapshot_id: &str,
    out: &Outcome,
    parts: Parts,
    blobs: Vec<crate::repo::format::BlobRef>,
) -> Meta {
    let started_at = out.times.started_at;
    let consistent_at = out.consistent_at.unwrap_or(started_at);
    Meta {
        format: FORMAT,
        id: snapshot_id.to_string(),
        policy: policy.name.clone(),
        consistent_at,
        started_at,
        finished_at: Utc::now(),
        tool_version: env!("CARGO_PKG_VERSION").to_string(),
        db: parts.meta_db,
        storage: parts.meta_storage,
        bytes_referenced: blobs.iter().map(|b| b.size).sum(),
        encryption: MetaEncryption {
            scheme: "age-x25519".into(),
            recipients: policy.recipients.clone(),
        },
        manifest: StoredObject {
            key: String::new(),
            size: 0,
            sha256: String::new(),
        },
        blobs,
        object_lock: policy.repository.object_lock.as_ref().map(|l| MetaLock {
            mode: l.mode.clone(),
            days: l.days,
            until: started_at + chrono::Duration::days(l.days as i64),
        }),
        files: parts.meta_files,
        git: parts.meta_git,
        consistent_lsn: parts.stream_join.as_ref().map(|j| j.0.clone()),
        snapshot_xids: parts.stream_join.map(|j| j.1),
    }
}

/// What the database dump gives the snapshot.
struct Dumped {
    manifest: DbManifest,
    consistent_at: DateTime<Utc>,
    /// Where the change stream joins the dump: its WAL position and the transactions it sees.
    consistent_lsn: String,
    snapshot_xids: String,
    figures: BackupDb,
    /// `bucket/name` of the storage.objects rows, read in the snapshot.
    storage_rows: Option<BTreeSet<String>>,
}

/// Dumps the database in one exported snapshot through the writer.
async fn dump_database(
    url: &DbUrl,
    exclude_schemas: &[String],
    buckets: &[String],
    writer: &Arc<BlobWriter>,
    progress: &dyn ProgressSink,
    out: &mut Outcome,
) -> Result<Dumped> {
    let t = Instant::now();
    let mut session = Session::begin(url).await?;
    let tables = session.tables(exclude_schemas).await?;
    let roles = session.roles().await?;
    let extensions = session.extensions().await?;
    let storage_rows = if buckets.is_empty() {
        None
    } else {
        session.storage_object_names(buckets).await?
    };
    let pg_dump = pgtools::find("pg_dump", session.server_major())?;
    let password = url.password().unwrap_or_default();
    // Roles are cluster-wide, outside any snapshot: capture them while the dump runs.
    let roles_sql = {
        let (url, password, major) = (url.clone(), password.clone(), session.server_major());
        // Aborted with the run: a cancelled backup stops pg_dumpall's group too.
        tokio_util::task::AbortOnDropHandle::new(tokio::spawn(async move {
            let tool = tokio::task::spawn_blocking(move || pgtools::find("pg_dumpall", major))
                .await
                .map_err(|e| Error::failed(format!("looking for pg_dumpall: {e}")))??;
            let mut cmd = Command::new(&tool.path);
            cmd.args(["--roles-only", "--no-role-passwords"]);
            url.configure(&mut cmd);
            pgtools::run_capture(cmd, "pg_dumpall --roles-only", &[&password]).await
        }))
    };
    out.phases.push(Phase::since("snapshot", t));
    tracing::info!(
        "dumping {} ({} tables, PostgreSQL {}) with {} in snapshot {}",
        url.masked(),
        tables.len(),
        session.server_version,
        pg_dump.version,
        session.snapshot
    );
    let t = Instant::now();
    let dumped = run_pg_dump(
        &pg_dump.path,
        url,
        &session.snapshot,
        exclude_schemas,
        &tables,
        writer,
        progress,
    )
    .await;
    let roles_sql = match roles_sql
        .await
        .unwrap_or_else(|e| Err(Error::failed(format!("pg_dumpall task: {e}"))))
    {
        Ok(sql) => sql,
        Err(e) => {
            let w = format!(
                "roles not captured as SQL (the manifest still lists them): {}",
                e.message
            );
            tracing::warn!("{w}");
            out.warnings.push(w);
            String::new()
        }
    };
    let (dump, wstats, scanned) = dumped?;
    let layout = dump_layout(&dump, &scanned);
    let stats = table_stats(&mut session, &tables, scanned, &mut out.warnings).await?;
    let consistent_at = session.consistent_at;
    let consistent_lsn = session.consistent_lsn.clone();
    let snapshot_xids = session.snapshot_xids.clone();
    let server_version = session.server_version.clone();
    let server_version_num = session.server_version_num;
    let bytea_output = session.bytea_output.clone();
    let lc_monetary = session.lc_monetary.clone();
    session.finish().await?;
    out.phases.push(Phase::since("dump", t));
    let figures = BackupDb {
        tables: stats.len() as u64,
        rows: stats.iter().map(|s| s.rows).sum(),
        bytes_plain: wstats.bytes_plain,
        bytes_stored: wstats.bytes_stored,
        blobs_new: wstats.blobs_new,
        blobs_reused: wstats.blobs_reused,
        server_version: server_version.clone(),
        pg_dump_version: pg_dump.version.clone(),
    };
    let manifest = DbManifest {
        database: url.database(),
        server_version,
        server_version_num,
        pg_dump_version: pg_dump.version.clone(),
        dump_format: "custom".into(),
        exclude_schemas: exclude_schemas.to_vec(),
        dump,
        tables: stats,
        roles,
        roles_sql,
        extensions,
        bytea_output: Some(bytea_output),
        lc_monetary: Some(lc_monetary),
        layout,
    };
    Ok(Dumped {
        manifest,
        consistent_at,
        consistent_lsn,
        snapshot_xids,
        figures,
        storage_rows,
    })
}

/// Where the dump's TOC ends and each data block lies in its chunks, from the archive scan;
/// `None` when the scan failed (the restore then takes the spool path, as for snapshots of
/// versions before the layout).
fn dump_layout(
    dump: &StreamRef,
    scanned: &std::result::Result<Scan, String>,
) -> Option<crate::repo::format::DumpLayout> {
    use crate::repo::format::{DataBlock, DumpLayout};
    let scan = scanned.as_ref().ok()?;
    let starts = dump.chunk_starts();
    let blocks = scan
        .blocks
        .iter()
        .map(|b| {
            Some(DataBlock {
                dump_id: b.dump_id,
                desc: b.desc.clone(),
                schema: b.schema.clone(),
                name: b.name.clone(),
                start: StreamRef::position(&starts, b.start)?,
                end: StreamRef::position(&starts, b.end)?,
            })
        })
        .collect::<Option<Vec<_>>>();
    if blocks.is_none() {
        tracing::warn!(
            "the archive scan's data blocks lie past the dump's end: no layout recorded"
        );
    }
    Some(DumpLayout {
        toc_bytes: scan.toc_end,
        blocks: blocks?,
    })
}

/// Each table's row count and checksum: from the dump stream where the scan read the table's
/// data whole, otherwise (materialized views, an archive the scan could not read) by SQL in
/// the snapshot, which is still open. Tables keep the snapshot's listing order.
async fn table_stats(
    session: &mut Session,
    tables: &[TableRef],
    scanned: std::result::Result<Scan, String>,
    warnings: &mut Vec<String>,
) -> Result<Vec<TableStat>> {
    let mut from_dump = HashMap::new();
    match scanned {
        Ok(scan) if scan.encoding.as_deref() == Some("UTF8") => {
            for t in scan.tables {
                from_dump.insert((t.schema.clone(), t.name.clone()), t);
            }
        }
        Ok(scan) => tracing::info!(
            "the dump's encoding is {}, not UTF8: table checksums are computed by SQL",
            scan.encoding.as_deref().unwrap_or("unknown")
        ),
        Err(e) => {
            let w = format!(
                "could not read the dump's table data as it streamed ({e}); table checksums are computed by a second scan"
            );
            tracing::warn!("{w}");
            warnings.push(w);
        }
    }
    // The stream's figures where it has them; the rest by SQL, in the same order.
    let mut rest = Vec::new();
    let mut from_stream = Vec::with_capacity(tables.len());
    for t in tables {
        let d = from_dump.remove(&(t.schema.clone(), t.name.clone()));
        if d.is_none() {
            rest.push(t.clone());
        }
        from_stream.push(d.map(|d| TableStat {
            schema: d.schema,
            name: d.name,
            kind: t.kind.clone(),
            rows: d.rows,
            checksum: d.checksum,
            method: METHOD_COPY.to_string(),
            copy: Some(d.copy_out),
        }));
    }
    let mut by_sql = session.table_stats(&rest).await?.into_iter();
    let out = from_stream
        .into_iter()
        .filter_map(|s| s.or_else(|| by_sql.next()))
        .collect();
    Ok(out)
}

/// Runs pg_dump in `snapshot`, streaming its output through the writer and the archive scan.
async fn run_pg_dump(
    pg_dump: &std::path::Path,
    url: &DbUrl,
    snapshot: &str,
    exclude_schemas: &[String],
    tables: &[TableRef],
    writer: &Arc<BlobWriter>,
    progress: &dyn ProgressSink,
) -> Result<(StreamRef, WriteStats, std::result::Result<Scan, String>)> {
    let password = url.password().unwrap_or_default();
    let mut cmd = Command::new(pg_dump);
    cmd.args(["--format=custom", "--compress=0"])
        .arg(format!("--snapshot={}", snapshot));
    for s in exclude_schemas {
        cmd.arg(format!("--exclude-schema={s}"));
    }
    url.configure(&mut cmd);
    // Timestamps in the COPY data in UTC, the zone backstop's own sessions read them in.
    cmd.env("PGTZ", "UTC");
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // In a process group of its own: a cancelled run stops pg_dump with whatever it started
    // (a wrapper's children), so the pipes close and nothing waits on them.
    let mut child = crate::child::Child::spawn(cmd)
        .map_err(|e| Error::failed(format!("cannot start {}: {e}", pg_dump.display())))?;
    let stdout = child
        .take_stdout()
        .ok_or_else(|| Error::failed("pg_dump has no stdout"))?;
    let mut stderr = child
        .take_stderr()
        .ok_or_else(|| Error::failed("pg_dump has no stderr"))?;
    let stderr_reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = (&mut stderr).take(256 * 1024).read_to_string(&mut text);
        text
    });
    // A 1 MiB pipe (Linux allows it unprivileged) lets pg_dump run ahead of the chunker's
    // read-and-hash pauses instead of blocking every 64 KiB; refused, the default stays.
    if let Err(e) = rustix::pipe::fcntl_setpipe_size(&stdout, 1 << 20) {
        tracing::debug!("could not enlarge pg_dump's pipe: {e}");
    }
    let estimate: i64 = tables.iter().map(|t| t.bytes).sum();
    let progress = progress.bar("backup", Some(estimate.max(0) as u64));
    let (stdout, scan) = archive::scan_alongside(stdout);
    let on_chunk = |n: u64| progress.inc(n);
    let dumped = writer
        .write_stream(stdout, "pg_dump output", &on_chunk)
        .await;
    progress.finish();
    if dumped.is_err() {
        child.stop();
    }
    let status = child
        .wait()
        .map_err(|e| Error::failed(format!("waiting for pg_dump: {e}")))?;
    let stderr_text = crate::util::scrub(&stderr_reader.join().unwrap_or_default(), &[&password]);
    if !status.success() && dumped.is_ok() {
        return Err(Error::failed(format!(
            "pg_dump of {} failed ({status}): {}",
            url.masked(),
            stderr_text.trim()
        )));
    }
    let (dump, wstats) = dumped?;
    let scanned = scan
        .join()
        .unwrap_or_else(|_| Err("the scanning thread panicked".into()));
    Ok((dump, wstats, scanned))
}

/// The run record of this operation.
impl From<&Outcome> for crate::record::BackupRecord {
    fn from(o: &Outcome) -> Self {
        crate::record::BackupRecord {
            kind: crate::record::Job::Backup,
            ok: o.ok(),
            snapshot_id: o.snapshot_id.clone(),
            policy: o.policy.clone(),
            run_id: o.times.run_id.clone(),
            consistent_at: o.consistent_at,
            started_at: o.times.started_at,
            finished_at: o.times.finished_at,
            duration_s: o.times.duration_s,
            db: o.db.clone(),
            storage: o.storage.clone(),
            files: o.files.clone(),
            git: o.git.clone(),
            phases: o.phases.clone(),
            warnings: o.warnings.clone(),
            blobs_reuploaded: o.blobs_reuploaded,
            tool_version: crate::record::TOOL_VERSION.to_string(),
            error: crate::record::error_text(&o.error),
        }
    }
}
