use super::{human_bytes, load_policy, open_repo, record_run};
use crate::backup::Only;
use crate::cli::{self, BackupArgs};
use crate::error::Result;
use crate::record::BackupRecord;
use crate::repo::lock::{self, RunLock};
use crate::util::secs;
use chrono::Utc;
use std::path::Path;
use std::time::Instant;

pub async fn run(args: BackupArgs, dir: Option<&Path>) -> Result<()> {
    let started_at = Utc::now();
    let clock = Instant::now();
    let mut rec = BackupRecord {
        kind: "backup",
        ok: false,
        snapshot_id: None,
        policy: args.policy.clone(),
        consistent_at: None,
        started_at,
        finished_at: started_at,
        duration_s: 0.0,
        db: None,
        storage: None,
        phases: Vec::new(),
        warnings: Vec::new(),
        tool_version: env!("CARGO_PKG_VERSION"),
        error: None,
    };
    let only = args.only.map(|o| match o {
        cli::Only::Db => Only::Db,
        cli::Only::Storage => Only::Storage,
    });
    let mut repo = None;
    let run_id = crate::util::new_id(started_at);
    let result = async {
        let policy = load_policy(&args.policy, dir)?;
        rec.policy = policy.name.clone();
        let r = repo.insert(open_repo(&policy).await?);
        let lock =
            RunLock::acquire(r.store.clone(), &policy.name, "backup", &run_id, lock::TTL).await?;
        rec.snapshot_id = Some(run_id.clone());
        let result = crate::backup::run(&policy, r, only, &mut rec).await;
        lock.release().await;
        result
    }
    .await;
    rec.finished_at = Utc::now();
    rec.duration_s = secs(clock.elapsed());
    rec.ok = result.is_ok();
    if let Err(e) = &result {
        rec.error = Some(e.message.clone());
        // A failed run leaves no snapshot: the id it would have had is not reported as one.
        rec.snapshot_id = None;
    }
    record_run(
        repo.as_ref(),
        "backup",
        &run_id,
        started_at,
        &rec,
        args.json,
    )
    .await;
    if result.is_ok() {
        let db = rec.db.clone().unwrap_or_default();
        eprintln!(
            "snapshot {} committed in {:.1}s: {} tables, {} rows, dump {} ({} stored new; {} blobs new, {} reused)",
            rec.snapshot_id.as_deref().unwrap_or("?"),
            rec.duration_s,
            db.tables,
            db.rows,
            human_bytes(db.bytes_plain),
            human_bytes(db.bytes_stored),
            db.blobs_new,
            db.blobs_reused
        );
        if let Some(st) = &rec.storage {
            eprintln!(
                "storage: {} objects, {} ({} stored new; {} objects new, {} unchanged)",
                st.objects,
                human_bytes(st.bytes_plain),
                human_bytes(st.bytes_stored),
                st.objects_new,
                st.objects_reused
            );
        }
    }
    result
}
