//! The restore operation: a snapshot's database into a target server, its storage objects into
//! a directory or back to the source, under a shared repository lock.
//!
//! The target database is created when missing and must be empty unless `force` (see
//! [`super::load::prepare_target`]). A restore that fails or is cancelled after loading began
//! says that the target may hold a partial restore and how to finish: run it again with
//! `--force`.

use super::documents;
use super::load::{create_missing_roles, load_dump, prepare_target, DbTarget, LoadOptions};
use super::{with_shared_lock, Ctx, Phase, RunTimes};
use crate::error::{Error, Kind, Result};
use crate::policy::Policy;
pub use crate::record::figures::RestoreStorage;
use crate::repo::reader::BlobReader;
use crate::repo::{Repo, Selector};
use crate::seal::Opener;
use crate::source::pgtools::DbUrl;
use secrecy::ExposeSecret;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

/// Where storage objects go.
#[derive(Debug, Clone)]
pub enum StorageTo {
    /// `DIR/<bucket>/<name>`.
    Dir(PathBuf),
    /// Back to the policy's storage source.
    Source,
}

pub struct Request {
    pub selector: Selector,
    pub opener: Arc<Opener>,
    /// The database to restore into; `None` restores no database.
    pub db_url: Option<DbUrl>,
    /// Where storage objects go; `None` restores none.
    pub storage: Option<StorageTo>,
    /// Where `[[files]]` go; `None` restores none.
    pub files: Option<super::files::Target>,
    /// Where `[[git]]` repositories are cloned; `None` restores none.
    pub git_dir: Option<PathBuf>,
    /// Replace a non-empty target database, and existing files.
    pub force: bool,
    /// Replace the policy's own source database when it is the (non-empty) target.
    pub force_source: bool,
    /// The request names one part (`--only`): no notes about the parts it leaves out.
    pub one_part: bool,
}

pub use super::load::RestoreDb;

#[derive(Debug)]
pub struct Outcome {
    pub times: RunTimes,
    pub policy: String,
    pub snapshot_id: Option<String>,
    /// The target database's URL, password masked.
    pub target: Option<String>,
    pub db: Option<RestoreDb>,
    pub storage: Option<RestoreStorage>,
    pub files: Option<super::files::Restored>,
    pub git: Option<super::git::Restored>,
    pub phases: Vec<Phase>,
    /// What the operator should know (parts of the snapshot that were not restored).
    pub notes: Vec<String>,
    pub error: Option<Error>,
    /// What the change stream's replay applied after the snapshot (`--before TIME`).
    pub stream: Option<super::replay::Replayed>,
    /// Loading into the target database began and has not finished.
    loading: bool,
}

impl Outcome {
    fn new(policy: &str) -> Outcome {
        Outcome {
            times: RunTimes::start(),
            policy: policy.to_string(),
            snapshot_id: None,
            target: None,
            db: None,
            storage: None,
            files: None,
            git: None,
            phases: Vec::new(),
            notes: Vec::new(),
            error: None,
            stream: None,
            loading: false,
        }
    }

    pub fn not_started(policy: &str, error: Error) -> Outcome {
        let mut out = Outcome::new(policy);
        out.error = Some(error);
        out.times.finish();
        out
    }
}

pub async fn run(policy: &Policy, repo: &Repo, req: &Request, ctx: &Ctx) -> Outcome {
    let ctx = ctx.for_run();
    let mut out = Outcome::new(&policy.name);
    let run_id = out.times.run_id.clone();
    let work = ctx.cancel.run(restore(policy, repo, req, &ctx, &mut out));
    let result = with_shared_lock(repo, "restore", &run_id, &ctx, work).await;
    out.times.finish();
    if let Err(mut e) = result {
        let stopped = matches!(
            e.kind,
            Kind::Interrupted(_) | Kind::Cancelled | Kind::LockLost
        );
        if let (Some(target), true) = (&out.target, out.loading && stopped) {
            e = e.context(format!(
                "restore into {target} did not finish; the target may hold a partial restore: run the restore again with --force to replace it"
            ));
        }
        out.error = Some(e);
    }
    out
}

