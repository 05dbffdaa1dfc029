use super::{load_policy, open_repo, opener, record_run};
use crate::cli::{self, RestoreArgs};
use crate::documents;
use crate::error::{Error, Result};
use crate::record::{Phase, RestoreRecord, RestoreStorage};
use crate::repo::reader::BlobReader;
use crate::repo::Selector;
use crate::restore::{create_missing_roles, load_dump, prepare_target, DbTarget, LoadOptions};
use crate::seal::BlobIds;
use crate::source::pgtools::DbUrl;
use crate::util::{parse_time, secs};
use chrono::Utc;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

pub async fn run(args: RestoreArgs, dir: Option<&Path>) -> Result<()> {
    let started_at = Utc::now();
    let clock = Instant::now();
    let mut rec = RestoreRecord {
        kind: "restore",
        ok: false,
        snapshot_id: None,
        policy: args.policy.clone(),
        started_at,
        finished_at: started_at,
        duration_s: 0.0,
        target: None,
        db: None,
        storage: None,
        phases: Vec::new(),
        tool_version: env!("CARGO_PKG_VERSION"),
        error: None,
    };
    let mut repo_slot = None;
    let result = async {
        let policy = load_policy(&args.policy, dir)?;
        rec.policy = policy.name.clone();
        let selector = match (&args.before, args.snapshot.as_str()) {
            (Some(t), _) => Selector::Before(parse_time(t).map_err(Error::input)?),
            (None, "latest") => Selector::Latest,
            (None, id) => Selector::Id(id.to_string()),
        };
        let want_db = args.only != Some(cli::Only::Storage);
        let want_storage = args.only != Some(cli::Only::Db)
            && (args.storage_dir.is_some() || args.storage_to_source);
        let target = match (&args.db_url, want_db) {
            (Some(u), true) => Some(DbUrl::parse(u)?),
            (None, true) if args.only == Some(cli::Only::Db) || !want_storage => {
                return Err(Error::input(
                    "--db-url is required: name the database to restore into (created if missing; it must be empty unless --force)",
                ))
            }
            _ => None,
        };
        if args.only == Some(cli::Only::Storage) && !want_storage {
            return Err(Error::input(
                "--only storage needs a destination: --storage-dir DIR or --storage-to-source",
            ));
        }
        let opener = Arc::new(opener(args.identity.as_ref())?);
        let repo = repo_slot.insert(open_repo(&policy).await?);
        let meta = repo.find(&selector).await?;
        rec.snapshot_id = Some(meta.id.clone());
        let t = Instant::now();
        let manifest = repo.read_manifest(&meta, &opener).await?;
        rec.phases.push(Phase { name: "manifest".into(), duration_s: secs(t.elapsed()) });
        let ids = BlobIds::new(&repo.blob_id_key(
                policy.repository.dedup_key.as_deref(),
                &meta.encryption.recipients,
            )?);
        let ahead = policy.repository.connections;

        if let Some(url) = target {
            let db = manifest.database.as_ref().ok_or_else(|| {
                Error::input(format!("snapshot {} holds no database (restore it with --only storage)", meta.id))
            })?;
            rec.target = Some(url.masked());
            eprintln!(
                "restoring the database of snapshot {} (consistent at {}) into {}",
                meta.id,
                meta.consistent_at.to_rfc3339(),
                url.masked()
            );
            let target = DbTarget { url, force: args.force };
            let t = Instant::now();
            let created = prepare_target(&target).await?;
            let roles = create_missing_roles(&target.url, db).await?;
            rec.phases.push(Phase { name: "prepare".into(), duration_s: secs(t.elapsed()) });
            let t = Instant::now();
            let options = LoadOptions { stop_on_error: true, ahead };
            let loaded = load_dump(repo, &meta, db, opener.clone(), ids.clone(), &target, &options).await?;
            rec.phases.push(Phase { name: "load".into(), duration_s: secs(t.elapsed()) });
            rec.phases.extend(loaded.phases);
            let mut figures = loaded.figures;
            figures.database_created = created;
            figures.roles_created = roles;
            rec.db = Some(figures);
        } else if manifest.storage.is_some() && !want_storage {
            eprintln!("note: the snapshot's storage objects were not restored: pass --storage-dir DIR or --storage-to-source");
        }

        if want_storage {
            let objects = &manifest
                .storage
                .as_ref()
                .ok_or_else(|| Error::input(format!("snapshot {} holds no storage objects", meta.id)))?
                .objects;
            let t = Instant::now();
            let reader = Arc::new(BlobReader::new(repo.store.clone(), opener.clone(), ids.clone(), &meta));
            let source;
            let destination = match &args.storage_dir {
                Some(dir) => {
                    eprintln!("restoring {} storage objects of snapshot {} into {}", objects.len(), meta.id, dir.display());
                    documents::Target::Dir { root: dir.clone(), force: args.force }
                }
                None => {
                    let cfg = policy.storage.as_ref().ok_or_else(|| {
                        Error::input(format!("--storage-to-source: policy {} has no [storage] source", policy.name))
                    })?;
                    source = crate::source::storage::open(cfg).await?;
                    eprintln!("restoring {} storage objects of snapshot {} to {}", objects.len(), meta.id, source.describe());
                    documents::Target::Source(source.as_ref())
                }
            };
            let (n, bytes) = documents::restore(&reader, &meta, objects, destination, ahead).await?;
            rec.storage = Some(RestoreStorage { objects: n, bytes });
            rec.phases.push(Phase { name: "storage".into(), duration_s: secs(t.elapsed()) });
        }
        Ok(())
    }
    .await;
    rec.finished_at = Utc::now();
    rec.duration_s = secs(clock.elapsed());
    rec.ok = result.is_ok();
    if let Err(e) = &result {
        rec.error = Some(e.message.clone());
    }
    let id = crate::util::new_id(started_at);
    record_run(
        repo_slot.as_ref(),
        "restore",
        &id,
        started_at,
        &rec,
        args.json,
    )
    .await;
    if result.is_ok() {
        let db = rec.db.clone().unwrap_or_default();
        let st = rec.storage.clone().unwrap_or_default();
        eprintln!(
            "restored snapshot {} in {:.1}s: {} tables, {} rows; {} storage objects, {} bytes",
            rec.snapshot_id.as_deref().unwrap_or("?"),
            rec.duration_s,
            db.tables,
            db.rows,
            st.objects,
            st.bytes
        );
    }
    result
}
