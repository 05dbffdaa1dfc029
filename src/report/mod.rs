//! The RPO/RTO compliance report: controls computed from what the repository holds in
//! plaintext (meta.json, run records, backstop.json), so it needs no identity. Modelled on AWS
//! Backup Audit Manager's controls, plus the ones only a tool that measures restores can give.
//!
//! [`evaluate`] is pure: from one policy, its snapshots and run records, a window and now, to
//! the controls. Choices where the controls leave room:
//! * The window's start counts as a gap edge, but never before the repository existed: a
//!   repository created mid-window is judged from its creation (and `minimum_retention` says
//!   it is young).
//! * Gaps the retention rules thin on purpose are not failures: with a `[retention]` section,
//!   a gap that ends before the *dense horizon* (now minus the longest of
//!   `objectives.retention`, `keep_within`, `keep_daily` days and `keep_hourly` hours, within
//!   which every snapshot is kept) is listed as "thinned by retention" and does not count.
//!   Every other gap counts, including the gaps prune leaves with no `[retention]` rule behind
//!   them.
//! * Each control judges one thing, and is green only for what happened: with no verify in
//!   the window, `verification_success` and `restore_time` are `not_tested` (grey, not
//!   compliant) and `restore_test_performed` fails; with no backup runs, `backup_success` has
//!   nothing to fail while the recovery-point controls fail.
//! * Times are shown to the second; an error cut for the evidence ends in `…` (the run record
//!   holds it whole).
//! * A control that cannot apply (object lock on a local directory) is `not_applicable`,
//!   counts as compliant, and says why.

pub mod render;

use crate::objectives;
use crate::policy::{Location, Policy};
use crate::record::{BackupRecord, VerifyRecord};
use crate::repo::format::Meta;
use crate::util::format_duration;
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::time::Duration;

#[derive(Debug, Clone, Serialize)]
pub struct Window {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Control {
    pub id: &'static str,
    pub title: &'static str,
    pub compliant: bool,
    /// `compliant`, `non_compliant`, `not_applicable` or `not_tested`.
    pub status: &'static str,
    pub target: String,
    pub observed: String,
    pub evidence: Vec<String>,
}

/// What the HTML timeline draws.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Timeline {
    pub points: Vec<(String, DateTime<Utc>)>,
    /// Gaps longer than the RPO that count against it.
    pub gaps: Vec<(DateTime<Utc>, DateTime<Utc>)>,
    /// (time, restore_s, passed)
    pub verifies: Vec<(DateTime<Utc>, Option<f64>, bool)>,
    pub failed_backups: Vec<DateTime<Utc>>,
    pub rto_s: f64,
    /// Where the axis starts: the window's start, or the repository's creation when later.
    pub start: Option<DateTime<Utc>>,
    /// The newest recovery point (a snapshot or the stream's newest sealed commit).
    pub newest: Option<DateTime<Utc>>,
    /// Spans the change stream covers: runs of segments chained by LSN.
    pub covered: Vec<(DateTime<Utc>, DateTime<Utc>)>,
    /// Windows between those spans (a hole in the chain) and after schema changes.
    pub uncovered: Vec<(DateTime<Utc>, DateTime<Utc>)>,
    /// Stream proofs of verify: (from snapshot's time, to snapshot's time, passed).
    pub proofs: Vec<(DateTime<Utc>, DateTime<Utc>, bool)>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PolicyReport {
    pub name: String,
    pub compliant: bool,
    pub rpo: String,
    pub rto: String,
    pub retention: String,
    pub repository: String,
    pub controls: Vec<Control>,
    #[serde(skip)]
    pub timeline: Timeline,
    /// The window's runs, newest first: (kind, time, ok, id, summary).
    #[serde(skip)]
    pub runs: Vec<RunRow>,
}

#[derive(Debug, Clone)]
pub struct RunRow {
    pub kind: String,
    pub at: DateTime<Utc>,
    pub ok: bool,
    pub snapshot: String,
    pub summary: String,
}

/// What [`evaluate`] reads for one policy.
pub struct Input<'a> {
    pub policy: &'a Policy,
    pub repo_created: DateTime<Utc>,
    pub repo_recipients: &'a [String],
    /// The policy's sound snapshots.
    pub snapshots: &'a [Meta],
    /// Run records of kind backup and verify (any order).
    pub backups: &'a [BackupRecord],
    pub verifies: &'a [VerifyRecord],
    /// The policy's change-stream segments (empty without `[stream]`).
    pub segments: &'a [crate::repo::streams::Segment],
    pub window: &'a Window,
    pub now: DateTime<Utc>,
}