async fn restore(
    policy: &Policy,
    repo: &Repo,
    req: &Request,
    ctx: &Ctx,
    out: &mut Outcome,
) -> Result<()> {
    let meta = repo.find(&req.selector).await?;
    out.snapshot_id = Some(meta.id.clone());
    // A restore to a moment replays the change stream after the snapshot: planned (and
    // refused when it cannot be exact) before anything is written.
    let stream_plan = match (&req.selector, &req.db_url) {
        (Selector::Before(until), Some(_)) if policy.stream.is_some() => {
            let segments = crate::repo::streams::list(repo.store.as_ref(), &policy.name).await?;
            let next = repo.next_after(&meta).await?;
            let chosen: Vec<crate::repo::streams::Segment> =
                super::replay::plan(&meta, &segments, *until, next.as_ref())?
                    .into_iter()
                    .cloned()
                    .collect();
            Some((*until, chosen))
        }
        _ => None,
    };
    let t = Instant::now();
    let manifest = repo.read_manifest(&meta, &req.opener).await?;
    out.phases.push(Phase::since("manifest", t));
    let ids = repo.snapshot_blob_ids(
        &manifest,
        &meta,
        policy
            .repository
            .dedup_key
            .as_ref()
            .map(|k| k.expose_secret()),
    )?;
    let ahead = policy.repository.connections;
    let snap = Snapshot {
        meta,
        manifest,
        ids,
        ahead,
        stream_plan,
    };
    match &req.db_url {
        Some(url) => restore_database(policy, repo, req, ctx, &snap, url, out).await?,
        None if snap.manifest.storage.is_some() && req.storage.is_none() && !req.one_part => {
            out.notes.push(
        "the snapshot's storage objects were not restored: pass --storage-dir DIR or --storage-to-source"
            .into(),
    );
        }
        None => {}
    }
    if let Some(to) = &req.storage {
        restore_storage(policy, repo, req, &snap, to, out).await?;
    }
    restore_files_and_git(repo, req, &snap, out).await
}

/// What every part of a restore reads: the snapshot, its manifest and how to check its blobs.
struct Snapshot {
    meta: crate::repo::format::Meta,
    manifest: crate::repo::format::Manifest,
    ids: crate::seal::BlobIds,
    /// Blobs fetched ahead.
    ahead: usize,
    /// With `--before` and a stream: the time, and the segments to replay up to it.
    stream_plan: Option<(
        chrono::DateTime<chrono::Utc>,
        Vec<crate::repo::streams::Segment>,
    )>,
}

/// The database part: the target prepared, the dump loaded, then (`--before` with a stream)
/// the change stream replayed onto it.
async fn restore_database(
    policy: &Policy,
    repo: &Repo,
    req: &Request,
    ctx: &Ctx,
    snap: &Snapshot,
    url: &DbUrl,
    out: &mut Outcome,
) -> Result<()> {
    let (meta, manifest, ids, ahead) = (&snap.meta, &snap.manifest, &snap.ids, snap.ahead);
    let db = manifest.database.as_ref().ok_or_else(|| {
        Error::input(format!(
            "snapshot {} holds no database (restore it with --only storage)",
            meta.id
        ))
    })?;
    tracing::info!(
        "restoring the database of snapshot {} (consistent at {}) into {}",
        meta.id,
        meta.consistent_at.to_rfc3339(),
        url.masked()
    );
    let is_source = policy
        .database
        .as_ref()
        .and_then(|d| DbUrl::parse(d.url.expose_secret()).ok())
        .is_some_and(|source| source.same_database(url));
    let target = DbTarget {
        url: url.clone(),
        force: req.force,
        is_source,
        force_source: req.force_source,
    };
    let t = Instant::now();
    out.target = Some(url.masked());
    let created = prepare_target(&target).await?;
    out.loading = true;
    let roles = create_missing_roles(&target.url, db).await?;
    out.phases.push(Phase::since("prepare", t));
    let t = Instant::now();
    let options = LoadOptions {
        stop_on_error: true,
        ahead,
        progress: ctx.progress.as_ref(),
        restore: policy.restore.clone(),
    };
    let opener = req.opener.clone();
    let loaded = load_dump(repo, meta, db, opener, ids.clone(), &target, &options).await?;
    out.phases.push(Phase::since("load", t));
    out.phases.extend(loaded.phases);
    let mut figures = loaded.figures;
    figures.database_created = created;
    figures.roles_created = roles;
    out.db = Some(figures);
    if let Some((until, segments)) = &snap.stream_plan {
        let t = Instant::now();
        let chosen: Vec<&crate::repo::streams::Segment> = segments.iter().collect();
        let dedup = policy
            .repository
            .dedup_key
            .as_ref()
            .map(|k| k.expose_secret());
        let from = super::replay::Reading {
            repo,
            opener: req.opener.clone(),
            dedup_key: dedup,
            ahead,
        };
        let end = super::replay::Until::Time(*until);
        let replayed = super::replay::replay(&from, meta, &chosen, end, url).await?;
        tracing::info!(
            "replayed {} transactions of {} segments, to {}",
            replayed.transactions,
            replayed.segments,
            replayed
                .last_commit_at
                .map_or("the snapshot".into(), |t| t.to_rfc3339())
        );
        out.phases.push(Phase::since("stream", t));
        out.stream = Some(replayed);
    }
    out.loading = false;
    Ok(())
}

