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

mod controls;
pub mod render;

use controls::*;

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
    pub status: Status,
    pub target: String,
    pub observed: String,
    pub evidence: Vec<String>,
}

/// A control's verdict (DESIGN.md): `not_applicable` counts as compliant and says why;
/// `not_tested` (nothing in the window could prove it) is shown grey and is not compliant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    NonCompliant,
    NotTested,
    Compliant,
    NotApplicable,
}

impl Status {
    /// The JSON spelling, also the HTML class.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Compliant => "compliant",
            Status::NonCompliant => "non_compliant",
            Status::NotApplicable => "not_applicable",
            Status::NotTested => "not_tested",
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
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
        status: if ok {
            Status::Compliant
        } else {
            Status::NonCompliant
        },
        target,
        observed,
        evidence,
    }
}

/// A control that nothing in the window could prove: grey, never green, and not compliant.
fn not_tested(id: &'static str, title: &'static str, target: String, observed: String) -> Control {
    Control {
        status: Status::NotTested,
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
    let s = Scope::new(input);
    let (age, newest_point) = last_recovery_point_age(&s);
    let (gap, gaps) = max_recovery_point_gap(&s);
    let mut controls = vec![
        age,
        gap,
        restore_test_performed(&s),
        restore_time(&s),
        verification_success(&s),
        backup_success(&s),
        minimum_retention(&s),
        recovery_points_encrypted(&s),
        recovery_points_immutable(&s),
    ];
    controls.extend(continuous_protection(s.p, &s.snaps, input.segments, s.w));
    controls.push(storage_consistency(&s));
    let p = s.p;
    let o = s.o;
    let timeline = timeline(&s, gaps, newest_point);
    PolicyReport {
        name: p.name.clone(),
        compliant: controls.iter().all(|c| c.compliant),
        rpo: format_duration(o.rpo),
        rto: format_duration(o.rto),
        retention: format_duration(o.retention),
        repository: crate::util::mask_url(&p.repository.url),
        controls,
        timeline,
        runs: run_rows(&s),
    }
}

/// The window's backup and verify runs, newest first.
fn run_rows(s: &Scope) -> Vec<RunRow> {
    let mut runs: Vec<RunRow> = s
        .backups
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
        .chain(s.verifies.iter().map(|r| RunRow {
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
    runs
}

/// What the HTML timeline draws for the window.
fn timeline(s: &Scope, gaps: Spans, newest: Option<DateTime<Utc>>) -> Timeline {
    let seal_every = s.p.stream.as_ref().map(|st| st.seal_every);
    let (covered, uncovered) = stream_spans(&s.sealed, seal_every);
    Timeline {
        points: s
            .in_win
            .iter()
            .map(|m| (m.id.clone(), m.consistent_at))
            .collect(),
        gaps,
        verifies: s
            .verifies
            .iter()
            .map(|r| (r.started_at, r.restore_s, r.ok))
            .collect(),
        failed_backups: s
            .backups
            .iter()
            .filter(|r| !r.ok)
            .map(|r| r.started_at)
            .collect(),
        rto_s: s.o.rto.as_secs_f64(),
        start: Some(s.w.from.max(s.input.repo_created)),
        newest,
        covered,
        uncovered,
        proofs: stream_proofs(&s.snaps, &s.verifies),
    }
}

/// The spans the stream covers (segments chained by LSN joined into one) and the windows it
/// did not: holes between them, changes that waited over twice `seal_every` to be sealed
/// (from their first commit to the seal), and the time after a schema change.
type Spans = Vec<(DateTime<Utc>, DateTime<Utc>)>;
fn stream_spans(
    sealed: &[&crate::repo::streams::Segment],
    seal_every: Option<Duration>,
) -> (Spans, Spans) {
    let late = seal_every
        .and_then(|d| chrono::Duration::from_std(d * 2).ok())
        .unwrap_or(chrono::Duration::MAX);
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
        if g.sealed_at - g.first_commit_at > late {
            holes.push((g.first_commit_at, g.sealed_at));
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
