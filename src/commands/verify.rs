use super::{opener, result_of, run_job};
use crate::cli::VerifyArgs;
use crate::error::{Error, Kind, Result};
use crate::jobs;
use crate::ops::verify::Request;
use crate::ops::Ctx;
use crate::policy::Policy;
use crate::record::Job;
use crate::repo::Selector;
use std::sync::Arc;

fn request(args: &VerifyArgs, policy: &Policy) -> Result<Request> {
    let selector = match args.snapshot.as_str() {
        "latest" => Selector::Latest,
        id => Selector::Id(id.to_string()),
    };
    let identity = args.identity.clone().or(policy.verify.identity.clone());
    let opener = Arc::new(opener(identity.as_ref())?);
    let mut req = Request::for_policy(
        policy,
        selector,
        opener,
        args.read_data.as_deref(),
        args.scratch_url.as_deref(),
    )?;
    req.keep = args.keep;
    Ok(req)
}

pub async fn run(args: VerifyArgs, dir: &super::Lookup<'_>, ctx: &Ctx) -> Result<()> {
    let done = run_job(
        &args.policy,
        dir,
        Job::Verify,
        |policy| request(&args, policy).map(jobs::Request::Verify),
        ctx,
        args.metrics_file.as_deref(),
        args.json,
    );
    let jobs::Outcome::Verify(out) = done.await else {
        return result_of(None);
    };
    if out.error.is_some() {
        return result_of(out.error);
    }
    let f = &out.findings;
    f.problems.iter().for_each(|p| eprintln!("problem: {p}"));
    f.expected_failures
        .iter()
        .for_each(|p| eprintln!("expected: {p}"));
    if !f.names_mapped.is_empty() {
        eprintln!(
            "note: {} object names are not safe file paths; --storage-dir writes them under mapped names (listed in restore-names.tsv), --storage-to-source exactly: {}",
            f.names_mapped.len(),
            f.names_mapped.join(", ")
        );
    }
    let summary = format!(
        "snapshot {}: {} tables compared, {} objects checked ({} read), {} queries; restore {}",
        out.snapshot_id.as_deref().unwrap_or("?"),
        f.tables.len(),
        f.objects_checked,
        f.objects_read,
        f.queries.len(),
        f.restore_s
            .map(|r| format!("{r:.1}s (RTO {:.0}s)", out.rto_s))
            .unwrap_or_else(|| "not measured".into())
    );
    if out.ok() {
        eprintln!("verified {summary}");
        return Ok(());
    }
    let problems = f.problems.len();
    let message = format!("verification failed for {summary}: {problems} problems");
    Err(Error::new(Kind::Verification, message))
}
