//! Storage buckets backed up with the database in one snapshot and restored byte for byte,
//! from each kind of source: Supabase Storage (its REST API, through the test double), S3 (the
//! moto server) and a local directory.

mod common;

use common::run;

use common::documents::{read_tree, sync_rows, write_tree, BUCKET, DUP_SIZE};
use common::supabase::Supabase;
use common::{table_contents, Env, FIXTURE_DB};
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

fn supabase_policy(env: &Env, url: &str) {
    env.write_policy(
        &env.policy,
        &format!("\n[storage]\nkind = \"supabase\"\nurl = \"{url}\"\nkey = \"${{SUPABASE_KEY}}\"\nbuckets = [\"{BUCKET}\"]\n"),
    );
}

/// A policy whose `[storage]` is the S3 source at `endpoint` with these credentials.
fn s3_source_policy(env: &Env, endpoint: &str, bucket: &str, key_id: &str, secret: &str) {
    env.write_policy(
        &env.policy,
        &format!(
            "\n[storage]\nkind = \"s3\"\nendpoint = \"{endpoint}\"\nregion = \"us-east-1\"\naccess_key_id = \"{key_id}\"\nsecret_access_key = \"{secret}\"\nbuckets = [\"{bucket}\"]\n"
        ),
    );
}

fn restore_storage(env: &Env, args: &[&str]) -> serde_json::Value {
    let (code, out, stderr) = run(env
        .backstop()
        .args(["restore", "--json", "--policy"])
        .arg(&env.policy)
        .args(args));
    assert_eq!(code, 0, "{stderr}");
    serde_json::from_str(&out).unwrap()
}

/// Restores the latest snapshot's objects into a new directory and compares the tree.
fn assert_restores_to_a_directory(env: &Env, files: &BTreeMap<String, Vec<u8>>) {
    let out = tempfile::tempdir().unwrap();
    restore_storage(
        env,
        &[
            "--only",
            "storage",
            "--storage-dir",
            out.path().to_str().unwrap(),
        ],
    );
    assert_eq!(&read_tree(&out.path().join(BUCKET)), files);
}

fn downloads(sb: &Supabase) -> usize {
    sb.state
        .requests
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r.contains("/object/authenticated/"))
        .count()
}

