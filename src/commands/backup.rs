use super::{human_bytes, result_of, run_job};
use crate::cli::{self, BackupArgs};
use crate::error::Result;
use crate::jobs::{Outcome, Request};
use crate::ops::backup::{self, Only};
use crate::ops::Ctx;
use crate::record::Job;

pub async fn run(args: BackupArgs, dir: &super::Lookup<'_>, ctx: &Ctx) -> Result<()> {
    let req = backup::Request {
        only: args.only.map(|o| match o {
            cli::Only::Db => Only::Db,
            cli::Only::Storage => Only::Storage,
            cli::Only::Files => Only::Files,
            cli::Only::Git => Only::Git,
        }),
    };
    let done = run_job(
        &args.policy,
        dir,
        Job::Backup,
        |_| Ok(Request::Backup(req)),
        ctx,
        args.metrics_file.as_deref(),
        args.json,
    );
    let Outcome::Backup(out) = done.await else {
        return result_of(None);
    };
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
