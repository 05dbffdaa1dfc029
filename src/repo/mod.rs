//! The repository format on top of a [`Store`]: backstop.json, blobs, manifests, meta, runs.
//!
//! Invariant: a snapshot exists iff its `meta.json` exists. [`Repo::commit`] writes
//! `manifest.age` and then `meta.json`, and the caller commits only after every blob the
//! manifest names is durable, so an interrupted backup leaves at most unreferenced blobs (which
//! the next backup reuses) and never a snapshot that looks complete. Nothing here is ever
//! overwritten; meta.json and run records hold only what an auditor needs, never plaintext.

pub mod format;
pub mod lock;
pub mod reader;
pub mod runs;
pub mod writer;

use crate::error::{Error, Result};
use crate::seal::{sha256_hex, ChunkerParams, Opener, Sealer};
use crate::store::{Put, Store};
use chrono::{DateTime, Utc};
use format::{Manifest, Meta, RepoConfig, FORMAT};
use sha2::{Digest, Sha256};
use std::sync::Arc;

pub const CONFIG_KEY: &str = "backstop.json";

pub fn blob_key(id: &str) -> String {
    format!("blobs/{}/{id}", &id[..2.min(id.len())])
}

pub struct Repo {
    pub store: Arc<dyn Store>,
    pub config: RepoConfig,
    pub policy: String,
}

/// Which snapshot a command means.
#[derive(Debug, Clone)]
pub enum Selector {
    Latest,
    Id(String),
    Before(DateTime<Utc>),
}

impl Repo {
    /// Creates backstop.json. Returns the existing configuration (and `false`) when the
    /// repository is already initialized.
    pub async fn init(store: Arc<dyn Store>, recipients: &[String]) -> Result<(RepoConfig, bool)> {
        let config = RepoConfig {
            format: FORMAT,
            created_at: Utc::now(),
            tool_version: env!("CARGO_PKG_VERSION").to_string(),
            chunker: ChunkerParams::default(),
            dedup_salt: hex::encode(rand::random::<[u8; 32]>()),
            recipients: recipients.to_vec(),
            blob_format: "age(zstd(chunk)); id = hex(HMAC-SHA256(SHA-256(salt or dedup_key, 0x00, sorted recipients joined by newlines), chunk))".into(),
        };
        let body = serde_json::to_vec_pretty(&config)
            .map_err(|e| Error::failed(format!("encoding backstop.json: {e}")))?;
        match store.put_new(CONFIG_KEY, body).await? {
            Put::Created => Ok((config, true)),
            Put::Exists => Ok((Self::read_config(store.as_ref()).await?, false)),
        }
    }

    async fn read_config(store: &dyn Store) -> Result<RepoConfig> {
        let body = store.get_opt(CONFIG_KEY).await?.ok_or_else(|| {
            Error::input(format!(
                "no repository at {}: create it with `backstop init --policy P`",
                store.describe()
            ))
        })?;
        let config: RepoConfig = serde_json::from_slice(&body).map_err(|e| {
            Error::failed(format!(
                "{}/{CONFIG_KEY} is not readable: {e}",
                store.describe()
            ))
        })?;
        if config.format != FORMAT {
            return Err(Error::failed(format!(
                "{} has repository format {}; this backstop reads format {FORMAT}",
                store.describe(),
                config.format
            )));
        }
        config.chunker.validate()?;
        Ok(config)
    }

    pub async fn open(store: Arc<dyn Store>, policy: &str) -> Result<Repo> {
        let config = Self::read_config(store.as_ref()).await?;
        Ok(Repo {
            store,
            config,
            policy: policy.to_string(),
        })
    }

    /// The key blob ids are keyed with: SHA-256 over the policy's dedup_key (else the
    /// repository's salt), a zero byte, and the recipients sorted and joined by newlines.
    /// Content sealed to other recipients (another policy's keys, or after a key rotation) so
    /// gets other ids and is stored again, never referenced under a key its reader lacks.
    /// Writers pass the policy's recipients; readers the snapshot's (meta.json).
    pub fn blob_id_key(&self, policy_key: Option<&str>, recipients: &[String]) -> Result<Vec<u8>> {
        let base = match policy_key {
            Some(k) => k.as_bytes().to_vec(),
            None => hex::decode(&self.config.dedup_salt)
                .map_err(|e| Error::failed(format!("backstop.json dedup_salt is not hex: {e}")))?,
        };
        let mut sorted: Vec<&str> = recipients.iter().map(|r| r.trim()).collect();
        sorted.sort_unstable();
        sorted.dedup();
        let mut h = Sha256::new();
        h.update(&base);
        h.update([0u8]);
        h.update(sorted.join("\n").as_bytes());
        Ok(h.finalize().to_vec())
    }