#[test]
fn supabase_bucket_round_trips_with_the_database_and_backs_up_only_changes() {
    let env = Env::new();
    let src = tempfile::tempdir().unwrap();
    let mut files = write_tree(src.path());
    sync_rows(&env, &files);
    // One row without an object, one object without a row.
    env.source.psql(FIXTURE_DB, "insert into storage.objects (id, bucket_id, name) values (md5('ghost')::uuid, 'documents', 'ghost.pdf')");
    std::fs::write(src.path().join("documents/orphan.txt"), b"no row for me").unwrap();
    files.insert("orphan.txt".into(), b"no row for me".to_vec());
    let sb = Supabase::start(src.path());
    sb.state.meta.lock().unwrap().insert(
        "documents/menus/2026/Speisekarte Grüße.pdf".into(),
        ("application/pdf".into(), "max-age=60".into()),
    );
    supabase_policy(&env, &sb.url());

    let first = env.backup_json();
    let st = &first["storage"];
    assert_eq!(
        st["objects"].as_u64().unwrap() as usize,
        files.len(),
        "{first}"
    );
    assert_eq!(
        st["mismatches"]["missing_in_bucket"],
        serde_json::json!(["documents/ghost.pdf"])
    );
    assert_eq!(
        st["mismatches"]["missing_in_table"],
        serde_json::json!(["documents/orphan.txt"])
    );
    // Identical files are stored once.
    let plain = st["bytes_plain"].as_u64().unwrap();
    let stored = st["bytes_stored"].as_u64().unwrap();
    assert_eq!(plain, files.values().map(|v| v.len() as u64).sum::<u64>());
    assert!(
        stored < plain - DUP_SIZE as u64 / 2,
        "stored {stored} of {plain}: the duplicate was stored twice"
    );
    assert!(first["db"]["tables"].as_u64().unwrap() > 0);
    assert_eq!(downloads(&sb), files.len());

    // Restore database and documents of that snapshot together.
    let out = tempfile::tempdir().unwrap();
    let rec = restore_storage(
        &env,
        &[
            "--db-url",
            &env.scratch.url("docs"),
            "--storage-dir",
            out.path().to_str().unwrap(),
        ],
    );
    assert_eq!(
        rec["storage"]["objects"].as_u64().unwrap() as usize,
        files.len()
    );
    assert_eq!(read_tree(&out.path().join(BUCKET)), files);
    assert_eq!(
        table_contents(&env.source, FIXTURE_DB),
        table_contents(&env.scratch, "docs")
    );
    // A second restore into the same directory refuses to replace files.
    let (code, _, stderr) = run(env
        .backstop()
        .args(["restore", "--only", "storage", "--policy"])
        .arg(&env.policy)
        .args(["--storage-dir", out.path().to_str().unwrap()]));
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("exists") && stderr.contains("--force"),
        "{stderr}"
    );

    // Change 1% of the files, add one, delete one.
    let changed = [
        "small/note-010.txt",
        "small/note-020.txt",
        "small/note-030.txt",
    ];
    for (i, name) in changed.iter().enumerate() {
        let data = common::documents::bytes(900, 9000 + i as u64);
        std::fs::write(src.path().join(BUCKET).join(name), &data).unwrap();
        files.insert(name.to_string(), data);
    }
    std::fs::create_dir_all(src.path().join("documents/new")).unwrap();
    std::fs::write(src.path().join("documents/new/added.txt"), b"added later").unwrap();
    files.insert("new/added.txt".into(), b"added later".to_vec());
    std::fs::remove_file(src.path().join("documents/small/note-299.txt")).unwrap();
    files.remove("small/note-299.txt");
    let before = downloads(&sb);
    let second = env.backup_json();
    let st = &second["storage"];
    assert_eq!(st["objects"].as_u64().unwrap() as usize, files.len());
    assert_eq!(st["objects_new"], 4, "{second}");
    assert_eq!(
        st["objects_reused"].as_u64().unwrap() as usize,
        files.len() - 4
    );
    assert!(st["bytes_stored"].as_u64().unwrap() < 20_000, "{second}");
    assert_eq!(
        downloads(&sb) - before,
        4,
        "unchanged objects were downloaded again"
    );

    let out2 = tempfile::tempdir().unwrap();
    restore_storage(
        &env,
        &[
            "--only",
            "storage",
            "--storage-dir",
            out2.path().to_str().unwrap(),
        ],
    );
    assert_eq!(read_tree(&out2.path().join(BUCKET)), files);

    // Back to a source: an empty Supabase project, bucket created, content types kept.
    let empty = tempfile::tempdir().unwrap();
    let sb2 = Supabase::start(empty.path());
    supabase_policy(&env, &sb2.url());
    let rec = restore_storage(&env, &["--only", "storage", "--storage-to-source"]);
    assert_eq!(
        rec["storage"]["objects"].as_u64().unwrap() as usize,
        files.len()
    );
    assert_eq!(read_tree(&empty.path().join(BUCKET)), files);
    let meta = sb2
        .state
        .meta
        .lock()
        .unwrap()
        .get("documents/menus/2026/Speisekarte Grüße.pdf")
        .cloned();
    assert_eq!(meta, Some(("application/pdf".into(), "max-age=60".into())));
}

