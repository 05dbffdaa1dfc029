//! Small pure helpers: durations, time parsing, URL masking, percent-encoding, identifiers.
//!
//! Durations are parsed here rather than with `humantime`: a policy's dialect is `s m h d w`
//! and sums of them (`1h30m`); humantime also takes months and years of an assumed length and
//! free spacing, which a policy should refuse rather than guess at. Percent-encoding uses the
//! `percent-encoding` crate.

use chrono::{DateTime, NaiveDate, NaiveDateTime, TimeZone, Utc};
use std::time::Duration;

/// Parses `90m`, `24h`, `35d`, `2w`, `45s`, or a sum of them such as `1h30m`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("empty duration; write e.g. 90m, 24h or 35d".into());
    }
    let mut total: u64 = 0;
    let mut digits = String::new();
    for ch in text.chars() {
        if ch.is_ascii_digit() {
            digits.push(ch);
            continue;
        }
        let unit: u64 = match ch {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            'w' => 7 * 86_400,
            _ => {
                return Err(format!(
                    "`{text}` is not a duration: unknown unit `{ch}` (use s, m, h, d or w)"
                ))
            }
        };
        let n: u64 = digits
            .parse()
            .map_err(|_| format!("`{text}` is not a duration: a number must come before `{ch}`"))?;
        digits.clear();
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(|| format!("`{text}` is too long a duration"))?;
    }
    if !digits.is_empty() {
        return Err(format!(
            "`{text}` is not a duration: `{digits}` has no unit (use s, m, h, d or w)"
        ));
    }
    if total == 0 {
        return Err(format!("`{text}` is a zero duration"));
    }
    Ok(Duration::from_secs(total))
}

/// Formats seconds the way policies write them (`1d2h`, `90m` stays `1h30m`).
pub fn format_duration(d: Duration) -> String {
    let mut s = d.as_secs();
    if s == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    for (unit, name) in [(86_400, 'd'), (3600, 'h'), (60, 'm'), (1, 's')] {
        if s >= unit {
            out.push_str(&format!("{}{name}", s / unit));
            s %= unit;
        }
    }
    out
}

/// Parses a point in time given on the command line: RFC 3339, `YYYY-MM-DD HH:MM[:SS]` (UTC)
/// or `YYYY-MM-DD` (midnight UTC).
pub fn parse_time(text: &str) -> Result<DateTime<Utc>, String> {
    let t = text.trim();
    if let Ok(dt) = DateTime::parse_from_rfc3339(t) {
        return Ok(dt.with_timezone(&Utc));
    }
    for fmt in [
        "%Y-%m-%d %H:%M:%S",
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%d %H:%M",
        "%Y-%m-%dT%H:%M",
    ] {
        if let Ok(n) = NaiveDateTime::parse_from_str(t, fmt) {
            return Ok(Utc.from_utc_datetime(&n));
        }
    }
    if let Ok(d) = NaiveDate::parse_from_str(t, "%Y-%m-%d") {
        return Ok(Utc.from_utc_datetime(&d.and_hms_opt(0, 0, 0).unwrap_or_default()));
    }
    Err(format!(
        "`{text}` is not a time: use RFC 3339 (2026-11-28T03:00:00Z), `2026-11-28 03:00` (UTC) or `2026-11-28`"
    ))
}

/// Replaces the password of a URL with `***`; leaves text that is no URL unchanged.
pub fn mask_url(text: &str) -> String {
    match url::Url::parse(text) {
        Ok(mut u) if u.password().is_some() => {
            // set_password only fails for URLs that cannot have one, which have none to mask.
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => text.to_string(),
    }
}

/// Everything but RFC 3986's unreserved characters gets percent-encoded.
const UNRESERVED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Percent-encodes one URL path segment (a database name, one segment of an object path).
pub fn percent_encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, UNRESERVED).to_string()
}

/// Decodes `%XX` escapes; invalid UTF-8 comes out replaced.
pub fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

/// Removes every occurrence of each secret from a text (e.g. a child's stderr).
pub fn scrub(text: &str, secrets: &[&str]) -> String {
    let mut out = text.to_string();
    for s in secrets.iter().filter(|s| s.len() >= 3) {
        out = out.replace(s, "***");
    }
    out
}

/// A new identifier that sorts by creation time: `20261129T031500Z-1a2b3c`.
pub fn new_id(at: DateTime<Utc>) -> String {
    format!(
        "{}-{:06x}",
        at.format("%Y%m%dT%H%M%SZ"),
        rand::random::<u32>() & 0xff_ffff
    )
}

pub fn secs(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("24h").unwrap(), Duration::from_secs(86_400));
        assert_eq!(
            parse_duration("35d").unwrap(),
            Duration::from_secs(35 * 86_400)
        );
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(
            parse_duration("2w").unwrap(),
            Duration::from_secs(14 * 86_400)
        );
        for bad in [
            "",
            "h",
            "24",
            "24x",
            "0h",
            "1.5h",
            "-3h",
            "99999999999999999999d",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad} accepted");
        }
        assert!(parse_duration("24x")
            .unwrap_err()
            .contains("unknown unit `x`"));
    }

    proptest! {
        #[test]
        fn duration_format_round_trips(s in 1u64..10_000_000_000) {
            let d = Duration::from_secs(s);
            prop_assert_eq!(parse_duration(&format_duration(d)).unwrap(), d);
        }
    }

    #[test]
    fn masks_passwords() {
        assert_eq!(
            mask_url("postgres://app:s3cret@db.example:5432/prod?sslmode=require"),
            "postgres://app:***@db.example:5432/prod?sslmode=require"
        );
        assert_eq!(mask_url("postgres://app@db/prod"), "postgres://app@db/prod");
        assert_eq!(mask_url("not a url"), "not a url");
        assert_eq!(scrub("pw=s3cret here", &["s3cret"]), "pw=*** here");
    }

    #[test]
    fn times() {
        let t = parse_time("2026-11-28T03:00:00+09:00").unwrap();
        assert_eq!(t.to_rfc3339(), "2026-11-27T18:00:00+00:00");
        assert_eq!(
            parse_time("2026-11-28").unwrap().to_rfc3339(),
            "2026-11-28T00:00:00+00:00"
        );
        assert_eq!(
            parse_time("2026-11-28 03:04").unwrap().to_rfc3339(),
            "2026-11-28T03:04:00+00:00"
        );
        assert!(parse_time("yesterday").is_err());
    }
}
