//! verify's proof of the change stream: where the stream joins the snapshot before the one
//! verified to it, the older snapshot is restored into a second temporary database, the stream
//! is replayed up to exactly what the newer snapshot sees (its `snapshot_xids`), and every
//! table is compared with the row counts and checksums the newer snapshot recorded at backup
//! time. The replay is thus proven, not assumed, and the proof needs nothing from the
//! production database.
//!
//! Tables the stream does not protect (named unprotected in its segments) and materialized
//! views are left out of the comparison: the stream does not carry them. A span the stream
//! does not cover (a hole, a schema change) is not a failure of the stream's proof: it is
//! noted, and the report's `continuous_protection` names it.

use super::compare::compare_tables;
use crate::error::Result;
use crate::ops::load::{create_missing_roles, load_dump, DbTarget, LoadOptions};
use crate::ops::replay::{self, Reading, Until, Visibility};
use crate::policy::Policy;
use crate::repo::format::{Manifest, Meta};
use crate::repo::Repo;
use crate::seal::Opener;
use crate::source::pgtools::DbUrl;
use secrecy::ExposeSecret;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

pub use super::compare::StreamChecked;

/// What the proof found: the record part, and each difference as a problem.
pub struct Proof {
    pub checked: Option<StreamChecked>,
    pub problems: Vec<String>,
    pub notes: Vec<String>,
}

/// The newest snapshot older than `newer` that the stream can start from (it records where
/// the stream joins it).
async fn older_than(repo: &Repo, newer: &Meta) -> Result<Option<Meta>> {
    let listing = repo.listing().await?;
    let Some(older) = listing
        .snapshots
        .iter()
        .rev()
        .find(|m| m.consistent_at < newer.consistent_at && m.snapshot_xids.is_some())
    else {
        return Ok(None);
    };
    let selector = crate::repo::Selector::Id(older.id.clone());
    Ok(Some(repo.find(&selector).await?))
}

/// Compares the replayed database with the newer snapshot's tables, leaving out materialized
/// views (a refresh is not a change the stream carries) and the tables the stream does not
/// protect. Returns how many were compared, those left out, and the differences.
async fn compare_replayed(
    url: &DbUrl,
    db: &crate::repo::format::DbManifest,
    unprotected: &HashSet<String>,
) -> Result<(u64, Vec<String>, Vec<String>)> {
    let mut compared = db.clone();
    let mut left_out = Vec::new();
    compared.tables.retain(|t| {
        let name = format!("{}.{}", t.schema, t.name);
        let keep = t.kind != "m" && !unprotected.contains(&name);
        if !keep {
            left_out.push(name);
        }
        keep
    });
    let found = compare_tables(url, &compared, &HashMap::new()).await?;
    Ok((compared.tables.len() as u64, left_out, found.problems))
}

/// Proves the stream from the snapshot before `newer` to `newer`; `None` when the policy has
/// no stream or there is nothing to prove (no older snapshot, no segment between).
pub async fn prove(
    policy: &Policy,
    repo: &Repo,
    newer: &Meta,
    newer_manifest: &Manifest,
    opener: Arc<Opener>,
    scratch: &DbUrl,
    restore: &crate::policy::RestoreSettings,
) -> Result<Option<Proof>> {
    if policy.stream.is_none() {
        return Ok(None);
    }
    let (Some(db), Some(upto)) = (
        newer_manifest.database.as_ref(),
        newer.snapshot_xids.as_deref().and_then(Visibility::parse),
    ) else {
        return Ok(None);
    };
    let Some(older) = older_than(repo, newer).await? else {
        return Ok(None);
    };
    let segments = crate::repo::streams::list(repo.store.as_ref(), &policy.name).await?;
    let chosen = match replay::plan(&older, &segments, newer.consistent_at, Some(newer)) {
        Ok(c) if c.is_empty() => return Ok(None),
        Ok(c) => c,
        Err(e) => {
            return Ok(Some(Proof {
                checked: None,
                problems: Vec::new(),
                notes: vec![format!(
                    "the stream from snapshot {} to {} was not proven: {}",
                    older.id, newer.id, e.message
                )],
            }))
        }
    };
    let unprotected: HashSet<String> = chosen
        .iter()
        .flat_map(|s| s.unprotected_tables.iter().cloned())
        .collect();
    let dedup = policy
        .repository
        .dedup_key
        .as_ref()
        .map(|k| k.expose_secret());
    let older_manifest = repo.read_manifest(&older, &opener).await?;
    let Some(older_db) = older_manifest.database.as_ref() else {
        return Ok(None);
    };
    let ids = repo.snapshot_blob_ids(&older_manifest, &older, dedup)?;
    let temp = super::Scratch::create(scratch, &format!("{}_stream", older.id)).await?;
    let url = temp.url();
    let proof = async {
        let target = DbTarget {
            url: url.clone(),
            force: false,
            is_source: false,
            force_source: false,
        };
        create_missing_roles(&url, older_db).await?;
        let options = LoadOptions {
            stop_on_error: false,
            ahead: policy.repository.connections,
            progress: &crate::ops::NoProgress,
            restore: restore.clone(),
        };
        load_dump(
            repo,
            &older,
            older_db,
            opener.clone(),
            ids,
            &target,
            &options,
        )
        .await?;
        let from = Reading {
            repo,
            opener: opener.clone(),
            dedup_key: dedup,
            ahead: policy.repository.connections,
        };
        let replayed = replay::replay(&from, &older, &chosen, Until::Snapshot(upto), &url).await?;
        let (compared, left_out, problems) = compare_replayed(&url, db, &unprotected).await?;
        let problems = problems
            .iter()
            .map(|p| {
                format!(
                    "the stream replayed from snapshot {} to {}: {p}",
                    older.id, newer.id
                )
            })
            .collect::<Vec<_>>();
        Ok::<Proof, crate::error::Error>(Proof {
            checked: Some(StreamChecked {
                from: older.id.clone(),
                to: newer.id.clone(),
                to_consistent_at: Some(newer.consistent_at),
                transactions: replayed.transactions,
                tables_equal: problems.is_empty(),
                tables_compared: compared,
                tables_left_out: left_out,
            }),
            problems,
            notes: Vec::new(),
        })
    }
    .await;
    if let Err(e) = temp.drop_now().await {
        tracing::warn!("{}", e.message);
    }
    proof.map(Some)
}
