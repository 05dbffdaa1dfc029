//! What the repository says is always true: a lost blob is uploaded again and never
//! referenced missing; damaged metadata is listed and named, never silently skipped; each
//! snapshot's record of a shared blob is judged on its own; an "empty" restore target really
//! is empty. One regression test per case, against real PostgreSQL clusters.

mod common;

use common::run_json as run;

use common::{files_under, table_contents, Env, FIXTURE_DB};
use serde_json::Value;
use std::path::PathBuf;

fn check(env: &Env, read_data: bool) -> (i32, Value, String) {
    let mut cmd = env.backstop();
    cmd.args(["check", "--json", "--policy"]).arg(&env.policy);
    if read_data {
        cmd.arg("--read-data");
    }
    run(&mut cmd)
}

fn meta_of(env: &Env, id: &str) -> PathBuf {
    env.meta_files()
        .into_iter()
        .find(|p| p.to_string_lossy().contains(id))
        .unwrap()
}

fn with_bulk(env: &Env) {
    env.source.psql(
        FIXTURE_DB,
        "create table public.bulk as select i, md5(i::text) || repeat(md5((i * 7)::text), 8) as t from generate_series(1, 30000) i",
    );
}

#[test]
fn a_lost_blob_is_uploaded_again_and_check_names_only_the_older_snapshot() {
    let env = Env::new();
    with_bulk(&env);
    let old = env.backup_json()["snapshot_id"]
        .as_str()
        .unwrap()
        .to_string();
    // A chunk of table data (not pg_dump's header, which differs on every run).
    let lost = env.snapshot_manifest_query("latest", ".database.dump.chunks[5].id");
    let path = env.repo.join("blobs").join(&lost[..2]).join(&lost);
    std::fs::remove_file(&path).unwrap();

    let rec = env.backup_json();
    assert_eq!(rec["ok"], true, "{rec}");
    assert!(rec["blobs_reuploaded"].as_u64().unwrap() >= 1, "{rec}");
    assert!(path.exists(), "the lost blob was not uploaded again");
    let new = rec["snapshot_id"].as_str().unwrap().to_string();

    let (code, restored, stderr) =
        env.restore_json(&env.scratch.url("restored"), &["--snapshot", &new]);
    assert_eq!(code, 0, "{stderr}\n{restored}");
    assert_eq!(
        table_contents(&env.source, FIXTURE_DB),
        table_contents(&env.scratch, "restored")
    );

    // The older snapshot's meta.json records the lost copy's hash: it, and only it, is named.
    let (code, rec, stderr) = check(&env, true);
    assert_eq!(code, 3, "{stderr}\n{rec}");
    let damaged = rec["damaged"].as_array().unwrap();
    assert!(damaged.iter().any(|d| d["blob"] == lost.as_str()), "{rec}");
    for d in damaged {
        assert_eq!(d["snapshots"], serde_json::json!([old]), "{rec}");
    }
}

