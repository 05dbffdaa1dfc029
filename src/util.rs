//! Small pure helpers: durations, time parsing, URL masking, percent-encoding, identifiers.
//!
//! Durations are parsed here rather than with `humantime`: a policy's dialect is `s m h d w`
//! and sums of them (`1h30m`); humantime also takes months and years of an assumed length and
//! free spacing, which a policy should refuse rather than guess at. Percent-encoding uses the
//! `percent-encoding` crate.

use chrono::{DateTime, NaiveDate, NaiveDateTime, TimeZone, Utc};
use std::time::Duration;

/// Parses `90m`, `24h`, `35d`, `2w`, `45s`, or a sum of them such as `1h30m`. Months, years
/// and units below a second are refused with what to write instead.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("empty duration; write e.g. 90m, 24h or 35d".into());
    }
    let mut total: u64 = 0;
    let mut rest = text;
    while !rest.is_empty() {
        let digits_end = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let (digits, after) = rest.split_at(digits_end);
        let unit_end = after
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_end);
        if unit.is_empty() {
            return Err(format!(
                "`{text}` is not a duration: `{digits}` has no unit (use s, m, h, d or w)"
            ));
        }
        let seconds: u64 = match unit {
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 86_400,
            "w" => 7 * 86_400,
            "mo" | "mon" | "month" | "months" | "M" => {
                return Err(format!(
                    "`{text}` is not a duration: months are not a unit (they differ in length); write days, e.g. 30d"
                ))
            }
            "y" | "yr" | "year" | "years" => {
                return Err(format!(
                    "`{text}` is not a duration: years are not a unit; write days, e.g. 365d"
                ))
            }
            "ms" | "us" | "µs" | "ns" => {
                return Err(format!(
                    "`{text}` is not a duration: backstop counts whole seconds; write e.g. 1s"
                ))
            }
            _ => {
                return Err(format!(
                    "`{text}` is not a duration: unknown unit `{unit}` (use s, m, h, d or w)"
                ))
            }
        };
        let n: u64 = digits.parse().map_err(|_| {
            format!("`{text}` is not a duration: a number must come before `{unit}`")
        })?;
        total = n
            .checked_mul(seconds)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(|| format!("`{text}` is too long a duration"))?;
        rest = next;
    }
    if total == 0 {
        return Err(format!("`{text}` is a zero duration"));
    }
    Ok(Duration::from_secs(total))
}

/// Levenshtein distance in characters, for "did you mean" suggestions.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
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
    if t == "now" {
        return Ok(Utc::now());
    }
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

/// Whether a query parameter's name says it carries a secret (libpq's `password` and
/// `sslpassword`, and any `*secret*`, `*token*` or `*key*`).
fn secret_param(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    ["password", "secret", "token", "key"]
        .iter()
        .any(|s| n.contains(s))
}

/// The user part of a URL as it is written: `(start, at)` where `text[start..at]` lies between
/// `://` and the `@` before the host. Read from the raw text, so that a password with an
/// unencoded `@`, `#`, `/` or `?` (which a URL parser takes for the host, a fragment, a path or
/// a query) cannot hide where it ends: the `@` chosen is the last one followed by something
/// that looks like a host (and a port), then the end or one of `/?#`.
pub fn raw_userinfo(text: &str) -> Option<(usize, usize)> {
    let scheme_end = text.find("://")?;
    let scheme = &text[..scheme_end];
    if scheme.is_empty()
        || !scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
    {
        return None;
    }
    let start = scheme_end + 3;
    let looks_like_host = |rest: &str| {
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let hostport = &rest[..end];
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) if !h.starts_with('[') || h.ends_with(']') => (h, Some(p)),
            _ => (hostport, None),
        };
        !host.is_empty()
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-._~%[]:".contains(c))
            && port.is_none_or(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()))
    };
    text[start..]
        .rmatch_indices('@')
        .map(|(i, _)| start + i)
        .find(|&at| looks_like_host(&text[at + 1..]))
        .map(|at| (start, at))
}

