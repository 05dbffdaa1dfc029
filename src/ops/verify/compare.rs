//! What verify compares once the scratch database exists: pg_restore's errors judged against
//! missing extensions, every table's row count and checksum against the backup's, the policy's
//! queries, the restored storage.objects rows, and the storage objects' blobs. Each finding
//! goes into [`Findings`]; an error here means the comparison itself could not run.
//!
//! * An extension the scratch server lacks (Supabase's pg_graphql, pgsodium, supabase_vault,
//!   pg_net on a vanilla server) is named, with every failed command that mentions it, its
//!   schema, or an object whose creation already failed because of it. Those are expected when
//!   the extension is in `verify.allow_missing_extensions`; any other pg_restore error fails
//!   verification.
//! * Storage objects: every referenced blob exists with its recorded size, and for the
//!   `read_data` share (all with `all`) the content is downloaded, decrypted and compared by
//!   size and SHA-256; the restored storage.objects rows are compared with the snapshot's
//!   objects (differences already recorded at backup time are reported, not failed).

use crate::error::{Error, Result};
use crate::expect::{evaluate, Expect};
use crate::ops::load::{create_missing_roles, load_dump, DbTarget, LoadOptions, RestoreIssue};
use crate::ops::{Phase, ProgressSink};
pub use crate::record::figures::QueryCheck;
pub use crate::record::figures::StreamChecked;
pub use crate::record::figures::TableCheck;
use crate::repo::format::{Manifest, Meta};
use crate::repo::reader::BlobReader;
use crate::repo::Repo;
use crate::seal::{BlobIds, Opener};
use crate::source::copytext::{RowDigest, METHOD_COPY, METHOD_ROW, PINNED_SETTINGS};
use crate::source::pgtools::DbUrl;
use crate::source::postgres::{column, connect, display_ident, table_checksum};
use crate::util::secs;
use futures::StreamExt;
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::{Connection, Executor, Row};
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

#[derive(Debug, Clone, Default, Serialize)]
pub struct Findings {
    pub restore_s: Option<f64>,
    pub tables: Vec<TableCheck>,
    pub objects_checked: u64,
    pub objects_read: u64,
    pub objects_failed: u64,
    pub queries: Vec<QueryCheck>,
    pub problems: Vec<String>,
    /// Storage objects (`bucket/name`) whose names are not safe file paths: a restore to a
    /// directory writes them under mapped names (`restore-names.tsv`); to the source, exactly.
    pub names_mapped: Vec<String>,
    pub missing_extensions: Vec<String>,
    pub expected_failures: Vec<String>,
    pub phases: Vec<Phase>,
    /// `[[files]]` files read back and compared with their recorded SHA-256.
    pub files_checked: u64,
    /// `[[git]]` bundles verified (`git bundle verify`, refs against the record).
    pub git_checked: u64,
    /// The change stream replayed from the snapshot before to this one, and compared.
    pub stream_checked: Option<StreamChecked>,
    /// What the operator should know that is no failure (a span the stream does not cover).
    pub notes: Vec<String>,
}

impl Findings {
    /// Adds what one step of the examination found (every field named, so a new one is not
    /// forgotten here).
    pub fn add(&mut self, step: Findings) {
        let Findings {
            restore_s,
            tables,
            objects_checked,
            objects_read,
            objects_failed,
            queries,
            problems,
            names_mapped,
            missing_extensions,
            expected_failures,
            phases,
            files_checked,
            git_checked,
            stream_checked,
            notes,
        } = step;
        self.restore_s = restore_s.or(self.restore_s);
        self.tables.extend(tables);
        self.objects_checked += objects_checked;
        self.objects_read += objects_read;
        self.objects_failed += objects_failed;
        self.queries.extend(queries);
        self.problems.extend(problems);
        self.names_mapped.extend(names_mapped);
        for ext in missing_extensions {
            if !self.missing_extensions.contains(&ext) {
                self.missing_extensions.push(ext);
            }
        }
        self.expected_failures.extend(expected_failures);
        self.phases.extend(phases);
        self.files_checked += files_checked;
        self.git_checked += git_checked;
        self.stream_checked = stream_checked.or(self.stream_checked.take());
        self.notes.extend(notes);
    }
}