fn control(
    id: &'static str,
    title: &'static str,
    ok: bool,
    target: String,
    observed: String,
    evidence: Vec<String>,
) -> Control {
    Control {
        id,
        title,
        compliant: ok,
        status: if ok { "compliant" } else { "non_compliant" },
        target,
        observed,
        evidence,
    }
}

/// A control that nothing in the window could prove: grey, never green, and not compliant.
fn not_tested(id: &'static str, title: &'static str, target: String, observed: String) -> Control {
    Control {
        status: "not_tested",
        ..control(id, title, false, target, observed, Vec::new())
    }
}

/// A time as the report shows it: RFC 3339, to the second.
pub fn at(t: DateTime<Utc>) -> String {
    t.to_rfc3339_secs()
}

/// RFC 3339 to the second, for every time the report prints.
pub trait ToSecs {
    fn to_rfc3339_secs(&self) -> String;
}

impl ToSecs for DateTime<Utc> {
    fn to_rfc3339_secs(&self) -> String {
        self.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    }
}

fn secs(d: chrono::Duration) -> Duration {
    d.to_std().unwrap_or_default()
}

/// How long before `now` every snapshot is kept, so that older gaps are retention's intended
/// thinning; `None` without a `[retention]` section (nothing is thinned on purpose).
pub fn dense_horizon(policy: &Policy, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let r = policy.retention.as_ref()?;
    let mut keep = policy.objectives.retention;
    if let Some(w) = r.keep_within {
        keep = keep.max(w);
    }
    if let Some(d) = r.keep_daily {
        keep = keep.max(Duration::from_secs(d as u64 * 86_400));
    }
    if let Some(h) = r.keep_hourly {
        keep = keep.max(Duration::from_secs(h as u64 * 3600));
    }
    Some(now - chrono::Duration::from_std(keep).unwrap_or(chrono::Duration::MAX))
}

/// The interval between two runs of a cron schedule, measured at `at`.
fn schedule_interval(policy: &Policy, at: DateTime<Utc>) -> Option<Duration> {
    let s = policy.schedule.as_ref()?;
    let cron = s.verify.as_ref()?;
    let first = cron.next_after(at, s.timezone)?;
    let second = cron.next_after(first, s.timezone)?;
    Some(secs(second - first))
}

fn in_window(t: Option<DateTime<Utc>>, w: &Window) -> bool {
    t.is_some_and(|t| t >= w.from && t <= w.to)
}