/// The characters a URL's password holds unencoded that make it end early (`@`, `#`, `/`,
/// `?`), in that order; empty when it has none (or no password).
pub fn unencoded_in_password(text: &str) -> Vec<char> {
    let Some((start, at)) = raw_userinfo(text) else {
        return Vec::new();
    };
    let Some((_, password)) = text[start..at].split_once(':') else {
        return Vec::new();
    };
    ['@', '#', '/', '?']
        .into_iter()
        .filter(|c| password.contains(*c))
        .collect()
}

/// Replaces the password of a URL, and the values of query parameters that carry secrets,
/// with `***`; leaves text that is no URL unchanged. The password is found in the raw text
/// (see [`raw_userinfo`]), so one with unencoded `@`, `#`, `/` or `?` is masked whole.
pub fn mask_url(text: &str) -> String {
    if let Some((start, at)) = raw_userinfo(text) {
        if let Some(colon) = text[start..at].find(':') {
            let masked = format!("{}***{}", &text[..start + colon + 1], &text[at..]);
            return mask_params(&masked);
        }
    }
    mask_params(text)
}

/// [`mask_url`] for a URL whose user part holds no unencoded separator.
fn mask_params(text: &str) -> String {
    let Ok(mut u) = url::Url::parse(text) else {
        return text.to_string();
    };
    let has_password = u.password().is_some();
    let has_secret_param = u.query_pairs().any(|(k, _)| secret_param(&k));
    if !has_password && !has_secret_param {
        // Nothing to hide: the text keeps its exact spelling.
        return text.to_string();
    }
    if has_password {
        // set_password only fails for URLs that cannot have one, which have none to mask.
        let _ = u.set_password(Some("***"));
    }
    if has_secret_param {
        let pairs: Vec<(String, String)> = u
            .query_pairs()
            .map(|(k, v)| {
                let v = if secret_param(&k) {
                    "***".into()
                } else {
                    v.into_owned()
                };
                (k.into_owned(), v)
            })
            .collect();
        u.query_pairs_mut().clear().extend_pairs(pairs);
    }
    u.to_string()
}

/// Whether a text starts like an age private key, in any case (bech32 ignores case, so
/// `age-secret-key-1...` is the same key).
pub fn is_age_secret(text: &str) -> bool {
    text.trim()
        .get(..15)
        .is_some_and(|p| p.eq_ignore_ascii_case("AGE-SECRET-KEY-"))
}

/// Replaces every age private key (`AGE-SECRET-KEY-1...`, in any case) in a text with a mask.
pub fn mask_age_secrets(text: &str) -> String {
    const MARK: &str = "AGE-SECRET-KEY-";
    // ASCII upper-casing keeps every byte offset, so positions found in `upper` hold in `text`.
    let upper = text.to_ascii_uppercase();
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    while let Some(i) = upper[at..].find(MARK) {
        let start = at + i;
        out.push_str(&text[at..start]);
        out.push_str(MARK);
        out.push_str("***");
        let tail = &text[start + MARK.len()..];
        let end = tail
            .find(|c: char| !c.is_ascii_alphanumeric())
            .unwrap_or(tail.len());
        at = start + MARK.len() + end;
    }
    out.push_str(&text[at..]);
    out
}

/// The first 10 characters of a value that failed to parse, for an error message: enough to
/// recognise it, never a whole secret that was put in the wrong place.
pub fn preview(text: &str) -> String {
    let t = text.trim();
    let head: String = t.chars().take(10).collect();
    if head.len() < t.len() {
        format!("{head}...")
    } else {
        head
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
    // Any length: a one-character password is still a password. Empty ones would match
    // everywhere and are skipped.
    for s in secrets.iter().filter(|s| !s.is_empty()) {
        out = out.replace(s, "***");
    }
    out
}

/// This host's name, as locks and leftovers record it.
pub fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown-host".into())
}

