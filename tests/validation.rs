//! Bad policy values are refused before anything runs, by `policy validate` and by every
//! command, with exit 2 naming the key and its line; a private key where a public key belongs
//! is called one and never echoed. No server is needed: nothing may get that far.

mod common;

const PRIVATE: &str = "AGE-SECRET-KEY-1GFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPQ4EGAEX";

fn policy(recipient: &str, repository: &str, extra: &str) -> String {
    format!(
        "name = \"v\"\n\n[database]\nurl = \"postgres://u@127.0.0.1:1/db\"\n\n[repository]\n{repository}\n\n[encryption]\nrecipients = [\"{recipient}\"]\n{extra}"
    )
}

#[test]
fn bad_values_get_exit_2_naming_the_key_and_line_before_anything_runs() {
    let dir = tempfile::tempdir().unwrap();
    let (_, public) = backstop::seal::generate_identity();
    let repo = format!("url = \"{}\"", dir.path().join("repo").display());
    let dir_source = |bucket: &str| {
        format!("\n[storage]\nkind = \"dir\"\npath = \"/tmp\"\nbuckets = [\"{bucket}\"]\n")
    };
    let cases: Vec<(String, &str, &str)> = vec![
        (
            policy(&public, &repo, &dir_source("../../../etc")),
            "storage.buckets",
            "../../../etc",
        ),
        (
            policy(&public, &repo, &dir_source("a/../b")),
            "storage.buckets",
            "a/../b",
        ),
        (
            policy(&public, &repo, &dir_source("a/b")),
            "storage.buckets",
            "a/b",
        ),
        (
            policy(&public, &repo, &dir_source("..")),
            "storage.buckets",
            "`..`",
        ),
        (policy("", &repo, ""), "encryption.recipients", "is empty"),
        (
            policy(&public, "url = \"\"", ""),
            "repository.url",
            "is empty",
        ),
        (
            policy(
                &public,
                &repo,
                "\n[storage]\nkind = \"dir\"\npath = \"\"\nbuckets = [\"d\"]\n",
            ),
            "storage.path",
            "is empty",
        ),
        (
            policy(&public, &format!("{repo}\ndedup_key = \"\""), ""),
            "repository.dedup_key",
            "is empty",
        ),
        (
            policy(PRIVATE, &repo, ""),
            "encryption.recipients",
            "PRIVATE key",
        ),
    ];
    for (text, key, needle) in &cases {
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, text).unwrap();
        for args in [
            vec!["policy", "validate"],
            vec!["backup", "--json", "--policy"],
            vec!["verify", "--json", "--policy"],
        ] {
            let out = common::bin().args(&args).arg(&path).output().unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert_eq!(out.status.code(), Some(2), "{args:?} {key}: {stderr}");
            assert!(stderr.contains("bad.toml:"), "{stderr}");
            assert!(
                stderr.contains(key) && stderr.contains(needle),
                "{args:?} {key}: {stderr}"
            );
            // The private key's secret part never appears, not even in the --json record.
            let body = &PRIVATE["AGE-SECRET-KEY-".len()..];
            assert!(
                !stderr.contains(body) && !stdout.contains(body),
                "{args:?}: leaked"
            );
        }
    }
    assert!(
        !dir.path().join("repo").exists(),
        "a refused policy reached the repository"
    );
}
