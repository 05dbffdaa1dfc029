//! The repository format on top of a [`Store`]: backstop.json, blobs, manifests, meta, runs.
//!
//! Invariant: a snapshot exists iff its `meta.json` exists. [`Repo::commit`] writes
//! `manifest.age` and then `meta.json`, and the caller commits only after every blob the
//! manifest names is durable, so an interrupted backup leaves at most unreferenced blobs (which
//! the next backup reuses) and never a snapshot that looks complete. Nothing here is ever
//! overwritten; meta.json and run records hold only what an auditor needs, never plaintext.

pub mod format;
pub mod index;
pub mod lock;
pub mod reader;
pub mod runs;
pub mod streams;
pub mod writer;

use crate::error::{Error, Kind, Result};
use crate::seal::{sha256_hex, ChunkerParams, Opener, Sealer};
use crate::store::{Put, Store};
use chrono::{DateTime, Utc};
use format::{BlobRef, Manifest, Meta, RepoConfig, FORMAT};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Arc;

pub const CONFIG_KEY: &str = "backstop.json";
const BLOB_FORMAT: &str = "age(zstd(chunk)); id = hex(HMAC-SHA256(SHA-256(salt or dedup_key, 0x00, sorted recipients joined by newlines), chunk))";

/// Where every policy's snapshots live: `snapshots/<policy>/<id>/{meta.json,manifest.age}`.
pub const SNAPSHOTS: &str = "snapshots/";

/// Where one policy's snapshots live.
pub fn snapshots_of(policy: &str) -> String {
    format!("{SNAPSHOTS}{policy}/")
}

/// The meta.json of a policy's snapshot.
pub fn meta_key(policy: &str, id: &str) -> String {
    format!("{}{id}/meta.json", snapshots_of(policy))
}

