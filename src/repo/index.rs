//! The backup host's index of the blobs that committed snapshots reference, so that a backup's
//! cost does not grow with the repository's history.
//!
//! Without it, every backup read every meta.json of every policy (each lists all its
//! snapshot's blobs: about 4,000 for a 1 GB dump, so 400 daily snapshots were 280 MB of JSON
//! and as much memory). The index remembers, per repository, which meta.json files it has
//! folded in (key and size) and the blobs each one references, as positions in one table of
//! distinct blobs. A backup lists `snapshots/` (keys only), reads just the meta.json files the
//! index lacks (new snapshots, from any host or policy), drops those that are gone (pruned),
//! and after its commit adds its own. The blob listing that finds lost blobs and leftovers of
//! interrupted runs stays as it was (see the writer module), so what the store really holds still
//! decides what is reused.
//!
//! The index is a cache: it lives in the cache directory ([`crate::cache::dir`]), keyed by the
//! repository's address and its backstop.json (a re-initialised repository has a new salt),
//! and is rebuilt from the meta.json files, one at a time, when it is missing, unreadable,
//! or of another format. A meta.json whose size differs from the one folded in is read
//! again. Two hosts or policies saving it at once cost only re-reads: each save holds the
//! meta.json keys it really folded, and the next backup reconciles with the listing.
//! It holds only what meta.json already shows (blob ids, sizes, hashes of sealed bytes).

use super::format::{BlobRef, Meta};
use super::{parse_meta, runs, Repo};
use crate::error::Result;
use crate::store::Store;
use futures::{StreamExt, TryStreamExt};
use indexmap::IndexSet;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

/// 2: `blobs` holds records (an `IndexSet`, as listings fold them in [`super::BlobLists`]).
const FORMAT: u32 = 2;

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct BlobIndex {
    format: u32,
    /// SHA-256 of the repository's address and backstop.json's salt and creation time.
    identity: String,
    /// Distinct blob records: id, stored size, SHA-256 of the stored bytes.
    blobs: IndexSet<BlobRef>,
    /// Folded meta.json files: key -> (size, positions in `blobs`).
    metas: BTreeMap<String, (u64, Vec<u32>)>,
}

/// What bringing the index up to date took.
#[derive(Debug, Default, Clone, Copy)]
pub struct Synced {
    pub metas_read: usize,
    pub metas_dropped: usize,
    pub rebuilt: bool,
}

fn identity(repo: &Repo) -> String {
    hex::encode(Sha256::digest(
        format!(
            "{}\u{0}{}\u{0}{}",
            repo.store.describe(),
            repo.config.dedup_salt,
            repo.config.created_at.to_rfc3339()
        )
        .as_bytes(),
    ))
}

fn path(identity: &str) -> Option<PathBuf> {
    crate::cache::index_file(&format!("blobs-{}.json", &identity[..32]))
}

impl BlobIndex {
    /// The saved index of this repository, brought up to date with its `snapshots/` listing.
    pub async fn open(repo: &Repo) -> Result<(BlobIndex, Synced)> {
        let identity = identity(repo);
        let saved = path(&identity)
            .and_then(|p| std::fs::read(p).ok())
            .and_then(|b| {
                serde_json::from_slice::<BlobIndex>(&b)
                    .map_err(|e| tracing::debug!("the blob index is unreadable: {e}"))
                    .ok()
            })
            .filter(|i| i.format == FORMAT && i.identity == identity && i.consistent());
        let rebuilt = saved.is_none();
        let mut index = saved.unwrap_or_else(|| BlobIndex {
            format: FORMAT,
            identity,
            ..Default::default()
        });
        let mut synced = index.sync(repo.store.as_ref()).await?;
        synced.rebuilt = rebuilt;
        Ok((index, synced))
    }

    /// Every position a meta names is in the table.
    fn consistent(&self) -> bool {
        let n = self.blobs.len() as u32;
        self.metas.values().all(|(_, p)| p.iter().all(|&i| i < n))
    }

