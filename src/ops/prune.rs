//! The prune operation: removes the snapshots that retention no longer keeps and sweeps the
//! blobs that nothing references, from the repository's plaintext metadata alone (no
//! identity), under the exclusive repository lock (a dry run takes a shared one).
//!
//! Order, so that a crash at any point leaves a repository that `check` finds intact:
//! 1. each removed snapshot's `meta.json` is deleted first, so the snapshot is gone at once;
//! 2. then its `manifest.age`, and every manifest whose `meta.json` is missing (left by a
//!    crashed prune or an interrupted backup: with the exclusive lock held, no live run can
//!    still commit it);
//! 3. then every blob that no remaining `meta.json` of any policy in the repository
//!    references. The next prune finishes a sweep a crash interrupted.
//!
//! Prune refuses to sweep while any `meta.json` in the repository is damaged: it could not
//! know what that snapshot references. Objects still under object-lock retention are never
//! tried early; they are reported with the date they become deletable, and a later prune
//! removes them. A snapshot whose `meta.json` is still locked stays listed, and so do its
//! blobs. `bytes_freed` counts the stored bytes of the blobs actually removed.

use super::{with_lock, Ctx, Phase, RunTimes};
use crate::error::{Error, Kind, Result};
use crate::policy::Policy;
use crate::record::PruneRecord;
use crate::repo::lock::Mode;
use crate::repo::{blob_key, list_metas, Blobs, Repo};
use crate::retention::{self, Candidate, Rules};
use chrono::{DateTime, Utc};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Instant;

pub struct Request {
    /// Plan only: delete nothing.
    pub dry_run: bool,
    /// Remove exactly these snapshots (retention rules not applied).
    pub snapshots: Vec<String>,
    /// Remove a named snapshot even when the retention floor keeps it.
    pub force: bool,
}

#[derive(Debug)]
pub struct Outcome {
    pub times: RunTimes,
    pub policy: String,
    pub dry_run: bool,
    /// Kept snapshots, newest first, with the rules that keep each.
    pub kept: Vec<(String, Vec<String>)>,
    /// Snapshots the plan removes, newest first.
    pub removed: Vec<String>,
    /// Change-stream segments removed: they end before every kept snapshot.
    pub segments_removed: Vec<String>,
    /// Blobs nothing references once the removed snapshots are gone, and their stored bytes.
    pub blobs_unreferenced: u64,
    pub bytes_unreferenced: u64,
    pub blobs_deleted: u64,
    pub bytes_freed: u64,
    pub manifests_deleted: u64,
    /// Objects object lock still retains, with the time each becomes deletable.
    pub locked_until: Vec<(String, DateTime<Utc>)>,
    pub phases: Vec<Phase>,
    pub notes: Vec<String>,
    pub error: Option<Error>,
}

impl Outcome {
    fn new(policy: &str, dry_run: bool) -> Outcome {
        Outcome {
            times: RunTimes::start(),
            policy: policy.to_string(),
            dry_run,
            kept: Vec::new(),
            removed: Vec::new(),
            segments_removed: Vec::new(),
            blobs_unreferenced: 0,
            bytes_unreferenced: 0,
            blobs_deleted: 0,
            bytes_freed: 0,
            manifests_deleted: 0,
            locked_until: Vec::new(),
            phases: Vec::new(),
            notes: Vec::new(),
            error: None,
        }
    }

    pub fn not_started(policy: &str, dry_run: bool, error: Error) -> Outcome {
        let mut out = Outcome::new(policy, dry_run);
        out.error = Some(error);
        out.times.finish();
        out
    }
}

pub async fn run(policy: &Policy, repo: &Repo, req: &Request, ctx: &Ctx) -> Outcome {
    let ctx = ctx.for_run();
    let mut out = Outcome::new(&policy.name, req.dry_run);
    let run_id = out.times.run_id.clone();
    let mode = if req.dry_run {
        Mode::Shared
    } else {
        Mode::Exclusive
    };
    let work = ctx.cancel.run(prune(policy, repo, req, &ctx, &mut out));
    let result = with_lock(mode, repo, "prune", &run_id, &ctx, work).await;
    out.times.finish();
    out.error = result.err();
    out
}

/// The rules of the policy, with its objectives and timezone.
fn rules(policy: &Policy) -> Rules {
    Rules {
        keep: policy.retention.clone().unwrap_or_default(),
        retention: policy.objectives.retention,
        timezone: policy.schedule.as_ref().map(|s| s.timezone),
    }
}

/// Snapshot ids of this policy that a verify run passed on.
async fn verified(repo: &Repo) -> Result<HashSet<String>> {
    let records: Vec<crate::record::Header> = crate::repo::runs::read(
        repo.store.as_ref(),
        &repo.policy,
        crate::record::Job::Verify,
    )
    .await?;
    Ok(records
        .into_iter()
        .filter(|r| r.ok)
        .filter_map(|r| r.snapshot_id)
        .collect())
}

