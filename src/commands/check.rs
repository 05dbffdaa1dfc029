use super::{open, record_run, result_of};
use crate::cli::CheckArgs;
use crate::error::{Error, Kind, Result};
use crate::ops::check::{self, Key, Outcome, Request};
use crate::ops::Ctx;
use crate::record::CheckRecord;
use crate::seal::Opener;
use std::path::Path;
use std::sync::Arc;

pub async fn run(args: CheckArgs, dir: Option<&Path>, ctx: &Ctx) -> Result<()> {
    let (repo, out) = match open(&args.policy, dir).await {
        Ok((policy, repo)) => {
            let key = args.identity.as_deref().map(Opener::from_file).transpose();
            match key {
                Ok(opener) => {
                    let key = opener.map(|o| Key {
                        opener: Arc::new(o),
                        dedup_key: policy.repository.dedup_key.clone(),
                    });
                    let req = Request {
                        key,
                        read_data: args.read_data,
                    };
                    {
                        let out = check::run(&repo, &req, ctx).await;
                        (Some(repo), out)
                    }
                }
                Err(e) => (
                    Some(repo),
                    Outcome::not_started(&policy.name, args.read_data, e),
                ),
            }
        }
        Err((name, e)) => (None, Outcome::not_started(&name, args.read_data, e)),
    };
    record_run(
        repo.as_ref(),
        "check",
        &out.times,
        &CheckRecord::from(&out),
        args.json,
    )
    .await;
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