/// Whether a process with this pid exists on this host.
pub fn process_alive(pid: u32) -> bool {
    pid == std::process::id() || std::path::Path::new(&format!("/proc/{pid}")).exists()
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

/// A byte count for people: `512 B`, `1.5 MiB`.
pub fn human_bytes(n: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", units[u])
    }
}

/// Locks a mutex; a poisoned one still holds consistent data here (every critical section in
/// backstop is a single map or counter operation), so its contents are used.
pub fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
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
        let months = parse_duration("1mo").unwrap_err();
        assert!(
            months.contains("months are not a unit") && months.contains("30d"),
            "{months}"
        );
        let millis = parse_duration("1ms").unwrap_err();
        assert!(millis.contains("whole seconds"), "{millis}");
        assert!(parse_duration("1y").unwrap_err().contains("365d"));
        assert!(
            parse_duration("1h 30m").is_err(),
            "spaces are not part of the dialect"
        );
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
        assert_eq!(scrub("pw=x here", &["x", ""]), "pw=*** here");
        let m = mask_url("postgres://db/prod?sslmode=require&password=hunter2&sslpassword=p2");
        assert!(
            !m.contains("hunter2") && !m.contains("p2") && m.contains("sslmode=require"),
            "{m}"
        );
        let m = mask_url("https://h/x?access_token=t0k&apikey=k3y&page=2");
        assert!(
            !m.contains("t0k") && !m.contains("k3y") && m.contains("page=2"),
            "{m}"
        );
        assert_eq!(mask_url("https://h/x?page=2"), "https://h/x?page=2");
    }

    #[test]
    fn a_password_with_unencoded_separators_is_masked_whole_and_named() {
        for (url, bad) in [
            (
                "postgres://postgres:p@ss#word@127.0.0.1:5432/db",
                vec!['@', '#'],
            ),
            (
                "postgres://u:a/b?c@db.example/app?sslmode=require",
                vec!['/', '?'],
            ),
            ("postgres://u:p@ss@[::1]:5432/app", vec!['@']),
            ("postgres://u:fine@db/app", vec![]),
            ("postgres://db/app?application_name=x", vec![]),
        ] {
            let m = mask_url(url);
            for secret in ["ss", "word", "a/b", "?c", "fine"] {
                assert!(
                    !m.contains(&format!(":{secret}")) && !m.contains(&format!("{secret}@")),
                    "{url} -> {m}"
                );
            }
            assert!(
                m.contains("db") || m.contains("127.0.0.1") || m.contains("::1"),
                "{m}"
            );
            assert_eq!(unencoded_in_password(url), bad, "{url}");
        }
        assert_eq!(
            mask_url("postgres://postgres:p@ss#word@127.0.0.1:5432/db"),
            "postgres://postgres:***@127.0.0.1:5432/db"
        );
    }

    #[test]
    fn lowercase_age_private_keys_are_masked_and_recognised() {
        let key = "age-secret-key-1qyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqszqgpqy";
        let m = mask_age_secrets(&format!("`{key}` and {}", key.to_uppercase()));
        assert!(!m.to_lowercase().contains("1qyqsz"), "{m}");
        assert!(is_age_secret(key) && is_age_secret(&key.to_uppercase()));
        assert!(!is_age_secret("age1xyz"));
        assert_eq!(preview(key), "age-secret...");
    }

    #[test]
    fn age_private_keys_are_masked_anywhere() {
        let key = "AGE-SECRET-KEY-1QYQSZQGPQYQSZQGPQYQSZQGPQYQSZQGPQYQSZQGPQYQSZQGPQYQSZQGPQY";
        let t = format!("bad recipient `{key}`: no; and {key}.");
        let m = mask_age_secrets(&t);
        assert!(!m.contains("1QYQSZ"), "{m}");
        assert_eq!(
            m,
            "bad recipient `AGE-SECRET-KEY-***`: no; and AGE-SECRET-KEY-***."
        );
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
