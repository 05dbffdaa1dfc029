//! Prometheus metrics (text format 0.0.4), computed from the repository: the run records of
//! each job and the snapshot listing. The daemon serves them at `/metrics` (recomputing a
//! policy's figures after each of its jobs; the recovery point age is taken at scrape time);
//! `backup|verify|prune --metrics-file FILE` writes one policy's for node_exporter's textfile
//! collector. Run totals count the records in the repository, which prune never removes.
//!
//! The text is encoded by `prometheus-client` (its Prometheus text encoder, with escaping):
//! every value is read from the repository when it is rendered, not kept as a live counter, so
//! each rendering hands the registry one collector holding the families it computed, in a fixed
//! order (the registry's own `Family` would print label sets in hash order).

use crate::error::Result;
use crate::policy::Policy;
use crate::record::{BackupRecord, Header, Job};
use crate::repo::{list_metas, runs, Blobs, Repo};
use chrono::{DateTime, Utc};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use std::collections::BTreeMap;

pub const JOBS: [Job; 4] = [Job::Backup, Job::Verify, Job::Prune, Job::Check];

#[derive(Debug, Clone, Default)]
pub struct JobStats {
    pub last_run: Option<DateTime<Utc>>,
    pub last_success: Option<DateTime<Utc>>,
    pub last_ok: Option<bool>,
    pub last_duration_s: Option<f64>,
    pub successes: u64,
    pub failures: u64,
}

#[derive(Debug, Clone, Default)]
pub struct PolicyMetrics {
    pub policy: String,
    pub rpo_s: f64,
    pub rto_s: f64,
    pub newest: Option<DateTime<Utc>>,
    pub snapshots: u64,
    pub last_restore_s: Option<f64>,
    pub last_bytes_stored: Option<u64>,
    /// The newer snapshot's time of the last passed verify whose stream proof held.
    pub stream_verified_until: Option<DateTime<Utc>>,
    pub jobs: BTreeMap<Job, JobStats>,
}

/// When a run ended: its `finished_at`, or its start in a record without one.
fn ended(r: &Header) -> DateTime<Utc> {
    if r.finished_at > DateTime::<Utc>::default() {
        r.finished_at
    } else {
        r.started_at
    }
}

/// One job's figures from its records (any order).
pub fn job_stats(records: &[Header]) -> JobStats {
    let mut sorted: Vec<&Header> = records.iter().collect();
    sorted.sort_by_key(|r| r.started_at);
    let mut s = JobStats::default();
    for r in &sorted {
        if r.ok {
            s.successes += 1;
            s.last_success = Some(ended(r));
        } else {
            s.failures += 1;
        }
    }
    if let Some(last) = sorted.last() {
        s.last_run = Some(ended(last));
        s.last_ok = Some(last.ok);
        s.last_duration_s = Some(last.duration_s);
    }
    s
}

/// The headers of run records already read, by key: a long-running daemon reads each record
/// once, not every record at every refresh (records are written once and never change).
#[derive(Default)]
pub struct RecordCache {
    headers: std::sync::Mutex<std::collections::HashMap<String, Header>>,
}

impl RecordCache {
    /// The headers of every record of `job`, in key order, reading only the new ones.
    async fn headers(&self, repo: &Repo, job: Job) -> Result<Vec<(String, Header)>> {
        let store = repo.store.as_ref();
        let keys = runs::keys(store, &repo.policy, job).await?;
        let missing: Vec<String> = {
            let known = crate::util::lock(&self.headers);
            keys.iter()
                .filter(|k| !known.contains_key(*k))
                .cloned()
                .collect()
        };
        let fresh: Vec<(String, Header)> = runs::read_keys(store, missing).await?;
        let mut known = crate::util::lock(&self.headers);
        known.extend(fresh);
        Ok(keys
            .into_iter()
            .filter_map(|k| known.get(&k).cloned().map(|h| (k, h)))
            .collect())
    }
}

