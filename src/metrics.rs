//! Prometheus metrics (text format 0.0.4), computed from the repository: the run records of
//! each job and the snapshot listing. The daemon serves them at `/metrics` (recomputing a
//! policy's figures after each of its jobs; the recovery point age is taken at scrape time);
//! `backup|verify|prune --metrics-file FILE` writes one policy's for node_exporter's textfile
//! collector. Run totals count the records in the repository, which prune never removes.
//!
//! The text is written here rather than through `prometheus-client`: every value is read from
//! the repository when it is rendered, not kept as a live counter, so a registry would be
//! built afresh for each scrape only to print these same lines; and that crate's encoders
//! change what scrapers and the textfile collector have read so far (its documented example
//! appends a period to every help text, and a `Family` prints its label sets in hash order, so
//! the file would reorder between writes). The format is a dozen `# HELP`/`# TYPE` families and
//! escaped label values ([`escape`]), pinned by the test below.

use crate::error::Result;
use crate::policy::Policy;
use crate::record::{BackupRecord, Header, Job};
use crate::repo::{list_metas, runs, Blobs, Repo};
use chrono::{DateTime, Utc};
use std::collections::BTreeMap;
use std::fmt::Write;

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

fn escape(label: &str) -> String {
    label
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The Prometheus text of every policy at `now`.
pub fn render(policies: &[PolicyMetrics], now: DateTime<Utc>) -> String {
    let mut out = String::new();
    let ts = |t: DateTime<Utc>| t.timestamp_millis() as f64 / 1000.0;
    let mut family = |name: &str, kind: &str, help: &str, samples: Vec<(String, f64)>| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, v) in samples {
            let _ = writeln!(out, "{name}{{{labels}}} {v}");
        }
    };
    let per_job = |f: &dyn Fn(&JobStats) -> Option<f64>| -> Vec<(String, f64)> {
        policies
            .iter()
            .flat_map(|p| {
                p.jobs.iter().filter_map(move |(job, s)| {
                    f(s).map(|v| (format!("policy=\"{}\",job=\"{job}\"", escape(&p.policy)), v))
                })
            })
            .collect()
    };
    let per_policy = |f: &dyn Fn(&PolicyMetrics) -> Option<f64>| -> Vec<(String, f64)> {
        policies
            .iter()
            .filter_map(|p| f(p).map(|v| (format!("policy=\"{}\"", escape(&p.policy)), v)))
            .collect()
    };
    family(
        "backstop_last_run_timestamp_seconds",
        "gauge",
        "When the job's last run ended (Unix time).",
        per_job(&|s| s.last_run.map(ts)),
    );
    family(
        "backstop_last_success_timestamp_seconds",
        "gauge",
        "When the job last succeeded (Unix time).",
        per_job(&|s| s.last_success.map(ts)),
    );
    family(
        "backstop_last_run_success",
        "gauge",
        "1 if the job's last run succeeded, else 0.",
        per_job(&|s| s.last_ok.map(|ok| if ok { 1.0 } else { 0.0 })),
    );
    family(
        "backstop_last_run_duration_seconds",
        "gauge",
        "How long the job's last run took.",
        per_job(&|s| s.last_duration_s),
    );
    let totals: Vec<(String, f64)> = policies
        .iter()
        .flat_map(|p| {
            p.jobs.iter().flat_map(move |(job, s)| {
                [("success", s.successes), ("failure", s.failures)]
                    .into_iter()
                    .map(move |(outcome, n)| {
                        (
                            format!(
                                "policy=\"{}\",job=\"{job}\",outcome=\"{outcome}\"",
                                escape(&p.policy)
                            ),
                            n as f64,
                        )
                    })
            })
        })
        .collect();
    family(
        "backstop_runs_total",
        "counter",
        "Runs recorded in the repository, by outcome.",
        totals,
    );
    family(
        "backstop_recovery_point_age_seconds",
        "gauge",
        "Now minus the newest snapshot's consistent_at.",
        per_policy(&|p| {
            p.newest
                .map(|n| (now - n).num_milliseconds().max(0) as f64 / 1000.0)
        }),
    );
    family(
        "backstop_rpo_seconds",
        "gauge",
        "The policy's recovery point objective.",
        per_policy(&|p| Some(p.rpo_s)),
    );
    family(
        "backstop_rto_seconds",
        "gauge",
        "The policy's recovery time objective.",
        per_policy(&|p| Some(p.rto_s)),
    );
    family(
        "backstop_verify_restore_seconds",
        "gauge",
        "The last passed verify's measured restore time.",
        per_policy(&|p| p.last_restore_s),
    );
    family(
        "backstop_snapshots",
        "gauge",
        "Snapshots of the policy in the repository.",
        per_policy(&|p| Some(p.snapshots as f64)),
    );
    family(
        "backstop_stream_verified_until_timestamp_seconds",
        "gauge",
        "Up to when a verify replayed the change stream and found every table equal (Unix time).",
        per_policy(&|p| p.stream_verified_until.map(ts)),
    );
    family(
        "backstop_backup_bytes_stored",
        "gauge",
        "Bytes the last successful backup newly stored.",
        per_policy(&|p| p.last_bytes_stored.map(|b| b as f64)),
    );
    out
}

/// The change streams the daemon follows: the newest sealed commit, the WAL the slot holds,
/// and the segments sealed (`backstop_stream_*{policy}`).
pub fn render_streams<'a>(
    streams: impl Iterator<Item = (&'a str, Option<DateTime<Utc>>, Option<i64>, u64)> + Clone,
) -> String {
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str, samples: Vec<(&str, f64)>| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (policy, v) in samples {
            let _ = writeln!(out, "{name}{{policy=\"{}\"}} {v}", escape(policy));
        }
    };
    family(
        "backstop_stream_last_commit_timestamp_seconds",
        "gauge",
        "Commit time of the newest transaction the change stream sealed (Unix time).",
        streams
            .clone()
            .filter_map(|(p, t, _, _)| t.map(|t| (p, t.timestamp_millis() as f64 / 1000.0)))
            .collect(),
    );
    family(
        "backstop_stream_lag_bytes",
        "gauge",
        "WAL the stream's slot holds on the primary.",
        streams
            .clone()
            .filter_map(|(p, _, l, _)| l.map(|l| (p, l as f64)))
            .collect(),
    );
    family(
        "backstop_stream_segments_total",
        "counter",
        "Segments this daemon's stream sealed.",
        streams.map(|(p, _, _, n)| (p, n as f64)).collect(),
    );
    out
}

/// The daemon's policy files that did not load (skipped at start, or kept at their previous
/// version after a reload): `backstop_policy_load_errors{file} 1` each.
pub fn render_load_errors<'a>(files: impl Iterator<Item = &'a str>) -> String {
    let mut out = String::from(
        "# HELP backstop_policy_load_errors Policy files that did not load (skipped, or kept at their previous version).\n# TYPE backstop_policy_load_errors gauge\n",
    );
    for f in files {
        let _ = writeln!(
            out,
            "backstop_policy_load_errors{{file=\"{}\"}} 1",
            escape(f)
        );
    }
    out
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
