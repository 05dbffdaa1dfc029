//! `[restore]`: how a restore (and verify, which measures the RTO with the same path) feeds
//! pg_restore.
//!
//! With `jobs` above 1 the dump is first written, checked chunk by chunk and as a whole, to a
//! spool file in `spool_dir`, and pg_restore runs with `-j jobs` from it: tables load and
//! indexes build in parallel. A dump larger than `spool_max`, or a spool that cannot be
//! written (a full disk), falls back to streaming into one pg_restore, and the log says so.
//! The spool holds the plaintext dump: it is created 0600 in `spool_dir` and removed at the end.

use super::raw::RawRestore;
use super::Validator;
use std::path::PathBuf;

#[derive(Debug, Clone)]
pub struct RestoreSettings {
    /// Load workers and pg_restore jobs; 1 streams the dump into one pg_restore.
    pub jobs: usize,
    /// Where the TOC-only archive or the spool goes (default: the system's temporary directory).
    pub spool_dir: Option<PathBuf>,
    /// The largest dump spooled, in bytes.
    pub spool_max: u64,
}

/// The default job count: the cores, at most 4.
pub fn default_jobs() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 4)
}

pub const DEFAULT_SPOOL_MAX: u64 = 64 << 30;

impl Default for RestoreSettings {
    fn default() -> Self {
        RestoreSettings {
            jobs: default_jobs(),
            spool_dir: None,
            spool_max: DEFAULT_SPOOL_MAX,
        }
    }
}

/// `512MiB`, `20GiB`, `1.5TB`, `4096` (bytes): binary (KiB, MiB, GiB, TiB) and decimal (KB, MB,
/// GB, TB) units.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let n: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a size such as 512MiB or 20GiB"))?;
    let scale: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kib" => 1024.0,
        "mib" => 1024f64.powi(2),
        "gib" => 1024f64.powi(3),
        "tib" => 1024f64.powi(4),
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "tb" => 1e12,
        other => {
            return Err(format!(
                "`{other}` is not a size unit (KiB, MiB, GiB, TiB, KB, MB, GB, TB)"
            ))
        }
    };
    Ok((n * scale) as u64)
}

/// `[stream]`: the change stream (see [`crate::ops::stream`]).
#[derive(Debug, Clone)]
pub struct StreamSettings {
    /// The logical replication slot (pgoutput) the stream follows.
    pub slot: String,
    /// The publication of the tables the stream protects.
    pub publication: String,
    /// While changes flow, a segment is sealed at least this often.
    pub seal_every: std::time::Duration,
    /// WAL the slot may hold on the primary before a `stream_lag` alert.
    pub max_slot_lag: u64,
    /// WAL held past which the slot is dropped to protect the primary (`slot_dropped`).
    pub drop_slot_at: u64,
}

impl Validator<'_> {
    pub(super) fn stream_settings(
        &mut self,
        raw: Option<super::raw::RawStream>,
    ) -> Option<StreamSettings> {
        let r = raw?;
        let name = |v: &mut Self, s: &super::raw::S, key: &str| {
            let n = v.expand(s, key);
            let valid = !n.is_empty()
                && n.len() <= 63
                && n.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
            if !valid {
                v.problem(
                    s.span(),
                    key,
                    format!("`{n}` is not a slot or publication name: lower-case letters, digits and `_`, at most 63"),
                );
            }
            n
        };
        let slot = name(self, &r.slot, "stream.slot");
        let publication = name(self, &r.publication, "stream.publication");
        let seal_every = self.duration(&r.seal_every, "stream.seal_every", 60);
        if seal_every.is_zero() {
            if let Some(s) = &r.seal_every {
                self.problem(s.span(), "stream.seal_every", "must be at least 1s");
            }
        }
        let size = |v: &mut Self, s: &Option<super::raw::S>, key: &str, default: u64| match s {
            None => default,
            Some(s) => parse_size(s.get_ref()).unwrap_or_else(|e| {
                v.problem(s.span(), key, e);
                default
            }),
        };
        let max_slot_lag = size(self, &r.max_slot_lag, "stream.max_slot_lag", 2 << 30);
        let drop_slot_at = size(self, &r.drop_slot_at, "stream.drop_slot_at", 16 << 30);
        if drop_slot_at <= max_slot_lag {
            if let Some(s) = r.drop_slot_at.as_ref().or(r.max_slot_lag.as_ref()) {
                self.problem(
                    s.span(),
                    "stream.drop_slot_at",
                    "must be larger than max_slot_lag (the alert comes first, the drop later)",
                );
            }
        }
        Some(StreamSettings {
            slot,
            publication,
            seal_every: seal_every.max(std::time::Duration::from_secs(1)),
            max_slot_lag,
            drop_slot_at,
        })
    }

    pub(super) fn restore_settings(&mut self, raw: Option<RawRestore>) -> RestoreSettings {
        let Some(r) = raw else {
            return RestoreSettings::default();
        };
        let jobs = match &r.jobs {
            Some(j) if *j.get_ref() < 1 || *j.get_ref() > 64 => {
                self.problem(j.span(), "restore.jobs", "must be between 1 and 64");
                1
            }
            Some(j) => *j.get_ref() as usize,
            None => default_jobs(),
        };
        let spool_max = match &r.spool_max {
            Some(s) => parse_size(s.get_ref()).unwrap_or_else(|e| {
                self.problem(s.span(), "restore.spool_max", e);
                0
            }),
            None => DEFAULT_SPOOL_MAX,
        };
        let spool_dir = r
            .spool_dir
            .as_ref()
            .map(|d| PathBuf::from(self.expand(d, "restore.spool_dir")));
        RestoreSettings {
            jobs,
            spool_dir,
            spool_max,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_and_decimal_units() {
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("20 GiB"), Ok(20 << 30));
        assert_eq!(parse_size("1.5GB"), Ok(1_500_000_000));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("3 parsecs").is_err());
    }
}