/// The storage part: into a directory or back to the source; with a replayed stream, the
/// bucket as it was at the replay's end.
async fn restore_storage(
    policy: &Policy,
    repo: &Repo,
    req: &Request,
    snap: &Snapshot,
    to: &StorageTo,
    out: &mut Outcome,
) -> Result<()> {
    let (meta, manifest, ids, ahead) = (&snap.meta, &snap.manifest, &snap.ids, snap.ahead);
    let snapshot_objects = &manifest
        .storage
        .as_ref()
        .ok_or_else(|| Error::input(format!("snapshot {} holds no storage objects", meta.id)))?
        .objects;
    let t = Instant::now();
    let mut refs = meta.blobs.clone();
    let objects = match out.stream.as_ref() {
        Some(replayed) => {
            refs.extend(replayed.blobs.iter().cloned());
            let target = req.db_url.as_ref().filter(|_| out.db.is_some());
            let (objects, notes) = objects_at(snapshot_objects, replayed, target).await;
            out.notes.extend(notes);
            objects
        }
        None => {
            if policy.stream.is_some() && matches!(req.selector, Selector::Before(_)) {
                out.notes.push(format!(
                    "the storage objects are snapshot {}'s: the change stream's documents are replayed with the database (restore the database in the same run)",
                    meta.id
                ));
            }
            snapshot_objects.clone()
        }
    };
    let objects = &objects;
    let reader = Arc::new(BlobReader::from_refs(
        repo.store.clone(),
        req.opener.clone(),
        ids.clone(),
        refs,
        &meta.id,
    ));
    let source;
    let destination = match to {
        StorageTo::Dir(dir) => {
            tracing::info!(
                "restoring {} storage objects of snapshot {} into {}",
                objects.len(),
                meta.id,
                dir.display()
            );
            documents::Target::Dir {
                root: dir.clone(),
                force: req.force,
            }
        }
        StorageTo::Source => {
            policy.require("storage.")?;
            let cfg = policy.storage.as_ref().ok_or_else(|| {
                Error::input(format!(
                    "--storage-to-source: policy {} has no [storage] source",
                    policy.name
                ))
            })?;
            source = crate::source::storage::open(cfg).await?;
            tracing::info!(
                "restoring {} storage objects of snapshot {} to {}",
                objects.len(),
                meta.id,
                source.describe()
            );
            documents::Target::Source(source.as_ref())
        }
    };
    let done = documents::restore(&reader, objects, destination, ahead).await?;
    out.phases.push(Phase::since("storage", t));
    if let (false, StorageTo::Dir(dir)) = (done.mapped.is_empty(), to) {
        out.notes.push(format!(
            "{} object names are not safe file paths and were written under mapped names, listed in {}",
            done.mapped.len(),
            dir.join(documents::NAMES_FILE).display()
        ));
    }
    out.storage = Some(RestoreStorage {
        objects: done.objects,
        bytes: done.bytes,
        names_mapped: done.mapped.len() as u64,
        failed: done.failed.clone(),
    });
    if !done.failed.is_empty() {
        return Err(Error::failed(format!(
            "{} of {} storage objects could not be restored (the others were): {}",
            done.failed.len(),
            objects.len(),
            done.failed.join("; ")
        )));
    }
    Ok(())
}

