use super::{load_policy, print_json, result_of};
use crate::cli::StreamArgs;
use crate::error::{Error, Result};
use crate::ops::stream;
use crate::ops::Ctx;
use crate::policy::Policy;
use crate::record::{Job, StreamRecord};

pub async fn run(args: StreamArgs, dir: &super::Lookup<'_>, ctx: &Ctx) -> Result<()> {
    let policy = match load_policy(&args.policy, dir) {
        Ok(p) => p,
        Err(e) => return fail(&args, &args.policy, e),
    };
    let mut rec = StreamRecord {
        kind: Job::Stream,
        policy: policy.name.clone(),
        slot: policy
            .stream
            .as_ref()
            .map(|s| s.slot.clone())
            .unwrap_or_default(),
        ..StreamRecord::default()
    };
    let done = if args.setup {
        stream::setup(&policy).await.map(|s| {
            for (t, why) in &s.unprotected {
                eprintln!("unprotected: {t}: {why}");
            }
            eprintln!(
                "slot {} {}; publication holds {} tables, {} unprotected",
                rec.slot,
                if s.slot_created {
                    "created"
                } else {
                    "already exists"
                },
                s.tables.len(),
                s.unprotected.len()
            );
            rec.slot_created = Some(s.slot_created);
            rec.tables = s.tables;
            rec.unprotected_tables = s.unprotected.into_iter().map(|(t, _)| t).collect();
        })
    } else if args.drop {
        stream::drop_slot(&policy).await.map(|dropped| {
            eprintln!(
                "slot {} {}",
                rec.slot,
                if dropped { "dropped" } else { "did not exist" }
            );
        })
    } else if args.status {
        status(&policy, &mut rec).await
    } else {
        follow(&policy, ctx).await
    };
    if !args.status {
        // What the slot and the repository say afterwards, for the record.
        let _ = status(&policy, &mut rec).await;
    }
    rec.ok = done.is_ok();
    rec.error = done.as_ref().err().map(|e| e.message.clone());
    if args.json {
        print_json(&rec);
    }
    result_of(done.err())
}

fn fail(args: &StreamArgs, name: &str, e: Error) -> Result<()> {
    if args.json {
        print_json(&StreamRecord {
            kind: Job::Stream,
            policy: name.to_string(),
            error: Some(e.message.clone()),
            ..StreamRecord::default()
        });
    }
    Err(e)
}

async fn status(policy: &Policy, rec: &mut StreamRecord) -> Result<()> {
    let repo = crate::ops::open_repo(policy).await?;
    let s = stream::status(policy, &repo).await?;
    rec.exists = s.exists;
    rec.active = s.active;
    rec.confirmed_lsn = s.confirmed_lsn;
    rec.lag_bytes = s.lag_bytes;
    rec.last_segment_at = s.last_segment_at;
    rec.last_commit_at = s.last_commit_at;
    rec.segments = s.segments;
    rec.unprotected_tables = s.unprotected_tables;
    Ok(())
}

/// Follows the slot until a signal; events become log lines and notifications. A stop by
/// signal is the normal end (exit 0); any other end raises `stream_stopped`.
async fn follow(policy: &Policy, ctx: &Ctx) -> Result<()> {
    let repo = crate::ops::open_repo(policy).await?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let relay = {
        let policy = policy.clone();
        tokio::spawn(async move {
            while let Some(event) = rx.recv().await {
                crate::notify::stream_event(&policy, &event).await;
            }
        })
    };
    let ended = stream::follow(policy, &repo, ctx, &tx).await;
    drop(tx);
    let _ = relay.await;
    match ended {
        Err(e) if matches!(e.kind, crate::error::Kind::Interrupted(_)) => {
            eprintln!("stream of policy {} stopped: {}", policy.name, e.message);
            Ok(())
        }
        Err(e) => {
            crate::notify::stream_stopped(policy, &e.message).await;
            Err(e)
        }
        Ok(()) => Ok(()),
    }
}
