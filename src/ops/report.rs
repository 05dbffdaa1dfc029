//! The report operation: reads each policy's meta.json files, its backup and verify records
//! and backstop.json (no identity, nothing decrypted), and evaluates the controls of
//! [`crate::report`] over the window. Read-only: it takes no lock, since a report reads
//! committed files only.

use super::RunTimes;
use crate::error::Result;
use crate::policy::Policy;
use crate::record::{BackupRecord, Job, ReportRecord, ReportWindow, VerifyRecord};
use crate::repo::{list_metas, runs, Blobs, Repo};
use crate::report::{evaluate, render::Report, Input, PolicyReport, Window};
use chrono::{DateTime, Utc};

/// One policy's part, with the repository it was read from (for its run record).
pub struct Part {
    pub report: PolicyReport,
    pub repo: Repo,
}

/// Evaluates one policy over `window`; an error means its repository could not be read.
pub async fn policy_report(policy: &Policy, window: &Window, now: DateTime<Utc>) -> Result<Part> {
    let repo = super::open_repo(policy).await?;
    let store = repo.store.as_ref();
    let listing = list_metas(store, &crate::repo::snapshots_of(&policy.name), Blobs::Drop).await?;
    let backups: Vec<BackupRecord> = runs::read(store, &policy.name, Job::Backup).await?;
    let verifies: Vec<VerifyRecord> = runs::read(store, &policy.name, Job::Verify).await?;
    let segments = if policy.stream.is_some() {
        crate::repo::streams::list(store, &policy.name).await?
    } else {
        Vec::new()
    };
    let mut report = evaluate(&Input {
        policy,
        repo_created: repo.config.created_at,
        repo_recipients: &repo.config.recipients,
        snapshots: &listing.snapshots,
        backups: &backups,
        verifies: &verifies,
        segments: &segments,
        window,
        now,
    });
    if !listing.damaged.is_empty() {
        // A damaged meta.json is a recovery point that may not restore: say so where the
        // auditor looks first.
        if let Some(c) = report
            .controls
            .iter_mut()
            .find(|c| c.id == "last_recovery_point_age")
        {
            c.evidence.extend(listing.damaged.iter().map(|d| {
                format!(
                    "snapshot {} is damaged and not counted: {}",
                    d.id, d.problem
                )
            }));
        }
    }
    Ok(Part { report, repo })
}

/// Every policy's part, in order. With `record`, each policy's repository gets a `report` run
/// record (the command line writes one per report; the daemon's `/report`, read by scrapers
/// and browsers at will, writes none).
pub async fn run(policies: &[Policy], window: &Window, record: bool) -> Result<Report> {
    let now = Utc::now();
    let mut times = RunTimes::start();
    let mut parts = Vec::new();
    for p in policies {
        parts.push(policy_report(p, window, now).await?);
    }
    times.finish();
    if record {
        for part in &parts {
            let r = &part.report;
            let record = ReportRecord {
                kind: Job::Report,
                ok: r.compliant,
                policy: r.name.clone(),
                run_id: times.run_id.clone(),
                window: Some(ReportWindow {
                    from: window.from,
                    to: window.to,
                }),
                started_at: times.started_at,
                finished_at: times.finished_at,
                compliant: r.compliant,
                controls: r
                    .controls
                    .iter()
                    .filter_map(|c| serde_json::to_value(c).ok())
                    .collect(),
                tool_version: env!("CARGO_PKG_VERSION").to_string(),
            };
            super::save_record(&part.repo, Job::Report, &times, &record).await;
        }
    }
    let policies: Vec<PolicyReport> = parts.into_iter().map(|p| p.report).collect();
    Ok(Report {
        window: window.clone(),
        generated_at: now,
        compliant: policies.iter().all(|p| p.compliant),
        policies,
    })
}