/// What to compare, and where.
pub struct Options {
    /// The temporary database, created and dropped by the caller.
    pub target: Option<DbUrl>,
    pub read_share: f64,
    pub allow_missing_extensions: Vec<String>,
    pub queries: Vec<(String, Expect)>,
    pub ahead: usize,
    /// Jobs and spool for the restore: the same path a real restore takes.
    pub restore: crate::policy::RestoreSettings,
}

/// Restores the snapshot's database into `options.target` and compares; checks its storage
/// objects. Findings go into `found`.
#[allow(clippy::too_many_arguments)]
pub async fn examine(
    repo: &Repo,
    meta: &Meta,
    manifest: &Manifest,
    opener: Arc<Opener>,
    ids: BlobIds,
    options: &Options,
    progress: &dyn ProgressSink,
    found: &mut Findings,
) -> Result<()> {
    if let (Some(db), Some(url)) = (&manifest.database, &options.target) {
        let target = DbTarget {
            url: url.clone(),
            force: false,
            is_source: false,
            force_source: false,
        };
        create_missing_roles(&target.url, db).await?;
        let load = LoadOptions {
            stop_on_error: false,
            ahead: options.ahead,
            progress,
            restore: options.restore.clone(),
        };
        let loaded = load_dump(repo, meta, db, opener.clone(), ids.clone(), &target, &load);
        match loaded.await {
            Err(e) if !e.kind.is_finding() => return Err(e),
            Err(e) => found
                .problems
                .push(format!("restore failed: {}", e.message)),
            Ok(outcome) => {
                found.restore_s = Some(secs(outcome.elapsed));
                found.phases.extend(outcome.phases);
                let (failed_tables, judged) =
                    judge_errors(&outcome.errors, &options.allow_missing_extensions);
                found.add(judged);
                found.add(compare_tables(&target.url, db, &failed_tables).await?);
                found.add(run_queries(&target.url, &options.queries).await?);
                if let Some(storage) = &manifest.storage {
                    found.add(cross_check_rows(&target.url, storage).await?);
                }
            }
        }
    }
    if let Some(storage) = &manifest.storage {
        found.add(check_objects(repo, meta, storage, opener, ids, options).await?);
    }
    Ok(())
}

/// The extension a pg_restore error says is missing, if any.
fn missing_extension(error: &str) -> Option<String> {
    if let Some(i) = error.find(".control\"") {
        let before = &error[..i];
        return before.rsplit('/').next().map(str::to_string);
    }
    let rest = error.split("extension \"").nth(1)?;
    let (name, tail) = rest.split_once('"')?;
    tail.trim_start()
        .starts_with("is not available")
        .then(|| name.to_string())
}

fn extension_schema(command: &str) -> Option<String> {
    let upper = command.to_ascii_uppercase();
    let at = upper.find("WITH SCHEMA ")? + "WITH SCHEMA ".len();
    let s: String = command[at..]
        .chars()
        .take_while(|c| !c.is_whitespace() && *c != ';')
        .collect();
    Some(s.trim_matches('"').to_string())
}

fn created_table(command: &str) -> Option<String> {
    let rest = command.strip_prefix("CREATE TABLE ")?;
    Some(rest.split(" (").next()?.trim().to_string())
}

