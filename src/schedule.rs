//! Cron expressions as policies write them.
//!
//! Policies use standard 5-field cron (`min hour dom month dow`, Sunday = 0 or 7), or 6/7 fields
//! with seconds first (and an optional year last). The `cron` crate only knows the 6/7-field form
//! and numbers weekdays from Sunday = 1, so a 5-field expression gets a `0` seconds field and its
//! numeric weekdays are rewritten as names before parsing. Timezones are IANA names.

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use std::str::FromStr;

#[derive(Debug, Clone)]
pub struct Cron {
    pub text: String,
    schedule: cron::Schedule,
}

impl Cron {
    pub fn parse(text: &str) -> Result<Cron, String> {
        let fields: Vec<&str> = text.split_whitespace().collect();
        let normalized = match fields.len() {
            5 => {
                let dow = weekday_names(fields[4])
                    .map_err(|e| format!("`{text}` is not a valid cron expression: {e}"))?;
                format!("0 {} {} {} {} {dow}", fields[0], fields[1], fields[2], fields[3])
            }
            6 | 7 => fields.join(" "),
            n => {
                return Err(format!(
                    "`{text}` has {n} fields; write standard 5-field cron (`0 3 * * *`) or 6/7 fields with seconds first"
                ))
            }
        };
        let schedule = cron::Schedule::from_str(&normalized)
            .map_err(|e| format!("`{text}` is not a valid cron expression: {}", explain(&e)))?;
        Ok(Cron {
            text: text.to_string(),
            schedule,
        })
    }

    /// The first time strictly after `after` that the expression names on the wall clock of
    /// `tz`. Across DST changes each wall-clock time fires once: a time the spring change skips
    /// (02:30 in New York on the day clocks jump from 02:00 to 03:00) fires at the instant it
    /// would have had without the jump (03:30 new time); a time the autumn change repeats
    /// (01:30 twice) fires at its first occurrence only.
    pub fn next_after(&self, after: DateTime<Utc>, tz: Tz) -> Option<DateTime<Utc>> {
        use chrono::{LocalResult, Offset, TimeZone};
        // Iterate wall-clock times (naive local time, carried as UTC) and map each to an
        // instant.
        let wall = Utc.from_utc_datetime(&after.with_timezone(&tz).naive_local());
        // After an autumn change, wall-clock times up to an hour are skipped as already run.
        for candidate in self.schedule.after(&wall).take(10_000) {
            let local = candidate.naive_utc();
            let instant = match tz.from_local_datetime(&local) {
                LocalResult::Single(t) => t.with_timezone(&Utc),
                LocalResult::Ambiguous(first, _) => first.with_timezone(&Utc),
                LocalResult::None => {
                    let before = Utc.from_utc_datetime(&local) - chrono::Duration::hours(12);
                    let offset = tz.offset_from_utc_datetime(&before.naive_utc()).fix();
                    Utc.from_utc_datetime(&(local - offset))
                }
            };
            if instant > after {
                return Some(instant);
            }
        }
        None
    }
}

/// The cron crate's complaint, said about the expression the policy wrote. Its message
/// quotes the expression it parsed, which for a 5-field one has the seconds field added, with
/// a caret one field off; and it says "must be less than 23" of a field whose largest value is
/// 23. Only its last line is kept, with the bound said as it is: "at most 23".
fn explain(e: &cron::error::Error) -> String {
    let text = e.to_string();
    let last = text.lines().last().unwrap_or(&text).trim();
    last.replace(" must be less than ", " must be at most ")
        .replace(". ('", " ('")
        .replace("' specified.)", "' given)")
}

pub fn parse_timezone(text: &str) -> Result<Tz, String> {
    Tz::from_str(text)
        .map_err(|_| format!("`{text}` is not an IANA timezone name (e.g. Asia/Seoul, UTC)"))
}

const DAYS: [&str; 8] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];

