//! Check: prove the repository intact, from the store alone.
//!
//! Without the identity: every blob every snapshot references exists with the size meta.json
//! records, and so does each manifest; with `read_data`, every stored byte is re-hashed against
//! meta.json. With the identity, additionally every manifest and blob is decrypted and each
//! blob's plaintext checked against its id and length. Every damaged or missing object is
//! named with the snapshots that depend on it.

use super::{with_shared_lock, Ctx, RunTimes};
use crate::error::{Error, Kind, Result};
pub use crate::record::figures::Damaged;
use crate::repo::blob_key;
use crate::repo::format::{BlobRef, ChunkRef};
use crate::repo::reader::BlobReader;
use crate::repo::{Blobs, Repo};
use crate::seal::{sha256_hex, BlobIds, Opener};
use futures::StreamExt;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// The identity, and the policy's dedup_key if it sets one (blob ids are keyed with it).
pub struct Key {
    pub opener: Arc<Opener>,
    pub dedup_key: Option<secrecy::SecretString>,
}

/// A damaged object is a finding; any other failure (a read that could not be made, after
/// the store's retries) ends the check with exit 1 naming what could not be read: the check
/// never reports damage it did not see.
fn damage_or_fail(e: Error) -> Result<String> {
    match e.kind {
        Kind::Damaged => Ok(e.message),
        _ => Err(e),
    }
}

/// One blob's records, one per distinct (size, SHA-256) that meta.json files give it (almost
/// always one): the record and the snapshots that hold it, as positions in the listing, so
/// that a long history holds each snapshot's id once.
type Records = Vec<(BlobRef, Vec<u32>)>;

pub struct Request {
    /// With the identity, manifests and blobs are also decrypted and their plaintext proved.
    pub key: Option<Key>,
    /// Re-hash every stored byte.
    pub read_data: bool,
}

#[derive(Debug)]
pub struct Outcome {
    pub times: RunTimes,
    pub policy: String,
    pub snapshots_checked: u64,
    pub blobs_checked: u64,
    pub bytes_read: u64,
    pub read_data: bool,
    pub decrypted: bool,
    pub damaged: Vec<Damaged>,
    pub error: Option<Error>,
}

impl Outcome {
    fn new(policy: &str, read_data: bool, decrypted: bool) -> Outcome {
        Outcome {
            times: RunTimes::start(),
            policy: policy.to_string(),
            snapshots_checked: 0,
            blobs_checked: 0,
            bytes_read: 0,
            read_data,
            decrypted,
            damaged: Vec::new(),
            error: None,
        }
    }

    pub fn not_started(policy: &str, read_data: bool, error: Error) -> Outcome {
        let mut out = Outcome::new(policy, read_data, false);
        out.error = Some(error);
        out.times.finish();
        out
    }

    /// Ran to its end and found nothing damaged.
    pub fn ok(&self) -> bool {
        self.error.is_none() && self.damaged.is_empty()
    }
}

/// Checks the repository (every snapshot of every policy that shares it is seen through the
/// blobs; this policy's snapshots are listed), under a shared lock.
pub async fn run(repo: &Repo, req: &Request, ctx: &Ctx) -> Outcome {
    let ctx = ctx.for_run();
    let mut out = Outcome::new(&repo.policy, req.read_data, req.key.is_some());
    let run_id = out.times.run_id.clone();
    let work = ctx.cancel.run(check(repo, req, &ctx, &mut out));
    let result = with_shared_lock(repo, "check", &run_id, &ctx, work).await;
    out.times.finish();
    out.error = result.err().map(|e| match e.kind {
        Kind::Failed => e.context("check could not finish (nothing found damaged is reported)"),
        _ => e,
    });
    out
}

/// The blobs a decrypted manifest uses that its meta.json does not list: prune keeps only
/// what meta.json lists, so it would delete them and the snapshot would no longer restore,
/// after checks that only read meta.json. Each is named as damage of the snapshot. (A blob
/// meta.json lists that the manifest does not use is harmless, and happens: an object whose
/// read failed after some of its chunks were stored is left out of the manifest.)
fn unlisted_blobs<'a>(
    manifest: &crate::repo::format::Manifest,
    listed: impl Iterator<Item = &'a BlobRef>,
    snapshot: &str,
) -> Vec<Damaged> {
    let listed: std::collections::BTreeSet<&str> = listed.map(|b| b.id.as_str()).collect();
    let used: std::collections::BTreeSet<&str> = manifest.chunks().map(|c| c.id.as_str()).collect();
    let damage = |id: &str, problem: &str| Damaged {
        blob: id.to_string(),
        problem: problem.to_string(),
        snapshots: vec![snapshot.to_string()],
    };
    used.difference(&listed)
        .map(|id| {
            damage(
                id,
                "the snapshot's manifest uses this blob but its meta.json does not list it: prune would delete it",
            )
        })
        .collect()
}

