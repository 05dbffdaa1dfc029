//! Run records: `runs/<policy>/<UTC time>-<kind>-<id>.json`, one per backup, restore, verify,
//! prune, check, report or stream event, successful or not. They are the auditor's evidence, so
//! they hold outcomes, times and figures only: no secrets, no plaintext.
//!
//! Written and read as the types of [`crate::record`]: a record's kind is the segment of its
//! own file name between the time and the run id, never a search of the whole key (a policy
//! may be named `shop-backup-eu`).

use crate::error::{Error, Result};
use crate::record::Job;
use crate::store::Store;
use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// The key of a run record.
pub fn key(policy: &str, job: Job, id: &str, at: DateTime<Utc>) -> String {
    format!(
        "runs/{policy}/{}-{}-{id}.json",
        at.format("%Y%m%dT%H%M%SZ"),
        job.as_str()
    )
}

/// The kind a record's key names: `<time>-<kind>-<id>.json` in the policy's folder.
pub fn kind_of(key: &str) -> Option<Job> {
    let name = key.rsplit('/').next()?;
    let (_time, rest) = name.split_once('-')?;
    let (kind, _id) = rest.split_once('-')?;
    Job::parse(kind)
}

pub async fn write(
    store: &dyn Store,
    policy: &str,
    job: Job,
    id: &str,
    at: DateTime<Utc>,
    record: &impl Serialize,
) -> Result<String> {
    let key = key(policy, job, id, at);
    let body = serde_json::to_vec_pretty(record)
        .map_err(|e| Error::failed(format!("encoding run record: {e}")))?;
    store.put_new(&key, body).await?;
    Ok(key)
}

/// The keys of `policy`'s run records of `job`, oldest first.
pub async fn keys(store: &dyn Store, policy: &str, job: Job) -> Result<Vec<String>> {
    let mut keys: Vec<String> = store
        .list(&format!("runs/{policy}/"))
        .await?
        .into_iter()
        .filter(|e| kind_of(&e.key) == Some(job))
        .map(|e| e.key)
        .collect();
    keys.sort();
    Ok(keys)
}

/// The records at `keys`, as `T`, each with its key; unreadable ones are skipped with a
/// warning.
pub async fn read_keys<T: DeserializeOwned>(
    store: &dyn Store,
    keys: Vec<String>,
) -> Result<Vec<(String, T)>> {
    use futures::{StreamExt, TryStreamExt};
    let bodies: Vec<(String, Option<Vec<u8>>)> = futures::stream::iter(keys)
        .map(|k| async move { store.get_opt(&k).await.map(|b| (k, b)) })
        .buffered(READ_AHEAD)
        .try_collect()
        .await?;
    let mut out = Vec::new();
    for (key, body) in bodies {
        let Some(body) = body else { continue };
        match serde_json::from_slice(&body) {
            Ok(v) => out.push((key, v)),
            Err(e) => tracing::warn!("run record {key} is not readable: {e}"),
        }
    }
    Ok(out)
}

/// Every run record of `job` for `policy`, oldest first (by key, whose time leads), read
/// [`READ_AHEAD`] at a time, as `T` (a record type, or [`crate::record::Header`] for what
/// every record holds). A record that does not parse is skipped with a warning: records are
/// evidence, not state.
pub async fn read<T: DeserializeOwned>(
    store: &dyn Store,
    policy: &str,
    job: Job,
) -> Result<Vec<T>> {
    use futures::{StreamExt, TryStreamExt};
    let keys: Vec<String> = store
        .list(&format!("runs/{policy}/"))
        .await?
        .into_iter()
        .filter(|e| kind_of(&e.key) == Some(job))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kind_comes_from_the_file_name_not_the_policy() {
        let at = chrono::DateTime::parse_from_rfc3339("2026-12-04T03:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let k = key("shop-backup-eu", Job::Verify, "20261204T030000Z-ab12cd", at);
        assert_eq!(
            k,
            "runs/shop-backup-eu/20261204T030000Z-verify-20261204T030000Z-ab12cd.json"
        );
        assert_eq!(kind_of(&k), Some(Job::Verify));
        assert_eq!(
            kind_of("runs/p/20261204T030000Z-prune-x.json"),
            Some(Job::Prune)
        );
        assert_eq!(kind_of("runs/p/garbage.json"), None);
    }
}