/// Rewrites numeric weekdays (0-7, Sunday = 0 or 7) as names, keeping lists, ranges and steps.
fn weekday_names(field: &str) -> Result<String, String> {
    let mut items = Vec::new();
    for item in field.split(',') {
        let (range, step) = match item.split_once('/') {
            Some((r, s)) => (r, Some(s)),
            None => (item, None),
        };
        let mut ends = Vec::new();
        for end in range.split('-') {
            ends.push(match end.parse::<usize>() {
                Ok(n) if n < DAYS.len() => DAYS[n].to_string(),
                Ok(n) => return Err(format!("weekday {n} is out of range 0-7")),
                Err(_) => end.to_string(),
            });
        }
        let mut out = ends.join("-");
        if let Some(s) = step {
            out = format!("{out}/{s}");
        }
        items.push(out);
    }
    Ok(items.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn next(expr: &str, from: &str, tz: &str) -> String {
        let c = Cron::parse(expr).unwrap();
        let from = DateTime::parse_from_rfc3339(from)
            .unwrap()
            .with_timezone(&Utc);
        c.next_after(from, parse_timezone(tz).unwrap())
            .unwrap()
            .to_rfc3339()
    }

    #[test]
    fn a_bad_field_is_named_with_its_real_bound_and_the_written_expression() {
        let e = Cron::parse("0 25 * * *").unwrap_err();
        assert_eq!(
            e,
            "`0 25 * * *` is not a valid cron expression: Hours must be at most 23 ('25' given)"
        );
        let e = Cron::parse("61 3 * * *").unwrap_err();
        assert!(
            e.ends_with("Minutes must be at most 59 ('61' given)"),
            "{e}"
        );
        let e = Cron::parse("0 3 0 * *").unwrap_err();
        assert!(
            e.ends_with("must be greater than or equal to 1 ('0' given)"),
            "{e}"
        );
        assert!(Cron::parse("59 23 31 12 *").is_ok());
    }

    #[test]
    fn five_fields_with_timezone() {
        // 03:00 in Seoul is 18:00 UTC the day before.
        assert_eq!(
            next("0 3 * * *", "2026-11-29T00:00:00Z", "Asia/Seoul"),
            "2026-11-29T18:00:00+00:00"
        );
        assert_eq!(
            next("30 4 * * *", "2026-11-29T00:00:00Z", "UTC"),
            "2026-11-29T04:30:00+00:00"
        );
    }

    #[test]
    fn sunday_is_zero_and_seven() {
        // 2026-11-29 is a Sunday.
        assert_eq!(
            next("0 5 * * 0", "2026-11-26T00:00:00Z", "UTC"),
            "2026-11-29T05:00:00+00:00"
        );
        assert_eq!(
            next("0 5 * * 7", "2026-11-26T00:00:00Z", "UTC"),
            "2026-11-29T05:00:00+00:00"
        );
        assert_eq!(
            next("0 5 * * 1-5", "2026-11-28T00:00:00Z", "UTC"),
            "2026-11-30T05:00:00+00:00"
        );
        assert_eq!(
            next("0 5 * * MON", "2026-11-28T00:00:00Z", "UTC"),
            "2026-11-30T05:00:00+00:00"
        );
    }

    #[test]
    fn seconds_forms() {
        assert_eq!(
            next("15 0 3 * * *", "2026-11-29T00:00:00Z", "UTC"),
            "2026-11-29T03:00:15+00:00"
        );
        assert!(Cron::parse("0 0 3 * * * 2027").is_ok());
    }

    #[test]
    fn rejects_bad_expressions() {
        for bad in [
            "",
            "0 3 * *",
            "61 3 * * *",
            "0 25 * * *",
            "0 3 * * 8",
            "every day",
            "0 3 * * * * * *",
        ] {
            assert!(Cron::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(parse_timezone("Mars/Olympus").is_err());
        let _ = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0);
    }
}

#[cfg(test)]
mod dst_tests {
    use super::*;
    use chrono::TimeZone;

    fn fires(expr: &str, from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<DateTime<Utc>> {
        let cron = Cron::parse(expr).unwrap();
        let tz: Tz = "America/New_York".parse().unwrap();
        let mut out = Vec::new();
        let mut t = from;
        while let Some(next) = cron.next_after(t, tz) {
            if next >= to {
                break;
            }
            out.push(next);
            t = next;
        }
        out
    }

    #[test]
    fn a_0230_job_runs_once_on_both_dst_change_days_in_new_york() {
        // 2027-03-14: clocks jump from 02:00 to 03:00 (EST -> EDT); 02:30 does not exist.
        let day = |y, m, d| Utc.with_ymd_and_hms(y, m, d, 4, 0, 0).unwrap();
        let spring = fires("30 2 * * *", day(2027, 3, 13), day(2027, 3, 16));
        eprintln!("spring {spring:?}");
        // 2027-11-07: clocks fall back from 02:00 to 01:00 (EDT -> EST); 01:30 happens twice.
        let fall = fires("30 1 * * *", day(2027, 11, 6), day(2027, 11, 9));
        eprintln!("fall {fall:?}");
        assert_eq!(spring.len(), 3, "{spring:?}");
        assert_eq!(
            spring[1],
            Utc.with_ymd_and_hms(2027, 3, 14, 7, 30, 0).unwrap(),
            "03:30 EDT"
        );
        assert_eq!(fall.len(), 3, "{fall:?}");
        assert_eq!(
            fall[1],
            Utc.with_ymd_and_hms(2027, 11, 7, 5, 30, 0).unwrap(),
            "the first 01:30"
        );
        // Every five seconds stays every five seconds across the spring jump.
        let every = fires(
            "*/5 * * * * *",
            Utc.with_ymd_and_hms(2027, 3, 14, 6, 59, 50).unwrap(),
            Utc.with_ymd_and_hms(2027, 3, 14, 7, 0, 10).unwrap(),
        );
        assert_eq!(every.len(), 3, "{every:?}");
        assert!(
            every
                .windows(2)
                .all(|w| w[1] - w[0] == chrono::Duration::seconds(5)),
            "{every:?}"
        );
    }
}