async fn check(repo: &Repo, req: &Request, ctx: &Ctx, rec: &mut Outcome) -> Result<()> {
    let listing = repo.listing_with(Blobs::Fold).await?;
    let (metas, lists) = (listing.snapshots, listing.blobs);
    rec.snapshots_checked = (metas.len() + listing.damaged.len()) as u64;
    let mut found = Found::default();
    found
        .damaged
        .extend(listing.damaged.into_iter().map(|d| Damaged {
            blob: d.key,
            problem: d.problem,
            snapshots: vec![d.id],
        }));
    let users = Users::of(&metas, &lists);
    rec.blobs_checked = users.records.len() as u64;
    let stored: HashMap<String, u64> = repo.stored_blobs().await?;
    let (intact, stored_found) = users.compare_stored(repo, &stored, req).await?;
    found.add(stored_found);
    let (plain_len, manifests_found) = check_manifests(repo, &metas, &lists, req).await?;
    found.add(manifests_found);
    drop(lists);
    if req.read_data || req.key.is_some() {
        found.add(users.read_blobs(repo, intact, req, &plain_len, ctx).await?);
    }
    found
        .damaged
        .extend(check_segments(repo, &stored, req.read_data, rec).await?);
    found.damaged.sort_by(|a, b| a.blob.cmp(&b.blob));
    rec.damaged = found.damaged;
    rec.bytes_read += found.bytes_read;
    Ok(())
}

/// What a step of the check found, and how much it read.
#[derive(Default)]
struct Found {
    damaged: Vec<Damaged>,
    bytes_read: u64,
}

impl Found {
    fn add(&mut self, other: Found) {
        self.damaged.extend(other.damaged);
        self.bytes_read += other.bytes_read;
    }
}

/// Every blob the snapshots use, with its records, and which snapshot sealed it.
struct Users<'a> {
    metas: &'a [crate::repo::format::Meta],
    /// Each blob's records, grouped by what meta.json says of it (size and SHA-256):
    /// snapshots whose meta.json disagree are judged apart, each against the stored bytes.
    records: BTreeMap<String, Records>,
    /// The snapshot whose recipients each blob was sealed to (the first naming it).
    sealed_by: HashMap<String, usize>,
}

impl<'a> Users<'a> {
    fn of(metas: &'a [crate::repo::format::Meta], lists: &crate::repo::BlobLists) -> Users<'a> {
        let mut records: BTreeMap<String, Records> = BTreeMap::new();
        let mut sealed_by: HashMap<String, usize> = HashMap::new();
        for (n, m) in metas.iter().enumerate() {
            for b in lists.of(m) {
                let recs = records.entry(b.id.clone()).or_default();
                match recs.iter_mut().find(|(r, _)| r == b) {
                    Some((_, snaps)) => snaps.push(n as u32),
                    None => recs.push((b.clone(), vec![n as u32])),
                }
                sealed_by.entry(b.id.clone()).or_insert(n);
            }
        }
        Users {
            metas,
            records,
            sealed_by,
        }
    }

    fn sealed_to(&self, id: &str) -> Option<&'a Vec<String>> {
        let metas = self.metas;
        self.sealed_by
            .get(id)
            .map(|&n| &metas[n].encryption.recipients)
    }