/// Keep and remove, from the rules or from the snapshots named on the command line.
fn plan(
    policy: &Policy,
    candidates: &[Candidate],
    req: &Request,
    notes: &mut Vec<String>,
) -> Result<retention::Plan> {
    let now = Utc::now();
    let rules = rules(policy);
    if req.snapshots.is_empty() {
        if policy.retention.is_none() {
            notes.push(format!(
                "policy {} has no [retention]: every snapshot is kept (unreferenced blobs are still swept)",
                policy.name
            ));
            let keep = candidates
                .iter()
                .rev()
                .map(|c| (c.id.clone(), vec!["no [retention]".to_string()]));
            return Ok(retention::Plan {
                keep: keep.collect(),
                remove: Vec::new(),
            });
        }
        return Ok(retention::plan(candidates, &rules, now));
    }
    let floor = retention::floor(candidates, &rules, now);
    for id in &req.snapshots {
        let Some(i) = candidates.iter().position(|c| &c.id == id) else {
            return Err(Error::input(format!(
                "--snapshot {id}: no such snapshot of policy {} (list them with `backstop snapshots --policy {}`)",
                policy.name, policy.name
            )));
        };
        if !floor[i].is_empty() && !req.force {
            return Err(Error::input(format!(
                "--snapshot {id}: the retention floor keeps it ({}); pass --force to remove it anyway",
                floor[i].join(", ")
            )));
        }
    }
    let mut out = retention::Plan::default();
    for c in candidates.iter().rev() {
        if req.snapshots.contains(&c.id) {
            out.remove.push(c.id.clone());
        } else {
            out.keep
                .push((c.id.clone(), vec!["not named by --snapshot".to_string()]));
        }
    }
    Ok(out)
}

async fn prune(
    policy: &Policy,
    repo: &Repo,
    req: &Request,
    ctx: &Ctx,
    out: &mut Outcome,
) -> Result<()> {
    let store = repo.store.clone();
    let t = Instant::now();
    let all = list_intact(store.as_ref()).await?;
    let verified = verified(repo).await?;
    let mine: Vec<Candidate> = all
        .snapshots
        .iter()
        .filter(|m| m.policy == policy.name)
        .map(|m| Candidate {
            id: m.id.clone(),
            consistent_at: m.consistent_at,
            verified: verified.contains(&m.id),
        })
        .collect();
    let plan = plan(policy, &mine, req, &mut out.notes)?;
    out.kept = plan.keep.clone();
    out.removed = plan.remove.clone();
    // Change-stream segments: this policy's that end before every kept snapshot's join point
    // go with the snapshots; every other segment (of any policy) keeps its blobs.
    let segments = crate::repo::streams::list_all(store.as_ref()).await?;
    let oldest_kept = mine
        .iter()
        .filter(|c| out.kept.iter().any(|(id, _)| id == &c.id))
        .map(|c| c.consistent_at)
        .min();
    let segment_gone = |s: &crate::repo::streams::Segment| {
        s.policy == policy.name
            && oldest_kept.is_some_and(|t| s.last_commit_at < t - crate::ops::replay::SCAN_MARGIN)
    };
    out.segments_removed = segments
        .iter()
        .filter(|s| segment_gone(s))
        .map(|s| s.id.clone())
        .collect();
    let blobs = Referenced {
        all: &all,
        stored: repo.stored_blobs().await?,
        segment_blobs: segments
            .iter()
            .filter(|s| !segment_gone(s))
            .flat_map(|s| s.blobs.iter().map(|b| b.id.clone()))
            .collect(),
    };
    let removing: HashSet<&str> = plan.remove.iter().map(|s| s.as_str()).collect();
    let gone =
        |m: &crate::repo::format::Meta| m.policy == policy.name && removing.contains(m.id.as_str());
    let planned = blobs.unreferenced(&|m| !gone(m));
    out.blobs_unreferenced = planned.len() as u64;
    out.bytes_unreferenced = planned.iter().map(|(_, s)| s).sum();
    out.phases.push(Phase::since("plan", t));
    if req.dry_run {
        return Ok(());
    }
    // Before anything is deleted, and before each batch of blobs, the exclusive lock is read
    // back: under a lost lock a backup may be reusing the very blobs this sweep would remove.
    let run_id = out.times.run_id.clone();
    crate::repo::lock::confirm(store.as_ref(), &run_id).await?;
    let t = Instant::now();
    let still = remove_snapshots(policy, repo, &plan, out).await?;
    out.phases.push(Phase::since("snapshots", t));
    ctx.cancel.check()?;

    // 3. Blobs nothing references: snapshots whose meta.json object lock kept still count.
    let t = Instant::now();
    let kept_locked =
        |m: &crate::repo::format::Meta| still.contains(&crate::repo::meta_key(&m.policy, &m.id));
    let sweep = blobs.unreferenced(&|m| !gone(m) || kept_locked(m));
    let keys: Vec<String> = sweep.iter().map(|(id, _)| blob_key(id)).collect();
    let bar = ctx.progress.bar("sweeping blobs", Some(keys.len() as u64));
    for batch in keys.chunks(1000) {
        ctx.cancel.check()?;
        crate::repo::lock::confirm(store.as_ref(), &run_id).await?;
        let done = store.remove(batch).await?;
        bar.inc(batch.len() as u64);
        out.blobs_deleted += done.removed.len() as u64;
        out.bytes_freed += done.removed.iter().map(|(_, s)| s).sum::<u64>();
        out.locked_until.extend(done.locked);
    }
    out.phases.push(Phase::since("sweep", t));
    Ok(())
}