/// The files and git parts, each only where asked for (and named when left out).
async fn restore_files_and_git(
    repo: &Repo,
    req: &Request,
    snap: &Snapshot,
    out: &mut Outcome,
) -> Result<()> {
    let (meta, manifest, ids, ahead) = (&snap.meta, &snap.manifest, &snap.ids, snap.ahead);
    let reader = Arc::new(BlobReader::new(
        repo.store.clone(),
        req.opener.clone(),
        ids.clone(),
        meta,
    ));
    match (&req.files, &manifest.files) {
        (Some(target), Some(fm)) => {
            let t = Instant::now();
            let done = super::files::restore(&reader, fm, target, ahead).await?;
            out.phases.push(Phase::since("files", t));
            out.files = Some(done.clone());
            if !done.failed.is_empty() {
                return Err(Error::failed(format!(
                    "{} files could not be restored (the others were): {}",
                    done.failed.len(),
                    done.failed.join("; ")
                )));
            }
        }
        (Some(_), None) => {
            return Err(Error::input(format!(
                "snapshot {} holds no [[files]]",
                meta.id
            )))
        }
        (None, Some(_)) if !req.one_part => out.notes.push(
            "the snapshot's files were not restored: pass --files-dir DIR or --files-to-source"
                .into(),
        ),
        (None, _) => {}
    }
    match (&req.git_dir, &manifest.git) {
        (Some(dir), Some(gm)) => {
            let t = Instant::now();
            out.git = Some(super::git::restore(&reader, gm, dir, req.force, ahead).await?);
            out.phases.push(Phase::since("git", t));
        }
        (Some(_), None) => {
            return Err(Error::input(format!(
                "snapshot {} holds no [[git]] repositories",
                meta.id
            )))
        }
        (None, Some(_)) if !req.one_part => out
            .notes
            .push("the snapshot's git repositories were not restored: pass --git-dir DIR".into()),
        (None, _) => {}
    }
    Ok(())
}

/// The bucket as it was at the replay's end: the snapshot's objects, replaced or joined by the
/// documents of the replayed transactions (in commit order), and, when the database was
/// restored in the same run, only the objects its restored `storage.objects` rows name (a
/// deleted row means the object is gone at that point). Documents that could not be fetched
/// when sealed are named in the notes.
async fn objects_at(
    snapshot: &[crate::repo::format::StorageObject],
    replayed: &super::replay::Replayed,
    db: Option<&DbUrl>,
) -> (Vec<crate::repo::format::StorageObject>, Vec<String>) {
    let mut notes = Vec::new();
    let mut by_name: std::collections::BTreeMap<(String, String), _> = snapshot
        .iter()
        .map(|o| ((o.bucket.clone(), o.name.clone()), o.clone()))
        .collect();
    for d in &replayed.documents {
        by_name.insert((d.bucket.clone(), d.name.clone()), d.clone());
    }
    if !replayed.documents.is_empty() {
        notes.push(format!(
            "{} storage object versions came from the change stream",
            replayed.documents.len()
        ));
    }
    for failed in &replayed.documents_failed {
        notes.push(format!(
            "a storage object of the change stream could not be fetched when sealed: {failed}"
        ));
    }
    let rows = match db {
        Some(url) => rows_of_storage_objects(url).await,
        None => None,
    };
    if let Some(rows) = rows {
        let before = by_name.len();
        by_name.retain(|k, _| rows.contains(k));
        if by_name.len() < before {
            notes.push(format!(
                "{} storage objects whose rows no longer existed at that moment were left out",
                before - by_name.len()
            ));
        }
    }
    (by_name.into_values().collect(), notes)
}

/// The (bucket, name) of every `storage.objects` row of the restored database; `None` where
/// there is no such table (not a Supabase-shaped database).
async fn rows_of_storage_objects(
    url: &DbUrl,
) -> Option<std::collections::HashSet<(String, String)>> {
    let mut conn = crate::source::postgres::connect(url).await.ok()?;
    let rows: Vec<(String, String)> =
        sqlx::query_as("SELECT bucket_id::text, name::text FROM storage.objects")
            .fetch_all(&mut conn)
            .await
            .ok()?;
    Some(rows.into_iter().collect())
}

/// The run record of this operation.
impl From<&Outcome> for crate::record::RestoreRecord {
    fn from(o: &Outcome) -> Self {
        crate::record::RestoreRecord {
            kind: crate::record::Job::Restore,
            ok: o.error.is_none(),
            snapshot_id: o.snapshot_id.clone(),
            policy: o.policy.clone(),
            run_id: o.times.run_id.clone(),
            started_at: o.times.started_at,
            finished_at: o.times.finished_at,
            duration_s: o.times.duration_s,
            target: o.target.clone(),
            db: o.db.clone(),
            storage: o.storage.clone(),
            files: o.files.clone(),
            git: o.git.clone(),
            stream: o.stream.as_ref().map(|r| crate::record::ReplayFigures {
                segments: r.segments,
                transactions: r.transactions,
                replayed_to_lsn: r.replayed_to_lsn.clone(),
                last_commit_at: r.last_commit_at,
            }),
            phases: o.phases.clone(),
            tool_version: crate::record::TOOL_VERSION.to_string(),
            error: crate::record::error_text(&o.error),
        }
    }
}