    fn named<'b>(&self, snaps: impl Iterator<Item = &'b u32>) -> Vec<String> {
        snaps.map(|&n| self.metas[n as usize].id.clone()).collect()
    }

    /// The snapshots that use a blob.
    fn of_blob(&self, id: &str) -> Vec<String> {
        self.records
            .get(id)
            .map(|r| self.named(r.iter().flat_map(|r| r.1.iter())))
            .unwrap_or_default()
    }

    /// Every blob present with the size meta.json records (with several records, the stored
    /// bytes hashed against each when data is read). Returns the records still to be read, and
    /// what it found.
    async fn compare_stored(
        &self,
        repo: &Repo,
        stored: &HashMap<String, u64>,
        req: &Request,
    ) -> Result<(Vec<BlobRef>, Found)> {
        let (key, read_data) = (&req.key, req.read_data);
        let mut found = Found::default();
        let mut intact = Vec::new();
        for (id, records) in &self.records {
            let Some(size) = stored.get(id) else {
                found.damaged.push(Damaged {
                    blob: id.clone(),
                    problem: format!("missing ({})", blob_key(id)),
                    snapshots: self.of_blob(id),
                });
                continue;
            };
            // With one record, the stored bytes are judged against it later; with several
            // (the meta.json files disagree), the stored bytes are hashed here when data is
            // read, and each record that does not match names its snapshots.
            let stored_sha = if records.len() > 1 && (read_data || key.is_some()) {
                let bytes = repo.store.get_opt(&blob_key(id)).await?;
                found.bytes_read += bytes.as_ref().map_or(0, |b| b.len() as u64);
                bytes.map(|b| sha256_hex(&b))
            } else {
                None
            };
            for (r, snaps) in records {
                let problem = if *size != r.size {
                    Some(format!("{size} bytes stored, meta.json records {}", r.size))
                } else {
                    match &stored_sha {
                        Some(sha) if *sha != r.sha256 => Some(format!(
                            "the stored bytes' SHA-256 is {sha}, these snapshots' meta.json records {}",
                            r.sha256
                        )),
                        _ => None,
                    }
                };
                match problem {
                    Some(problem) => found.damaged.push(Damaged {
                        blob: id.clone(),
                        problem,
                        snapshots: self.named(snaps.iter()),
                    }),
                    // A record the stored bytes were already hashed against needs no second
                    // read unless the plaintext is to be proved too.
                    None if stored_sha.is_some() && key.is_none() => {}
                    None => intact.push(r.clone()),
                }
            }
        }
        Ok((intact, found))
    }

    /// Reads every intact blob: with the identity, decrypted and its plaintext proved against
    /// its keyed id and length (one reader per set of recipients: blob ids are keyed with
    /// them); without, its stored bytes re-hashed against meta.json.
    async fn read_blobs(
        &self,
        repo: &Repo,
        intact: Vec<BlobRef>,
        req: &Request,
        plain_len: &HashMap<String, u32>,
        ctx: &Ctx,
    ) -> Result<Found> {
        let mut found = Found::default();
        let total: u64 = intact.iter().map(|b| b.size).sum();
        let progress = ctx.progress.bar("check", Some(total));
        let mut readers: HashMap<Vec<String>, Arc<BlobReader>> = HashMap::new();
        if let Some(k) = &req.key {
            for b in &intact {
                let recipients = self.sealed_to(&b.id).cloned().unwrap_or_default();
                if readers.contains_key(&recipients) {
                    continue;
                }
                let ids = BlobIds::new(
                    &repo.blob_id_key(
                        k.dedup_key
                            .as_ref()
                            .map(secrecy::ExposeSecret::expose_secret),
                        &recipients,
                    )?,
                );
                let refs: Vec<BlobRef> = intact
                    .iter()
                    .filter(|x| self.sealed_to(&x.id) == Some(&recipients))
                    .cloned()
                    .collect();
                let reader = BlobReader::from_refs(
                    repo.store.clone(),
                    k.opener.clone(),
                    ids,
                    refs,
                    "the repository",
                );
                readers.insert(recipients, Arc::new(reader));
            }
        }
        let store = repo.store.clone();
        let results: Vec<Result<(String, u64, Option<String>)>> = futures::stream::iter(intact)
            .map(|b| {
                let reader = self.sealed_to(&b.id).and_then(|r| readers.get(r)).cloned();
                let (store, len) = (store.clone(), plain_len.get(&b.id).copied());
                async move {
                    let problem = match (reader, len) {
                        (Some(reader), Some(len)) => reader
                            .fetch(ChunkRef {
                                id: b.id.clone(),
                                len,
                            })
                            .await
                            .err()
                            .map(damage_or_fail)
                            .transpose(),
                        _ => match store.get_opt(&blob_key(&b.id)).await {
                            Ok(Some(bytes)) => Ok((sha256_hex(&bytes) != b.sha256).then(|| {
                                "its stored bytes' SHA-256 differs from meta.json's".to_string()
                            })),
                            Ok(None) => Ok(Some("missing".into())),
                            Err(e) => Err(e),
                        },
                    };
                    problem.map(|p| (b.id, b.size, p))
                }
            })
            .buffer_unordered(8)
            .inspect(|r| progress.inc(r.as_ref().map_or(0, |(_, size, _)| *size)))
            .collect()
            .await;
        progress.finish();
        for result in results {
            let (id, size, problem) = result?;
            found.bytes_read += size;
            if let Some(problem) = problem {
                found.damaged.push(Damaged {
                    snapshots: self.of_blob(&id),
                    blob: id,
                    problem,
                });
            }
        }
        Ok(found)
    }
}