pub fn evaluate(input: &Input) -> PolicyReport {
    let p = input.policy;
    let w = input.window;
    let o = &p.objectives;
    let rpo_c = chrono::Duration::from_std(o.rpo).unwrap_or(chrono::Duration::MAX);
    let mut snaps: Vec<&Meta> = input
        .snapshots
        .iter()
        .filter(|m| m.consistent_at <= w.to)
        .collect();
    snaps.sort_by_key(|m| m.consistent_at);
    let in_win: Vec<&Meta> = snaps
        .iter()
        .copied()
        .filter(|m| m.consistent_at >= w.from)
        .collect();
    let backups: Vec<&BackupRecord> = input
        .backups
        .iter()
        .filter(|r| in_window(Some(r.started_at), w))
        .collect();
    let verifies: Vec<&VerifyRecord> = input
        .verifies
        .iter()
        .filter(|r| in_window(Some(r.started_at), w))
        .collect();
    let mut controls = Vec::new();

    // With a stream, every sealed commit after a snapshot is a recovery point too.
    let sealed: Vec<&crate::repo::streams::Segment> = input
        .segments
        .iter()
        .filter(|s| s.last_commit_at <= w.to)
        .filter(|s| {
            snaps
                .first()
                .is_some_and(|m| s.last_commit_at >= m.consistent_at)
        })
        .collect();
    let newest_commit = sealed.iter().map(|s| s.last_commit_at).max();

    // last_recovery_point_age
    let newest = snaps.last();
    let newest_point = newest.map(|m| m.consistent_at).max(newest_commit);
    let age = newest_point.map(|t| objectives::recovery_point_age(t, w.to));
    let mut age_evidence: Vec<String> = newest_commit
        .filter(|c| newest.is_none_or(|m| *c > m.consistent_at))
        .map(|c| {
            vec![format!(
                "the change stream's newest sealed commit at {}",
                c.to_rfc3339_secs()
            )]
        })
        .unwrap_or_default();
    controls.push(control(
        "last_recovery_point_age",
        "Newest recovery point is within the RPO",
        objectives::rpo_met(newest_point, w.to, o.rpo),
        format!("at most {}", format_duration(o.rpo)),
        age.map_or("no recovery point".into(), |a| {
            format!("{} old at {}", format_duration(a), w.to.to_rfc3339_secs())
        }),
        {
            age_evidence.extend(newest.map(|m| {
                format!(
                    "snapshot {} consistent at {}",
                    m.id,
                    m.consistent_at.to_rfc3339_secs()
                )
            }));
            age_evidence
        },
    ));

    // max_recovery_point_gap
    let start = w.from.max(input.repo_created);
    let mut points: Vec<DateTime<Utc>> = snaps.iter().map(|m| m.consistent_at).collect();
    points.extend(
        sealed
            .iter()
            .flat_map(|s| [s.first_commit_at, s.last_commit_at]),
    );
    points.sort();
    let all_gaps = if start < w.to {
        objectives::gaps_over(&points, start, w.to, o.rpo)
    } else {
        Vec::new()
    };
    let horizon = dense_horizon(p, input.now);
    let (thinned, gaps): (Vec<_>, Vec<_>) = all_gaps
        .iter()
        .partition(|(_, end)| horizon.is_some_and(|h| *end < h));
    let mut edges = vec![points
        .iter()
        .copied()
        .filter(|t| *t <= start)
        .max()
        .unwrap_or(start)];
    edges.extend(points.iter().copied().filter(|t| *t > start && *t < w.to));
    edges.push(w.to);
    let longest = edges
        .windows(2)
        .filter(|e| {
            !thinned
                .iter()
                .any(|(a, b)| *a == e[0].max(start) && *b == e[1])
        })
        .map(|e| e[1] - e[0].max(start))
        .max()
        .unwrap_or_default();
    let mut evidence: Vec<String> = gaps
        .iter()
        .map(|(a, b)| {
            format!(
                "gap {} → {} ({}): no recovery point",
                a.to_rfc3339_secs(),
                b.to_rfc3339_secs(),
                format_duration(secs(*b - *a))
            )
        })
        .collect();
    evidence.extend(thinned.iter().map(|(a, b)| {
        format!(
            "gap {} → {} ({}): thinned by retention, not counted",
            a.to_rfc3339_secs(),
            b.to_rfc3339_secs(),
            format_duration(secs(*b - *a))
        )
    }));
    controls.push(control(
        "max_recovery_point_gap",
        "No interval in the window longer than the RPO without a recovery point",
        gaps.is_empty(),
        format!("at most {}", format_duration(o.rpo)),
        format!(
            "longest {} over {} recovery points",
            format_duration(secs(longest)),
            in_win.len()
        ),
        evidence,
    ));

    // restore_test_performed
    let passed: Vec<&&VerifyRecord> = verifies.iter().filter(|r| r.ok).collect();
    let last_pass = passed.iter().map(|r| r.started_at).max();
    let interval = schedule_interval(p, w.to);
    // A scheduled verify may start late and take a while: the interval plus the RPO (at most
    // an hour) of slack, stated in the target as it is computed.
    let slack = rpo_c.min(chrono::Duration::hours(1));
    let tolerance =
        interval.map(|i| chrono::Duration::from_std(i).unwrap_or(chrono::Duration::MAX) + slack);
    let recent = match (last_pass, tolerance) {
        (Some(t), Some(tol)) => w.to - t <= tol,
        (Some(_), None) => true,
        (None, _) => false,
    };
    controls.push(control(
        "restore_test_performed",
        "A restore test (verify) passed in the window",
        recent,
        match interval {
            Some(i) => format!(
                "a passed verify within the window, at most {} old at its end (the [schedule] verify interval {} plus {} of slack)",
                format_duration(secs(tolerance.unwrap_or(slack))),
                format_duration(i),
                format_duration(secs(slack))
            ),
            None => "a passed verify within the window".into(),
        },
        last_pass.map_or("no passed verify in the window".into(), |t| {
            format!("last passed verify at {}", t.to_rfc3339_secs())
        }),
        passed
            .iter()
            .rev()
            .take(5)
            .map(|r| {
                let proof = r.stream_checked.as_ref().map_or(String::new(), |s| {
                    format!(
                        ", and proved the stream's replay from snapshot {} to {} ({} transactions)",
                        s.from, s.to, s.transactions
                    )
                });
                format!(
                    "verify {} of snapshot {} passed at {}{proof}",
                    or_unknown(&r.run_id),
                    r.snapshot_id.as_deref().unwrap_or("?"),
                    r.started_at.to_rfc3339_secs()
                )
            })
            .collect(),
    ));

    // restore_time
    let measured: Vec<(DateTime<Utc>, f64, String)> = verifies
        .iter()
        .filter_map(|r| {
            Some((
                r.started_at,
                r.restore_s?,
                format!(
                    "{} (snapshot {})",
                    or_unknown(&r.run_id),
                    r.snapshot_id.as_deref().unwrap_or("?")
                ),
            ))
        })
        .collect();
    let last = measured.iter().max_by_key(|m| m.0);
    let worst = measured.iter().max_by(|a, b| a.1.total_cmp(&b.1));
    let rto = o.rto.as_secs_f64();
    let title = "Measured restore times are within the RTO";
    controls.push(if measured.is_empty() {
        not_tested(
            "restore_time",
            title,
            format!("at most {}", format_duration(o.rto)),
            "no measured restore in the window: not tested (see restore_test_performed)".into(),
        )
    } else {
        control(
            "restore_time",
            title,
            worst.is_none_or(|w| w.1 <= rto),
            format!("at most {}", format_duration(o.rto)),
            match (last, worst) {
                (Some(l), Some(w)) => format!("last {:.1}s, worst {:.1}s", l.1, w.1),
                _ => "no measured restore in the window (see restore_test_performed)".into(),
            },
            [last.map(|l| ("last", l)), worst.map(|w| ("worst", w))]
                .into_iter()
                .flatten()
                .map(|(what, m)| format!("{what}: {:.1}s in verify {} at {}", m.1, m.2, at(m.0)))
                .collect(),
        )
    });

    // verification_success
    let failed_verifies: Vec<&&VerifyRecord> = verifies.iter().filter(|r| !r.ok).collect();
    let title = "Every verify in the window passed";
    controls.push(if verifies.is_empty() {
        not_tested(
            "verification_success",
            title,
            "100% of verify runs passed".into(),
            "no verify runs in the window: not tested (see restore_test_performed)".into(),
        )
    } else {
        control(
            "verification_success",
            title,
            failed_verifies.is_empty(),
            "100% of verify runs passed".into(),
            format!(
                "{} of {} passed ({:.0}%)",
                passed.len(),
                verifies.len(),
                100.0 * passed.len() as f64 / verifies.len() as f64
            ),
            failed_verifies
                .iter()
                .map(|r| {
                    format!(
                        "verify {} of snapshot {} at {} failed: {}",
                        or_unknown(&r.run_id),
                        r.snapshot_id.as_deref().unwrap_or("?"),
                        at(r.started_at),
                        failure(&r.error, &r.problems)
                    )
                })
                .collect(),
        )
    });

    // backup_success
    let failed_backups: Vec<&&BackupRecord> = backups.iter().filter(|r| !r.ok).collect();
    controls.push(control(
        "backup_success",
        "Every backup in the window succeeded",
        failed_backups.is_empty(),
        "100% of backup runs succeeded".into(),
        if backups.is_empty() {
            "no backup runs in the window (see max_recovery_point_gap)".into()
        } else {
            format!(
                "{} of {} succeeded ({:.0}%)",
                backups.len() - failed_backups.len(),
                backups.len(),
                100.0 * (backups.len() - failed_backups.len()) as f64 / backups.len() as f64
            )
        },
        failed_backups
            .iter()
            .map(|r| {
                format!(
                    "backup at {} failed: {}",
                    r.started_at.to_rfc3339_secs(),
                    failure(&r.error, &[])
                )
            })
            .collect(),
    ));

    // minimum_retention
    let oldest = snaps.first();
    let reach = chrono::Duration::from_std(o.retention).unwrap_or(chrono::Duration::MAX);
    let needed = w.to - reach;
    let young = input.repo_created > needed;
    controls.push(control(
        "minimum_retention",
        "The oldest restorable recovery point reaches back the retention objective",
        oldest.is_some_and(|m| m.consistent_at <= needed),
        format!("a recovery point at or before {} ({} back)", needed.to_rfc3339_secs(), format_duration(o.retention)),
        match oldest {
            Some(m) => format!("oldest recovery point {} ({} back)", m.consistent_at.to_rfc3339_secs(), format_duration(secs(w.to - m.consistent_at))),
            None => "no recovery point".into(),
        },
        if young {
            vec![format!("the repository was created {}: it is younger than the retention objective and complies from {} if its snapshots are kept", input.repo_created.to_rfc3339_secs(), (input.repo_created + reach).to_rfc3339_secs())]
        } else {
            oldest.map(|m| vec![format!("snapshot {}", m.id)]).unwrap_or_default()
        },
    ));

    // recovery_points_encrypted
    let plain: Vec<&&Meta> = in_win
        .iter()
        .filter(|m| m.encryption.recipients.is_empty() || !m.encryption.scheme.starts_with("age"))
        .collect();
    let mut ev: Vec<String> = plain
        .iter()
        .map(|m| format!("snapshot {} records no age recipients", m.id))
        .collect();
    if input.repo_recipients.is_empty() {
        ev.push("backstop.json records no recipients".into());
    }
    controls.push(control(
        "recovery_points_encrypted",
        "Every recovery point is encrypted to age recipients",
        plain.is_empty() && !input.repo_recipients.is_empty(),
        "every snapshot sealed with age to the policy's public keys".into(),
        format!(
            "{} of {} snapshots in the window record age recipients",
            in_win.len() - plain.len(),
            in_win.len()
        ),
        ev,
    ));

    // recovery_points_immutable
    controls.push(match &p.repository.location {
        Location::Dir(_) => Control {
            id: "recovery_points_immutable",
            title: "Recovery points are under object lock for the retention objective",
            compliant: true,
            status: "not_applicable",
            target: "object lock retention reaching past objectives.retention".into(),
            observed: "not applicable: a local directory repository cannot enforce object lock"
                .into(),
            evidence: Vec::new(),
        },
        Location::S3 { .. } => {
            let short: Vec<String> = in_win
                .iter()
                .filter(|m| {
                    m.object_lock
                        .as_ref()
                        .is_none_or(|l| l.until < m.consistent_at + reach)
                })
                .map(|m| match &m.object_lock {
                    None => format!("snapshot {} was written without object lock", m.id),
                    Some(l) => format!(
                        "snapshot {} is locked only until {}",
                        m.id,
                        l.until.to_rfc3339_secs()
                    ),
                })
                .collect();
            control(
                "recovery_points_immutable",
                "Recovery points are under object lock for the retention objective",
                short.is_empty() && !in_win.is_empty(),
                format!(
                    "object lock until at least consistent_at + {}",
                    format_duration(o.retention)
                ),
                format!(
                    "{} of {} snapshots in the window locked long enough",
                    in_win.len() - short.len(),
                    in_win.len()
                ),
                short,
            )
        }
    });

    if let Some(c) = continuous_protection(p, &snaps, input.segments, w) {
        controls.push(c);
    }

    // storage_consistency
    let mismatched: Vec<String> = backups
        .iter()
        .filter_map(|r| {
            let st = r.storage.as_ref()?;
            let a = st.mismatches.missing_in_bucket.len();
            let b = st.mismatches.missing_in_table.len();
            let c = st.unfetchable.len();
            (a + b + c > 0).then(|| {
                format!(
                    "backup {} at {}: {a} storage.objects rows without an object, {b} objects without a row, {c} objects the source could not fetch",
                    r.snapshot_id.as_deref().unwrap_or("?"),
                    r.started_at.to_rfc3339_secs()
                )
            })
        })
        .collect();
    // With a stream, an object its row named that could not be fetched when its segment was
    // sealed leaves that span without the object.
    let unfetched: Vec<String> = sealed
        .iter()
        .filter(|g| g.last_commit_at >= w.from)
        .flat_map(|g| {
            g.documents_failed.iter().map(move |f| {
                format!(
                    "segment {} (commits {} → {}): not fetched: {f}",
                    g.id,
                    g.first_commit_at.to_rfc3339_secs(),
                    g.last_commit_at.to_rfc3339_secs()
                )
            })
        })
        .collect();
    controls.push(control(
        "storage_consistency",
        "Bucket objects and storage.objects rows agree",
        mismatched.is_empty() && unfetched.is_empty(),
        "no mismatch recorded by backups (or objects left unfetched by the stream) in the window"
            .into(),
        format!(
            "{} of {} backups recorded mismatches; {} objects the stream could not fetch",
            mismatched.len(),
            backups.len(),
            unfetched.len()
        ),
        mismatched.into_iter().chain(unfetched).collect(),
    ));

    let mut runs: Vec<RunRow> = backups
        .iter()
        .map(|r| RunRow {
            kind: "backup".into(),
            at: r.started_at,
            ok: r.ok,
            snapshot: r.snapshot_id.clone().unwrap_or_default(),
            summary: if r.ok {
                String::new()
            } else {
                failure(&r.error, &[])
            },
        })
        .chain(verifies.iter().map(|r| RunRow {
            kind: "verify".into(),
            at: r.started_at,
            ok: r.ok,
            snapshot: r.snapshot_id.clone().unwrap_or_default(),
            summary: if r.ok {
                r.restore_s
                    .map(|s| format!("restore {s:.1}s"))
                    .unwrap_or_default()
            } else {
                failure(&r.error, &r.problems)
            },
        }))
        .collect();
    runs.sort_by_key(|r| std::cmp::Reverse(r.at));
    let (covered, uncovered) = stream_spans(&sealed);
    let timeline = Timeline {
        points: in_win
            .iter()
            .map(|m| (m.id.clone(), m.consistent_at))
            .collect(),
        gaps: gaps.to_vec(),
        verifies: verifies
            .iter()
            .map(|r| (r.started_at, r.restore_s, r.ok))
            .collect(),
        failed_backups: failed_backups.iter().map(|r| r.started_at).collect(),
        rto_s: rto,
        start: Some(start),
        newest: newest_point,
        covered,
        uncovered,
        proofs: stream_proofs(&snaps, &verifies),
    };
    PolicyReport {
        name: p.name.clone(),
        compliant: controls.iter().all(|c| c.compliant),
        rpo: format_duration(o.rpo),
        rto: format_duration(o.rto),
        retention: format_duration(o.retention),
        repository: crate::util::mask_url(&p.repository.url),
        controls,
        timeline,
        runs,
    }
}

