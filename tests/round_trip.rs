//! Back up the Supabase-shaped fixture and restore it onto a separate scratch cluster that lacks
//! the source's roles: everything must come back exactly.

mod common;

use common::{files_under, policies, sequences, table_contents, Env, FIXTURE_DB};

#[test]
fn backup_restores_exactly_dedups_and_stores_no_plaintext() {
    let env = Env::new();

    let first = env.backup_json();
    assert_eq!(first["kind"], "backup");
    assert_eq!(first["ok"], true, "{first}");
    let db = &first["db"];
    assert!(db["tables"].as_u64().unwrap() >= 9, "{first}");
    // users 2000, buckets 1, objects 300, restaurants 300, orders 150000 (in two partitions),
    // audit_log 20004, Bestellungen 500, 메뉴 400, the materialized view 300, heartbeat 3,
    // settings_sensitive 5.
    let fixture_rows = 2000 + 1 + 300 + 300 + 150_000 + 20_004 + 500 + 400 + 300 + 3 + 5;
    assert_eq!(db["rows"].as_u64().unwrap(), fixture_rows, "{first}");
    assert!(db["bytes_plain"].as_u64().unwrap() > 5_000_000, "{first}");
    assert!(db["blobs_new"].as_u64().unwrap() > 5, "{first}");
    assert!(first["consistent_at"].is_string());

    // A second backup of the unchanged database stores almost nothing new.
    let second = env.backup_json();
    let (s1, s2) = (
        db["bytes_stored"].as_u64().unwrap(),
        second["db"]["bytes_stored"].as_u64().unwrap(),
    );
    assert!(
        second["db"]["blobs_reused"].as_u64().unwrap() > 0,
        "{second}"
    );
    assert!(
        s2 * 20 < s1,
        "second backup stored {s2} bytes, first {s1}: not under 5%"
    );
    assert_ne!(first["snapshot_id"], second["snapshot_id"]);

    // Tables' figures come from the dump stream itself; the materialized view's from SQL.
    let methods = env.snapshot_manifest_query(
        "latest",
        r#".database.tables[] | "\(.kind) \(.method) \(.copy != null)""#,
    );
    let mut methods: Vec<&str> = methods.lines().collect();
    methods.sort();
    methods.dedup();
    assert_eq!(
        methods,
        vec!["m row-hashtextextended false", "r copy-xxh3-128 true"]
    );

    // snapshots lists both, oldest first, without the identity.
    let out = env
        .backstop()
        .env_remove("BACKSTOP_IDENTITY")
        .args(["snapshots", "--json", "--policy"])
        .arg(&env.policy)
        .assert()
        .success();
    let list: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    let ids: Vec<_> = list["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].clone())
        .collect();
    assert_eq!(
        ids,
        vec![first["snapshot_id"].clone(), second["snapshot_id"].clone()]
    );
    assert_eq!(list["snapshots"][0]["db"]["rows"], first["db"]["rows"]);

    // No file of the repository contains plaintext of the fixture.
    let canaries: [&[u8]; 5] = [
        b"FOODBIZ-CANARY-7f3a9c",
        "Grüße aus Seoul".as_bytes(),
        "김치찌개".as_bytes(),
        b"order note ",
        b"foodbiz.example",
    ];
    let files = files_under(&env.repo);
    assert!(files.len() > 10);
    for f in &files {
        let bytes = std::fs::read(f).unwrap();
        for c in canaries {
            assert!(
                !bytes.windows(c.len()).any(|w| w == c),
                "{} contains plaintext {:?}",
                f.display(),
                String::from_utf8_lossy(c)
            );
        }
    }

    // Restore the first snapshot into a new database on the scratch cluster.
    let target = env.scratch.url("restored");
    let (code, rec, stderr) = env.restore_json(
        &target,
        &["--snapshot", first["snapshot_id"].as_str().unwrap()],
    );
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(rec["kind"], "restore");
    assert_eq!(rec["ok"], true);
    assert_eq!(rec["db"]["rows"], first["db"]["rows"]);
    assert!(rec["duration_s"].as_f64().unwrap() > 0.0);
    let created: Vec<_> = rec["db"]["roles_created"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    for role in [
        "anon",
        "authenticated",
        "service_role",
        "supabase_storage_admin",
        "Küchen Chef",
    ] {
        assert!(
            created.contains(&role.to_string()),
            "role {role} not created: {created:?}"
        );
    }
    assert!(
        !stderr.contains(common::pg::PASSWORD),
        "password leaked: {stderr}"
    );
    assert!(!serde_json::to_string(&rec)
        .unwrap()
        .contains(common::pg::PASSWORD));

    assert_eq!(
        table_contents(&env.source, FIXTURE_DB),
        table_contents(&env.scratch, "restored")
    );
    assert_eq!(
        sequences(&env.source, FIXTURE_DB),
        sequences(&env.scratch, "restored")
    );
    assert_eq!(
        env.scratch
            .psql("restored", "select convert_from(lo_get(424242), 'UTF8')"),
        "a large object, dumped in its own block"
    );
    let p = policies(&env.scratch, "restored");
    assert!(
        p.contains("own orders") && p.contains("{authenticated}"),
        "{p}"
    );
    assert_eq!(policies(&env.source, FIXTURE_DB), p);
    assert_eq!(
        env.source.schema_dump(FIXTURE_DB),
        env.scratch.schema_dump("restored")
    );

    // Restoring over the now non-empty database is refused without --force ...
    let (code, rec, stderr) = env.restore_json(&target, &[]);
    assert_eq!(code, 2, "{stderr}");
    assert_eq!(rec["ok"], false);
    assert!(
        stderr.contains("is not empty") && stderr.contains("--force"),
        "{stderr}"
    );
    assert!(!stderr.contains(common::pg::PASSWORD));
    // ... and done with it.
    let (code, _, stderr) = env.restore_json(&target, &["--force"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        table_contents(&env.source, FIXTURE_DB),
        table_contents(&env.scratch, "restored")
    );
}
