use super::{open, opener, record_run, result_of};
use crate::cli::{Only, RestoreArgs};
use crate::error::{Error, Result};
use crate::ops::files;
use crate::ops::restore::{self, Outcome, Request, StorageTo};
use crate::ops::Ctx;
use crate::record::RestoreRecord;
use crate::repo::Selector;
use crate::source::pgtools::DbUrl;
use crate::util::parse_time;
use std::sync::Arc;

/// Which parts go where, from the flags; the combinations that make no sense are refused.
fn request(args: &RestoreArgs) -> Result<Request> {
    let selector = match (&args.before, args.snapshot.as_str()) {
        (Some(t), _) => Selector::Before(parse_time(t).map_err(Error::input)?),
        (None, "latest") => Selector::Latest,
        (None, id) => Selector::Id(id.to_string()),
    };
    let wants = |part: Only| args.only.is_none_or(|o| o == part);
    let storage = match (&args.storage_dir, args.storage_to_source) {
        _ if !wants(Only::Storage) => None,
        (Some(dir), _) => Some(StorageTo::Dir(dir.clone())),
        (None, true) => Some(StorageTo::Source),
        (None, false) => None,
    };
    let files = match (&args.files_dir, args.files_to_source) {
        _ if !wants(Only::Files) => None,
        (Some(dir), _) => Some(files::Target::Dir {
            root: dir.clone(),
            force: args.force,
        }),
        (None, true) => Some(files::Target::Source { force: args.force }),
        (None, false) => None,
    };
    let git_dir = args.git_dir.clone().filter(|_| wants(Only::Git));
    let missing = match args.only {
        Some(Only::Storage) if storage.is_none() => {
            Some("--only storage needs a destination: --storage-dir DIR or --storage-to-source")
        }
        Some(Only::Files) if files.is_none() => {
            Some("--only files needs a destination: --files-dir DIR or --files-to-source")
        }
        Some(Only::Git) if git_dir.is_none() => {
            Some("--only git needs a destination: --git-dir DIR")
        }
        _ => None,
    };
    if let Some(m) = missing {
        return Err(Error::input(m));
    }
    let other_destination = storage.is_some() || files.is_some() || git_dir.is_some();
    let db_url = match (&args.db_url, args.only) {
        (Some(u), None | Some(Only::Db)) => Some(DbUrl::parse(u)?),
        (None, Some(Only::Db)) | (None, None) if args.only.is_some() || !other_destination => {
            return Err(Error::input(
                "--db-url is required: name the database to restore into (created if missing; it must be empty unless --force)",
            ))
        }
        _ => None,
    };
    let opener = Arc::new(opener(args.identity.as_ref())?);
    Ok(Request {
        selector,
        opener,
        db_url,
        storage,
        files,
        git_dir,
        force: args.force,
        force_source: args.force_source,
        one_part: args.only.is_some(),
    })
}

pub async fn run(args: RestoreArgs, dir: &super::Lookup<'_>, ctx: &Ctx) -> Result<()> {
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
        crate::record::Job::Restore,
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
        let mut text = format!(
            "restored snapshot {} in {:.1}s: {} tables, {} rows; {} storage objects, {} bytes",
            out.snapshot_id.as_deref().unwrap_or("?"),
            out.times.duration_s,
            db.tables,
            db.rows,
            st.objects,
            st.bytes
        );
        if let Some(f) = &out.files {
            text.push_str(&format!("; {} files in {} sets", f.files, f.sets));
        }
        if let Some(g) = &out.git {
            text.push_str(&format!("; {} git repositories", g.repositories.len()));
        }
        eprintln!("{text}");
    }
    result_of(out.error)
}