/// Sorts pg_restore's errors into those a missing extension explains and the rest. Returns the
/// tables that could not be created because of a missing extension, and the findings.
fn judge_errors(
    errors: &[RestoreIssue],
    allowed: &[String],
) -> (HashMap<String, String>, Findings) {
    let mut found = Findings::default();
    let mut extensions: Vec<(String, Option<String>)> = Vec::new();
    let mut failed_tables: HashMap<String, String> = HashMap::new();
    for e in errors {
        let command = e.command.clone().unwrap_or_default();
        let text = format!("{} {}", e.error, command);
        let blame = if let Some(ext) = missing_extension(&e.error) {
            let schema = extension_schema(&command).filter(|s| s != "public" && s != "pg_catalog");
            extensions.push((ext.clone(), schema));
            if !found.missing_extensions.contains(&ext) {
                found.missing_extensions.push(ext.clone());
            }
            Some(ext)
        } else {
            extensions
                .iter()
                .find(|(ext, schema)| {
                    text.contains(ext.as_str())
                        || schema.as_ref().is_some_and(|s| {
                            text.contains(&format!("{s}.")) || text.contains(&format!("\"{s}\""))
                        })
                })
                .map(|(ext, _)| ext.clone())
                .or_else(|| {
                    failed_tables
                        .iter()
                        .find(|(table, _)| text.contains(table.as_str()))
                        .map(|(_, ext)| ext.clone())
                })
        };
        let first_line = command.lines().next().unwrap_or("").to_string();
        match blame {
            Some(ext) => {
                if let Some(t) = created_table(&command) {
                    failed_tables.insert(t, ext.clone());
                }
                let line = format!("missing extension {ext}: {} ({first_line})", e.error);
                if allowed.iter().any(|a| a == &ext) {
                    found.expected_failures.push(line);
                } else {
                    found.problems.push(format!("{line}; allow it with verify.allow_missing_extensions = [\"{ext}\"] if the scratch server cannot have it"));
                }
            }
            None => found
                .problems
                .push(format!("pg_restore error: {} ({first_line})", e.error)),
        }
    }
    (failed_tables, found)
}

pub(super) async fn compare_tables(
    url: &DbUrl,
    db: &crate::repo::format::DbManifest,
    failed: &HashMap<String, String>,
) -> Result<Findings> {
    let mut found = Findings::default();
    let mut conn = connect(url).await?;
    let setup =
        |e: sqlx::Error| Error::failed(format!("verify: setting up the comparison session: {e}"));
    conn.execute(format!("SET row_security = off; {PINNED_SETTINGS}").as_str())
        .await
        .map_err(setup)?;
    let source_setting = "select pg_catalog.set_config($1, $2, false)";
    if let Some(b) = &db.bytea_output {
        sqlx::query(source_setting)
            .bind("bytea_output")
            .bind(b)
            .execute(&mut conn)
            .await
            .map_err(setup)?;
    }
    if let Some(l) = &db.lc_monetary {
        // A locale the scratch server lacks only matters for money columns, whose comparison
        // then fails and is named.
        let set = sqlx::query(source_setting).bind("lc_monetary").bind(l);
        if let Err(e) = set.execute(&mut conn).await {
            tracing::warn!(
                "the scratch server cannot set lc_monetary to {l} as the source had it: {e}"
            );
        }
    }
    for t in &db.tables {
        let name = format!("{}.{}", display_ident(&t.schema), display_ident(&t.name));
        if let Some(ext) = failed.get(&name) {
            found.tables.push(TableCheck {
                name,
                expected_rows: t.rows,
                restored_rows: None,
                checksum_ok: false,
                note: Some(format!("not restored: needs missing extension {ext}")),
            });
            continue;
        }
        let figures = match (t.method.as_str(), &t.copy) {
            (METHOD_COPY, Some(copy)) => copy_digest(&mut conn, copy, &name).await,
            (METHOD_ROW, _) => table_checksum(&mut conn, &t.schema, &t.name, &t.kind).await,
            (other, _) => Err(Error::failed(format!(
                "checksum method {other} is not one this backstop knows; use a newer backstop"
            ))),
        };
        match figures {
            Ok((rows, checksum)) => {
                let ok = rows == t.rows && checksum == t.checksum;
                if !ok {
                    found.problems.push(if rows != t.rows {
                        format!(
                            "table {name}: {rows} rows restored, the backup counted {}",
                            t.rows
                        )
                    } else {
                        format!(
                            "table {name}: content differs from the backup's checksum ({} rows)",
                            rows
                        )
                    });
                }
                found.tables.push(TableCheck {
                    name,
                    expected_rows: t.rows,
                    restored_rows: Some(rows),
                    checksum_ok: ok,
                    note: None,
                });
            }
            Err(e) => {
                found.problems.push(format!("table {name}: {}", e.message));
                found.tables.push(TableCheck {
                    name,
                    expected_rows: t.rows,
                    restored_rows: None,
                    checksum_ok: false,
                    note: Some(e.message),
                });
            }
        }
    }
    let _ = conn.close().await;
    Ok(found)
}

