use super::{load_policy, open_repo, record_run};
use crate::cli::CheckArgs;
use crate::error::{Error, Kind, Result};
use crate::record::CheckRecord;
use crate::seal::Opener;
use crate::util::secs;
use chrono::Utc;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

pub async fn run(args: CheckArgs, dir: Option<&Path>) -> Result<()> {
    let started_at = Utc::now();
    let clock = Instant::now();
    let mut rec = CheckRecord {
        kind: "check",
        ok: false,
        policy: args.policy.clone(),
        started_at,
        finished_at: started_at,
        duration_s: 0.0,
        snapshots_checked: 0,
        blobs_checked: 0,
        bytes_read: 0,
        read_data: args.read_data,
        decrypted: args.identity.is_some(),
        damaged: Vec::new(),
        tool_version: env!("CARGO_PKG_VERSION"),
        error: None,
    };
    let mut repo_slot = None;
    let result = async {
        let policy = load_policy(&args.policy, dir)?;
        rec.policy = policy.name.clone();
        let repo = repo_slot.insert(open_repo(&policy).await?);
        let key = match &args.identity {
            Some(path) => Some(crate::check::Key {
                opener: Arc::new(Opener::from_file(path)?),
                dedup_key: policy.repository.dedup_key.clone(),
            }),
            None => None,
        };
        crate::check::run(repo, key, args.read_data, &mut rec).await
    }
    .await;
    rec.finished_at = Utc::now();
    rec.duration_s = secs(clock.elapsed());
    if let Err(e) = &result {
        rec.error = Some(e.message.clone());
    }
    rec.ok = result.is_ok() && rec.damaged.is_empty();
    let id = crate::util::new_id(started_at);
    record_run(
        repo_slot.as_ref(),
        "check",
        &id,
        started_at,
        &rec,
        args.json,
    )
    .await;
    result?;
    for d in &rec.damaged {
        eprintln!(
            "damaged: {}: {} (snapshots: {})",
            d.blob,
            d.problem,
            d.snapshots.join(", ")
        );
    }
    if rec.ok {
        eprintln!(
            "repository intact: {} snapshots, {} blobs checked, {} bytes read",
            rec.snapshots_checked, rec.blobs_checked, rec.bytes_read
        );
        Ok(())
    } else {
        Err(Error::new(
            Kind::Verification,
            format!(
                "{} damaged or missing objects in the repository",
                rec.damaged.len()
            ),
        ))
    }
}
