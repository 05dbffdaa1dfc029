//! The controls, one function each, over a [`Scope`]: what one policy's window holds.

use super::*;

/// What every control of one policy reads: the snapshots, runs and segments of the window.
pub(super) struct Scope<'a> {
    pub(super) input: &'a Input<'a>,
    pub(super) p: &'a Policy,
    pub(super) w: &'a Window,
    pub(super) o: &'a crate::policy::Objectives,
    pub(super) rpo_c: chrono::Duration,
    /// Sound snapshots up to the window's end, oldest first.
    pub(super) snaps: Vec<&'a Meta>,
    /// Those in the window.
    pub(super) in_win: Vec<&'a Meta>,
    pub(super) backups: Vec<&'a BackupRecord>,
    pub(super) verifies: Vec<&'a VerifyRecord>,
    /// With a stream, every sealed commit after a snapshot is a recovery point too.
    pub(super) sealed: Vec<&'a crate::repo::streams::Segment>,
    pub(super) newest_commit: Option<DateTime<Utc>>,
}

impl<'a> Scope<'a> {
    pub(super) fn new(input: &'a Input<'a>) -> Scope<'a> {
        let (p, w) = (input.policy, input.window);
        let mut snaps: Vec<&Meta> = input
            .snapshots
            .iter()
            .filter(|m| m.consistent_at <= w.to)
            .collect();
        snaps.sort_by_key(|m| m.consistent_at);
        let in_win = snaps
            .iter()
            .copied()
            .filter(|m| m.consistent_at >= w.from)
            .collect();
        let backups = input
            .backups
            .iter()
            .filter(|r| in_window(Some(r.started_at), w))
            .collect();
        let verifies = input
            .verifies
            .iter()
            .filter(|r| in_window(Some(r.started_at), w))
            .collect();
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
        Scope {
            input,
            p,
            w,
            o: &p.objectives,
            rpo_c: chrono::Duration::from_std(p.objectives.rpo).unwrap_or(chrono::Duration::MAX),
            snaps,
            in_win,
            backups,
            verifies,
            sealed,
            newest_commit,
        }
    }
}

/// `last_recovery_point_age`, and the newest recovery point (for the timeline).
pub(super) fn last_recovery_point_age(s: &Scope) -> (Control, Option<DateTime<Utc>>) {
    let w = s.w;
    let o = s.o;
    let snaps = &s.snaps;
    let newest_commit = s.newest_commit;
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
    let control = control(
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
    );
    (control, newest_point)
}

/// `max_recovery_point_gap`, and the gaps that count (for the timeline).
pub(super) fn max_recovery_point_gap(s: &Scope) -> (Control, Spans) {
    let p = s.p;
    let w = s.w;
    let o = s.o;
    let snaps = &s.snaps;
    let in_win = &s.in_win;
    let sealed = &s.sealed;
    let input = s.input;
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
    let control = control(
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
    );
    (control, gaps)
}

/// `restore_test_performed`.
pub(super) fn restore_test_performed(s: &Scope) -> Control {
    let p = s.p;
    let w = s.w;
    let rpo_c = s.rpo_c;
    let verifies = &s.verifies;
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
    control(
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
    )
}

/// `restore_time`.
pub(super) fn restore_time(s: &Scope) -> Control {
    let o = s.o;
    let verifies = &s.verifies;
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
    if measured.is_empty() {
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
    }
}

/// `verification_success`.
pub(super) fn verification_success(s: &Scope) -> Control {
    let verifies = &s.verifies;
    let passed = verifies.iter().filter(|r| r.ok).count();
    let failed_verifies: Vec<&&VerifyRecord> = verifies.iter().filter(|r| !r.ok).collect();
    let title = "Every verify in the window passed";
    if verifies.is_empty() {
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
                passed,
                verifies.len(),
                100.0 * passed as f64 / verifies.len() as f64
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
    }
}

/// `backup_success`.
pub(super) fn backup_success(s: &Scope) -> Control {
    let backups = &s.backups;
    let failed_backups: Vec<&&BackupRecord> = backups.iter().filter(|r| !r.ok).collect();
    control(
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
    )
}

