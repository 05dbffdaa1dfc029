//! Which snapshots retention keeps: one pure function from the snapshots, the rules and now to
//! the snapshots kept (each with the rules that keep it) and those removed.
//!
//! The rules are restic's `forget` policy, so operators know them:
//! * `keep_last = N` keeps the N newest snapshots;
//! * `keep_hourly/daily/weekly/monthly/yearly = N`: going back from the newest snapshot, the
//!   newest snapshot of each calendar hour, day, ISO week, month or year that holds snapshots is
//!   kept, up to N such buckets. Buckets are computed in the policy's `[schedule] timezone`
//!   (UTC without one), so a snapshot at 23:30 in Seoul belongs to that Seoul day, and an ISO
//!   week that spans a new year is one bucket;
//! * `keep_within = D` keeps every snapshot within D of the newest snapshot.
//!
//! Whatever the rules say, the retention floor keeps: the newest snapshot; the newest snapshot
//! that a verify run passed; every snapshot whose `consistent_at` lies within
//! `objectives.retention` of now; and the newest snapshot at or before now minus
//! `objectives.retention`, so that a recovery point reaching back the whole retention window
//! survives. A snapshot kept by any rule stays.

use chrono::{DateTime, Datelike, Timelike, Utc};
use chrono_tz::Tz;
use std::time::Duration;

/// A snapshot as retention sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub id: String,
    pub consistent_at: DateTime<Utc>,
    /// A verify run passed on it.
    pub verified: bool,
}

/// The policy's `[retention]` counts, plus what the floor needs.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    pub keep: crate::policy::Retention,
    /// `objectives.retention`.
    pub retention: Duration,
    pub timezone: Option<Tz>,
}

/// Reasons a snapshot is kept, as they appear in the prune record.
pub const NEWEST: &str = "newest";
pub const NEWEST_VERIFIED: &str = "newest verified";
pub const WITHIN_RETENTION: &str = "within objectives.retention";
pub const RETENTION_HORIZON: &str = "newest at the objectives.retention horizon";

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Kept snapshots, newest first, with every reason that keeps each.
    pub keep: Vec<(String, Vec<String>)>,
    /// Removed snapshot ids, newest first.
    pub remove: Vec<String>,
}

impl Plan {
    pub fn keeps(&self, id: &str) -> bool {
        self.keep.iter().any(|(k, _)| k == id)
    }
}

/// The floor alone: the reasons that keep each snapshot whatever the rules say.
pub fn floor(snapshots: &[Candidate], rules: &Rules, now: DateTime<Utc>) -> Vec<Vec<String>> {
    let order = newest_first(snapshots);
    let mut reasons = vec![Vec::new(); snapshots.len()];
    let horizon =
        now - chrono::Duration::from_std(rules.retention).unwrap_or(chrono::Duration::MAX);
    if let Some(&i) = order.first() {
        reasons[i].push(NEWEST.to_string());
    }
    if let Some(&i) = order.iter().find(|&&i| snapshots[i].verified) {
        reasons[i].push(NEWEST_VERIFIED.to_string());
    }
    for &i in &order {
        if snapshots[i].consistent_at > horizon {
            reasons[i].push(WITHIN_RETENTION.to_string());
        }
    }
    if let Some(&i) = order
        .iter()
        .find(|&&i| snapshots[i].consistent_at <= horizon)
    {
        reasons[i].push(RETENTION_HORIZON.to_string());
    }
    reasons
}

/// Indices of `snapshots`, newest first (ties broken by id, so the order is total).
fn newest_first(snapshots: &[Candidate]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..snapshots.len()).collect();
    order.sort_by(|&a, &b| {
        (snapshots[b].consistent_at, &snapshots[b].id)
            .cmp(&(snapshots[a].consistent_at, &snapshots[a].id))
    });
    order
}