/// Every policy's snapshots; an error when a meta.json is damaged, since prune cannot know
/// what that snapshot references.
async fn list_intact(store: &dyn crate::store::Store) -> Result<crate::repo::Listing> {
    let all = list_metas(store, crate::repo::SNAPSHOTS, Blobs::Fold).await?;
    if all.damaged.is_empty() {
        return Ok(all);
    }
    let names: Vec<String> = all
        .damaged
        .iter()
        .map(|d| format!("{} ({})", d.key, d.problem))
        .collect();
    Err(Error::new(
        Kind::Damaged,
        format!(
            "prune does not run while a meta.json is damaged, since it cannot know what that snapshot references: {}; run `backstop check`, then restore or delete it",
            names.join("; ")
        ),
    ))
}

/// What references the stored blobs: the snapshots' lists and the segments that stay.
struct Referenced<'a> {
    all: &'a crate::repo::Listing,
    stored: HashMap<String, u64>,
    segment_blobs: HashSet<String>,
}

impl Referenced<'_> {
    /// The stored blobs (id, size) that neither a snapshot `alive` keeps nor a segment uses.
    fn unreferenced(
        &self,
        alive: &dyn Fn(&crate::repo::format::Meta) -> bool,
    ) -> Vec<(String, u64)> {
        let referenced: HashSet<&str> = self
            .all
            .snapshots
            .iter()
            .filter(|m| alive(m))
            .flat_map(|m| self.all.blobs.of(m).map(|b| b.id.as_str()))
            .chain(self.segment_blobs.iter().map(String::as_str))
            .collect();
        let mut ids: Vec<(String, u64)> = self
            .stored
            .iter()
            .filter(|(id, _)| !referenced.contains(id.as_str()))
            .map(|(id, size)| (id.clone(), *size))
            .collect();
        ids.sort();
        ids
    }
}

/// Removes, in this order, the json of each segment no kept snapshot needs, the meta.json of
/// each removed snapshot, and every manifest left without a meta.json. Returns the meta.json
/// keys an object lock kept.
async fn remove_snapshots(
    policy: &Policy,
    repo: &Repo,
    plan: &retention::Plan,
    out: &mut Outcome,
) -> Result<BTreeSet<String>> {
    let store = repo.store.as_ref();
    let keys: Vec<String> = out
        .segments_removed
        .iter()
        .map(|id| crate::repo::streams::key(&policy.name, id))
        .collect();
    let done = store.remove(&keys).await?;
    out.locked_until.extend(done.locked);
    let metas: Vec<String> = plan.remove.iter().map(|id| repo.meta_key(id)).collect();
    let done = store.remove(&metas).await?;
    let still: BTreeSet<String> = done.locked.iter().map(|(k, _)| k.clone()).collect();
    out.locked_until.extend(done.locked);
    let orphans = crate::repo::orphan_manifests(store).await?;
    let done = store.remove(&orphans).await?;
    out.manifests_deleted = done.removed.len() as u64;
    out.locked_until.extend(done.locked);
    Ok(still)
}

/// The run record of a prune.
impl From<&Outcome> for PruneRecord {
    fn from(o: &Outcome) -> Self {
        PruneRecord {
            kind: crate::record::Job::Prune,
            ok: o.error.is_none(),
            policy: o.policy.clone(),
            run_id: o.times.run_id.clone(),
            dry_run: o.dry_run,
            started_at: o.times.started_at,
            finished_at: o.times.finished_at,
            duration_s: o.times.duration_s,
            snapshots_kept: o
                .kept
                .iter()
                .map(|(id, reasons)| crate::record::KeptSnapshot {
                    id: id.clone(),
                    reasons: reasons.clone(),
                })
                .collect(),
            snapshots_removed: o.removed.clone(),
            segments_removed: o.segments_removed.clone(),
            blobs_unreferenced: o.blobs_unreferenced,
            bytes_unreferenced: o.bytes_unreferenced,
            blobs_deleted: o.blobs_deleted,
            bytes_freed: o.bytes_freed,
            manifests_deleted: o.manifests_deleted,
            locked_until: o
                .locked_until
                .iter()
                .map(|(key, until)| crate::record::LockedObject {
                    key: key.clone(),
                    until: *until,
                })
                .collect(),
            notes: o.notes.clone(),
            phases: o.phases.clone(),
            tool_version: crate::record::TOOL_VERSION.to_string(),
            error: crate::record::error_text(&o.error),
        }
    }
}
