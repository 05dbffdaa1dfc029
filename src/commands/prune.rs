use super::{result_of, run_job};
use crate::cli::PruneArgs;
use crate::error::Result;
use crate::jobs;
use crate::ops::prune::{Outcome, Request};
use crate::ops::Ctx;
use crate::record::Job;

pub async fn run(args: PruneArgs, dir: &super::Lookup<'_>, ctx: &Ctx) -> Result<()> {
    let req = Request {
        dry_run: args.dry_run,
        snapshots: args.snapshots.clone(),
        force: args.force,
    };
    let done = run_job(
        &args.policy,
        dir,
        Job::Prune,
        |_| Ok(jobs::Request::Prune(req)),
        ctx,
        args.metrics_file.as_deref(),
        args.json,
    );
    let jobs::Outcome::Prune(out) = done.await else {
        return result_of(None);
    };
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