/// The calendar bucket of `t` for a rule, in the policy's timezone.
fn bucket(rule: &str, t: DateTime<Utc>, tz: Tz) -> i64 {
    let local = t.with_timezone(&tz);
    let (y, m, d, h) = (
        local.year() as i64,
        local.month() as i64,
        local.day() as i64,
        local.hour() as i64,
    );
    match rule {
        "hourly" => ((y * 100 + m) * 100 + d) * 100 + h,
        "daily" => (y * 100 + m) * 100 + d,
        "weekly" => {
            let w = local.iso_week();
            w.year() as i64 * 100 + w.week() as i64
        }
        "monthly" => y * 100 + m,
        _ => y,
    }
}

/// What retention keeps and removes.
pub fn plan(snapshots: &[Candidate], rules: &Rules, now: DateTime<Utc>) -> Plan {
    let order = newest_first(snapshots);
    let mut reasons = floor(snapshots, rules, now);
    let tz = rules.timezone.unwrap_or(Tz::UTC);
    if let Some(n) = rules.keep.keep_last {
        for &i in order.iter().take(n as usize) {
            reasons[i].push("keep_last".to_string());
        }
    }
    for (rule, count) in [
        ("hourly", rules.keep.keep_hourly),
        ("daily", rules.keep.keep_daily),
        ("weekly", rules.keep.keep_weekly),
        ("monthly", rules.keep.keep_monthly),
        ("yearly", rules.keep.keep_yearly),
    ] {
        let Some(mut left) = count else { continue };
        let mut last = None;
        for &i in &order {
            if left == 0 {
                break;
            }
            let b = bucket(rule, snapshots[i].consistent_at, tz);
            if last != Some(b) {
                reasons[i].push(format!("keep_{rule}"));
                last = Some(b);
                left -= 1;
            }
        }
    }
    if let (Some(within), Some(&newest)) = (rules.keep.keep_within, order.first()) {
        let limit = snapshots[newest].consistent_at
            - chrono::Duration::from_std(within).unwrap_or(chrono::Duration::MAX);
        for &i in &order {
            if snapshots[i].consistent_at >= limit {
                reasons[i].push("keep_within".to_string());
            }
        }
    }
    let mut out = Plan::default();
    for i in order {
        let id = snapshots[i].id.clone();
        if reasons[i].is_empty() {
            out.remove.push(id);
        } else {
            out.keep.push((id, std::mem::take(&mut reasons[i])));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Retention;
    use chrono::TimeZone;
    use proptest::prelude::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    /// One snapshot a day at 03:00 UTC for `days` days ending on `last`.
    fn daily_history(days: i64, last: DateTime<Utc>) -> Vec<Candidate> {
        (0..days)
            .map(|d| {
                let t = last - chrono::Duration::days(days - 1 - d);
                Candidate {
                    id: t.format("%Y%m%d%H%M").to_string(),
                    consistent_at: t,
                    verified: false,
                }
            })
            .collect()
    }

    fn ids(plan: &Plan) -> Vec<&str> {
        plan.keep.iter().map(|(id, _)| id.as_str()).collect()
    }

    fn rules() -> Rules {
        Rules {
            retention: Duration::from_secs(0),
            ..Rules::default()
        }
    }

    #[test]
    fn a_400_day_history_keeps_what_restic_would() {
        let last = at("2026-11-28T03:00:00Z");
        let snaps = daily_history(400, last);
        let now = last + chrono::Duration::hours(1);
        let plan = plan(
            &snaps,
            &Rules {
                keep: Retention {
                    keep_daily: Some(7),
                    keep_weekly: Some(4),
                    keep_monthly: Some(12),
                    ..Retention::default()
                },
                ..rules()
            },
            now,
        );
        let mut expected: Vec<String> = (0..7)
            .map(|d| {
                (last - chrono::Duration::days(d))
                    .format("%Y%m%d0300")
                    .to_string()
            })
            .collect();
        // Weekly: the newest of each ISO week (Sundays), going back from Saturday 2026-11-28.
        for day in ["20261122", "20261115", "20261108"] {
            expected.push(format!("{day}0300"));
        }
        // Monthly: the last day of each month back to 2025-12 (plus 2026-11 itself).
        for day in [
            "20261031", "20260930", "20260831", "20260731", "20260630", "20260531", "20260430",
            "20260331", "20260228", "20260131", "20251231",
        ] {
            expected.push(format!("{day}0300"));
        }
        expected.sort();
        expected.dedup();
        let mut kept: Vec<String> = ids(&plan).iter().map(|s| s.to_string()).collect();
        kept.sort();
        assert_eq!(kept, expected);
        assert_eq!(plan.keep.len() + plan.remove.len(), 400);
    }

    #[test]
    fn buckets_are_in_the_policy_timezone() {
        // 23:30 Seoul on 2026-03-01 is 14:30 UTC; 00:30 Seoul on 2026-03-02 is 15:30 UTC.
        let snaps = vec![
            Candidate {
                id: "a".into(),
                consistent_at: at("2026-03-01T14:00:00Z"),
                verified: false,
            },
            Candidate {
                id: "b".into(),
                consistent_at: at("2026-03-01T14:30:00Z"),
                verified: false,
            },
            Candidate {
                id: "c".into(),
                consistent_at: at("2026-03-01T15:30:00Z"),
                verified: false,
            },
        ];
        let now = at("2026-03-05T00:00:00Z");
        let seoul = Rules {
            keep: Retention {
                keep_daily: Some(5),
                ..Retention::default()
            },
            timezone: Some(chrono_tz::Asia::Seoul),
            ..rules()
        };
        assert_eq!(ids(&plan(&snaps, &seoul, now)), vec!["c", "b"]);
        // In UTC all three share 2026-03-01: only the newest is kept.
        let utc = Rules {
            keep: Retention {
                keep_daily: Some(5),
                ..Retention::default()
            },
            ..rules()
        };
        assert_eq!(ids(&plan(&snaps, &utc, now)), vec!["c"]);
    }

    #[test]
    fn an_iso_week_across_new_year_is_one_bucket() {
        // 2026-12-31 (Thursday) and 2027-01-02 (Saturday) are both in ISO week 2026-W53;
        // 2027-01-04 is 2027-W01.
        let snaps = vec![
            Candidate {
                id: "thu".into(),
                consistent_at: at("2026-12-31T03:00:00Z"),
                verified: false,
            },
            Candidate {
                id: "sat".into(),
                consistent_at: at("2027-01-02T03:00:00Z"),
                verified: false,
            },
            Candidate {
                id: "mon".into(),
                consistent_at: at("2027-01-04T03:00:00Z"),
                verified: false,
            },
        ];
        let plan = plan(
            &snaps,
            &Rules {
                keep: Retention {
                    keep_weekly: Some(5),
                    ..Retention::default()
                },
                ..rules()
            },
            at("2027-01-05T00:00:00Z"),
        );
        assert_eq!(ids(&plan), vec!["mon", "sat"]);
        assert_eq!(plan.remove, vec!["thu"]);
    }

    #[test]
    fn the_floor_keeps_newest_verified_and_the_retention_window() {
        let last = at("2026-11-28T03:00:00Z");
        let mut snaps = daily_history(60, last);
        snaps[10].verified = true;
        let now = last + chrono::Duration::hours(1);
        let r = Rules {
            keep: Retention {
                keep_last: Some(1),
                ..Retention::default()
            },
            retention: Duration::from_secs(35 * 86_400),
            ..Rules::default()
        };
        let plan = plan(&snaps, &r, now);
        // The newest, the verified one, the 35 days within the window (the newest among
        // them), and the one at the horizon.
        assert!(plan.keeps(&snaps[10].id));
        let horizon = now - chrono::Duration::days(35);
        let at_horizon = snaps
            .iter()
            .rev()
            .find(|s| s.consistent_at <= horizon)
            .unwrap();
        let reasons = &plan
            .keep
            .iter()
            .find(|(id, _)| id == &at_horizon.id)
            .unwrap()
            .1;
        assert_eq!(reasons, &vec![RETENTION_HORIZON.to_string()]);
        let within = snaps.iter().filter(|s| s.consistent_at > horizon).count();
        assert_eq!(plan.keep.len(), within + 2);
        assert_eq!(plan.keep[0].1, vec![NEWEST, WITHIN_RETENTION, "keep_last"]);
    }

    #[test]
    fn keep_within_counts_from_the_newest_snapshot() {
        let last = at("2026-11-28T03:00:00Z");
        let snaps = daily_history(30, last);
        let r = Rules {
            keep: Retention {
                keep_within: Some(Duration::from_secs(3 * 86_400)),
                ..Retention::default()
            },
            ..rules()
        };
        // Now is far later: keep_within is measured from the newest snapshot, not from now.
        let plan = plan(&snaps, &r, last + chrono::Duration::days(100));
        assert_eq!(plan.keep.len(), 4);
    }

    fn history() -> impl Strategy<Value = Vec<Candidate>> {
        prop::collection::vec((0i64..2_000_000, any::<bool>()), 0..40).prop_map(|v| {
            v.into_iter()
                .enumerate()
                .map(|(i, (minutes, verified))| Candidate {
                    id: format!("s{i:03}"),
                    consistent_at: Utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 0).unwrap()
                        + chrono::Duration::minutes(minutes),
                    verified,
                })
                .collect()
        })
    }

    fn some_rules() -> impl Strategy<Value = Rules> {
        let n = || prop::option::of(0u32..6);
        (
            n(),
            n(),
            n(),
            n(),
            n(),
            n(),
            prop::option::of(0u64..3_000_000),
            0u64..5_000_000,
        )
            .prop_map(|(l, h, d, w, m, y, within, retention)| Rules {
                keep: Retention {
                    keep_last: l,
                    keep_hourly: h,
                    keep_daily: d,
                    keep_weekly: w,
                    keep_monthly: m,
                    keep_yearly: y,
                    keep_within: within.map(Duration::from_secs),
                },
                retention: Duration::from_secs(retention),
                timezone: Some(chrono_tz::Asia::Seoul),
            })
    }

    proptest! {
        #[test]
        fn idempotent_keeps_newest_and_more_never_keeps_fewer(snaps in history(), r in some_rules(), extra in 1u32..4) {
            let now = Utc.with_ymd_and_hms(2029, 1, 1, 0, 0, 0).unwrap();
            let first = plan(&snaps, &r, now);
            prop_assert_eq!(first.keep.len() + first.remove.len(), snaps.len());
            if let Some(newest) = snaps.iter().max_by_key(|s| (s.consistent_at, s.id.clone())) {
                prop_assert!(first.keeps(&newest.id));
            }
            // Pruning what it removes and planning again removes nothing more.
            let kept: Vec<Candidate> = snaps.iter().filter(|s| first.keeps(&s.id)).cloned().collect();
            let again = plan(&kept, &r, now);
            prop_assert!(again.remove.is_empty(), "{:?}", again.remove);
            // A larger count never keeps fewer snapshots.
            let mut more = r.clone();
            let k = &mut more.keep;
            for c in [&mut k.keep_last, &mut k.keep_hourly, &mut k.keep_daily, &mut k.keep_weekly, &mut k.keep_monthly, &mut k.keep_yearly] {
                *c = c.map(|n| n + extra);
            }
            let bigger = plan(&snaps, &more, now);
            for (id, _) in &first.keep {
                prop_assert!(bigger.keeps(id), "{} kept by {:?} but not by {:?}", id, r, more);
            }
        }
    }
}
