//! Synthetic histories: a clean 30-day history is compliant, and each fault flips exactly its
//! own control.

use super::*;
use crate::repo::format::{MetaEncryption, MetaLock, StoredObject};
use chrono::{Datelike, TimeZone};
use serde_json::{json, Value};

fn time(v: &Value, key: &str) -> Option<DateTime<Utc>> {
    v[key].as_str()?.parse().ok()
}

const DAY: i64 = 86_400;

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 29, 12, 0, 0).unwrap()
}

fn policy() -> Policy {
    let text = r#"name = "foodbiz"
[objectives]
rpo = "25h"
rto = "1h"
retention = "30d"
[schedule]
backup = "0 3 * * *"
verify = "0 5 * * *"
timezone = "UTC"
[database]
url = "postgres://u@h/db"
[repository]
url = "s3://backups/prod"
object_lock = { mode = "governance", days = 40 }
[encryption]
recipients = ["age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p"]
"#;
    crate::policy::parse(text, std::path::Path::new("foodbiz.toml"), &|_| None).unwrap()
}

fn meta(at: DateTime<Utc>) -> Meta {
    Meta {
        format: 1,
        id: at.format("%Y%m%dT%H%M%SZ").to_string(),
        policy: "foodbiz".into(),
        consistent_at: at,
        started_at: at,
        finished_at: at,
        tool_version: "test".into(),
        db: None,
        storage: None,
        bytes_referenced: 0,
        encryption: MetaEncryption {
            scheme: "age-x25519".into(),
            recipients: vec!["age1x".into()],
        },
        manifest: StoredObject {
            key: String::new(),
            size: 0,
            sha256: String::new(),
        },
        blobs: Vec::new(),
        object_lock: Some(MetaLock {
            mode: "governance".into(),
            days: 40,
            until: at + chrono::Duration::days(40),
        }),
        files: None,
        git: None,
        consistent_lsn: None,
        snapshot_xids: None,
    }
}

struct History {
    snapshots: Vec<Meta>,
    backups: Vec<Value>,
    verifies: Vec<Value>,
    created: DateTime<Utc>,
}

/// 40 nights: a backup at 03:00 and a verify at 05:00 every day.
fn clean() -> History {
    let mut h = History {
        snapshots: Vec::new(),
        backups: Vec::new(),
        verifies: Vec::new(),
        created: now() - chrono::Duration::days(41),
    };
    for d in (0..40).rev() {
        let night =
            Utc.with_ymd_and_hms(2026, 11, 29, 3, 0, 0).unwrap() - chrono::Duration::days(d);
        let m = meta(night);
        h.backups.push(json!({"kind": "backup", "ok": true, "snapshot_id": m.id, "started_at": night, "storage": {"mismatches": {"missing_in_bucket": [], "missing_in_table": []}}}));
        h.verifies.push(json!({"kind": "verify", "ok": true, "snapshot_id": m.id, "started_at": night + chrono::Duration::hours(2), "restore_s": 120.0, "problems": []}));
        h.snapshots.push(m);
    }
    h
}

fn report(h: &History) -> PolicyReport {
    report_for(&policy(), h)
}

/// The controls of `h` under `p`, over the 30 days before [`now`].
fn report_for(p: &Policy, h: &History) -> PolicyReport {
    let window = Window {
        from: now() - chrono::Duration::seconds(30 * DAY),
        to: now(),
    };
    evaluate(&Input {
        policy: p,
        repo_created: h.created,
        repo_recipients: &["age1x".to_string()],
        snapshots: &h.snapshots,
        backups: &typed(&h.backups),
        verifies: &typed(&h.verifies),
        segments: &[],
        window: &window,
        now: now(),
    })
}

fn gap_control(r: &PolicyReport) -> &Control {
    r.controls
        .iter()
        .find(|c| c.id == "max_recovery_point_gap")
        .unwrap()
}

fn failing(r: &PolicyReport) -> Vec<&'static str> {
    r.controls
        .iter()
        .filter(|c| !c.compliant)
        .map(|c| c.id)
        .collect()
}

#[test]
fn a_clean_30_day_history_is_compliant() {
    let r = report(&clean());
    assert_eq!(failing(&r), Vec::<&str>::new(), "{:#?}", r.controls);
    assert!(r.compliant);
    assert_eq!(r.controls.len(), 10);
    assert_eq!(r.timeline.points.len(), 30);
}