#[test]
fn supabase_v1_listing_wrong_key_and_a_cut_download() {
    let env = Env::new();
    let src = tempfile::tempdir().unwrap();
    let files = write_tree(src.path());
    sync_rows(&env, &files);
    let sb = Supabase::start(src.path());
    sb.state.list_v2.store(false, Ordering::SeqCst);
    supabase_policy(&env, &sb.url());

    let rec = env.backup_json();
    assert_eq!(
        rec["storage"]["objects"].as_u64().unwrap() as usize,
        files.len()
    );
    assert!(sb
        .state
        .requests
        .lock()
        .unwrap()
        .iter()
        .any(|r| r.contains("/object/list/")));
    assert_eq!(
        rec["storage"]["mismatches"]["missing_in_bucket"],
        serde_json::json!([])
    );
    assert_restores_to_a_directory(&env, &files);

    // A wrong key: exit 2, the key never echoed.
    let (code, stdout, stderr) = run(env
        .backstop()
        .env("SUPABASE_KEY", "not-the-key")
        .args(["backup", "--json", "--policy"])
        .arg(&env.policy));
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("key was refused"), "{stderr}");
    assert!(!stdout.contains("not-the-key") && !stderr.contains("not-the-key"));

    // A download cut once mid-object is made again: the backup succeeds and restores exact.
    let mut changed = files.clone();
    let big = common::documents::bytes(9 * 1024 * 1024, 42);
    std::fs::write(src.path().join("documents/cut-once.bin"), &big).unwrap();
    changed.insert("cut-once.bin".into(), big);
    sync_rows(&env, &changed);
    sb.state
        .cut_once
        .lock()
        .unwrap()
        .push("cut-once.bin".into());
    let rec = env.backup_json();
    assert_eq!(rec["ok"], true, "{rec}");
    assert!(
        sb.state.cut_once.lock().unwrap().is_empty(),
        "the cut never happened"
    );
    assert_restores_to_a_directory(&env, &changed);

    // A download cut every time: exit 1 naming it and the attempts, no snapshot.
    let snapshots = env.meta_files().len();
    std::fs::write(
        src.path().join("documents/scans/big scan.tiff"),
        common::documents::bytes(17 * 1024 * 1024, 77),
    )
    .unwrap();
    sb.state
        .cut
        .lock()
        .unwrap()
        .push("scans/big scan.tiff".into());
    let (code, _, stderr) = run(env.backstop().args(["backup", "--policy"]).arg(&env.policy));
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("documents/scans/big scan.tiff"), "{stderr}");
    assert!(stderr.contains("3 attempts"), "{stderr}");
    assert_eq!(env.meta_files().len(), snapshots);
}

#[test]
fn s3_and_directory_sources_round_trip() {
    // S3 source: the moto server, with its own credentials in [storage].
    let moto = common::s3::Moto::start();
    moto.create_bucket(BUCKET, false);
    let tree = tempfile::tempdir().unwrap();
    let files = write_tree(tree.path());
    for (name, data) in &files {
        moto.put(BUCKET, name, data.clone());
    }
    let env = Env::new();
    sync_rows(&env, &files);
    s3_source_policy(
        &env,
        &moto.endpoint(),
        BUCKET,
        "${S3_KEY_ID}",
        "${S3_SECRET}",
    );
    let rec = env.backup_json();
    assert_eq!(
        rec["storage"]["objects"].as_u64().unwrap() as usize,
        files.len(),
        "{rec}"
    );
    assert_eq!(
        rec["storage"]["mismatches"]["missing_in_table"],
        serde_json::json!([])
    );
    assert_restores_to_a_directory(&env, &files);
    // And back into the (emptied) source bucket.
    for name in files.keys() {
        moto.delete(BUCKET, name);
    }
    restore_storage(&env, &["--only", "storage", "--storage-to-source"]);
    let back: BTreeMap<String, Vec<u8>> = files
        .keys()
        .map(|k| (k.clone(), moto.get(BUCKET, k)))
        .collect();
    assert_eq!(back, files);

    // Directory source, storage only.
    let env = Env::new();
    let dir = tempfile::tempdir().unwrap();
    let files = write_tree(dir.path());
    env.write_policy(
        &env.policy,
        &format!(
            "\n[storage]\nkind = \"dir\"\npath = \"{}\"\nbuckets = [\"{BUCKET}\"]\n",
            dir.path().display()
        ),
    );
    let (code, out, stderr) = run(env
        .backstop()
        .args(["backup", "--only", "storage", "--json", "--policy"])
        .arg(&env.policy));
    assert_eq!(code, 0, "{stderr}");
    let rec: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(rec["db"].is_null());
    assert_eq!(
        rec["storage"]["objects"].as_u64().unwrap() as usize,
        files.len()
    );
    assert_restores_to_a_directory(&env, &files);
}

/// Runs a backup expected to fail on its storage source; returns stderr after checking that
/// it failed with exit 2 before the dump started (no database figures, no dump phase).
fn refused_before_the_dump(env: &Env, key: Option<&str>) -> String {
    let mut cmd = env.backstop();
    if let Some(k) = key {
        cmd.env("SUPABASE_KEY", k);
    }
    let (code, out, stderr) = run(cmd.args(["backup", "--json", "--policy"]).arg(&env.policy));
    assert_eq!(code, 2, "{stderr}");
    let rec: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(rec["db"].is_null(), "the dump ran first: {rec}");
    let phases = rec["phases"].to_string();
    assert!(!phases.contains("dump"), "the dump ran first: {rec}");
    assert!(env.meta_files().is_empty());
    if let Some(k) = key {
        assert!(
            !stderr.contains(k) && !out.contains(k),
            "the key was echoed"
        );
    }
    stderr
}