#[test]
fn damaged_meta_json_is_listed_and_named_never_skipped() {
    let env = Env::new();
    let ids: Vec<String> = (0..4)
        .map(|_| {
            env.backup_json()["snapshot_id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    // One byte of the id changed, cut in half, emptied to `{}`; the fourth stays sound.
    let flip = meta_of(&env, &ids[0]);
    let text = std::fs::read_to_string(&flip).unwrap();
    std::fs::write(
        &flip,
        text.replacen(&ids[0], &format!("X{}", &ids[0][1..]), 1),
    )
    .unwrap();
    let cut = meta_of(&env, &ids[1]);
    let bytes = std::fs::read(&cut).unwrap();
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    std::fs::write(meta_of(&env, &ids[2]), "{}").unwrap();

    let (code, rec, stderr) = run(env
        .backstop()
        .args(["snapshots", "--json", "--policy"])
        .arg(&env.policy));
    assert_eq!(code, 0, "{stderr}");
    let listed: Vec<&str> = rec["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, vec![ids[3].as_str()], "{rec}");
    let mut damaged: Vec<&str> = rec["damaged"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    damaged.sort();
    assert_eq!(
        damaged,
        ids[..3].iter().map(String::as_str).collect::<Vec<_>>()
    );

    let (code, rec, stderr) = check(&env, false);
    assert_eq!(code, 3, "{stderr}\n{rec}");
    for id in &ids[..3] {
        assert!(
            rec["damaged"]
                .as_array()
                .unwrap()
                .iter()
                .any(|d| d["snapshots"] == serde_json::json!([id])
                    && d["blob"].as_str().unwrap().ends_with("meta.json")),
            "{id} not named: {rec}"
        );
    }

    let (code, _, stderr) =
        env.restore_json(&env.scratch.url("fromdamaged"), &["--snapshot", &ids[1]]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains(&format!("snapshot {} is damaged", ids[1])),
        "{stderr}"
    );
}

#[test]
fn a_wrong_hash_in_the_newer_meta_json_of_a_shared_blob_is_named_by_check_read_data() {
    let env = Env::new();
    let older = env.backup_json()["snapshot_id"]
        .as_str()
        .unwrap()
        .to_string();
    let newer = env.backup_json()["snapshot_id"]
        .as_str()
        .unwrap()
        .to_string();
    let path = meta_of(&env, &newer);
    let mut meta: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let older_meta: Value =
        serde_json::from_slice(&std::fs::read(meta_of(&env, &older)).unwrap()).unwrap();
    let shared: Vec<String> = older_meta["blobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_str().unwrap().to_string())
        .collect();
    let blob = meta["blobs"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|b| shared.iter().any(|s| b["id"] == s.as_str()))
        .expect("the two snapshots share a blob");
    let id = blob["id"].as_str().unwrap().to_string();
    blob["sha256"] = "0".repeat(64).into();
    std::fs::write(&path, serde_json::to_vec_pretty(&meta).unwrap()).unwrap();

    let (code, rec, stderr) = check(&env, true);
    assert_eq!(code, 3, "{stderr}\n{rec}");
    let damaged = rec["damaged"].as_array().unwrap();
    assert_eq!(damaged.len(), 1, "{rec}");
    assert_eq!(damaged[0]["blob"], id.as_str());
    assert_eq!(damaged[0]["snapshots"], serde_json::json!([newer]), "{rec}");
}

#[test]
fn a_target_holding_only_a_function_is_refused_without_force() {
    let env = Env::new();
    env.backup_json();
    env.scratch.psql("postgres", "create database fnonly");
    env.scratch.psql(
        "fnonly",
        "create function public.answer() returns int language sql as 'select 42'",
    );
    let target = env.scratch.url("fnonly");
    let (code, _, stderr) = env.restore_json(&target, &[]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("is not empty") && stderr.contains("function public.answer"),
        "{stderr}"
    );
    // Nothing was written: the function is all there is.
    assert_eq!(
        env.scratch.psql(
            "fnonly",
            "select count(*) from pg_class c join pg_namespace n on n.oid = c.relnamespace where n.nspname = 'public'"
        ),
        "0"
    );
    let (code, _, stderr) = env.restore_json(&target, &["--force"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        env.scratch.psql(
            "fnonly",
            "select count(*) from pg_proc where proname = 'answer'"
        ),
        "0",
        "--force replaces the database: the function is gone"
    );
    assert!(files_under(&env.repo.join("locks")).is_empty());
}

#[test]
fn a_lost_backstop_json_is_refused_by_init_and_rebuilt_by_init_recover() {
    let env = Env::new();
    let id = env.backup_json()["snapshot_id"]
        .as_str()
        .unwrap()
        .to_string();
    let config_path = env.repo.join("backstop.json");
    let original: Value = serde_json::from_slice(&std::fs::read(&config_path).unwrap()).unwrap();
    std::fs::remove_file(&config_path).unwrap();

    let (code, _, stderr) = run(env.backstop().args(["init", "--policy"]).arg(&env.policy));
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("init --recover"), "{stderr}");
    assert!(
        !config_path.exists(),
        "init wrote a new salt over a repository with snapshots"
    );

    let (code, _, stderr) = run(env
        .backstop()
        .args(["init", "--recover", "--policy"])
        .arg(&env.policy));
    assert_eq!(code, 0, "{stderr}");
    let recovered: Value = serde_json::from_slice(&std::fs::read(&config_path).unwrap()).unwrap();
    assert_eq!(recovered["dedup_salt"], original["dedup_salt"]);
    assert_eq!(recovered["chunker"], original["chunker"]);

    let (code, rec, stderr) = env.restore_json(&env.scratch.url("afterloss"), &["--snapshot", &id]);
    assert_eq!(code, 0, "{stderr}\n{rec}");
    assert_eq!(
        table_contents(&env.source, FIXTURE_DB),
        table_contents(&env.scratch, "afterloss")
    );
    // Deduplication goes on: the next backup finds the old blobs under the same ids.
    let rec = env.backup_json();
    assert!(rec["db"]["blobs_reused"].as_u64().unwrap() >= 1, "{rec}");
}

/// The backup host's blob index (in the cache directory) only saves reading meta.json files:
/// a warm, corrupt, missing, stale or foreign one gives the same backups, and a stale one never
/// makes a snapshot name a blob that prune removed.
#[test]
fn the_hosts_blob_index_is_only_a_shortcut_whatever_its_state() {
    let env = Env::new();
    with_bulk(&env);
    let first = env.backup_json();
    let index_dir = env.dir.path().join("cache").join("index");
    let index_file = || {
        std::fs::read_dir(&index_dir)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("blobs-")
            })
            .expect("the backup saved a blob index")
    };
    let folded = || -> usize {
        let index: Value = serde_json::from_slice(&std::fs::read(index_file()).unwrap()).unwrap();
        index["metas"].as_object().unwrap().len()
    };
    assert_eq!(folded(), 1);
    let stale = std::fs::read(index_file()).unwrap();
    // An unchanged database stores at most pg_dump's header chunks again, whatever the index.
    let unchanged = |rec: &Value| {
        assert_eq!(rec["ok"], true, "{rec}");
        assert!(rec["db"]["blobs_new"].as_u64().unwrap() <= 2, "{rec}");
        assert!(rec["db"]["blobs_reused"].as_u64().unwrap() > 5, "{rec}");
    };
    unchanged(&env.backup_json());
    assert_eq!(folded(), 2);
    std::fs::write(index_file(), b"{\"format\": 1, \"blobs\": [[").unwrap();
    unchanged(&env.backup_json());
    assert_eq!(
        folded(),
        3,
        "a corrupt index is rebuilt from every meta.json"
    );
    std::fs::remove_dir_all(&index_dir).unwrap();
    unchanged(&env.backup_json());
    assert_eq!(folded(), 4, "a missing index is rebuilt");

    // Prune the first snapshot (its header chunks go with it), then put back the index from
    // before: it still names those blobs, but the next snapshot must not.
    let id = first["snapshot_id"].as_str().unwrap();
    let (code, pruned, stderr) = run(env
        .backstop()
        .args(["prune", "--json", "--policy"])
        .arg(&env.policy)
        .args(["--snapshot", id, "--force"]));
    assert_eq!(code, 0, "{stderr}");
    assert!(pruned["blobs_deleted"].as_u64().unwrap() >= 1, "{pruned}");
    std::fs::write(index_file(), &stale).unwrap();
    unchanged(&env.backup_json());
    assert_eq!(
        folded(),
        4,
        "the pruned snapshot is dropped, the other three read"
    );
    let (code, rec, stderr) = check(&env, true);
    assert_eq!(code, 0, "{stderr}\n{rec}");

    // Another host (its own cache) backing up into the same repository reads every meta.json.
    let out = env
        .backstop()
        .env("BACKSTOP_CACHE_DIR", env.dir.path().join("other-host"))
        .args(["backup", "--json", "--policy"])
        .arg(&env.policy)
        .output()
        .unwrap();
    unchanged(&serde_json::from_slice(&out.stdout).unwrap());
}
