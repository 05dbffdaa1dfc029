//! Run locks: one backup, verify or prune of a policy at a time, in every store.
//!
//! `locks/<policy>.json` is created with a create-if-absent write (`If-None-Match: *` on S3,
//! link(2) on the local store), records who holds it (owner, host, pid, operation, run id) and
//! until when. The holder refreshes the expiry every third of the time-to-live while it runs and
//! deletes the lock at the end. A run that finds a live lock fails with exit 4 naming the
//! holder. A lock is taken over, and the log says so, when it is past its expiry, or when it
//! was taken on this host by a process that no longer exists (a run that died, or one that
//! could not remove its lock because the store was unreachable at the end). The
//! takeover (read, delete, create) has a window of milliseconds in which two runs that both
//! found the same expired lock could both proceed; the create-if-absent write closes every
//! other race.

use crate::error::{Error, Kind, Result};
use crate::store::{Put, PutMode, Store};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

pub const TTL: Duration = Duration::from_secs(15 * 60);

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LockInfo {
    pub policy: String,
    pub operation: String,
    pub run_id: String,
    pub owner: String,
    pub host: String,
    pub pid: u32,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

impl LockInfo {
    fn describe(&self) -> String {
        format!(
            "{} run {} by {} on {} (pid {}), started {}, lock expires {}",
            self.operation,
            self.run_id,
            self.owner,
            self.host,
            self.pid,
            self.created_at.to_rfc3339(),
            self.expires_at.to_rfc3339()
        )
    }
}

pub struct RunLock {
    store: Arc<dyn Store>,
    key: String,
    info: LockInfo,
    refresher: tokio::task::JoinHandle<()>,
}

fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown-host".into())
}

/// Whether a process with this pid exists on this host.
fn process_alive(pid: u32) -> bool {
    pid == std::process::id() || std::path::Path::new(&format!("/proc/{pid}")).exists()
}

fn encode(info: &LockInfo) -> Result<Vec<u8>> {
    serde_json::to_vec_pretty(info).map_err(|e| Error::failed(format!("encoding lock: {e}")))
}

impl RunLock {
    pub async fn acquire(
        store: Arc<dyn Store>,
        policy: &str,
        operation: &str,
        run_id: &str,
        ttl: Duration,
    ) -> Result<RunLock> {
        let key = format!("locks/{policy}.json");
        let now = Utc::now();
        let info = LockInfo {
            policy: policy.to_string(),
            operation: operation.to_string(),
            run_id: run_id.to_string(),
            owner: std::env::var("USER").unwrap_or_else(|_| "unknown".into()),
            host: host(),
            pid: std::process::id(),
            created_at: now,
            expires_at: now
                + chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::minutes(15)),
        };
        for _ in 0..3 {
            if store
                .put(&key, encode(&info)?, PutMode::CreateMutable)
                .await?
                == Put::Created
            {
                let refresher =
                    tokio::spawn(refresh(store.clone(), key.clone(), info.clone(), ttl));
                return Ok(RunLock {
                    store,
                    key,
                    info,
                    refresher,
                });
            }
            let Some(body) = store.get_opt(&key).await? else {
                continue;
            };
            match serde_json::from_slice::<LockInfo>(&body) {
                Ok(held) if held.host == info.host && !process_alive(held.pid) => {
                    tracing::warn!("taking over the lock of a process that no longer runs: {}", held.describe())
                }
                Ok(held) if held.expires_at > Utc::now() => {
                    return Err(Error::new(
                        Kind::Locked,
                        format!(
                            "policy {policy} is locked by another run: {} ({} in {}). Wait for it to finish; if it died, its lock expires by itself",
                            held.describe(),
                            key,
                            store.describe()
                        ),
                    ))
                }
                Ok(held) => tracing::warn!("taking over the expired lock of {}", held.describe()),
                Err(e) => tracing::warn!("taking over unreadable lock {key} ({e})"),
            }
            store.delete(&key).await?;
        }
        Err(Error::new(
            Kind::Locked,
            format!("policy {policy}: could not take {key}: other runs keep taking it"),
        ))
    }

    /// Stops refreshing and removes the lock if it is still ours.
    pub async fn release(self) {
        self.refresher.abort();
        match self.store.get_opt(&self.key).await {
            Ok(Some(body)) => match serde_json::from_slice::<LockInfo>(&body) {
                Ok(held) if held.run_id == self.info.run_id => {
                    if let Err(e) = self.store.delete(&self.key).await {
                        tracing::warn!("could not remove lock {}: {}", self.key, e.message);
                    }
                }
                _ => tracing::warn!("lock {} is no longer ours; leaving it", self.key),
            },
            Ok(None) => {}
            Err(e) => tracing::warn!("could not read lock {}: {}", self.key, e.message),
        }
    }
}

async fn refresh(store: Arc<dyn Store>, key: String, mut info: LockInfo, ttl: Duration) {
    loop {
        tokio::time::sleep(ttl / 3).await;
        info.expires_at =
            Utc::now() + chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::minutes(15));
        match encode(&info) {
            Ok(body) => {
                if let Err(e) = store.put(&key, body, PutMode::Replace).await {
                    tracing::warn!("could not refresh lock {key}: {}", e.message);
                }
            }
            Err(e) => tracing::warn!("{}", e.message),
        }
    }
}