/// Manifests: present with their size; read (and decrypted) when asked, and then compared
/// with meta.json's blob list. Returns the plaintext length of every chunk the decrypted
/// manifests name, and what it found.
async fn check_manifests(
    repo: &Repo,
    metas: &[crate::repo::format::Meta],
    lists: &crate::repo::BlobLists,
    req: &Request,
) -> Result<(HashMap<String, u32>, Found)> {
    let mut plain_len: HashMap<String, u32> = HashMap::new();
    let mut found = Found::default();
    for m in metas {
        let k = &m.manifest.key;
        let problem = match repo.store.stat(k).await? {
            None => Some("missing".to_string()),
            Some(s) if s != m.manifest.size => Some(format!(
                "{s} bytes stored, meta.json records {}",
                m.manifest.size
            )),
            Some(_) => None,
        };
        let problem = match (problem, &req.key) {
            (Some(p), _) => Some(p),
            (None, Some(k)) => match repo.read_manifest(m, &k.opener).await {
                Ok(manifest) => {
                    found
                        .damaged
                        .extend(unlisted_blobs(&manifest, lists.of(m), &m.id));
                    for ChunkRef { id, len } in manifest.chunks() {
                        plain_len.insert(id.clone(), *len);
                    }
                    found.bytes_read += m.manifest.size;
                    None
                }
                // A key that opens none of it is the wrong key, not damage.
                Err(e) if e.kind == Kind::WrongKey => return Err(e),
                Err(e) => Some(damage_or_fail(e)?),
            },
            (None, None) if req.read_data => match repo.store.get_opt(k).await? {
                Some(bytes) => {
                    found.bytes_read += bytes.len() as u64;
                    (sha256_hex(&bytes) != m.manifest.sha256)
                        .then(|| "its SHA-256 differs from meta.json's".to_string())
                }
                None => Some("missing".into()),
            },
            (None, None) => None,
        };
        if let Some(problem) = problem {
            found.damaged.push(Damaged {
                blob: k.clone(),
                problem,
                snapshots: vec![m.id.clone()],
            });
        }
    }
    Ok((plain_len, found))
}

/// The policy's change-stream segments: every blob present with its recorded size (and, with
/// `read_data`, its SHA-256), and the chain without a hole: each segment begins where the one
/// before it ended. A hole (a dropped slot) is damage of the segment after it.
async fn check_segments(
    repo: &Repo,
    stored: &HashMap<String, u64>,
    read_data: bool,
    rec: &mut Outcome,
) -> Result<Vec<Damaged>> {
    let segments = crate::repo::streams::list(repo.store.as_ref(), &repo.policy).await?;
    let mut out = Vec::new();
    let name = |s: &crate::repo::streams::Segment| vec![format!("segment {}", s.id)];
    for pair in segments.windows(2) {
        if pair[1].previous_lsn.as_deref() != Some(pair[0].last_lsn.as_str()) {
            out.push(Damaged {
                blob: crate::repo::streams::key(&repo.policy, &pair[1].id),
                problem: format!(
                    "the change stream has a hole: segment {} ends at {}, the next begins after {} (was the slot dropped?)",
                    pair[0].id,
                    pair[0].last_lsn,
                    pair[1].previous_lsn.as_deref().unwrap_or("an unknown point")
                ),
                snapshots: name(&pair[1]),
            });
        }
    }
    for seg in &segments {
        rec.blobs_checked += seg.blobs.len() as u64;
        for b in &seg.blobs {
            let problem = match stored.get(&b.id) {
                None => Some(format!("missing ({})", blob_key(&b.id))),
                Some(size) if *size != b.size => Some(format!(
                    "{size} bytes stored, the segment records {}",
                    b.size
                )),
                Some(_) if read_data => match repo.store.get_opt(&blob_key(&b.id)).await? {
                    None => Some("missing".into()),
                    Some(bytes) => {
                        rec.bytes_read += bytes.len() as u64;
                        (sha256_hex(&bytes) != b.sha256).then(|| {
                            "its stored bytes' SHA-256 differs from the segment's record".into()
                        })
                    }
                },
                Some(_) => None,
            };
            if let Some(problem) = problem {
                out.push(Damaged {
                    blob: b.id.clone(),
                    problem,
                    snapshots: name(seg),
                });
            }
        }
    }
    Ok(out)
}

/// The run record of this operation.
impl From<&Outcome> for crate::record::CheckRecord {
    fn from(o: &Outcome) -> Self {
        crate::record::CheckRecord {
            kind: crate::record::Job::Check,
            ok: o.ok(),
            policy: o.policy.clone(),
            run_id: o.times.run_id.clone(),
            started_at: o.times.started_at,
            finished_at: o.times.finished_at,
            duration_s: o.times.duration_s,
            snapshots_checked: o.snapshots_checked,
            blobs_checked: o.blobs_checked,
            bytes_read: o.bytes_read,
            read_data: o.read_data,
            decrypted: o.decrypted,
            damaged: o.damaged.clone(),
            tool_version: crate::record::TOOL_VERSION.to_string(),
            error: crate::record::error_text(&o.error),
        }
    }
}