/// The newest successful record of a job, read whole.
async fn last_ok<T: serde::de::DeserializeOwned>(
    repo: &Repo,
    headers: &[(String, Header)],
) -> Result<Option<T>> {
    let Some((key, _)) = headers
        .iter()
        .filter(|(_, h)| h.ok)
        .max_by_key(|(_, h)| h.started_at)
    else {
        return Ok(None);
    };
    let read = runs::read_keys::<T>(repo.store.as_ref(), vec![key.clone()]).await?;
    Ok(read.into_iter().next().map(|(_, r)| r))
}

impl PolicyMetrics {
    pub async fn from_repository(policy: &Policy, repo: &Repo) -> Result<PolicyMetrics> {
        Self::from_repository_with(policy, repo, &RecordCache::default()).await
    }

    /// [`PolicyMetrics::from_repository`], reading only the records `cache` has not seen.
    pub async fn from_repository_with(
        policy: &Policy,
        repo: &Repo,
        cache: &RecordCache,
    ) -> Result<PolicyMetrics> {
        let store = repo.store.as_ref();
        let listing =
            list_metas(store, &crate::repo::snapshots_of(&policy.name), Blobs::Drop).await?;
        let mut m = PolicyMetrics {
            policy: policy.name.clone(),
            rpo_s: policy.objectives.rpo.as_secs_f64(),
            rto_s: policy.objectives.rto.as_secs_f64(),
            newest: listing.snapshots.last().map(|s| s.consistent_at),
            snapshots: listing.snapshots.len() as u64,
            ..PolicyMetrics::default()
        };
        for job in JOBS {
            let headers = cache.headers(repo, job).await?;
            let records: Vec<Header> = headers.iter().map(|(_, h)| h.clone()).collect();
            m.jobs.insert(job, job_stats(&records));
            match job {
                Job::Verify => {
                    let last: Option<crate::record::VerifyRecord> = last_ok(repo, &headers).await?;
                    m.last_restore_s = last.as_ref().and_then(|r| r.restore_s);
                    m.stream_verified_until = last
                        .and_then(|r| r.stream_checked)
                        .filter(|c| c.tables_equal)
                        .and_then(|c| c.to_consistent_at);
                }
                Job::Backup => {
                    let last: Option<BackupRecord> = last_ok(repo, &headers).await?;
                    m.last_bytes_stored = last.as_ref().map(BackupRecord::bytes_stored);
                }
                _ => {}
            }
        }
        Ok(m)
    }
}

/// A sample's labels, in order.
type Labels = Vec<(&'static str, String)>;

/// One metric family as rendered: its samples, each a label set and a value. A counter's name
/// ends in `_total`, as it is scraped.
#[derive(Debug)]
struct Family {
    name: &'static str,
    help: &'static str,
    counter: bool,
    samples: Vec<(Labels, f64)>,
}

fn gauge(name: &'static str, help: &'static str, samples: Vec<(Labels, f64)>) -> Family {
    Family {
        name,
        help,
        counter: false,
        samples,
    }
}

fn counter(name: &'static str, help: &'static str, samples: Vec<(Labels, f64)>) -> Family {
    Family {
        counter: true,
        ..gauge(name, help, samples)
    }
}

/// The families of one rendering, computed before it: a collector, so the registry encodes
/// what was read from the repository as it is, in this order.
#[derive(Debug)]
struct Families(Vec<Family>);

impl Collector for Families {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        for f in &self.0 {
            let (name, kind) = match f.name.strip_suffix("_total").filter(|_| f.counter) {
                Some(base) => (base, MetricType::Counter),
                None => (f.name, MetricType::Gauge),
            };
            let mut family = encoder.encode_descriptor(name, f.help, None, kind)?;
            for (labels, v) in &f.samples {
                let sample = family.encode_family(labels)?;
                if f.counter {
                    ConstCounter::new(*v as u64).encode(sample)?;
                } else {
                    ConstGauge::new(*v).encode(sample)?;
                }
            }
        }
        Ok(())
    }
}

