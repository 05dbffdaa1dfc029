use super::{result_of, run_job};
use crate::cli::CheckArgs;
use crate::error::{Error, Kind, Result};
use crate::jobs;
use crate::ops::check::{Key, Request};
use crate::ops::Ctx;
use crate::record::Job;
use crate::seal::Opener;
use std::sync::Arc;

pub async fn run(args: CheckArgs, dir: &super::Lookup<'_>, ctx: &Ctx) -> Result<()> {
    let request = |policy: &crate::policy::Policy| {
        let opener = args
            .identity
            .as_deref()
            .map(Opener::from_file)
            .transpose()?;
        Ok(jobs::Request::Check(Request {
            key: opener.map(|o| Key {
                opener: Arc::new(o),
                dedup_key: policy.repository.dedup_key.clone(),
            }),
            read_data: args.read_data,
        }))
    };
    let done = run_job(&args.policy, dir, Job::Check, request, ctx, None, args.json);
    let jobs::Outcome::Check(out) = done.await else {
        return result_of(None);
    };
    if out.error.is_some() {
        return result_of(out.error);
    }
    for d in &out.damaged {
        let snapshots = d.snapshots.join(", ");
        eprintln!(
            "damaged: {}: {} (snapshots: {snapshots})",
            d.blob, d.problem
        );
    }
    if out.ok() {
        eprintln!(
            "repository intact: {} snapshots, {} blobs checked, {} bytes read",
            out.snapshots_checked, out.blobs_checked, out.bytes_read
        );
        return Ok(());
    }
    let message = format!(
        "{} damaged or missing objects in the repository",
        out.damaged.len()
    );
    Err(Error::new(Kind::Verification, message))
}
