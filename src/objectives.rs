//! RPO, RTO and retention arithmetic: pure functions of times and durations, shared by verify
//! (was the restore within the RTO?), prune (which recovery points must stay?) and the report
//! (was the RPO met over a window?). No I/O here.

use chrono::{DateTime, Utc};
use std::time::Duration;

/// Whether a measured restore met the RTO; `None` when no restore was measured.
pub fn rto_met(restore_s: Option<f64>, rto: Duration) -> Option<bool> {
    restore_s.map(|r| r <= rto.as_secs_f64())
}

/// Age of the newest recovery point at `now` (zero for a point in the future: clock skew).
pub fn recovery_point_age(newest: DateTime<Utc>, now: DateTime<Utc>) -> Duration {
    (now - newest).to_std().unwrap_or_default()
}

/// Whether the newest recovery point is within the RPO at `now`; false without any point.
pub fn rpo_met(newest: Option<DateTime<Utc>>, now: DateTime<Utc>, rpo: Duration) -> bool {
    newest.is_some_and(|t| recovery_point_age(t, now) <= rpo)
}

/// The intervals of `[from, to]` without a recovery point that are longer than `rpo`: the
/// gaps between consecutive points, counting the window's start and end. `points` need not
/// be sorted; points outside the window only bound the gaps at its edges.
pub fn gaps_over(
    points: &[DateTime<Utc>],
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    rpo: Duration,
) -> Vec<(DateTime<Utc>, DateTime<Utc>)> {
    // The newest point at or before the window's start carries into it; without one, the
    // window's start is where the first gap begins.
    let before = points.iter().copied().filter(|t| *t <= from).max();
    let mut edges = vec![before.unwrap_or(from)];
    let mut inside: Vec<DateTime<Utc>> = points
        .iter()
        .copied()
        .filter(|t| *t > from && *t < to)
        .collect();
    inside.sort();
    edges.extend(inside);
    edges.push(to);
    let rpo = chrono::Duration::from_std(rpo).unwrap_or(chrono::Duration::MAX);
    edges
        .windows(2)
        .filter(|w| w[1] - w[0] > rpo)
        .map(|w| (w[0].max(from), w[1]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(h: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 1, 0, 0, 0).unwrap() + chrono::Duration::hours(h)
    }
    const DAY: Duration = Duration::from_secs(86_400);

    #[test]
    fn rto_is_met_at_the_limit_and_unknown_without_a_restore() {
        assert_eq!(rto_met(Some(3600.0), Duration::from_secs(3600)), Some(true));
        assert_eq!(
            rto_met(Some(3600.5), Duration::from_secs(3600)),
            Some(false)
        );
        assert_eq!(rto_met(None, Duration::from_secs(3600)), None);
    }

    #[test]
    fn rpo_needs_a_point_and_counts_its_age() {
        assert!(!rpo_met(None, t(10), DAY));
        assert!(rpo_met(Some(t(0)), t(24), DAY));
        assert!(!rpo_met(Some(t(0)), t(25), DAY));
        assert!(
            rpo_met(Some(t(30)), t(25), DAY),
            "a point in the future has age zero"
        );
    }

    #[test]
    fn gaps_count_the_window_edges() {
        // Daily points at 3h; a missed day between day 2 and day 4.
        let points = [t(3), t(27), t(75), t(99)];
        let gaps = gaps_over(&points, t(0), t(100), DAY);
        assert_eq!(gaps, vec![(t(27), t(75))]);
        // No point before the window: from its start to the first point is fine when short.
        assert!(gaps_over(&points, t(0), t(100), DAY)
            .iter()
            .all(|g| g.0 != t(0)));
        // A window with no point at all is one gap.
        assert_eq!(gaps_over(&[], t(0), t(48), DAY), vec![(t(0), t(48))]);
        // The end counts: the last point is older than the RPO at the window's end.
        assert_eq!(gaps_over(&[t(1)], t(0), t(30), DAY), vec![(t(1), t(30))]);
        // A point before the window covers its start.
        assert!(gaps_over(&[t(-2), t(20)], t(0), t(30), DAY).is_empty());
        assert_eq!(
            gaps_over(&[t(-30), t(20)], t(0), t(30), DAY),
            vec![(t(0), t(20))]
        );
    }
}
