use crate::error::Result;
use crate::policy::Policy;
use crate::repo::Repo;

pub async fn run(policy: &Policy) -> Result<()> {
    let store = crate::store::open(&policy.repository.store_config()).await?;
    store.check().await?;
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
