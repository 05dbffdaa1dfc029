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

/// Every run record of `kind` for `policy`, oldest first (by key, whose time leads). A record
/// that does not parse is skipped with a warning: records are evidence, not state.
pub async fn read(store: &dyn Store, policy: &str, kind: &str) -> Result<Vec<serde_json::Value>> {
    let marker = format!("-{kind}-");
    let mut out = Vec::new();
    for entry in store.list(&format!("runs/{policy}/")).await? {
        if !entry.key.contains(&marker) {
            continue;
        }
        let Some(body) = store.get_opt(&entry.key).await? else {
            continue;
        };
        match serde_json::from_slice(&body) {
            Ok(v) => out.push(v),
            Err(e) => tracing::warn!("run record {} is not readable: {e}", entry.key),
        }
    }
    Ok(out)
}
