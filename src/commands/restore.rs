use super::{open, opener, record_run, result_of};
use crate::cli::{Only, RestoreArgs};
use crate::error::{Error, Result};
use crate::ops::restore::{self, Outcome, Request, StorageTo};
use crate::ops::Ctx;
use crate::record::RestoreRecord;
use crate::repo::Selector;
use crate::source::pgtools::DbUrl;
use crate::util::parse_time;
use std::path::Path;
use std::sync::Arc;

/// Which parts go where, from the flags; the combinations that make no sense are refused.
fn request(args: &RestoreArgs) -> Result<Request> {
    let selector = match (&args.before, args.snapshot.as_str()) {
        (Some(t), _) => Selector::Before(parse_time(t).map_err(Error::input)?),
        (None, "latest") => Selector::Latest,
        (None, id) => Selector::Id(id.to_string()),
    };
    let storage = match (&args.storage_dir, args.storage_to_source) {
        _ if args.only == Some(Only::Db) => None,
        (Some(dir), _) => Some(StorageTo::Dir(dir.clone())),
        (None, true) => Some(StorageTo::Source),
        (None, false) if args.only == Some(Only::Storage) => {
            return Err(Error::input(
                "--only storage needs a destination: --storage-dir DIR or --storage-to-source",
            ))
        }
        (None, false) => None,
    };
    let db_url = match (&args.db_url, args.only) {
        (_, Some(Only::Storage)) => None,
        (Some(u), _) => Some(DbUrl::parse(u)?),
        (None, Some(Only::Db)) | (None, None) if storage.is_none() || args.only.is_some() => {
            return Err(Error::input(
                "--db-url is required: name the database to restore into (created if missing; it must be empty unless --force)",
            ))
        }
        (None, _) => None,
    };
    let opener = Arc::new(opener(args.identity.as_ref())?);
    Ok(Request {
        selector,
        opener,
        db_url,
        storage,
        force: args.force,
    })
}

pub async fn run(args: RestoreArgs, dir: Option<&Path>, ctx: &Ctx) -> Result<()> {
    // The flags are judged before the repository is opened.
    let (repo, out) = match request(&args) {
        Err(e) => (None, Outcome::not_started(&args.policy, e)),
        Ok(req) => match open(&args.policy, dir).await {
            Ok((policy, repo)) => {
                let out = restore::run(&policy, &repo, &req, ctx).await;
                (Some(repo), out)
            }
            Err((name, e)) => (None, Outcome::not_started(&name, e)),
        },
    };
    record_run(
        repo.as_ref(),
        "restore",
        &out.times,
        &RestoreRecord::from(&out),
        args.json,
    )
    .await;
    for note in &out.notes {
        eprintln!("note: {note}");
    }
    if out.error.is_none() {
        let db = out.db.clone().unwrap_or_default();
        let st = out.storage.clone().unwrap_or_default();
        eprintln!(
            "restored snapshot {} in {:.1}s: {} tables, {} rows; {} storage objects, {} bytes",
            out.snapshot_id.as_deref().unwrap_or("?"),
            out.times.duration_s,
            db.tables,
            db.rows,
            st.objects,
            st.bytes
        );
    }
    result_of(out.error)
}