/// `minimum_retention`.
pub(super) fn minimum_retention(s: &Scope) -> Control {
    let w = s.w;
    let o = s.o;
    let snaps = &s.snaps;
    let input = s.input;
    let oldest = snaps.first();
    let reach = chrono::Duration::from_std(o.retention).unwrap_or(chrono::Duration::MAX);
    let needed = w.to - reach;
    let young = input.repo_created > needed;
    control(
        "minimum_retention",
        "The oldest restorable recovery point reaches back the retention objective",
        oldest.is_some_and(|m| m.consistent_at <= needed),
        format!(
            "a recovery point at or before {} ({} back)",
            needed.to_rfc3339_secs(),
            format_duration(o.retention)
        ),
        match oldest {
            Some(m) => format!(
                "oldest recovery point {} ({} back)",
                m.consistent_at.to_rfc3339_secs(),
                format_duration(secs(w.to - m.consistent_at))
            ),
            None => "no recovery point".into(),
        },
        if young {
            vec![format!("the repository was created {}: it is younger than the retention objective and complies from {} if its snapshots are kept", input.repo_created.to_rfc3339_secs(), (input.repo_created + reach).to_rfc3339_secs())]
        } else {
            oldest
                .map(|m| vec![format!("snapshot {}", m.id)])
                .unwrap_or_default()
        },
    )
}

/// `recovery_points_encrypted`.
pub(super) fn recovery_points_encrypted(s: &Scope) -> Control {
    let in_win = &s.in_win;
    let input = s.input;
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
    control(
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
    )
}

/// `recovery_points_immutable`.
pub(super) fn recovery_points_immutable(s: &Scope) -> Control {
    let p = s.p;
    let o = s.o;
    let in_win = &s.in_win;
    let reach = chrono::Duration::from_std(o.retention).unwrap_or(chrono::Duration::MAX);
    match &p.repository.location {
        Location::Dir(_) => Control {
            id: "recovery_points_immutable",
            title: "Recovery points are under object lock for the retention objective",
            compliant: true,
            status: Status::NotApplicable,
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
    }
}

/// `storage_consistency`.
pub(super) fn storage_consistency(s: &Scope) -> Control {
    let w = s.w;
    let backups = &s.backups;
    let sealed = &s.sealed;
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
    control(
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
    )
}

/// `continuous_protection` (only with `[stream]`): the change stream joins each snapshot of the
/// window to the next without a hole in its LSN chain, seals what commits within twice
/// `seal_every`, and leaves no window uncovered by a schema change. Its evidence lists the spans
/// the stream covers and the tables it does not protect.
pub(super) fn continuous_protection(
    p: &Policy,
    snaps: &[&Meta],
    segments: &[crate::repo::streams::Segment],
    w: &Window,
) -> Option<Control> {
    let s = p.stream.as_ref()?;
    let in_win: Vec<&crate::repo::streams::Segment> = segments
        .iter()
        .filter(|g| g.last_commit_at >= w.from && g.first_commit_at <= w.to)
        .collect();
    let mut problems = chain_holes(&in_win);
    problems.extend(late_or_reshaped(&in_win, snaps, s.seal_every));
    problems.extend(unjoined_snapshots(&in_win, snaps, w));
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

type Segment = crate::repo::streams::Segment;

/// Holes in the LSN chain between consecutive segments: a slot dropped or recreated.
fn chain_holes(in_win: &[&Segment]) -> Vec<String> {
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
    problems
}

/// Segments sealed over twice `seal_every` after their first commit, and schema changes that
/// leave a window uncovered until the next snapshot.
fn late_or_reshaped(
    in_win: &[&Segment],
    snaps: &[&Meta],
    seal_every: std::time::Duration,
) -> Vec<String> {
    let seal = chrono::Duration::from_std(seal_every).unwrap_or(chrono::Duration::MAX);
    let mut problems = Vec::new();
    for g in in_win {
        let waited = g.sealed_at - g.first_commit_at;
        if waited > seal * 2 {
            problems.push(format!(
                "gap: changes committed at {} were sealed only at {} ({}, over twice seal_every {})",
                g.first_commit_at.to_rfc3339_secs(),
                g.sealed_at.to_rfc3339_secs(),
                format_duration(secs(waited)),
                format_duration(seal_every)
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
    problems
}

/// Snapshots of the window the stream began after (a hole between the snapshot and the
/// stream).
fn unjoined_snapshots(in_win: &[&Segment], snaps: &[&Meta], w: &Window) -> Vec<String> {
    let mut problems = Vec::new();
    // Each snapshot of the window must be followed by the stream: a snapshot taken after the
    // newest sealed segment is fine (the stream resumes from it), one the stream began after
    // is not covered.
    for m in snaps.iter().filter(|m| m.consistent_at >= w.from) {
        let after: Vec<&&Segment> = in_win
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
    problems
}