/// Row count and checksum of what `copy` writes, as `source::archive` computes them on the dump.
async fn copy_digest(
    conn: &mut sqlx::PgConnection,
    copy: &str,
    name: &str,
) -> Result<(u64, String)> {
    let mut stream = conn
        .copy_out_raw(copy)
        .await
        .map_err(|e| Error::failed(format!("reading table {name}: {e}")))?;
    let mut digest = RowDigest::default();
    while let Some(piece) = stream.next().await {
        let piece = piece.map_err(|e| Error::failed(format!("reading table {name}: {e}")))?;
        digest.update(&piece);
    }
    Ok(digest.finish())
}

async fn run_queries(url: &DbUrl, queries: &[(String, Expect)]) -> Result<Findings> {
    let mut found = Findings::default();
    if queries.is_empty() {
        return Ok(found);
    }
    let mut conn = connect(url).await?;
    for (sql, expect) in queries {
        let check = match sqlx::raw_sql(sql.as_str()).fetch_all(&mut conn).await {
            Ok(rows) => {
                let values: Vec<Option<String>> = rows.iter().map(first_column_text).collect();
                let (result, ok) = evaluate(expect, &values);
                QueryCheck {
                    sql: sql.clone(),
                    result,
                    ok,
                }
            }
            Err(e) => QueryCheck {
                sql: sql.clone(),
                result: format!("error: {e}"),
                ok: false,
            },
        };
        if !check.ok {
            found.problems.push(format!(
                "query `{}` gave {}, which does not meet its expectation",
                check.sql, check.result
            ));
        }
        found.queries.push(check);
    }
    let _ = conn.close().await;
    Ok(found)
}

/// The first column as text, whatever its type (numbers, text, booleans).
fn first_column_text(row: &sqlx::postgres::PgRow) -> Option<String> {
    use sqlx::ValueRef;
    let raw = row.try_get_raw(0).ok()?;
    if raw.is_null() {
        return None;
    }
    row.try_get::<i64, _>(0)
        .map(|v| v.to_string())
        .or_else(|_| row.try_get::<i32, _>(0).map(|v| v.to_string()))
        .or_else(|_| row.try_get::<f64, _>(0).map(|v| v.to_string()))
        .or_else(|_| row.try_get::<String, _>(0))
        .or_else(|_| row.try_get::<bool, _>(0).map(|v| v.to_string()))
        .ok()
}