    /// Folds in the meta.json files the listing has and the index lacks (or holds at another
    /// size), and drops those the listing no longer has. A damaged meta.json is left out, as
    /// a listing of sound snapshots leaves it out.
    async fn sync(&mut self, store: &dyn Store) -> Result<Synced> {
        let listed: HashMap<String, u64> = store
            .list("snapshots/")
            .await?
            .into_iter()
            .filter(|e| e.key.ends_with("/meta.json"))
            .map(|e| (e.key, e.size))
            .collect();
        let before = self.metas.len();
        self.metas
            .retain(|key, (size, _)| listed.get(key) == Some(size));
        let mut synced = Synced {
            metas_dropped: before - self.metas.len(),
            ..Default::default()
        };
        let wanted: Vec<(String, u64)> = listed
            .into_iter()
            .filter(|(key, _)| !self.metas.contains_key(key))
            .collect();
        let mut bodies =
            futures::stream::iter(wanted)
                .map(|(key, size)| async move {
                    store.get_opt(&key).await.map(|body| (key, size, body))
                })
                .buffer_unordered(runs::READ_AHEAD);
        while let Some((key, size, body)) = bodies.try_next().await? {
            let Some(body) = body else { continue };
            if let Some(Ok(meta)) = parse_meta(&key, &body) {
                synced.metas_read += 1;
                self.add(key, size, &meta.blobs);
            }
        }
        Ok(synced)
    }

    /// Records a meta.json (its key, its size as stored, and the blobs it references).
    pub fn add(&mut self, key: String, size: u64, blobs: &[BlobRef]) {
        let positions = blobs
            .iter()
            .map(|b| match self.blobs.get_index_of(b) {
                Some(i) => i as u32,
                None => self.blobs.insert_full(b.clone()).0 as u32,
            })
            .collect();
        self.metas.insert(key, (size, positions));
    }

    /// Records a snapshot this host just committed.
    pub fn add_committed(&mut self, repo: &Repo, meta: &Meta, size: u64) {
        self.add(repo.meta_key(&meta.id), size, &meta.blobs);
    }

    /// The blobs the folded snapshots reference, by id (the first record of an id that
    /// meta.json files record differently).
    pub fn referenced(&self) -> HashMap<String, BlobRef> {
        let mut used = vec![false; self.blobs.len()];
        for (_, positions) in self.metas.values() {
            for &i in positions {
                used[i as usize] = true;
            }
        }
        let mut referenced = HashMap::new();
        for (b, _) in self.blobs.iter().zip(used).filter(|(_, u)| *u) {
            referenced.entry(b.id.clone()).or_insert_with(|| b.clone());
        }
        referenced
    }

    /// Saves the index without the blobs no folded snapshot references any more (a failure
    /// only costs re-reading meta.json files next time).
    pub fn save(mut self) {
        let Some(p) = path(&self.identity) else {
            return;
        };
        self.compact();
        crate::cache::save_json(&p, &self, "the blob index");
    }

    /// Renumbers the table to the blobs still referenced.
    fn compact(&mut self) {
        let mut new_position = vec![u32::MAX; self.blobs.len()];
        let mut blobs = IndexSet::new();
        for (_, positions) in self.metas.values_mut() {
            for p in positions.iter_mut() {
                let old = *p as usize;
                if new_position[old] == u32::MAX {
                    new_position[old] = blobs.insert_full(self.blobs[old].clone()).0 as u32;
                }
                *p = new_position[old];
            }
        }
        self.blobs = blobs;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob(n: u32) -> BlobRef {
        BlobRef {
            id: format!("{n:064x}"),
            size: n as u64,
            sha256: format!("{:064x}", n + 1000),
        }
    }

    #[test]
    fn referenced_blobs_follow_the_folded_snapshots_and_compaction_keeps_them() {
        let mut index = BlobIndex::default();
        index.add("snapshots/p/a/meta.json".into(), 10, &[blob(1), blob(2)]);
        index.add("snapshots/p/b/meta.json".into(), 11, &[blob(2), blob(3)]);
        assert_eq!(index.referenced().len(), 3);
        index.metas.remove("snapshots/p/a/meta.json");
        let referenced = index.referenced();
        assert_eq!(referenced.len(), 2);
        assert_eq!(referenced[&blob(3).id], blob(3));
        index.compact();
        assert_eq!(index.blobs.len(), 2);
        assert!(index.consistent());
        let round: BlobIndex =
            serde_json::from_slice(&serde_json::to_vec(&index).unwrap()).unwrap();
        assert_eq!(round.referenced(), referenced);
    }
}
