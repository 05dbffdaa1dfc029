//! `verify` restores a snapshot into a temporary database on the scratch cluster (which lacks
//! the source's roles), compares, checks documents, measures the restore; `check` proves the
//! repository. Every failure is exit 3 with a problem naming it, and no temporary database is
//! left behind.

mod common;

use common::run_json as run;

use common::documents::{sync_rows, write_tree, BUCKET};
use common::{Env, FIXTURE_DB};
use std::process::Command;

/// A fixture database and documents tree (a directory source), with a [verify] section.
fn env_with_documents(verify_extra: &str) -> (Env, tempfile::TempDir) {
    let env = Env::new();
    let docs = tempfile::tempdir().unwrap();
    let files = write_tree(docs.path());
    sync_rows(&env, &files);
    write_policy(&env, &docs, verify_extra);
    (env, docs)
}

fn write_policy(env: &Env, docs: &tempfile::TempDir, verify_extra: &str) {
    env.write_policy(
        &env.policy,
        &format!(
            "\n[storage]\nkind = \"dir\"\npath = \"{}\"\nbuckets = [\"{BUCKET}\"]\n\n[verify]\nscratch_url = \"${{SCRATCH_URL}}\"\nread_data = \"all\"\n{verify_extra}",
            docs.path().display()
        ),
    );
}

fn verify(env: &Env, extra: &[&str]) -> (i32, serde_json::Value, String) {
    run(env
        .backstop()
        .env("SCRATCH_URL", env.scratch.url("postgres"))
        .args(["verify", "--json", "--policy"])
        .arg(&env.policy)
        .args(extra))
}