/// The spans the stream covers (segments chained by LSN joined into one) and the holes
/// between them.
type Spans = Vec<(DateTime<Utc>, DateTime<Utc>)>;
fn stream_spans(sealed: &[&crate::repo::streams::Segment]) -> (Spans, Spans) {
    let mut covered: Spans = Vec::new();
    let mut holes = Vec::new();
    let mut previous: Option<&crate::repo::streams::Segment> = None;
    for g in sealed {
        let chained = previous.is_some_and(|p| g.previous_lsn.as_deref() == Some(&p.last_lsn));
        match covered.last_mut() {
            Some(span) if chained => span.1 = g.last_commit_at,
            _ => {
                if let Some(p) = previous {
                    holes.push((p.last_commit_at, g.first_commit_at));
                }
                covered.push((g.first_commit_at, g.last_commit_at));
            }
        }
        for c in &g.schema_changes {
            holes.push((c.commit_at, g.last_commit_at));
        }
        previous = Some(g);
    }
    (covered, holes)
}

/// The stream proofs of the window's verifies, as spans between the two snapshots' times.
fn stream_proofs(
    snaps: &[&Meta],
    verifies: &[&VerifyRecord],
) -> Vec<(DateTime<Utc>, DateTime<Utc>, bool)> {
    let time = |id: &str| snaps.iter().find(|m| m.id == id).map(|m| m.consistent_at);
    verifies
        .iter()
        .filter_map(|r| {
            let s = r.stream_checked.as_ref()?;
            Some((time(&s.from)?, time(&s.to)?, r.ok && s.tables_equal))
        })
        .collect()
}