    fn snapshot_prefix(&self) -> String {
        format!("snapshots/{}/", self.policy)
    }

    pub fn meta_key(&self, id: &str) -> String {
        format!("{}{id}/meta.json", self.snapshot_prefix())
    }

    pub fn manifest_key(&self, id: &str) -> String {
        format!("{}{id}/manifest.age", self.snapshot_prefix())
    }

    /// Every committed snapshot of this policy, oldest first. A meta.json that cannot be read
    /// is reported in the log and skipped.
    pub async fn snapshots(&self) -> Result<Vec<Meta>> {
        read_metas(self.store.as_ref(), &self.snapshot_prefix()).await
    }

    pub async fn find(&self, selector: &Selector) -> Result<Meta> {
        let all = self.snapshots().await?;
        let found = match selector {
            Selector::Latest => all.last().cloned(),
            Selector::Id(id) => all.iter().find(|m| &m.id == id).cloned(),
            Selector::Before(t) => all.iter().rev().find(|m| m.consistent_at < *t).cloned(),
        };
        found.ok_or_else(|| {
            let what = match selector {
                Selector::Latest => "no snapshot".to_string(),
                Selector::Id(id) => format!("no snapshot {id}"),
                Selector::Before(t) => format!("no snapshot consistent before {}", t.to_rfc3339()),
            };
            Error::input(format!(
                "{what} of policy {} in {} (list them with `backstop snapshots --policy {}`)",
                self.policy,
                self.store.describe(),
                self.policy
            ))
        })
    }

    /// Every blob in the store, id -> stored size (one listing).
    pub async fn stored_blobs(&self) -> Result<std::collections::HashMap<String, u64>> {
        Ok(self
            .store
            .list("blobs/")
            .await?
            .into_iter()
            .filter_map(|e| Some((e.key.rsplit('/').next()?.to_string(), e.size)))
            .collect())
    }

    pub async fn read_manifest(&self, meta: &Meta, opener: &Opener) -> Result<Manifest> {
        let key = &meta.manifest.key;
        let sealed = self.store.get_opt(key).await?.ok_or_else(|| {
            Error::failed(format!("{key} is missing from {}", self.store.describe()))
        })?;
        let sha = sha256_hex(&sealed);
        if sha != meta.manifest.sha256 {
            return Err(Error::failed(format!(
                "{key} is damaged: its SHA-256 is {sha}, meta.json records {}",
                meta.manifest.sha256
            )));
        }
        let plain = opener.open(&sealed, key)?;
        serde_json::from_slice(&plain)
            .map_err(|e| Error::failed(format!("{key} does not hold a readable manifest: {e}")))
    }

    /// Commits a snapshot: manifest.age, then meta.json. Call only when every blob is durable.
    pub async fn commit(
        &self,
        manifest: &Manifest,
        sealer: &Sealer,
        mut meta: Meta,
    ) -> Result<Meta> {
        let body = serde_json::to_vec(manifest)
            .map_err(|e| Error::failed(format!("encoding manifest: {e}")))?;
        let sealed = sealer.seal(&body)?;
        let key = self.manifest_key(&manifest.snapshot_id);
        meta.manifest = format::StoredObject {
            key: key.clone(),
            size: sealed.len() as u64,
            sha256: sha256_hex(&sealed),
        };
        if self.store.put_new(&key, sealed).await? == Put::Exists {
            return Err(Error::failed(format!(
                "{key} already exists; refusing to overwrite it"
            )));
        }
        let body = serde_json::to_vec_pretty(&meta)
            .map_err(|e| Error::failed(format!("encoding meta.json: {e}")))?;
        let key = self.meta_key(&meta.id);
        if self.store.put_new(&key, body).await? == Put::Exists {
            return Err(Error::failed(format!(
                "{key} already exists; refusing to overwrite it"
            )));
        }
        Ok(meta)
    }
}

/// Reads every `meta.json` under a prefix (a policy's, or `snapshots/` for all policies).
pub async fn read_metas(store: &dyn Store, prefix: &str) -> Result<Vec<Meta>> {
    let mut metas = Vec::new();
    for entry in store.list(prefix).await? {
        if !entry.key.ends_with("/meta.json") {
            continue;
        }
        let Some(body) = store.get_opt(&entry.key).await? else {
            continue;
        };
        match serde_json::from_slice::<Meta>(&body) {
            Ok(m) => metas.push(m),
            Err(e) => tracing::warn!("skipping {}: not a readable meta.json ({e})", entry.key),
        }
    }
    metas.sort_by(|a, b| (a.consistent_at, &a.id).cmp(&(b.consistent_at, &b.id)));
    Ok(metas)
}