async fn cross_check_rows(
    url: &DbUrl,
    storage: &crate::repo::format::StorageManifest,
) -> Result<Findings> {
    let mut found = Findings::default();
    let mut conn = connect(url).await?;
    let exists: bool = sqlx::query("select to_regclass('storage.objects') is not null")
        .fetch_one(&mut conn)
        .await
        .map_err(|e| Error::failed(format!("verify: {e}")))?
        .try_get(0)
        .map_err(|e| {
            Error::failed(format!(
                "verify: reading to_regclass('storage.objects'): {e}"
            ))
        })?;
    if !exists {
        return Ok(found);
    }
    let buckets: Vec<String> = storage
        .objects
        .iter()
        .map(|o| o.bucket.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let rows: BTreeSet<String> = sqlx::query("select bucket_id::text || '/' || name::text from storage.objects where bucket_id = any($1)")
        .bind(&buckets)
        .fetch_all(&mut conn)
        .await
        .map_err(|e| Error::failed(format!("verify: reading restored storage.objects: {e}")))?
        .into_iter()
        .map(|r| column::<String>(&r, 0, "storage.objects.name"))
        .collect::<Result<_>>()?;
    let _ = conn.close().await;
    let objects: BTreeSet<String> = storage
        .objects
        .iter()
        .map(|o| format!("{}/{}", o.bucket, o.name))
        .collect();
    let known_rows: BTreeSet<&String> = storage.missing_in_bucket.iter().collect();
    let known_objects: BTreeSet<&String> = storage.missing_in_table.iter().collect();
    for r in rows.difference(&objects) {
        if known_rows.contains(r) {
            found.expected_failures.push(format!(
                "storage.objects row {r} has no object (so at backup time)"
            ));
        } else {
            found.problems.push(format!(
                "restored storage.objects row {r} has no object in the snapshot"
            ));
        }
    }
    for o in objects.difference(&rows) {
        if known_objects.contains(o) {
            found.expected_failures.push(format!(
                "object {o} has no storage.objects row (so at backup time)"
            ));
        } else {
            found.problems.push(format!(
                "object {o} of the snapshot has no row in the restored storage.objects"
            ));
        }
    }
    Ok(found)
}

/// Whether an object falls in the read share: a stable choice per snapshot and object.
fn chosen(share: f64, snapshot: &str, name: &str) -> bool {
    if share >= 1.0 {
        return true;
    }
    let h = Sha256::digest(format!("{snapshot}\u{0}{name}").as_bytes());
    let v = u64::from_be_bytes([h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7]]);
    (v as f64 / u64::MAX as f64) < share
}