#[test]
fn a_missed_night_flips_only_the_gap() {
    let mut h = clean();
    h.snapshots.remove(25);
    h.backups.remove(25);
    let r = report(&h);
    assert_eq!(failing(&r), vec!["max_recovery_point_gap"]);
    let c = &r.controls[1];
    assert!(
        c.evidence[0].starts_with("gap 2026-11-"),
        "{:?}",
        c.evidence
    );
}

#[test]
fn a_gap_longer_than_the_rpo_mid_window_flips_only_the_gap() {
    let mut h = clean();
    // Three nights in the middle of the window lost, their runs too.
    for _ in 0..3 {
        h.snapshots.remove(20);
        h.backups.remove(20);
        h.verifies.remove(20);
    }
    assert_eq!(failing(&report(&h)), vec!["max_recovery_point_gap"]);
}

#[test]
fn a_slow_verify_flips_only_restore_time() {
    let mut h = clean();
    h.verifies[35]["restore_s"] = json!(4000.0);
    let r = report(&h);
    assert_eq!(failing(&r), vec!["restore_time"]);
    assert!(r
        .controls
        .iter()
        .find(|c| c.id == "restore_time")
        .unwrap()
        .observed
        .contains("worst 4000.0s"));
}

#[test]
fn a_failed_verify_flips_only_verification_success() {
    let mut h = clean();
    h.verifies[30]["ok"] = json!(false);
    h.verifies[30]["problems"] = json!(["table public.orders: 10 rows restored, 12 expected"]);
    let r = report(&h);
    assert_eq!(failing(&r), vec!["verification_success"]);
    let c = r
        .controls
        .iter()
        .find(|c| c.id == "verification_success")
        .unwrap();
    assert!(c.evidence[0].contains("public.orders"), "{:?}", c.evidence);
}