/// Prometheus text format 0.0.4 of `families`.
fn text(families: Vec<Family>) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Families(families)));
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry) {
        tracing::warn!("metrics: encoding failed: {e}");
    }
    out
}

fn policy_label(policy: &str) -> Labels {
    vec![("policy", policy.to_string())]
}

/// The Prometheus text of every policy at `now`.
pub fn render(policies: &[PolicyMetrics], now: DateTime<Utc>) -> String {
    let ts = |t: DateTime<Utc>| t.timestamp_millis() as f64 / 1000.0;
    let per_job = |f: &dyn Fn(&JobStats) -> Option<f64>| -> Vec<(Labels, f64)> {
        policies
            .iter()
            .flat_map(|p| {
                p.jobs.iter().filter_map(move |(job, s)| {
                    let labels = vec![("policy", p.policy.clone()), ("job", job.to_string())];
                    f(s).map(|v| (labels, v))
                })
            })
            .collect()
    };
    let per_policy = |f: &dyn Fn(&PolicyMetrics) -> Option<f64>| -> Vec<(Labels, f64)> {
        policies
            .iter()
            .filter_map(|p| f(p).map(|v| (policy_label(&p.policy), v)))
            .collect()
    };
    let totals: Vec<(Labels, f64)> = policies
        .iter()
        .flat_map(|p| {
            p.jobs.iter().flat_map(move |(job, s)| {
                [("success", s.successes), ("failure", s.failures)]
                    .into_iter()
                    .map(move |(outcome, n)| {
                        let labels = vec![
                            ("policy", p.policy.clone()),
                            ("job", job.to_string()),
                            ("outcome", outcome.to_string()),
                        ];
                        (labels, n as f64)
                    })
            })
        })
        .collect();
    text(vec![
        gauge(
            "backstop_last_run_timestamp_seconds",
            "When the job's last run ended (Unix time).",
            per_job(&|s| s.last_run.map(ts)),
        ),
        gauge(
            "backstop_last_success_timestamp_seconds",
            "When the job last succeeded (Unix time).",
            per_job(&|s| s.last_success.map(ts)),
        ),
        gauge(
            "backstop_last_run_success",
            "1 if the job's last run succeeded, else 0.",
            per_job(&|s| s.last_ok.map(|ok| if ok { 1.0 } else { 0.0 })),
        ),
        gauge(
            "backstop_last_run_duration_seconds",
            "How long the job's last run took.",
            per_job(&|s| s.last_duration_s),
        ),
        counter(
            "backstop_runs_total",
            "Runs recorded in the repository, by outcome.",
            totals,
        ),
        gauge(
            "backstop_recovery_point_age_seconds",
            "Now minus the newest snapshot's consistent_at.",
            per_policy(&|p| {
                p.newest
                    .map(|n| (now - n).num_milliseconds().max(0) as f64 / 1000.0)
            }),
        ),
        gauge(
            "backstop_rpo_seconds",
            "The policy's recovery point objective.",
            per_policy(&|p| Some(p.rpo_s)),
        ),
        gauge(
            "backstop_rto_seconds",
            "The policy's recovery time objective.",
            per_policy(&|p| Some(p.rto_s)),
        ),
        gauge(
            "backstop_verify_restore_seconds",
            "The last passed verify's measured restore time.",
            per_policy(&|p| p.last_restore_s),
        ),
        gauge(
            "backstop_snapshots",
            "Snapshots of the policy in the repository.",
            per_policy(&|p| Some(p.snapshots as f64)),
        ),
        gauge(
            "backstop_stream_verified_until_timestamp_seconds",
            "Up to when a verify replayed the change stream and found every table equal (Unix time).",
            per_policy(&|p| p.stream_verified_until.map(ts)),
        ),
        gauge(
            "backstop_backup_bytes_stored",
            "Bytes the last successful backup newly stored.",
            per_policy(&|p| p.last_bytes_stored.map(|b| b as f64)),
        ),
    ])
}