#[test]
fn storage_errors_are_named_before_the_dump_starts() {
    let env = Env::new();
    let src = tempfile::tempdir().unwrap();
    write_tree(src.path());
    let sb = Supabase::start(src.path());
    supabase_policy(&env, &sb.url());
    let forged = refused_before_the_dump(&env, Some("forged-key-1234"));
    assert!(
        forged.contains("key was refused") && forged.contains("not one this project signed"),
        "{forged}"
    );
    let expired = refused_before_the_dump(&env, Some(common::supabase::EXPIRED_KEY));
    assert!(expired.contains("the key has expired"), "{expired}");
    env.write_policy(
        &env.policy,
        &format!("\n[storage]\nkind = \"supabase\"\nurl = \"{}\"\nkey = \"${{SUPABASE_KEY}}\"\nbuckets = [\"nope\"]\n", sb.url()),
    );
    let missing = refused_before_the_dump(&env, None);
    assert!(missing.contains("bucket nope does not exist"), "{missing}");

    // The S3 source: a missing bucket, and a key the server does not know.
    let moto = common::s3::Moto::start();
    let strict = common::s3::Moto::start_with(&[("INITIAL_NO_AUTH_ACTION_COUNT", "0")]);
    for (endpoint, bucket, needle) in [
        (moto.endpoint(), "nope", "the bucket does not exist"),
        (strict.endpoint(), BUCKET, "storage.access_key_id"),
    ] {
        s3_source_policy(&env, &endpoint, bucket, "${S3_KEY_ID}", "${S3_SECRET}");
        let stderr = refused_before_the_dump(&env, None);
        assert!(stderr.contains(needle), "{stderr}");
        assert!(!stderr.contains(common::s3::SECRET));
    }
    // A known key with a wrong secret, on a server that checks signatures.
    let (signed, key_id, _) = common::s3::Moto::with_user(BUCKET);
    s3_source_policy(&env, &signed.endpoint(), BUCKET, &key_id, "not-the-secret");
    let stderr = refused_before_the_dump(&env, None);
    assert!(
        stderr.contains("the secret access key is wrong"),
        "{stderr}"
    );
}

/// Names that are legal object keys but not safe file paths, and one that looks like one.
const UNSAFE: [&str; 5] = ["a//x", "/lead", "dir/", "x/../y", "..x"];
/// Where a directory restore writes each of them (see src/source/storage/names.rs).
const MAPPED: [(&str, &str); 4] = [
    ("a//x", "a/%/x"),
    ("/lead", "%/lead"),
    ("dir/", "dir/%"),
    ("x/../y", "x/%2E%2E/y"),
];

/// Backs up the unsafe names from the policy's source, verifies, restores to a directory
/// through the mapping, then (after `wipe`) exactly back to the source; returns what the
/// source then holds, by `read`.
fn unsafe_names_round_trip(
    env: &Env,
    wipe: &dyn Fn(&str),
    read: &dyn Fn(&str) -> Vec<u8>,
) -> BTreeMap<String, Vec<u8>> {
    let (code, out, stderr) = run(env
        .backstop()
        .args(["backup", "--only", "storage", "--json", "--policy"])
        .arg(&env.policy));
    assert_eq!(code, 0, "{stderr}");
    let rec: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(rec["storage"]["objects"], UNSAFE.len() as u64 + 1, "{rec}");

    let (code, out, stderr) = run(env
        .backstop()
        .args(["verify", "--read-data", "all", "--json", "--policy"])
        .arg(&env.policy));
    assert_eq!(code, 0, "{stderr}");
    let rec: serde_json::Value = serde_json::from_str(&out).unwrap();
    let reported: Vec<String> = MAPPED
        .iter()
        .map(|(n, _)| format!("{BUCKET}/{n}"))
        .collect();
    let mut names: Vec<String> = serde_json::from_value(rec["names_mapped"].clone()).unwrap();
    names.sort();
    let mut expected = reported.clone();
    expected.sort();
    assert_eq!(names, expected, "{rec}");
    assert!(stderr.contains("not safe file paths"), "{stderr}");

    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("out");
    let rec = restore_storage(
        env,
        &[
            "--only",
            "storage",
            "--storage-dir",
            target.to_str().unwrap(),
        ],
    );
    assert_eq!(rec["storage"]["names_mapped"], 4, "{rec}");
    for (i, name) in UNSAFE.iter().enumerate() {
        let path = MAPPED
            .iter()
            .find(|(n, _)| n == name)
            .map_or(name.to_string(), |(_, p)| p.to_string());
        let written = std::fs::read(target.join(BUCKET).join(&path)).unwrap();
        assert_eq!(
            written,
            format!("object {i}").into_bytes(),
            "{name} -> {path}"
        );
    }
    let tsv = std::fs::read_to_string(target.join("restore-names.tsv")).unwrap();
    for (name, path) in MAPPED {
        let line = format!("{BUCKET}/{name}\t{BUCKET}/{path}");
        assert!(tsv.lines().any(|l| l == line), "{line} not in {tsv}");
    }
    // Nothing outside the target directory.
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        1,
        "something was written beside the target"
    );

    for name in UNSAFE.iter().chain(["ok.txt"].iter()) {
        wipe(name);
    }
    restore_storage(env, &["--only", "storage", "--storage-to-source"]);
    UNSAFE
        .iter()
        .chain(["ok.txt"].iter())
        .map(|n| (n.to_string(), read(n)))
        .collect()
}

