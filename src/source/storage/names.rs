//! Object names as file paths, for restoring a bucket into a directory.
//!
//! S3 and Supabase accept keys that are not safe relative paths: `a//x` (an empty segment),
//! `/lead`, `dir/` (a trailing slash), `x/../y` (a `..` segment). Such keys are backed up
//! exactly and restored exactly to the source; in a directory each `/`-separated segment is
//! written as itself unless it is empty, `.`, `..` or starts with `%`. Those are escaped:
//!
//! * an empty segment becomes `%`;
//! * any other escaped segment has every `%` and `.` percent-encoded (`..` → `%2E%2E`,
//!   `%x` → `%25x`).
//!
//! A written segment starts with `%` exactly when it was escaped, so the mapping is reversible
//! ([`from_dir_path`]) and two names never map to one path. Every written segment is non-empty
//! and neither `.` nor `..`, so nothing lands outside the target directory. The restore lists
//! every mapped name in `restore-names.tsv` (see [`tsv_line`]).

use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, CONTROLS};

/// The characters an escaped segment encodes (control characters too, so a name never
/// breaks a line of `restore-names.tsv`).
const ESCAPED: &AsciiSet = &CONTROLS.add(b'%').add(b'.');

fn needs_escape(segment: &str) -> bool {
    segment.is_empty() || segment == "." || segment == ".." || segment.starts_with('%')
}

/// The relative path that `name` is written to under `DIR/<bucket>/`, and whether it differs
/// from the name.
pub fn to_dir_path(name: &str) -> (String, bool) {
    let mut mapped = false;
    let segments: Vec<String> = name
        .split('/')
        .map(|s| {
            if !needs_escape(s) {
                return s.to_string();
            }
            mapped = true;
            if s.is_empty() {
                "%".to_string()
            } else {
                utf8_percent_encode(s, ESCAPED).to_string()
            }
        })
        .collect();
    (segments.join("/"), mapped)
}

/// The object name that [`to_dir_path`] wrote as `path`.
pub fn from_dir_path(path: &str) -> String {
    path.split('/')
        .map(|s| match s {
            "%" => String::new(),
            s if s.starts_with('%') => percent_decode_str(s).decode_utf8_lossy().into_owned(),
            s => s.to_string(),
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// One line of `restore-names.tsv`: `bucket/name`, a tab, the path written, with `\`, tab,
/// newline and carriage return in either written as `\\`, `\t`, `\n`, `\r`.
pub fn tsv_line(bucket: &str, name: &str, path: &str) -> String {
    let esc = |s: &str| {
        s.replace('\\', "\\\\")
            .replace('\t', "\\t")
            .replace('\n', "\\n")
            .replace('\r', "\\r")
    };
    format!("{}\t{}\n", esc(&format!("{bucket}/{name}")), esc(path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn maps_the_unsafe_names() {
        for (name, path) in [
            ("a//x", "a/%/x"),
            ("/lead", "%/lead"),
            ("dir/", "dir/%"),
            ("x/../y", "x/%2E%2E/y"),
            ("./x", "%2E/x"),
            ("%41/b", "%2541/b"),
        ] {
            assert_eq!(to_dir_path(name), (path.to_string(), true), "{name}");
            assert_eq!(from_dir_path(path), name);
        }
        for name in ["..x", "a/b.c", "x..", "ü b/c%d"] {
            assert_eq!(to_dir_path(name), (name.to_string(), false));
        }
    }

    proptest! {
        #[test]
        fn reversible_and_contained(name in "[a-z./%\\\\ \t]{0,12}") {
            let (path, _) = to_dir_path(&name);
            prop_assert_eq!(from_dir_path(&path), name.clone());
            for s in path.split('/') {
                prop_assert!(!s.is_empty() && s != "." && s != "..", "{} -> {}", name, path);
            }
        }
    }
}