/// A verify in the background, its stderr as asked.
fn spawn_verify(env: &Env, stderr: std::process::Stdio) -> std::process::Child {
    Command::new(assert_cmd::cargo::cargo_bin("backstop"))
        .current_dir(env.dir.path())
        .env("SOURCE_DB_URL", env.source.url(FIXTURE_DB))
        .env("SCRATCH_URL", env.scratch.url("postgres"))
        .env("BACKSTOP_IDENTITY", &env.identity)
        .args(["verify", "--policy"])
        .arg(&env.policy)
        .stdout(std::process::Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap()
}

fn databases(env: &Env) -> String {
    env.scratch
        .psql("postgres", "select datname from pg_database order by 1")
}

fn problems(rec: &serde_json::Value) -> String {
    rec["problems"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|p| p.as_str().unwrap_or("").to_string())
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default()
}

#[test]
fn a_clean_verify_compares_everything_and_leaves_the_scratch_server_as_it_was() {
    let (env, docs) = env_with_documents("queries = [{ sql = \"select count(*) from public.orders\", expect = \"> 0\" }, { sql = \"select 1 where false\", expect = \"empty\" }]\n");
    // Session defaults that change how values read as text, different on each server: the
    // comparison must not depend on them (bytea_output is the source's to keep).
    env.source.psql(
        "postgres",
        "alter role postgres set bytea_output = 'escape'; alter role postgres set timezone = 'Asia/Seoul'; \
         alter role postgres set datestyle = 'SQL, DMY'; alter role postgres set intervalstyle = 'sql_standard'; \
         alter role postgres set extra_float_digits = 0",
    );
    env.scratch.psql(
        "postgres",
        "alter role postgres set timezone = 'America/Los_Angeles'; alter role postgres set datestyle = 'German'; \
         alter role postgres set intervalstyle = 'iso_8601'; alter role postgres set extra_float_digits = 1",
    );
    let backup = env.backup_json();
    assert_eq!(
        env.snapshot_manifest_query("latest", ".database.bytea_output"),
        "escape"
    );
    let before = databases(&env);
    let (code, rec, stderr) = verify(&env, &[]);
    assert_eq!(code, 0, "{stderr}\n{rec}");
    assert_eq!(rec["kind"], "verify");
    assert_eq!(rec["ok"], true);
    assert_eq!(rec["snapshot_id"], backup["snapshot_id"]);
    let tables = rec["tables"].as_array().unwrap();
    assert_eq!(
        tables.len() as u64,
        backup["db"]["tables"].as_u64().unwrap()
    );
    assert!(
        tables
            .iter()
            .all(|t| t["checksum_ok"] == true && t["restored_rows"] == t["expected_rows"]),
        "{rec}"
    );
    assert_eq!(rec["objects_checked"], backup["storage"]["objects"]);
    assert_eq!(rec["objects_read"], backup["storage"]["objects"]);
    assert_eq!(rec["objects_failed"], 0);
    assert_eq!(rec["queries"].as_array().unwrap().len(), 2);
    assert!(rec["queries"]
        .as_array()
        .unwrap()
        .iter()
        .all(|q| q["ok"] == true));
    assert!(rec["restore_s"].as_f64().unwrap() > 0.0);
    assert_eq!(rec["rto_s"], 3600.0);
    assert_eq!(rec["rto_met"], true);
    let phases: Vec<_> = rec["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_string())
        .collect();
    for p in [
        "download",
        "decrypt_decompress",
        "schema",
        "data_load",
        "index_constraint_build",
    ] {
        assert!(
            phases.contains(&p.to_string()),
            "phase {p} missing: {phases:?}"
        );
    }
    assert_eq!(databases(&env), before, "verify left a database behind");
    // The record is in the repository.
    let runs = common::files_under(&env.repo.join("runs/test"));
    assert!(runs
        .iter()
        .any(|r| r.to_string_lossy().contains("-verify-")));
    // --keep keeps it.
    let (code, rec, _) = verify(&env, &["--keep"]);
    assert_eq!(code, 0);
    let kept = rec["scratch_database"].as_str().unwrap();
    assert!(databases(&env).contains(kept));

    // A verify host names its identity in the policy: without BACKSTOP_IDENTITY, verify says
    // where to give one, and `[verify] identity` is enough.
    let (code, _, stderr) = run(env
        .backstop()
        .env_remove("BACKSTOP_IDENTITY")
        .env("SCRATCH_URL", env.scratch.url("postgres"))
        .args(["verify", "--json", "--policy"])
        .arg(&env.policy));
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("[verify] identity"), "{stderr}");
    write_policy(
        &env,
        &docs,
        &format!("identity = \"{}\"\n", env.identity.display()),
    );
    let (code, rec, stderr) = run(env
        .backstop()
        .env_remove("BACKSTOP_IDENTITY")
        .env("SCRATCH_URL", env.scratch.url("postgres"))
        .args(["verify", "--json", "--policy"])
        .arg(&env.policy));
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(rec["ok"], true);
}

#[test]
fn damage_failing_queries_and_altered_data_fail_verification() {
    let (env, docs) = env_with_documents(
        "queries = [{ sql = \"select count(*) from public.orders\", expect = \"= 0\" }]\n",
    );
    env.backup_json();
    let before = databases(&env);

    // A failing query.
    let (code, rec, stderr) = verify(&env, &[]);
    assert_eq!(code, 3, "{stderr}");
    assert!(
        problems(&rec).contains("query `select count(*) from public.orders` gave 150000"),
        "{}",
        problems(&rec)
    );
    assert_eq!(databases(&env), before);

    // A scratch server whose event trigger alters loaded data.
    write_policy(&env, &docs, "");
    env.scratch.psql(
        "template1",
        "create function public.tamper() returns trigger language plpgsql as $$ begin new.name := new.name || ' (altered)'; return new; end $$; \
         create function public.add_tamper() returns event_trigger language plpgsql as $$ declare r record; begin \
           for r in select * from pg_event_trigger_ddl_commands() where command_tag = 'CREATE TABLE' and object_identity = 'public.restaurants' loop \
             execute 'create trigger tamper before insert on public.restaurants for each row execute function public.tamper()'; end loop; end $$; \
         create event trigger tamper_restaurants on ddl_command_end execute function public.add_tamper()",
    );
    let (code, rec, stderr) = verify(&env, &[]);
    assert_eq!(code, 3, "{stderr}");
    assert!(
        problems(&rec).contains("table public.restaurants: content differs"),
        "{}",
        problems(&rec)
    );
    assert_eq!(databases(&env), before);
    env.scratch.psql("template1", "drop event trigger tamper_restaurants; drop function public.add_tamper(); drop function public.tamper()");

    // An object whose content differs: one byte of the big scan's first blob.
    let id = env.snapshot_manifest_query(
        "latest",
        ".storage.objects[] | select(.name == \"scans/big scan.tiff\") | .chunks[0].id",
    );
    let blob = env.repo.join("blobs").join(&id[..2]).join(&id);
    let original = std::fs::read(&blob).unwrap();
    let mut bytes = original.clone();
    let at = bytes.len() / 3;
    bytes[at] ^= 0x10;
    std::fs::write(&blob, &bytes).unwrap();
    let (code, rec, _) = verify(&env, &[]);
    assert_eq!(code, 3);
    assert!(
        problems(&rec).contains("object documents/scans/big scan.tiff")
            && problems(&rec).contains(&id),
        "{}",
        problems(&rec)
    );
    assert_eq!(rec["objects_failed"], 1);

    // check --read-data finds the flipped byte without the key, and names the blob.
    let (code, rec, _) = run(env
        .backstop()
        .env_remove("BACKSTOP_IDENTITY")
        .args(["check", "--read-data", "--json", "--policy"])
        .arg(&env.policy));
    assert_eq!(code, 3);
    assert_eq!(rec["damaged"][0]["blob"], id.as_str());
    assert!(!rec["damaged"][0]["snapshots"]
        .as_array()
        .unwrap()
        .is_empty());
    // ... so does check with the identity; check without --read-data cannot see it.
    let (code, rec, _) = run(env
        .backstop()
        .args(["check", "--json", "--policy"])
        .arg(&env.policy)
        .arg("--identity")
        .arg(&env.identity));
    assert_eq!(code, 3, "{rec}");
    assert_eq!(rec["damaged"][0]["blob"], id.as_str());
    let (code, _, _) = run(env.backstop().args(["check", "--policy"]).arg(&env.policy));
    assert_eq!(code, 0);
    std::fs::write(&blob, &original).unwrap();

    // A flipped byte in a blob the database needs.
    let db_blob = env.snapshot_manifest_query("latest", ".database.dump.chunks[3].id");
    let path = env.repo.join("blobs").join(&db_blob[..2]).join(&db_blob);
    let original = std::fs::read(&path).unwrap();
    let mut bytes = original.clone();
    bytes[100] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();
    let (code, rec, _) = verify(&env, &[]);
    assert_eq!(code, 3);
    assert!(
        problems(&rec).contains(&format!("blob {db_blob} is damaged")),
        "{}",
        problems(&rec)
    );
    assert_eq!(databases(&env), before);

    // A deleted blob: verify and plain check both name it.
    std::fs::remove_file(&path).unwrap();
    let (code, rec, _) = verify(&env, &[]);
    assert_eq!(code, 3);
    assert!(
        problems(&rec).contains(&format!("blob {db_blob} is missing")),
        "{}",
        problems(&rec)
    );
    let (code, rec, _) = run(env
        .backstop()
        .args(["check", "--json", "--policy"])
        .arg(&env.policy));
    assert_eq!(code, 3);
    assert_eq!(rec["damaged"][0]["blob"], db_blob.as_str());
    assert!(rec["damaged"][0]["problem"]
        .as_str()
        .unwrap()
        .contains("missing"));
    assert_eq!(databases(&env), before);
}

/// The locale of the locale test (scripts/test.sh generates it).
const KOREAN: &str = "ko_KR.UTF-8";

#[test]
fn a_missing_extension_is_named_and_passes_only_when_allowed() {
    // An extension that exists while the source is set up and is gone before the restore,
    // as Supabase's extensions are absent from a vanilla scratch server.
    let sharedir = String::from_utf8(
        Command::new(common::pg::bindir().join("pg_config"))
            .arg("--sharedir")
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let ext_dir = std::path::PathBuf::from(sharedir.trim()).join("extension");
    let name = format!("backstop_fancy_{}", std::process::id());
    let control = ext_dir.join(format!("{name}.control"));
    let script = ext_dir.join(format!("{name}--1.0.sql"));
    std::fs::write(&control, "default_version = '1.0'\nrelocatable = true\n")
        .unwrap_or_else(|e| panic!("this test installs an extension into {} and needs write access (run as root, as scripts/test.sh does in CI): {e}", ext_dir.display()));
    std::fs::write(&script, "CREATE DOMAIN money_t AS numeric(12,2);\n").unwrap();
    let env = Env::new();
    env.source.psql(
        FIXTURE_DB,
        &format!("create schema fancy_s; create extension {name} with schema fancy_s; \
                  create table public.prices (id int, amount fancy_s.money_t); insert into public.prices select i, i from generate_series(1, 10) i"),
    );
    env.write_policy(
        &env.policy,
        "\n[verify]\nscratch_url = \"${SCRATCH_URL}\"\n",
    );
    env.backup_json();
    std::fs::remove_file(&control).unwrap();
    std::fs::remove_file(&script).unwrap();

    let (code, rec, stderr) = verify(&env, &[]);
    assert_eq!(code, 3, "{stderr}");
    assert_eq!(rec["missing_extensions"], serde_json::json!([name]));
    assert!(
        problems(&rec).contains(&format!("missing extension {name}")),
        "{}",
        problems(&rec)
    );

    // The same triage on a host whose locale is Korean, with PostgreSQL's translations
    // installed: pg_restore's messages must still be read as they are meant.
    let korean = [
        ("LANG", KOREAN),
        ("LC_ALL", KOREAN),
        ("LC_MESSAGES", KOREAN),
        ("LANGUAGE", "ko"),
    ];
    let mut help = Command::new(common::pg::bindir().join("pg_restore"));
    help.arg("--help").envs(korean);
    let help = String::from_utf8_lossy(&help.output().unwrap().stdout).into_owned();
    assert!(
        help.chars().any(|c| ('\u{AC00}'..='\u{D7A3}').contains(&c)),
        "pg_restore does not speak Korean here, so this test would prove nothing: generate the \
         locale with `localedef -i ko_KR -f UTF-8 ko_KR.UTF-8` (scripts/test.sh does) and keep \
         PostgreSQL's translations (/usr/share/locale/ko/LC_MESSAGES/pg_dump-*.mo); it said:\n{help}"
    );
    let mut cmd = env.backstop();
    cmd.envs(korean);
    let (code, rec, stderr) = run(cmd
        .env("SCRATCH_URL", env.scratch.url("postgres"))
        .args(["verify", "--json", "--policy"])
        .arg(&env.policy));
    assert_eq!(code, 3, "{stderr}");
    assert_eq!(rec["missing_extensions"], serde_json::json!([name]));

    env.write_policy(&env.policy, &format!("\n[verify]\nscratch_url = \"${{SCRATCH_URL}}\"\nallow_missing_extensions = [\"{name}\"]\n"));
    let mut cmd = env.backstop();
    cmd.envs(korean);
    let (code, rec, stderr) = run(cmd
        .env("SCRATCH_URL", env.scratch.url("postgres"))
        .args(["verify", "--json", "--policy"])
        .arg(&env.policy));
    assert_eq!(code, 0, "{stderr}\n{}", problems(&rec));
    assert_eq!(rec["missing_extensions"], serde_json::json!([name]));
    let prices = rec["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "public.prices")
        .unwrap()
        .clone();
    assert!(prices["note"].as_str().unwrap().contains(&name), "{prices}");
    assert!(!rec["expected_failures"].as_array().unwrap().is_empty());
}

#[test]
fn an_interrupted_verify_drops_its_temporary_database() {
    let (env, _docs) = env_with_documents("");
    env.backup_json();
    let before = databases(&env);
    let child = spawn_verify(&env, std::process::Stdio::piped());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !databases(&env).contains("backstop_verify_") {
        assert!(
            std::time::Instant::now() < deadline,
            "verify never created its database"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Exit 128 + SIGINT, as a shell reports an interrupted command.
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("interrupted by SIGINT"), "{stderr}");
    assert_eq!(
        databases(&env),
        before,
        "the temporary database was left behind"
    );
}

/// A dump the stream scan cannot read (here a compressed one, from a pg_dump wrapper that adds
/// `--compress=1`) still gets exact figures, counted by SQL in the snapshot with a warning
/// saying so, and verifies.
#[test]
fn an_archive_the_scan_cannot_read_is_counted_by_sql_and_still_verifies() {
    let env = Env::new();
    let normal = env.backup_json();
    let wrapper = tempfile::tempdir().unwrap();
    let script = wrapper.path().join("pg_dump");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nexec '{}' \"$@\" --compress=1\n",
            common::pg::bindir().join("pg_dump").display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = env
        .backstop()
        .env("BACKSTOP_PG_BINDIR", wrapper.path())
        .args(["backup", "--json", "--policy"])
        .arg(&env.policy)
        .assert()
        .success();
    let backup: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    let rec = &backup;
    assert!(
        rec["warnings"].to_string().contains(
            "could not read the dump's table data as it streamed (the archive is compressed)"
        ),
        "{rec}"
    );
    assert_eq!(rec["db"]["rows"], normal["db"]["rows"], "{rec}");
    assert_eq!(rec["db"]["tables"], normal["db"]["tables"], "{rec}");
    let methods = env.snapshot_manifest_query("latest", ".database.tables[].method");
    assert!(
        methods.lines().all(|m| m == "row-hashtextextended"),
        "{methods}"
    );

    let (code, rec, stderr) = verify(&env, &["--scratch-url", &env.scratch.url("postgres")]);
    assert_eq!(code, 0, "{stderr}\n{rec}");
    assert_eq!(rec["snapshot_id"], backup["snapshot_id"]);
    assert!(
        rec["tables"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["checksum_ok"] == true),
        "{rec}"
    );
}

#[test]
fn a_killed_verifys_leftover_database_is_dropped_by_the_next_verify() {
    let (env, _docs) = env_with_documents("");
    env.backup_json();
    let before = databases(&env);
    let mut child = spawn_verify(&env, std::process::Stdio::null());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let leftover = loop {
        let now = databases(&env);
        if let Some(name) = now.lines().find(|l| l.starts_with("backstop_verify_")) {
            // Wait for its comment: the verify writes it right after creating the database.
            let comment = env.scratch.psql(
                "postgres",
                &format!("select coalesce(shobj_description(oid, 'pg_database'), '') from pg_database where datname = '{name}'"),
            );
            if comment.starts_with("backstop verify") {
                break name.to_string();
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "verify never created its database"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    child.kill().unwrap(); // SIGKILL: nothing can clean up
    child.wait().unwrap();
    assert!(
        databases(&env).contains(&leftover),
        "the kill left nothing to clean"
    );

    let (code, rec, stderr) = verify(&env, &[]);
    assert_eq!(code, 0, "{stderr}\n{rec}");
    assert_eq!(
        rec["leftovers_dropped"],
        serde_json::json!([leftover]),
        "{rec}"
    );
    assert!(stderr.contains(&format!("dropped {leftover}")), "{stderr}");
    assert_eq!(
        databases(&env),
        before,
        "a temporary database was left behind"
    );
}