/// `continuous_protection` (only with `[stream]`): the change stream joins each snapshot of the
/// window to the next without a hole in its LSN chain, seals what commits within twice
/// `seal_every`, and leaves no window uncovered by a schema change. Its evidence lists the spans
/// the stream covers and the tables it does not protect.
fn continuous_protection(
    p: &Policy,
    snaps: &[&Meta],
    segments: &[crate::repo::streams::Segment],
    w: &Window,
) -> Option<Control> {
    let s = p.stream.as_ref()?;
    let seal = chrono::Duration::from_std(s.seal_every).unwrap_or(chrono::Duration::MAX);
    let in_win: Vec<&crate::repo::streams::Segment> = segments
        .iter()
        .filter(|g| g.last_commit_at >= w.from && g.first_commit_at <= w.to)
        .collect();
    let mut problems = Vec::new();
    for pair in in_win.windows(2) {
        if pair[1].previous_lsn.as_deref() != Some(pair[0].last_lsn.as_str()) {
            problems.push(format!(
                "hole in the stream after {} (segment {} ends at {}, the next begins after {}): the slot was dropped or recreated",
                pair[0].last_commit_at.to_rfc3339_secs(),
                pair[0].id,
                pair[0].last_lsn,
                pair[1].previous_lsn.as_deref().unwrap_or("an unknown point")
            ));
        }
    }
    for g in &in_win {
        let waited = g.sealed_at - g.first_commit_at;
        if waited > seal * 2 {
            problems.push(format!(
                "gap: changes committed at {} were sealed only at {} ({}, over twice seal_every {})",
                g.first_commit_at.to_rfc3339_secs(),
                g.sealed_at.to_rfc3339_secs(),
                format_duration(secs(waited)),
                format_duration(s.seal_every)
            ));
        }
        for c in &g.schema_changes {
            let next = snaps.iter().find(|m| m.consistent_at > c.commit_at);
            problems.push(format!(
                "not covered: table {} changed shape at {}; restores are refused from then until {}",
                c.table,
                c.commit_at.to_rfc3339_secs(),
                next.map_or("the next snapshot".into(), |m| format!(
                    "snapshot {} at {}",
                    m.id,
                    m.consistent_at.to_rfc3339_secs()
                ))
            ));
        }
    }
    // Each snapshot of the window must be followed by the stream: a snapshot taken after the
    // newest sealed segment is fine (the stream resumes from it), one the stream began after
    // is not covered.
    for m in snaps.iter().filter(|m| m.consistent_at >= w.from) {
        let after: Vec<&&crate::repo::streams::Segment> = in_win
            .iter()
            .filter(|g| g.last_commit_at > m.consistent_at)
            .collect();
        let (Some(first), Some(lsn)) = (
            after.first(),
            m.consistent_lsn
                .as_deref()
                .and_then(crate::source::pgoutput::parse_lsn),
        ) else {
            continue;
        };
        let began = first
            .previous_lsn
            .as_deref()
            .and_then(crate::source::pgoutput::parse_lsn);
        if began.is_none_or(|b| b > lsn) {
            problems.push(format!(
                "hole between snapshot {} ({}) and the stream, which resumes after {}",
                m.id,
                m.consistent_at.to_rfc3339_secs(),
                first.previous_lsn.as_deref().unwrap_or(&first.first_lsn)
            ));
        }
    }
    let transactions: u64 = in_win.iter().map(|g| g.transactions).sum();
    let mut evidence = problems.clone();
    if let (Some(a), Some(b)) = (in_win.first(), in_win.last()) {
        evidence.push(format!(
            "covered: {} → {} ({} segments, {} transactions)",
            a.first_commit_at.to_rfc3339_secs(),
            b.last_commit_at.to_rfc3339_secs(),
            in_win.len(),
            transactions
        ));
    }
    let unprotected: std::collections::BTreeSet<&String> = in_win
        .iter()
        .flat_map(|g| g.unprotected_tables.iter())
        .collect();
    if !unprotected.is_empty() {
        evidence.push(format!(
            "tables the stream does not protect (restored as their snapshot had them): {}",
            unprotected
                .iter()
                .map(|t| t.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    Some(control(
        "continuous_protection",
        "The change stream covers the time between snapshots",
        problems.is_empty(),
        format!(
            "no LSN hole between a snapshot and the next, changes sealed within {}, no window left uncovered",
            format_duration(s.seal_every * 2)
        ),
        if in_win.is_empty() {
            "no sealed segment in the window".into()
        } else {
            format!(
                "{} segments, {} transactions, {} problems",
                in_win.len(),
                transactions,
                problems.len()
            )
        },
        evidence,
    ))
}

/// A failed run's error, or its first problems.
fn failure(error: &Option<String>, problems: &[String]) -> String {
    if let Some(e) = error {
        const SHOWN: usize = 300;
        if e.chars().count() <= SHOWN {
            return e.clone();
        }
        return e.chars().take(SHOWN).collect::<String>() + "…";
    }
    if problems.is_empty() {
        "failed".into()
    } else {
        problems
            .iter()
            .take(3)
            .cloned()
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// A run id, or `?` for a record written before records carried one.
fn or_unknown(id: &str) -> &str {
    if id.is_empty() {
        "?"
    } else {
        id
    }
}

#[cfg(test)]
mod tests;
