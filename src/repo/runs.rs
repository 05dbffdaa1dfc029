//! Run records: `runs/<policy>/<UTC time>-<kind>-<id>.json`, one per backup, restore, verify,
//! prune or check, successful or not. They are the auditor's evidence, so they hold outcomes,
//! times and figures only: no secrets, no plaintext.

use crate::error::{Error, Result};
use crate::store::Store;
use chrono::{DateTime, Utc};
use serde::Serialize;

pub async fn write(
    store: &dyn Store,
    policy: &str,
    kind: &str,
    id: &str,
    at: DateTime<Utc>,
    record: &impl Serialize,
) -> Result<String> {
    let key = format!(
        "runs/{policy}/{}-{kind}-{id}.json",
        at.format("%Y%m%dT%H%M%SZ")
    );
    let body = serde_json::to_vec_pretty(record)
        .map_err(|e| Error::failed(format!("encoding run record: {e}")))?;
    store.put_new(&key, body).await?;
    Ok(key)
}

/// Every run record of `kind` for `policy`, oldest first (by key, whose time leads), read
/// [`READ_AHEAD`] at a time. A record that does not parse is skipped with a warning: records
/// are evidence, not state.
pub async fn read(store: &dyn Store, policy: &str, kind: &str) -> Result<Vec<serde_json::Value>> {
    use futures::{StreamExt, TryStreamExt};
    let marker = format!("-{kind}-");
    let keys: Vec<String> = store
        .list(&format!("runs/{policy}/"))
        .await?
        .into_iter()
        .filter(|e| e.key.contains(&marker))
        .map(|e| e.key)
        .collect();
    let bodies: Vec<(String, Option<Vec<u8>>)> = futures::stream::iter(keys)
        .map(|k| async move { store.get_opt(&k).await.map(|b| (k, b)) })
        .buffered(READ_AHEAD)
        .try_collect()
        .await?;
    let mut out = Vec::new();
    for (key, body) in bodies {
        let Some(body) = body else { continue };
        match serde_json::from_slice(&body) {
            Ok(v) => out.push(v),
            Err(e) => tracing::warn!("run record {key} is not readable: {e}"),
        }
    }
    Ok(out)
}

/// How many records are read at once.
pub const READ_AHEAD: usize = 16;