/// The manifests in the repository without a meta.json beside them (a snapshot whose
/// meta.json was removed, or a backup that died before its commit).
pub async fn orphan_manifests(store: &dyn Store) -> Result<Vec<String>> {
    let entries = store.list(SNAPSHOTS).await?;
    let with_meta: std::collections::HashSet<&str> = entries
        .iter()
        .filter_map(|e| e.key.strip_suffix("/meta.json"))
        .collect();
    Ok(entries
        .iter()
        .filter_map(|e| {
            e.key
                .strip_suffix("/manifest.age")
                .filter(|dir| !with_meta.contains(dir))
                .map(|_| e.key.clone())
        })
        .collect())
}

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
    /// repository is already initialized. Refuses a location that holds snapshots or blobs
    /// but no backstop.json: a new salt would make every snapshot there unrestorable; its
    /// backstop.json is rebuilt with [`Repo::recover`] instead.
    pub async fn init(store: Arc<dyn Store>, recipients: &[String]) -> Result<(RepoConfig, bool)> {
        if store.stat(CONFIG_KEY).await?.is_none() {
            let data = [store.list("snapshots/").await?, store.list("blobs/").await?];
            let found = data.iter().map(Vec::len).sum::<usize>();
            if found > 0 {
                return Err(Error::input(format!(
                    "{} holds {found} snapshot and blob objects but no {CONFIG_KEY}: it was lost. A new one would make every snapshot there unrestorable; rebuild it with `backstop init --recover --identity FILE --policy P`",
                    store.describe()
                )));
            }
        }
        let config = RepoConfig {
            format: FORMAT,
            created_at: Utc::now(),
            tool_version: env!("CARGO_PKG_VERSION").to_string(),
            chunker: ChunkerParams::default(),
            dedup_salt: hex::encode(rand::random::<[u8; 32]>()),
            recipients: recipients.to_vec(),
            blob_format: BLOB_FORMAT.into(),
        };
        Self::write_config(store, config).await
    }

    async fn write_config(store: Arc<dyn Store>, config: RepoConfig) -> Result<(RepoConfig, bool)> {
        let body = serde_json::to_vec_pretty(&config)
            .map_err(|e| Error::failed(format!("encoding backstop.json: {e}")))?;
        match store.put_new(CONFIG_KEY, body).await? {
            Put::Created => Ok((config, true)),
            Put::Exists => Ok((Self::read_config(store.as_ref(), "P").await?, false)),
        }
    }

    /// Rebuilds a lost backstop.json from the newest manifest (of any policy) that the
    /// identity opens and that records the repository's salt and chunker: after a key
    /// rotation the newest manifests are sealed to the new key, and an older identity still
    /// recovers from an older one. Returns the configuration and the snapshot it came from.
    pub async fn recover(
        store: Arc<dyn Store>,
        opener: &Opener,
        recipients: &[String],
    ) -> Result<(RepoConfig, String)> {
        if store.stat(CONFIG_KEY).await?.is_some() {
            return Err(Error::input(format!(
                "{} already has its {CONFIG_KEY}; there is nothing to recover",
                store.describe()
            )));
        }
        let metas = read_metas(store.as_ref(), "snapshots/", Blobs::Drop).await?;
        let mut last_error = None;
        let mut other_keys = 0;
        for meta in metas.iter().rev() {
            let facts = match read_manifest(store.as_ref(), meta, opener).await {
                Ok(m) => m.repository,
                Err(e) if e.kind == crate::error::Kind::WrongKey => {
                    other_keys += 1;
                    continue;
                }
                Err(e) => {
                    last_error = Some(e.message);
                    continue;
                }
            };
            let Some(facts) = facts else { continue };
            let config = RepoConfig {
                format: FORMAT,
                created_at: facts.created_at,
                tool_version: env!("CARGO_PKG_VERSION").to_string(),
                chunker: facts.chunker,
                dedup_salt: facts.dedup_salt,
                recipients: recipients.to_vec(),
                blob_format: BLOB_FORMAT.into(),
            };
            config.chunker.validate()?;
            tracing::info!(
                "recovered {CONFIG_KEY} from the manifest of snapshot {}{}",
                meta.id,
                if other_keys > 0 {
                    format!(" ({other_keys} newer ones are sealed to other keys)")
                } else {
                    String::new()
                }
            );
            return Ok((Self::write_config(store, config).await?.0, meta.id.clone()));
        }
        if other_keys > 0 && other_keys == metas.len() {
            return Err(Error::new(
                crate::error::Kind::WrongKey,
                format!(
                    "cannot recover {CONFIG_KEY} of {}: the identity opens none of its {} manifests; use an identity the snapshots were sealed to",
                    store.describe(),
                    metas.len()
                ),
            ));
        }
        Err(Error::failed(format!(
            "cannot recover {CONFIG_KEY} of {}: none of its {} snapshots has a manifest that records the repository's salt{}",
            store.describe(),
            metas.len(),
            last_error.map(|e| format!(" (last problem: {e})")).unwrap_or_default()
        )))
    }

    /// backstop.json; when there is none, the error says how to create it for `policy`.
    async fn read_config(store: &dyn Store, policy: &str) -> Result<RepoConfig> {
        let body = store.get_opt(CONFIG_KEY).await?.ok_or_else(|| {
            Error::input(format!(
                "no repository at {}: create it with `backstop init --policy {policy}`",
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
        let config = Self::read_config(store.as_ref(), policy).await?;
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

    /// The key to check a snapshot's blob ids with: the one its manifest records, else (older
    /// manifests) the one derived from backstop.json and the snapshot's recipients.
    pub fn snapshot_blob_ids(
        &self,
        manifest: &Manifest,
        meta: &Meta,
        policy_key: Option<&str>,
    ) -> Result<crate::seal::BlobIds> {
        let key = match manifest.repository.as_ref() {
            Some(r) => hex::decode(&r.blob_id_key).map_err(|e| {
                Error::failed(format!(
                    "the manifest of {} holds a bad blob id key: {e}",
                    meta.id
                ))
            })?,
            None => self.blob_id_key(policy_key, &meta.encryption.recipients)?,
        };
        Ok(crate::seal::BlobIds::new(&key))
    }

    fn snapshot_prefix(&self) -> String {
        snapshots_of(&self.policy)
    }

    pub fn meta_key(&self, id: &str) -> String {
        meta_key(&self.policy, id)
    }

    /// The newest snapshot id of `policy`, from the listing alone (ids sort by time).
    pub async fn newest_snapshot_id(&self, policy: &str) -> Result<Option<String>> {
        let prefix = snapshots_of(policy);
        Ok(self
            .store
            .list(&prefix)
            .await?
            .into_iter()
            .filter_map(|e| {
                e.key
                    .strip_prefix(&prefix)?
                    .strip_suffix("/meta.json")
                    .map(str::to_string)
            })
            .max())
    }

    pub fn manifest_key(&self, id: &str) -> String {
        format!("{}{id}/manifest.age", self.snapshot_prefix())
    }

    /// This policy's snapshots (without their blob lists), and those whose meta.json is damaged.
    pub async fn listing(&self) -> Result<Listing> {
        self.listing_with(Blobs::Drop).await
    }

    pub async fn listing_with(&self, blobs: Blobs) -> Result<Listing> {
        list_metas(self.store.as_ref(), &self.snapshot_prefix(), blobs).await
    }

    /// The first sound snapshot consistent after `meta`, if any.
    pub async fn next_after(&self, meta: &Meta) -> Result<Option<Meta>> {
        Ok(self
            .listing()
            .await?
            .snapshots
            .into_iter()
            .find(|m| m.consistent_at > meta.consistent_at))
    }

    pub async fn find(&self, selector: &Selector) -> Result<Meta> {
        let unusable = |d: &DamagedMeta| {
            Error::failed(format!(
                "snapshot {} is damaged and cannot be used: {} ({})",
                d.id, d.problem, d.key
            ))
        };
        let listing = self.listing().await?;
        if let Selector::Id(id) = selector {
            if let Some(d) = listing.damaged.iter().find(|d| &d.id == id) {
                return Err(unusable(d));
            }
        }
        for d in &listing.damaged {
            tracing::warn!("snapshot {} is damaged: {} ({})", d.id, d.problem, d.key);
        }
        let all = listing.snapshots;
        let found = match selector {
            Selector::Latest => all.last(),
            Selector::Id(id) => all.iter().find(|m| &m.id == id),
            Selector::Before(t) => all.iter().rev().find(|m| m.consistent_at < *t),
        };
        if let Some(m) = found {
            // The listing dropped the blob lists; the chosen snapshot's is read again.
            let key = self.meta_key(&m.id);
            return match self
                .store
                .get_opt(&key)
                .await?
                .and_then(|b| parse_meta(&key, &b))
            {
                Some(Ok(meta)) => Ok(meta),
                Some(Err(d)) => Err(unusable(&d)),
                None => Err(Error::failed(format!(
                    "snapshot {} was removed while it was being chosen ({key})",
                    m.id
                ))),
            };
        }
        let what = match selector {
            Selector::Latest => "no snapshot".to_string(),
            Selector::Id(id) => format!("no snapshot {id}"),
            Selector::Before(t) => format!("no snapshot consistent before {}", t.to_rfc3339()),
        };
        Err(Error::input(format!(
            "{what} of policy {} in {} (list them with `backstop snapshots --policy {}`)",
            self.policy,
            self.store.describe(),
            self.policy
        )))
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
        read_manifest(self.store.as_ref(), meta, opener).await
    }

    /// Commits a snapshot: manifest.age, then meta.json. Call only when every blob is durable.
    /// Returns the meta.json as written and its size.
    pub async fn commit(
        &self,
        manifest: &Manifest,
        sealer: &Sealer,
        mut meta: Meta,
    ) -> Result<(Meta, u64)> {
        let body = serde_json::to_vec(manifest)
            .map_err(|e| Error::failed(format!("encoding manifest: {e}")))?;
        let sealed = sealer.seal(&body)?;
        let key = self.manifest_key(&manifest.snapshot_id);
        meta.manifest = format::StoredObject {
            key: key.clone(),
            size: sealed.len() as u64,
            sha256: sha256_hex(&sealed),
        };
        self.put_once(&key, sealed).await?;
        let body = serde_json::to_vec_pretty(&meta)
            .map_err(|e| Error::failed(format!("encoding meta.json: {e}")))?;
        let key = self.meta_key(&meta.id);
        let size = body.len() as u64;
        self.commit_object(&key, body, &format!("snapshot {}", meta.id))
            .await?;
        Ok((meta, size))
    }

    /// Writes the object whose presence commits something (a snapshot's meta.json, a
    /// segment's json): created once, and read back when its write cannot be confirmed (see
    /// [`Repo::confirm_commit`]). `what` names what it commits, for the errors.
    pub async fn commit_object(&self, key: &str, body: Vec<u8>, what: &str) -> Result<()> {
        if let Err(e) = self.put_once(key, body.clone()).await {
            self.confirm_commit(key, &body, what, e).await?;
        }
        Ok(())
    }

    /// After a meta.json write that was not confirmed (its answers lost, the store gone right
    /// after, a directory fsync that failed), reads it back while the store comes back, within
    /// [`COMMIT_CONFIRM`]: there with exactly these bytes, the snapshot is committed and the run
    /// succeeded; absent, the write is made again; still unreadable at the end, the error says
    /// "commit not confirmed" and names the snapshot, which the next listing shows either
    /// committed or not. The record and the repository never disagree silently.
    async fn confirm_commit(&self, key: &str, body: &[u8], what: &str, first: Error) -> Result<()> {
        if first.kind == Kind::Input {
            return Err(first); // refused credentials: nothing was written
        }
        tracing::warn!(
            "the write of {key} was not confirmed ({}); reading it back",
            first.message
        );
        let deadline = tokio::time::Instant::now() + COMMIT_CONFIRM;
        let mut wait = std::time::Duration::from_millis(500);
        loop {
            let last;
            match self.store.get_opt(key).await {
                Ok(Some(present)) if present == body => {
                    tracing::info!("{key} is stored with the bytes written: the commit holds");
                    return Ok(());
                }
                Ok(Some(_)) => {
                    return Err(Error::failed(format!(
                        "{key} exists with other content in {}; refusing to overwrite it",
                        self.store.describe()
                    )))
                }
                Ok(None) => match self.put_once(key, body.to_vec()).await {
                    Ok(()) => return Ok(()),
                    Err(e) => last = e.message,
                },
                Err(e) => last = e.message,
            }
            if tokio::time::Instant::now() + wait > deadline {
                return Err(Error::failed(format!(
                    "commit not confirmed: {what} was written, but {key} could not be read back from {} within {}s ({last}); it is committed if `backstop snapshots` lists it",
                    self.store.describe(),
                    COMMIT_CONFIRM.as_secs()
                )));
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(std::time::Duration::from_secs(8));
        }
    }
}

/// How long a backup reads an unconfirmed meta.json back before it says "commit not
/// confirmed".
const COMMIT_CONFIRM: std::time::Duration = std::time::Duration::from_secs(60);

impl Repo {
    /// Writes a new object that must not exist yet. Finding it present with exactly these
    /// bytes means an earlier attempt of this very write succeeded and only its answer was
    /// lost (the store's client retried): that is success, so the run and the repository
    /// never disagree about a commit.
    async fn put_once(&self, key: &str, body: Vec<u8>) -> Result<()> {
        match self.store.put_new(key, body.clone()).await? {
            Put::Created => Ok(()),
            Put::Exists => match self.store.get_opt(key).await? {
                Some(present) if present == body => {
                    tracing::info!("{key} is already stored with these bytes: a retried write");
                    Ok(())
                }
                _ => Err(Error::failed(format!(
                    "{key} already exists with other content in {}; refusing to overwrite it",
                    self.store.describe()
                ))),
            },
        }
    }
}

/// Reads, checks (SHA-256 against meta.json) and decrypts a snapshot's manifest.
pub async fn read_manifest(store: &dyn Store, meta: &Meta, opener: &Opener) -> Result<Manifest> {
    let key = &meta.manifest.key;
    let sealed = store
        .get_opt(key)
        .await?
        .ok_or_else(|| Error::failed(format!("{key} is missing from {}", store.describe())))?;
    let sha = sha256_hex(&sealed);
    if sha != meta.manifest.sha256 {
        return Err(Error::new(
            Kind::Damaged,
            format!(
                "{key} is damaged: its SHA-256 is {sha}, meta.json records {}",
                meta.manifest.sha256
            ),
        ));
    }
    let plain = opener.open(&sealed, key)?;
    serde_json::from_slice(&plain).map_err(|e| {
        Error::new(
            Kind::Damaged,
            format!("{key} does not hold a readable manifest: {e}"),
        )
    })
}

/// A snapshot whose meta.json exists but cannot be trusted.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct DamagedMeta {
    /// The snapshot id its key names.
    pub id: String,
    pub key: String,
    pub problem: String,
}

/// What a listing of meta.json files found.
#[derive(Debug, Default)]
pub struct Listing {
    /// Sound snapshots, oldest first. Their `blobs` are always empty: with [`Blobs::Fold`]
    /// the lists are in `blobs`.
    pub snapshots: Vec<Meta>,
    /// Snapshots whose meta.json is unreadable, truncated, empty, or names another snapshot.
    pub damaged: Vec<DamagedMeta>,
    /// The snapshots' blob lists, folded (empty with [`Blobs::Drop`]).
    pub blobs: BlobLists,
}

/// The blob lists of many snapshots, folded: each distinct record (id, stored size, SHA-256)
/// is held once, and each snapshot's list as positions in that table. 400 snapshots of
/// 4,000 blobs with 5% daily churn are 1.6 million records but only about 84,000 distinct
/// ones: folded they take about 20 MB instead of about 300 MB.
#[derive(Debug, Default)]
pub struct BlobLists {
    records: indexmap::IndexSet<BlobRef>,
    /// Per snapshot (policy, id): positions in `records`, in the order meta.json lists them.
    lists: HashMap<(String, String), Vec<u32>>,
}

impl BlobLists {
    /// Takes a snapshot's blob list into the table.
    fn fold(&mut self, meta: &mut Meta) {
        let list = std::mem::take(&mut meta.blobs)
            .into_iter()
            .map(|b| self.records.insert_full(b).0 as u32)
            .collect();
        self.lists
            .insert((meta.policy.clone(), meta.id.clone()), list);
    }

    /// The blobs a listed snapshot references, as its meta.json lists them.
    pub fn of<'a>(&'a self, meta: &Meta) -> impl Iterator<Item = &'a BlobRef> + 'a {
        self.lists
            .get(&(meta.policy.clone(), meta.id.clone()))
            .into_iter()
            .flatten()
            .filter_map(|&i| self.records.get_index(i as usize))
    }
}

/// Reads every sound `meta.json` under a prefix (a policy's, or `snapshots/` for all).
pub async fn read_metas(store: &dyn Store, prefix: &str, blobs: Blobs) -> Result<Vec<Meta>> {
    Ok(list_metas(store, prefix, blobs).await?.snapshots)
}

/// Whether a listing keeps each snapshot's blob list. It is most of a meta.json (4,000 blobs
/// for a 1 GB dump, so 400 daily snapshots hold about 280 MB of it), and only what decides
/// which blobs are alive or sound (prune, check) needs every snapshot's: they fold the lists
/// into [`BlobLists`] as each meta.json is parsed. The rest drop them, and a restore reads its
/// one snapshot's again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blobs {
    Fold,
    Drop,
}

/// Reads every `meta.json` under a prefix; see [`parse_meta`] for which are damaged.
pub async fn list_metas(store: &dyn Store, prefix: &str, blobs: Blobs) -> Result<Listing> {
    use futures::{StreamExt, TryStreamExt};
    let mut listing = Listing::default();
    let keys: Vec<String> = store
        .list(prefix)
        .await?
        .into_iter()
        .filter(|e| e.key.ends_with("/meta.json"))
        .map(|e| e.key)
        .collect();
    // Each body is parsed as it arrives: only READ_AHEAD of them are held at once.
    let mut bodies = futures::stream::iter(keys)
        .map(|k| async move { store.get_opt(&k).await.map(|b| (k, b)) })
        .buffered(runs::READ_AHEAD);
    while let Some((key, body)) = bodies.try_next().await? {
        match body.and_then(|b| parse_meta(&key, &b)) {
            Some(Ok(mut m)) => {
                match blobs {
                    Blobs::Fold => listing.blobs.fold(&mut m),
                    Blobs::Drop => m.blobs = Vec::new(),
                }
                listing.snapshots.push(m)
            }
            Some(Err(d)) => listing.damaged.push(d),
            None => {}
        }
    }
    listing
        .snapshots
        .sort_by(|a, b| (a.consistent_at, &a.id).cmp(&(b.consistent_at, &b.id)));
    Ok(listing)
}

/// Parses the meta.json stored under `key` (None when the key names none). It is damaged when
/// it does not parse, or when its id and policy differ from those its key names
/// (`snapshots/<policy>/<id>/meta.json`).
pub fn parse_meta(key: &str, body: &[u8]) -> Option<std::result::Result<Meta, DamagedMeta>> {
    let path = key.strip_suffix("/meta.json")?;
    let mut parts = path.rsplit('/');
    let (id, policy) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let damaged = |problem: String| DamagedMeta {
        id: id.to_string(),
        key: key.to_string(),
        problem,
    };
    Some(match serde_json::from_slice::<Meta>(body) {
        Ok(m) if m.id == id && m.policy == policy => Ok(m),
        Ok(m) => Err(damaged(format!(
            "meta.json names snapshot {} of policy {}, but is stored as {id} of {policy}",
            m.id, m.policy
        ))),
        Err(e) => Err(damaged(format!("meta.json is not readable ({e})"))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(id: &str, blobs: &[(u32, u32)]) -> Meta {
        let blobs: Vec<_> = blobs
            .iter()
            .map(|(n, sha)| serde_json::json!({"id": format!("{n:064x}"), "size": n, "sha256": format!("{sha:064x}")}))
            .collect();
        let t = "2026-11-30T00:00:00Z";
        serde_json::from_value(serde_json::json!({
            "format": 1, "id": id, "policy": "p", "consistent_at": t, "started_at": t,
            "finished_at": t, "tool_version": "0", "db": null, "storage": null,
            "bytes_referenced": 0, "encryption": {"scheme": "age", "recipients": []},
            "manifest": {"key": "k", "size": 0, "sha256": ""}, "blobs": blobs,
        }))
        .unwrap()
    }

    #[test]
    fn folded_lists_hold_each_record_once_and_give_each_snapshot_its_own_in_order() {
        let mut lists = BlobLists::default();
        let mut a = meta("a", &[(3, 3), (1, 1), (2, 2)]);
        // b shares two blobs with a, and records blob 2 with another SHA-256: kept apart.
        let mut b = meta("b", &[(1, 1), (2, 9), (3, 3), (4, 4)]);
        let (want_a, want_b) = (a.blobs.clone(), b.blobs.clone());
        lists.fold(&mut a);
        lists.fold(&mut b);
        assert!(a.blobs.is_empty() && b.blobs.is_empty());
        assert_eq!(lists.records.len(), 5);
        assert_eq!(lists.of(&a).cloned().collect::<Vec<_>>(), want_a);
        assert_eq!(lists.of(&b).cloned().collect::<Vec<_>>(), want_b);
        assert_eq!(lists.of(&meta("c", &[])).count(), 0);
    }
}
