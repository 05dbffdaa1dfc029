use super::{human_bytes, job_finished, job_started, open, record_run, result_of};
use crate::cli::{self, BackupArgs};
use crate::error::Result;
use crate::ops::backup::{self, Only, Outcome, Request};
use crate::ops::Ctx;
use crate::record::BackupRecord;
use std::path::Path;

pub async fn run(args: BackupArgs, dir: Option<&Path>, ctx: &Ctx) -> Result<()> {
    let req = Request {
        only: args.only.map(|o| match o {
            cli::Only::Db => Only::Db,
            cli::Only::Storage => Only::Storage,
            cli::Only::Files => Only::Files,
            cli::Only::Git => Only::Git,
        }),
    };
    let (opened, out) = match open(&args.policy, dir).await {
        Ok((policy, repo)) => {
            let previous = job_started(&policy, &repo, "backup").await;
            let out = backup::run(&policy, &repo, &req, ctx).await;
            (Some((policy, repo, previous)), out)
        }
        Err((name, e)) => (None, Outcome::not_started(&name, e)),
    };
    let rec = BackupRecord::from(&out);
    let repo = opened.as_ref().map(|(_, r, _)| r);
    record_run(repo, "backup", &out.times, &rec, args.json).await;
    if let Some((policy, repo, previous)) = &opened {
        job_finished(
            policy,
            repo,
            "backup",
            &rec,
            *previous,
            args.metrics_file.as_deref(),
        )
        .await;
    }
    if let Some(id) = &out.snapshot_id {
        let db = out.db.clone().unwrap_or_default();
        eprintln!(
            "snapshot {id} committed in {:.1}s: {} tables, {} rows, dump {} ({} stored new; {} blobs new, {} reused)",
            out.times.duration_s,
            db.tables,
            db.rows,
            human_bytes(db.bytes_plain),
            human_bytes(db.bytes_stored),
            db.blobs_new,
            db.blobs_reused
        );
        if let Some(st) = &out.storage {
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
    result_of(out.error)
}
