//! The runbook operation: reads what the runbook quotes from the repository (the newest
//! snapshot's meta.json and the last verify record; nothing decrypted, no lock) and renders
//! it with [`crate::runbook`].

use crate::error::Result;
use crate::policy::Policy;
use crate::record::{Job, VerifyRecord};
use crate::repo::{list_metas, runs, Blobs};
use crate::runbook::Facts;

pub async fn facts(policy: &Policy) -> Result<Facts> {
    let repo = super::open_repo(policy).await?;
    let store = repo.store.as_ref();
    let listing = list_metas(store, &crate::repo::snapshots_of(&policy.name), Blobs::Drop).await?;
    let verifies: Vec<VerifyRecord> = runs::read(store, &policy.name, Job::Verify).await?;
    let snapshots = listing.snapshots.len();
    let newest = listing
        .snapshots
        .into_iter()
        .max_by_key(|m| m.consistent_at);
    let last_verify = verifies
        .into_iter()
        .filter(|v| v.restore_s.is_some())
        .max_by_key(|v| v.finished_at);
    Ok(Facts {
        newest,
        snapshots,
        last_verify,
    })
}

/// The runbook of `policy` (`html`, else Markdown).
pub async fn run(policy: &Policy, html: bool) -> Result<String> {
    let facts = facts(policy).await?;
    crate::runbook::render(policy, &facts, html)
}