async fn check_objects(
    repo: &Repo,
    meta: &Meta,
    storage: &crate::repo::format::StorageManifest,
    opener: Arc<Opener>,
    ids: BlobIds,
    options: &Options,
) -> Result<Findings> {
    let mut found = Findings::default();
    let stored: HashMap<String, u64> = repo.stored_blobs().await?;
    let recorded: HashMap<&str, u64> = meta.blobs.iter().map(|b| (b.id.as_str(), b.size)).collect();
    let reader = Arc::new(BlobReader::new(repo.store.clone(), opener, ids, meta));
    let mut to_read = Vec::new();
    for o in &storage.objects {
        found.objects_checked += 1;
        if crate::source::storage::names::to_dir_path(&o.name).1 {
            found.names_mapped.push(format!("{}/{}", o.bucket, o.name));
        }
        let broken =
            o.chunks
                .iter()
                .find_map(|c| match (stored.get(&c.id), recorded.get(c.id.as_str())) {
                    (None, _) => Some(format!("blob {} is missing", c.id)),
                    (Some(s), Some(r)) if s != r => Some(format!(
                        "blob {} has {s} bytes, meta.json records {r}",
                        c.id
                    )),
                    (Some(_), None) => Some(format!("blob {} is not listed in meta.json", c.id)),
                    _ => None,
                });
        if let Some(why) = broken {
            found.objects_failed += 1;
            found
                .problems
                .push(format!("object {}/{}: {why}", o.bucket, o.name));
        } else if chosen(
            options.read_share,
            &meta.id,
            &format!("{}/{}", o.bucket, o.name),
        ) {
            to_read.push(o.clone());
        }
    }
    let results: Vec<Result<Option<String>>> = futures::stream::iter(to_read)
        .map(|o| {
            let reader = reader.clone();
            async move {
                let mut hasher = Sha256::new();
                let mut size = 0u64;
                let mut chunks = reader.stream(o.chunks.clone(), 4);
                while let Some(item) = chunks.next().await {
                    match item {
                        Ok(plain) => {
                            size += plain.len() as u64;
                            hasher.update(&plain);
                        }
                        Err(e) if !e.kind.is_finding() => return Err(e),
                        Err(e) => return Ok(Some(format!("object {}/{}: {}", o.bucket, o.name, e.message))),
                    }
                }
                let sha = hex::encode(hasher.finalize());
                Ok((size != o.size || sha != o.sha256).then(|| {
                    format!("object {}/{}: content has {size} bytes and SHA-256 {sha}, the snapshot records {} bytes and {}", o.bucket, o.name, o.size, o.sha256)
                }))
            }
        })
        .buffer_unordered(4)
        .collect()
        .await;
    found.objects_read = results.len() as u64;
    let results: Vec<Option<String>> = results.into_iter().collect::<Result<_>>()?;
    for problem in results.into_iter().flatten() {
        found.objects_failed += 1;
        found.problems.push(problem);
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_missing_extensions() {
        assert_eq!(
            missing_extension("could not execute query: ERROR:  could not open extension control file \"/usr/share/postgresql/15/extension/pg_graphql.control\": No such file or directory").as_deref(),
            Some("pg_graphql")
        );
        assert_eq!(
            missing_extension(
                "could not execute query: ERROR:  extension \"pgsodium\" is not available"
            )
            .as_deref(),
            Some("pgsodium")
        );
        assert_eq!(
            missing_extension("could not execute query: ERROR:  relation \"x\" does not exist"),
            None
        );
        assert_eq!(
            extension_schema("CREATE EXTENSION IF NOT EXISTS pg_graphql WITH SCHEMA graphql;")
                .as_deref(),
            Some("graphql")
        );
        assert_eq!(
            created_table("CREATE TABLE public.t (\n    a int\n);").as_deref(),
            Some("public.t")
        );
    }

    #[test]
    fn attributes_dependent_failures() {
        let issue = |e: &str, c: &str| RestoreIssue {
            error: e.into(),
            command: Some(c.into()),
        };
        let errors = vec![
            issue(
                "could not execute query: ERROR:  extension \"fancy\" is not available",
                "CREATE EXTENSION IF NOT EXISTS fancy WITH SCHEMA fancy_s;",
            ),
            issue(
                "could not execute query: ERROR:  type \"fancy_s.money\" does not exist",
                "CREATE TABLE public.prices (\n    amount fancy_s.money\n);",
            ),
            issue(
                "could not execute query: ERROR:  relation \"public.prices\" does not exist",
                "COPY public.prices (amount) FROM stdin;",
            ),
            issue(
                "could not execute query: ERROR:  syntax error",
                "CREATE VIEW public.v AS nonsense;",
            ),
        ];
        let (failed, found) = judge_errors(&errors, &["fancy".into()]);
        assert_eq!(found.missing_extensions, vec!["fancy"]);
        assert_eq!(
            found.expected_failures.len(),
            3,
            "{:?}",
            found.expected_failures
        );
        assert_eq!(found.problems.len(), 1, "{:?}", found.problems);
        assert_eq!(
            failed.get("public.prices").map(String::as_str),
            Some("fancy")
        );
        let (_, strict) = judge_errors(&errors, &[]);
        assert_eq!(strict.problems.len(), 4);
        assert!(strict.problems[0].contains("allow_missing_extensions"));
    }

    #[test]
    fn read_share_is_stable_and_proportional() {
        let n = (0..10_000)
            .filter(|i| chosen(0.1, "snap", &format!("o{i}")))
            .count();
        assert!((800..1200).contains(&n), "{n}");
        assert!(chosen(1.0, "s", "x"));
        assert!(!(0..100).any(|i| chosen(0.0, "s", &format!("{i}"))));
        assert_eq!(chosen(0.5, "s", "x"), chosen(0.5, "s", "x"));
    }
}