fn unsafe_contents() -> BTreeMap<String, Vec<u8>> {
    let mut all: BTreeMap<String, Vec<u8>> = UNSAFE
        .iter()
        .enumerate()
        .map(|(i, n)| (n.to_string(), format!("object {i}").into_bytes()))
        .collect();
    all.insert("ok.txt".into(), b"plain".to_vec());
    all
}

#[test]
fn unsafe_names_round_trip_on_s3_and_the_supabase_double() {
    let contents = unsafe_contents();

    let moto = common::s3::Moto::start();
    moto.create_bucket(BUCKET, false);
    for (name, data) in &contents {
        moto.put(BUCKET, name, data.clone());
    }
    assert_eq!(
        moto.keys(BUCKET).len(),
        contents.len(),
        "moto kept every key"
    );
    let env = Env::new();
    s3_source_policy(
        &env,
        &moto.endpoint(),
        BUCKET,
        "${S3_KEY_ID}",
        "${S3_SECRET}",
    );
    let back = unsafe_names_round_trip(&env, &|n| moto.delete(BUCKET, n), &|n| moto.get(BUCKET, n));
    assert_eq!(back, contents);
    assert_eq!(moto.keys(BUCKET).len(), contents.len());

    let root = tempfile::tempdir().unwrap();
    let sb = Supabase::start(root.path());
    for (name, data) in &contents {
        let p = sb.object_path(BUCKET, name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    }
    let env = Env::new();
    supabase_policy(&env, &sb.url());
    let back = unsafe_names_round_trip(
        &env,
        &|n| std::fs::remove_file(sb.object_path(BUCKET, n)).unwrap(),
        &|n| std::fs::read(sb.object_path(BUCKET, n)).unwrap_or_default(),
    );
    assert_eq!(back, contents);
    // The `..` segment reached the double as part of the name, never collapsed.
    let requests = sb.state.requests.lock().unwrap().clone();
    assert!(
        requests.iter().any(|r| r.contains("x%2F..%2Fy")),
        "{requests:?}"
    );

    // One object that cannot be written (a directory stands at its path) never stops the
    // others: they are restored, it is named, exit 1.
    let target = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(target.path().join(BUCKET).join("ok.txt/in-the-way")).unwrap();
    let (code, out, stderr) = run(env
        .backstop()
        .args([
            "restore", "--json", "--only", "storage", "--force", "--policy",
        ])
        .arg(&env.policy)
        .arg("--storage-dir")
        .arg(target.path()));
    assert_eq!(code, 1, "{stderr}");
    let rec: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(rec["storage"]["objects"], UNSAFE.len() as u64, "{rec}");
    assert!(
        rec["error"]
            .as_str()
            .unwrap()
            .contains("1 of 6 storage objects could not be restored")
            && rec["error"]
                .as_str()
                .unwrap()
                .contains(&format!("{BUCKET}/ok.txt")),
        "{rec}"
    );
    assert_eq!(
        std::fs::read(target.path().join(BUCKET).join("..x")).unwrap(),
        contents["..x"]
    );
}