/// The change streams the daemon follows: the newest sealed commit, the WAL the slot holds,
/// and the segments sealed (`backstop_stream_*{policy}`).
pub fn render_streams<'a>(
    streams: impl Iterator<Item = (&'a str, Option<DateTime<Utc>>, Option<i64>, u64)> + Clone,
) -> String {
    text(vec![
        gauge(
            "backstop_stream_last_commit_timestamp_seconds",
            "Commit time of the newest transaction the change stream sealed (Unix time).",
            streams
                .clone()
                .filter_map(|(p, t, _, _)| {
                    t.map(|t| (policy_label(p), t.timestamp_millis() as f64 / 1000.0))
                })
                .collect(),
        ),
        gauge(
            "backstop_stream_lag_bytes",
            "WAL the stream's slot holds on the primary.",
            streams
                .clone()
                .filter_map(|(p, _, l, _)| l.map(|l| (policy_label(p), l as f64)))
                .collect(),
        ),
        counter(
            "backstop_stream_segments_total",
            "Segments this daemon's stream sealed.",
            streams
                .map(|(p, _, _, n)| (policy_label(p), n as f64))
                .collect(),
        ),
    ])
}

/// The daemon's policy files that did not load (skipped at start, or kept at their previous
/// version after a reload): `backstop_policy_load_errors{file} 1` each.
pub fn render_load_errors<'a>(files: impl Iterator<Item = &'a str>) -> String {
    text(vec![gauge(
        "backstop_policy_load_errors",
        "Policy files that did not load (skipped, or kept at their previous version).",
        files
            .map(|f| (vec![("file", f.to_string())], 1.0))
            .collect(),
    )])
}

/// Writes one policy's metrics to `path` atomically (for node_exporter's textfile collector).
pub async fn write_file(path: &std::path::Path, policy: &Policy, repo: &Repo) -> Result<()> {
    let m = PolicyMetrics::from_repository(policy, repo).await?;
    let text = render(&[m], Utc::now());
    crate::localfs::write_file_atomically(path, std::io::Cursor::new(text.into_bytes()), true).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn renders_every_family_with_help_and_type() {
        let records = vec![
            json!({"ok": true, "started_at": "2026-11-28T03:00:00Z", "finished_at": "2026-11-28T03:01:00Z", "duration_s": 60.0}),
            json!({"ok": false, "started_at": "2026-11-29T03:00:00Z", "finished_at": "2026-11-29T03:00:05Z", "duration_s": 5.0}),
        ];
        let mut p = PolicyMetrics {
            policy: "food\"biz".into(),
            rpo_s: 86400.0,
            rto_s: 3600.0,
            snapshots: 3,
            ..Default::default()
        };
        p.newest = Some("2026-11-28T03:00:00Z".parse().unwrap());
        let records: Vec<Header> = records
            .into_iter()
            .map(|r| serde_json::from_value(r).unwrap())
            .collect();
        p.jobs.insert(Job::Backup, job_stats(&records));
        let text = render(&[p], "2026-11-29T03:00:00Z".parse().unwrap());
        assert!(
            text.contains(
                "backstop_runs_total{policy=\"food\\\"biz\",job=\"backup\",outcome=\"failure\"} 1"
            ),
            "{text}"
        );
        assert!(text.contains("backstop_last_run_success{policy=\"food\\\"biz\",job=\"backup\"} 0"));
        assert!(text.contains("backstop_last_success_timestamp_seconds{policy=\"food\\\"biz\",job=\"backup\"} 1795834860"));
        assert!(text.contains("backstop_recovery_point_age_seconds{policy=\"food\\\"biz\"} 86400"));
        assert_eq!(text.matches("# TYPE ").count(), 12);
    }
}
