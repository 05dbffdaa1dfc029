//! The spool path, for snapshots whose manifest records no dump layout (those of versions before
//! it: here the layout is taken out of the manifest; tests/parallel_load.rs covers the parallel
//! load). Restore (and verify) feed pg_restore from a checked spool with `-j` jobs when
//! `[restore]` allows it, and fall back to streaming into one pg_restore when the dump is over
//! `spool_max` or the spool cannot be written. Every path restores exactly, and no spool file
//! is left behind.

mod common;

use common::{table_contents, Env, FIXTURE_DB};

fn spool_files(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .starts_with(".backstop-spool-")
                })
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn parallel_spooled_and_streamed_restores_are_equal() {
    let env = Env::new();
    let spool = env.dir.path().join("spool");
    std::fs::create_dir_all(&spool).unwrap();
    let with = |restore: &str| {
        env.write_policy(&env.policy, &format!("\n[restore]\n{restore}"));
    };
    with(&format!("jobs = 3\nspool_dir = \"{}\"\n", spool.display()));
    env.backup_json();
    env.rewrite_manifest("latest", "del(.database.layout)");
    let original = table_contents(&env.source, FIXTURE_DB);

    let cases = [
        (
            format!("jobs = 3\nspool_dir = \"{}\"\n", spool.display()),
            "pg_restore with 3 jobs from a checked spool",
            true,
        ),
        (
            format!(
                "jobs = 2\nspool_dir = \"{}\"\nspool_max = \"1KiB\"\n",
                spool.display()
            ),
            "larger than restore.spool_max (1.0 KiB): streaming it into one pg_restore",
            false,
        ),
        (
            "jobs = 2\nspool_dir = \"/nonexistent/spool\"\n".to_string(),
            "the spool in /nonexistent/spool failed",
            false,
        ),
        ("jobs = 1\n".to_string(), "", false),
    ];
    for (i, (settings, says, spooled)) in cases.iter().enumerate() {
        with(settings);
        let db = format!("restored_{i}");
        let (code, rec, stderr) = env.restore_json(&env.scratch.url(&db), &[]);
        assert_eq!(code, 0, "{settings}: {stderr}");
        assert!(stderr.contains(says), "{settings}: {stderr}");
        let phases = rec["phases"].to_string();
        assert_eq!(
            phases.contains("\"spool\""),
            *spooled,
            "{settings}: {phases}"
        );
        if !spooled {
            assert!(!stderr.contains("from a checked spool"), "{stderr}");
        }
        if !settings.starts_with("jobs = 1") {
            assert!(
                stderr.contains(
                    "not the parallel load (the snapshot was taken before backstop recorded"
                ),
                "{settings}: {stderr}"
            );
        }
        assert!(
            table_contents(&env.scratch, &db) == original,
            "{settings}: the restored tables differ"
        );
        assert_eq!(spool_files(&spool), 0, "a spool file was left behind");
    }

    // verify takes the same path, so the restore time it measures is a real restore's.
    with(&format!(
        "jobs = 2\nspool_dir = \"{}\"\n\n[verify]\nscratch_url = \"${{SCRATCH_URL}}\"\n",
        spool.display()
    ));
    let out = env
        .backstop()
        .args(["verify", "--json", "--policy"])
        .arg(&env.policy)
        .output()
        .unwrap();
    let rec: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rec["ok"], true, "{rec}");
    assert!(rec["phases"].to_string().contains("\"spool\""), "{rec}");
    assert_eq!(spool_files(&spool), 0);
}
