use super::{job_finished, job_started, open, record_run, result_of};
use crate::cli::PruneArgs;
use crate::error::Result;
use crate::ops::prune::{self, Outcome, Request};
use crate::ops::Ctx;
use crate::record::PruneRecord;
use std::path::Path;

pub async fn run(args: PruneArgs, dir: Option<&Path>, ctx: &Ctx) -> Result<()> {
    let req = Request {
        dry_run: args.dry_run,
        snapshots: args.snapshots.clone(),
        force: args.force,
    };
    let (opened, out) = match open(&args.policy, dir).await {
        Ok((policy, repo)) => {
            let previous = job_started(&policy, &repo, "prune").await;
            let out = prune::run(&policy, &repo, &req, ctx).await;
            (Some((policy, repo, previous)), out)
        }
        Err((name, e)) => (None, Outcome::not_started(&name, args.dry_run, e)),
    };
    let rec = PruneRecord::from(&out);
    let repo = opened.as_ref().map(|(_, r, _)| r);
    record_run(repo, "prune", &out.times, &rec, args.json).await;
    if let Some((policy, repo, previous)) = &opened {
        job_finished(
            policy,
            repo,
            "prune",
            &rec,
            *previous,
            args.metrics_file.as_deref(),
        )
        .await;
    }
    print_plan(&out);
    result_of(out.error)
}

/// The plan on stderr: every snapshot, kept (with why) or removed, then what is freed.
fn print_plan(out: &Outcome) {
    if out.kept.is_empty() && out.removed.is_empty() && out.error.is_some() {
        return;
    }
    out.notes.iter().for_each(|n| eprintln!("note: {n}"));
    for (id, reasons) in &out.kept {
        eprintln!("keep    {id}  ({})", reasons.join(", "));
    }
    for id in &out.removed {
        eprintln!("remove  {id}");
    }
    let mib = |b: u64| b as f64 / 1_048_576.0;
    if out.dry_run {
        eprintln!(
            "dry run: would remove {} snapshots and {} unreferenced blobs ({:.1} MiB); nothing was deleted",
            out.removed.len(),
            out.blobs_unreferenced,
            mib(out.bytes_unreferenced)
        );
        return;
    }
    for (key, until) in &out.locked_until {
        eprintln!("locked  {key}  until {}", until.to_rfc3339());
    }
    if out.error.is_none() {
        eprintln!(
            "pruned: {} snapshots removed, {} blobs deleted ({:.1} MiB freed), {} manifests deleted, {} objects still locked",
            out.removed.len(),
            out.blobs_deleted,
            mib(out.bytes_freed),
            out.manifests_deleted,
            out.locked_until.len()
        );
    }
}
