//! The parallel load: with `[restore] jobs` above 1, a snapshot whose manifest records the
//! dump's layout is restored table by table from its own chunks, with no spool. It restores
//! the Supabase-shaped fixture exactly, its large object included (verify takes the same
//! path); a damaged blob in the middle of a table stops it, naming the blob; a snapshot without
//! a layout (as older versions wrote) still restores, through the spool.

mod common;

use common::{policies, sequences, table_contents, Env, FIXTURE_DB};
use std::collections::BTreeMap;

/// Everything a restore must bring back: rows of every table and materialized view, sequence
/// values, RLS policies, indexes, constraints, triggers, columns and large objects.
fn fingerprint(c: &common::pg::Cluster, db: &str) -> BTreeMap<String, String> {
    let mut f = table_contents(c, db);
    f.insert("sequences".into(), sequences(c, db));
    f.insert("policies".into(), policies(c, db));
    f.insert(
        "indexes".into(),
        c.psql(db, "select schemaname, indexname, indexdef from pg_indexes where schemaname not in ('pg_catalog', 'information_schema') order by 1, 2"),
    );
    f.insert(
        "constraints".into(),
        c.psql(db, "select conrelid::regclass::text, conname, pg_get_constraintdef(oid) from pg_constraint where connamespace::regnamespace::text not in ('pg_catalog', 'information_schema') order by 1, 2"),
    );
    f.insert(
        "triggers".into(),
        c.psql(db, "select tgrelid::regclass::text, tgname, pg_get_triggerdef(oid) from pg_trigger where not tgisinternal order by 1, 2"),
    );
    f.insert(
        "columns".into(),
        c.psql(db, "select table_schema, table_name, column_name, data_type, is_identity, is_generated, coalesce(generation_expression, '') from information_schema.columns where table_schema not in ('pg_catalog', 'information_schema') order by 1, 2, ordinal_position"),
    );
    f.insert(
        "large objects".into(),
        c.psql(db, "select oid, lomowner::regrole, md5(lo_get(oid)), length(lo_get(oid)) from pg_largeobject_metadata order by 1"),
    );
    f
}

fn differences(a: &BTreeMap<String, String>, b: &BTreeMap<String, String>) -> Vec<String> {
    a.iter()
        .filter(|(k, v)| b.get(*k) != Some(*v))
        .map(|(k, v)| format!("{k}: {v:?} vs {:?}", b.get(k)))
        .chain(
            b.keys()
                .filter(|k| !a.contains_key(*k))
                .map(|k| format!("{k} only in the restore")),
        )
        .collect()
}

fn with_jobs(env: &Env, jobs: usize) {
    let spool = env.dir.path().join("spool");
    std::fs::create_dir_all(&spool).unwrap();
    env.write_policy(
        &env.policy,
        &format!(
            "\n[restore]\njobs = {jobs}\nspool_dir = \"{}\"\n\n[verify]\nscratch_url = \"${{SCRATCH_URL}}\"\n",
            spool.display()
        ),
    );
}

#[test]
fn the_supabase_fixture_restores_exactly_through_the_parallel_load_and_old_snapshots_through_the_spool(
) {
    let env = Env::new();
    with_jobs(&env, 2);
    env.backup_json();
    let layout = env.snapshot_manifest_query("latest", ".database.layout.blocks | length");
    assert!(
        layout.parse::<usize>().unwrap() > 10,
        "{layout} blocks recorded"
    );
    let original = fingerprint(&env.source, FIXTURE_DB);
    assert!(
        original["large objects"].starts_with("424242|"),
        "the fixture's large object: {}",
        original["large objects"]
    );

    let (code, rec, stderr) = env.restore_json(&env.scratch.url("parallel"), &[]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("parallel load:"), "{stderr}");
    assert!(!stderr.contains("from a checked spool"), "{stderr}");
    let phases = rec["phases"].to_string();
    assert!(
        !phases.contains("\"spool\"") && phases.contains("\"data_load\""),
        "{phases}"
    );
    let restored = fingerprint(&env.scratch, "parallel");
    assert_eq!(differences(&original, &restored), Vec::<String>::new());

    // verify restores the same way, so the time it measures is this path's.
    let out = env
        .backstop()
        .args(["verify", "--json", "--policy"])
        .arg(&env.policy)
        .output()
        .unwrap();
    let rec: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(rec["ok"], true, "{rec} {stderr}");
    assert!(stderr.contains("parallel load:"), "{stderr}");
    assert!(!rec["phases"].to_string().contains("\"spool\""), "{rec}");

    // A manifest without the layout, as versions before it wrote: the spool path, saying why.
    env.rewrite_manifest("latest", "del(.database.layout)");
    let (code, rec, stderr) = env.restore_json(&env.scratch.url("spooled"), &[]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains(
            "the snapshot was taken before backstop recorded where each table's data lies"
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains("pg_restore with 2 jobs from a checked spool"),
        "{stderr}"
    );
    assert!(rec["phases"].to_string().contains("\"spool\""), "{rec}");
    let restored = fingerprint(&env.scratch, "spooled");
    assert_eq!(differences(&original, &restored), Vec::<String>::new());
}

#[test]
fn a_flipped_byte_in_the_third_largest_table_stops_the_parallel_load_naming_the_blob() {
    let env = Env::new();
    with_jobs(&env, 2);
    env.backup_json();
    let blocks: Vec<serde_json::Value> = serde_json::from_str(&env.snapshot_manifest_query(
        "latest",
        "[.database.layout.blocks[] | {name, start, \"end\": .[\"end\"]}] | tostring",
    ))
    .unwrap();
    let chunks: Vec<serde_json::Value> = serde_json::from_str(
        &env.snapshot_manifest_query("latest", ".database.dump.chunks | tostring"),
    )
    .unwrap();
    let size = |b: &serde_json::Value| -> u64 {
        let at = |p: &serde_json::Value| {
            let c = p["chunk"].as_u64().unwrap() as usize;
            chunks[..c]
                .iter()
                .map(|c| c["len"].as_u64().unwrap())
                .sum::<u64>()
                + p["offset"].as_u64().unwrap()
        };
        at(&b["end"]) - at(&b["start"])
    };
    let mut by_size: Vec<&serde_json::Value> = blocks.iter().collect();
    by_size.sort_by_key(|b| std::cmp::Reverse(size(b)));
    // The fixture's partitions and audit log span many chunks each.
    let third = by_size[2];
    // A chunk wholly inside the table's data: no other table uses it.
    let (first, last) = (
        third["start"]["chunk"].as_u64().unwrap() as usize,
        third["end"]["chunk"].as_u64().unwrap() as usize,
    );
    assert!(last >= first + 2, "{third} spans chunks {first} to {last}");
    let id = chunks[first + 1]["id"].as_str().unwrap().to_string();
    let path = env.repo.join("blobs").join(&id[..2]).join(&id);
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();

    let (code, rec, stderr) = env.restore_json(&env.scratch.url("damaged"), &[]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("parallel load:"), "{stderr}");
    assert!(
        stderr.contains(&format!("blob {id} is damaged")),
        "{stderr}"
    );
    assert_eq!(rec["ok"], false, "{rec}");
    assert!(
        rec["db"].is_null(),
        "nothing is reported as restored: {rec}"
    );
    assert!(rec["error"].as_str().unwrap().contains(&id), "{rec}");
}
