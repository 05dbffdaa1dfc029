use crate::error::Result;
use crate::policy::Policy;
use crate::repo::Repo;
use std::path::PathBuf;

/// `recover` is `Some(identity)` for `init --recover`.
pub async fn run(policy: &Policy, recover: Option<Option<&PathBuf>>) -> Result<()> {
    let store = crate::store::open(&policy.repository.store_config()).await?;
    store.check().await?;
    if let Some(identity) = recover {
        let opener = super::opener(identity)?;
        let (config, from) = Repo::recover(store.clone(), &opener, &policy.recipients).await?;
        eprintln!(
            "recovered {}/backstop.json from the manifest of snapshot {from} (repository created {}): its snapshots restore again",
            store.describe(),
            config.created_at.to_rfc3339()
        );
        return Ok(());
    }
    let (config, created) = Repo::init(store.clone(), &policy.recipients).await?;
    if created {
        eprintln!(
            "initialized repository {} (format {}, chunks {}-{}-{} bytes)",
            store.describe(),
            config.format,
            config.chunker.min_size,
            config.chunker.avg_size,
            config.chunker.max_size
        );
    } else {
        eprintln!(
            "repository {} already initialized on {} (format {}); nothing changed",
            store.describe(),
            config.created_at.to_rfc3339(),
            config.format
        );
    }
    Ok(())
}
