use super::{interrupted, load_policy, open_repo, opener, record_run};
use crate::cli::VerifyArgs;
use crate::error::{Error, Kind, Result};
use crate::expect::{parse_expect, parse_share};
use crate::record::{Phase, VerifyRecord};
use crate::repo::lock::{self, RunLock};
use crate::repo::Selector;
use crate::seal::BlobIds;
use crate::source::pgtools::DbUrl;
use crate::util::secs;
use crate::verify::{scratch_database, scratch_name, Findings, Options};
use chrono::Utc;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

pub async fn run(args: VerifyArgs, dir: Option<&Path>) -> Result<()> {
    let started_at = Utc::now();
    let clock = Instant::now();
    let run_id = crate::util::new_id(started_at);
    let mut rec = VerifyRecord {
        kind: "verify",
        ok: false,
        snapshot_id: None,
        policy: args.policy.clone(),
        started_at,
        finished_at: started_at,
        duration_s: 0.0,
        restore_s: None,
        rto_s: 0.0,
        rto_met: None,
        tables: Vec::new(),
        objects_checked: 0,
        objects_read: 0,
        objects_failed: 0,
        queries: Vec::new(),
        problems: Vec::new(),
        missing_extensions: Vec::new(),
        expected_failures: Vec::new(),
        phases: Vec::new(),
        scratch_database: None,
        kept: args.keep,
        tool_version: env!("CARGO_PKG_VERSION"),
        error: None,
    };
    let mut repo_slot = None;
    let mut scratch: Option<DbUrl> = None;
    let mut found = Findings::default();
    let result = async {
        let policy = load_policy(&args.policy, dir)?;
        rec.policy = policy.name.clone();
        rec.rto_s = policy.objectives.rto.as_secs_f64();
        let share_text = args.read_data.clone().or(policy.verify.read_data.clone()).unwrap_or_else(|| "10%".into());
        let read_share = parse_share(&share_text).map_err(Error::input)?;
        let scratch_text = args.scratch_url.clone().or(policy.verify.scratch_url.clone());
        scratch = scratch_text.as_deref().map(DbUrl::parse).transpose()?;
        let queries = policy
            .verify
            .queries
            .iter()
            .map(|(sql, e)| parse_expect(e).map(|e| (sql.clone(), e)).map_err(Error::input))
            .collect::<Result<Vec<_>>>()?;
        let opener = Arc::new(opener(args.identity.as_ref())?);
        let repo = repo_slot.insert(open_repo(&policy).await?);
        let lock = RunLock::acquire(repo.store.clone(), &policy.name, "verify", &run_id, lock::TTL).await?;
        let result = async {
            let selector = if args.snapshot == "latest" { Selector::Latest } else { Selector::Id(args.snapshot.clone()) };
            let meta = repo.find(&selector).await?;
            rec.snapshot_id = Some(meta.id.clone());
            let t = Instant::now();
            let manifest = match repo.read_manifest(&meta, &opener).await {
                Ok(m) => m,
                Err(e) if e.message.contains("matches none of the recipients") => return Err(e),
                Err(e) => {
                    found.problems.push(e.message);
                    return Ok(());
                }
            };
            found.phases.push(Phase { name: "manifest".into(), duration_s: secs(t.elapsed()) });
            let name = scratch_name(&meta.id);
            if manifest.database.is_some() && scratch.is_some() {
                rec.scratch_database = Some(name.clone());
            }
            let options = Options {
                scratch: scratch.clone(),
                scratch_database: name,
                read_share,
                allow_missing_extensions: policy.verify.allow_missing_extensions.clone(),
                queries,
                ahead: policy.repository.connections,
            };
            let ids = BlobIds::new(&repo.blob_id_key(
                policy.repository.dedup_key.as_deref(),
                &meta.encryption.recipients,
            )?);
            eprintln!("verifying snapshot {} of policy {}", meta.id, policy.name);
            tokio::select! {
                r = crate::verify::run(repo, &meta, &manifest, opener.clone(), ids, &options, &mut found) => r,
                _ = interrupted() => Err(Error::failed("verify was interrupted")),
            }
        }
        .await;
        lock.release().await;
        result
    }
    .await;

    // The temporary database goes, whatever happened, unless --keep.
    if let (Some(name), Some(url)) = (&rec.scratch_database, &scratch) {
        if args.keep {
            eprintln!("kept the temporary database {name} on {}", url.masked());
        } else if let Err(e) = scratch_database(url, name, false).await {
            tracing::warn!(
                "could not drop the temporary database {name}: {}",
                e.message
            );
            found.problems.push(format!(
                "the temporary database {name} could not be dropped: {}",
                e.message
            ));
        }
    }
    rec.restore_s = found.restore_s;
    rec.rto_met = found.restore_s.map(|r| r <= rec.rto_s);
    if rec.rto_met == Some(false) {
        found.problems.push(format!(
            "the restore took {:.1}s, over the RTO of {:.0}s",
            rec.restore_s.unwrap_or(0.0),
            rec.rto_s
        ));
    }
    rec.tables = found.tables;
    rec.objects_checked = found.objects_checked;
    rec.objects_read = found.objects_read;
    rec.objects_failed = found.objects_failed;
    rec.queries = found.queries;
    rec.problems = found.problems;
    rec.missing_extensions = found.missing_extensions;
    rec.expected_failures = found.expected_failures;
    rec.phases = found.phases;
    rec.finished_at = Utc::now();
    rec.duration_s = secs(clock.elapsed());
    if let Err(e) = &result {
        rec.error = Some(e.message.clone());
    }
    rec.ok = result.is_ok() && rec.problems.is_empty();
    record_run(
        repo_slot.as_ref(),
        "verify",
        &run_id,
        started_at,
        &rec,
        args.json,
    )
    .await;
    result?;
    for p in &rec.problems {
        eprintln!("problem: {p}");
    }
    for p in &rec.expected_failures {
        eprintln!("expected: {p}");
    }
    let summary = format!(
        "snapshot {}: {} tables compared, {} objects checked ({} read), {} queries; restore {}",
        rec.snapshot_id.as_deref().unwrap_or("?"),
        rec.tables.len(),
        rec.objects_checked,
        rec.objects_read,
        rec.queries.len(),
        rec.restore_s
            .map(|r| format!("{r:.1}s (RTO {:.0}s)", rec.rto_s))
            .unwrap_or_else(|| "not measured".into())
    );
    if rec.ok {
        eprintln!("verified {summary}");
        Ok(())
    } else {
        Err(Error::new(
            Kind::Verification,
            format!(
                "verification failed for {summary}: {} problems",
                rec.problems.len()
            ),
        ))
    }
}