#[test]
fn no_verify_in_the_window_is_not_tested_never_green() {
    let mut h = clean();
    h.verifies.clear();
    let r = report(&h);
    assert_eq!(
        failing(&r),
        vec![
            "restore_test_performed",
            "restore_time",
            "verification_success"
        ]
    );
    assert!(!r.compliant);
    let status = |id: &str| r.controls.iter().find(|c| c.id == id).unwrap().status;
    assert_eq!(status("restore_time"), super::Status::NotTested);
    assert_eq!(status("verification_success"), super::Status::NotTested);
    assert_eq!(
        status("restore_test_performed"),
        super::Status::NonCompliant
    );
    let html = super::render::html(&super::render::Report {
        window: Window {
            from: now() - chrono::Duration::days(30),
            to: now(),
        },
        generated_at: now(),
        compliant: false,
        policies: vec![r],
    });
    assert_eq!(html.matches(r#"<td class="not_tested">"#).count(), 2);
}

#[test]
fn restore_test_performed_states_the_tolerance_it_applies() {
    // Daily verify at 05:00, RPO 25h: the slack is min(RPO, 1h) = 1h, so 25h in all.
    let target = |h: &History| {
        let r = report(h);
        let c = r.controls.iter().find(|c| c.id == "restore_test_performed");
        (c.unwrap().compliant, c.unwrap().target.clone())
    };
    let (_, text) = target(&clean());
    assert!(text.contains("at most 1d1h old"), "{text}");
    assert!(text.contains("interval 1d plus 1h of slack"), "{text}");
    // Every verify moved to the same moment: exactly at the stated tolerance, then 1s past it.
    let mut h = clean();
    for v in h.verifies.iter_mut() {
        v["started_at"] = json!(now() - chrono::Duration::hours(25));
    }
    assert!(target(&h).0, "a pass 25h old is within 1d1h");
    for v in h.verifies.iter_mut() {
        v["started_at"] = json!(now() - chrono::Duration::hours(25) - chrono::Duration::seconds(1));
    }
    assert!(!target(&h).0, "a pass 25h 1s old is not");
}

#[test]
fn evidence_names_run_ids_and_cuts_errors_with_an_ellipsis() {
    let mut h = clean();
    h.verifies[30]["ok"] = json!(false);
    h.verifies[30]["run_id"] = json!("20261120T050000Z-abcdef");
    h.verifies[30]["error"] = json!("x".repeat(400));
    let r = report(&h);
    let c = r
        .controls
        .iter()
        .find(|c| c.id == "verification_success")
        .unwrap();
    assert!(c.evidence[0].starts_with("verify 20261120T050000Z-abcdef of snapshot"));
    assert!(
        c.evidence[0].ends_with(&format!("{}…", "x".repeat(300))),
        "{}",
        c.evidence[0]
    );
    // Times to the second.
    assert!(
        c.evidence[0].contains(" at 2026-11-20T05:00:00Z failed"),
        "{}",
        c.evidence[0]
    );
}

#[test]
fn a_failed_backup_flips_only_backup_success() {
    let mut h = clean();
    let at = now() - chrono::Duration::days(3);
    h.backups.push(json!({"kind": "backup", "ok": false, "started_at": at, "error": "could not connect to the database"}));
    let r = report(&h);
    assert_eq!(failing(&r), vec!["backup_success"]);
    assert!(r
        .controls
        .iter()
        .find(|c| c.id == "backup_success")
        .unwrap()
        .evidence[0]
        .contains("could not connect"));
}

#[test]
fn a_repository_younger_than_the_retention_flips_only_minimum_retention() {
    let mut h = clean();
    h.created = now() - chrono::Duration::days(10);
    h.snapshots.retain(|m| m.consistent_at > h.created);
    h.backups
        .retain(|r| time(r, "started_at").unwrap() > h.created);
    h.verifies
        .retain(|r| time(r, "started_at").unwrap() > h.created);
    let r = report(&h);
    assert_eq!(failing(&r), vec!["minimum_retention"]);
    let c = r
        .controls
        .iter()
        .find(|c| c.id == "minimum_retention")
        .unwrap();
    assert!(
        c.evidence[0].contains("younger than the retention objective and complies from 2026-12-19"),
        "{:?}",
        c.evidence
    );
}

#[test]
fn a_snapshot_without_object_lock_flips_only_immutability() {
    let mut h = clean();
    h.snapshots[33].object_lock = None;
    let r = report(&h);
    assert_eq!(failing(&r), vec!["recovery_points_immutable"]);
}

#[test]
fn gaps_older_than_the_dense_horizon_are_retention_thinning() {
    let mut text_policy = policy();
    text_policy.retention = Some(crate::policy::Retention {
        keep_daily: Some(7),
        ..Default::default()
    });
    let mut h = clean();
    // Thin to weekly beyond 30 days back... inside the window only the last 10 days stay dense.
    h.snapshots.retain(|m| {
        m.consistent_at > now() - chrono::Duration::days(10) || m.consistent_at.ordinal() % 7 == 0
    });
    let r = report_for(&text_policy, &h);
    let gap = gap_control(&r);
    // objectives.retention is 30d: the whole window is dense, so thinning there still counts.
    assert!(!gap.compliant, "{gap:?}");
    text_policy.objectives.retention = Duration::from_secs(7 * 86_400);
    let r = report_for(&text_policy, &h);
    let gap = gap_control(&r);
    assert!(gap.compliant, "{gap:?}");
    assert!(
        gap.evidence
            .iter()
            .all(|e| e.contains("thinned by retention")),
        "{gap:?}"
    );
}

#[test]
fn renders_name_every_control() {
    let r = super::render::Report {
        window: Window {
            from: now() - chrono::Duration::days(30),
            to: now(),
        },
        generated_at: now(),
        compliant: true,
        policies: vec![report(&clean())],
    };
    for out in [
        super::render::text(&r),
        super::render::markdown(&r),
        super::render::html(&r),
    ] {
        for id in [
            "last_recovery_point_age",
            "max_recovery_point_gap",
            "restore_test_performed",
            "restore_time",
            "verification_success",
            "backup_success",
            "minimum_retention",
            "recovery_points_encrypted",
            "recovery_points_immutable",
            "storage_consistency",
        ] {
            assert!(out.contains(id), "{id} missing");
        }
        assert!(out.contains("foodbiz"));
    }
    assert_eq!(
        super::render::html(&r).matches(r#"class="point""#).count(),
        30
    );
}

/// The test's records as the report reads them.
fn typed<T: serde::de::DeserializeOwned>(records: &[Value]) -> Vec<T> {
    records
        .iter()
        .map(|r| serde_json::from_value(r.clone()).unwrap())
        .collect()
}
