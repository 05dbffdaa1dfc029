//! The database side of the change stream: the checks before set-up, the publication and the
//! logical slot (`pgoutput`), reading changes and confirming them, and the slot's health.
//!
//! Changes are read with `pg_logical_slot_peek_binary_changes` and confirmed with
//! `pg_replication_slot_advance`, over an ordinary session (hosted Supabase's direct
//! connection, TLS through the same client as everything else). Peeking consumes nothing: the
//! slot moves only when [`advance`] is called, after the changes are durably sealed, so a
//! killed stream reads them again and nothing committed is lost.
//!
//! **Never breaks the application.** A table is added to the publication only when it has a
//! replica identity (a primary key, a chosen unique index, or FULL): PostgreSQL refuses every
//! UPDATE and DELETE on a published table without one. Such tables, and those the role may
//! not add (not their owner), are returned as *unprotected* and named by the caller.

use super::pgoutput::quote_ident;
use super::postgres::column;
use crate::error::{Error, Kind, Result};
use futures::TryStreamExt;
use sqlx::{Executor, PgConnection};

fn db_error(what: &str, e: sqlx::Error) -> Error {
    Error::failed(format!("{what}: {e}")).with_source(e)
}

/// What the server must allow for a stream, each missing thing named with its fix.
pub async fn check_server(conn: &mut PgConnection) -> Result<()> {
    let row = sqlx::query(
        "select current_setting('wal_level'), \
           (select rolreplication or rolsuper from pg_roles where rolname = current_user), \
           current_setting('max_replication_slots')::int4, \
           (select count(*)::int4 from pg_replication_slots), current_user::text",
    )
    .fetch_one(&mut *conn)
    .await
    .map_err(|e| db_error("checking the server for logical replication", e))?;
    let wal_level: String = column(&row, 0, "wal_level")?;
    let replication: bool = column(&row, 1, "rolreplication")?;
    let max_slots: i32 = column(&row, 2, "max_replication_slots")?;
    let used: i32 = column(&row, 3, "slots in use")?;
    let user: String = column(&row, 4, "current_user")?;
    let mut missing = Vec::new();
    if wal_level != "logical" {
        missing.push(format!(
            "wal_level is `{wal_level}`: set wal_level = logical and restart the server (hosted Supabase has it)"
        ));
    }
    if !replication {
        missing.push(format!(
            "role {user} lacks REPLICATION: ALTER ROLE {user} REPLICATION (on Supabase use the postgres role over the direct connection, db.<ref>.supabase.co:5432, not the pooler)"
        ));
    }
    if used >= max_slots {
        missing.push(format!(
            "all {max_slots} replication slots are in use: raise max_replication_slots or drop an unused slot"
        ));
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(Error::input(format!(
            "the database cannot feed a change stream: {}",
            missing.join("; ")
        )))
    }
}

/// The tables of the publication, and the ones left out (with why), after adding every table
/// of the dump's scope that can be published safely and is not in it yet. Creates the
/// publication when missing. Idempotent: run at set-up and before every seal, so tables
/// created later are picked up or named.
pub async fn ensure_publication(
    conn: &mut PgConnection,
    publication: &str,
    exclude_schemas: &[String],
) -> Result<Publication> {
    let exists: bool =
        sqlx::query_scalar("select exists (select 1 from pg_publication where pubname = $1)")
            .bind(publication)
            .fetch_one(&mut *conn)
            .await
            .map_err(|e| db_error("reading pg_publication", e))?;
    if !exists {
        conn.execute(format!("CREATE PUBLICATION {}", quote_ident(publication)).as_str())
            .await
            .map_err(|e| db_error(&format!("creating publication {publication}"), e))?;
        tracing::info!("created publication {publication}");
    }
    let rows = sqlx::query(
        "select format('%I.%I', n.nspname, c.relname), n.nspname || '.' || c.relname, \
           (c.relreplident = 'f' or (c.relreplident = 'i' and exists (select 1 from pg_index i where i.indrelid = c.oid and i.indisreplident)) \
             or (c.relreplident = 'd' and exists (select 1 from pg_index i where i.indrelid = c.oid and i.indisprimary))), \
           exists (select 1 from pg_publication_tables p where p.pubname = $1 and p.schemaname = n.nspname and p.tablename = c.relname) \
         from pg_class c join pg_namespace n on n.oid = c.relnamespace \
         where c.relkind = 'r' and c.relpersistence = 'p' \
           and n.nspname not in ('pg_catalog', 'information_schema') \
           and n.nspname not like 'pg\\_toast%' and n.nspname not like 'pg\\_temp%' \
           and not (n.nspname = any($2)) \
           and not exists (select 1 from pg_depend d where d.classid = 'pg_class'::regclass and d.objid = c.oid and d.deptype = 'e') \
         order by 2",
    )
    .bind(publication)
    .bind(exclude_schemas)
    .fetch_all(&mut *conn)
    .await
    .map_err(|e| db_error("listing the tables to publish", e))?;
    let mut out = Publication::default();
    for row in rows {
        let quoted: String = column(&row, 0, "table")?;
        let name: String = column(&row, 1, "table name")?;
        let identity: bool = column(&row, 2, "replica identity")?;
        let published: bool = column(&row, 3, "published")?;
        if published {
            out.tables.push(name);
            continue;
        }
        if !identity {
            out.unprotected.push((
                name,
                "no primary key or replica identity: publishing it would make the server refuse its UPDATEs and DELETEs".into(),
            ));
            continue;
        }
        let add = format!(
            "ALTER PUBLICATION {} ADD TABLE {quoted}",
            quote_ident(publication)
        );
        match conn.execute(add.as_str()).await {
            Ok(_) => {
                tracing::info!("publication {publication}: added {name}");
                out.tables.push(name);
            }
            Err(e) => out
                .unprotected
                .push((name, format!("cannot be published: {e}"))),
        }
    }
    Ok(out)
}

#[derive(Debug, Clone, Default)]
pub struct Publication {
    pub tables: Vec<String>,
    /// `schema.table` and why it is not streamed.
    pub unprotected: Vec<(String, String)>,
}

/// The slot, as `pg_replication_slots` shows it.
#[derive(Debug, Clone)]
pub struct SlotState {
    pub active: bool,
    pub confirmed_lsn: Option<String>,
    /// WAL the slot holds back on the server (from its restart point to the current WAL).
    pub retained_bytes: i64,
}

pub async fn slot_state(conn: &mut PgConnection, slot: &str) -> Result<Option<SlotState>> {
    let row = sqlx::query(
        "select active, confirmed_flush_lsn::text, \
           coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn), 0)::int8, plugin::text \
         from pg_replication_slots where slot_name = $1",
    )
    .bind(slot)
    .fetch_optional(&mut *conn)
    .await
    .map_err(|e| db_error(&format!("reading slot {slot}"), e))?;
    let Some(row) = row else { return Ok(None) };
    let plugin: Option<String> = column(&row, 3, "plugin")?;
    if plugin.as_deref() != Some("pgoutput") {
        return Err(Error::input(format!(
            "slot {slot} exists but is not a pgoutput logical slot ({}): name another [stream] slot",
            plugin.as_deref().unwrap_or("physical")
        )));
    }
    Ok(Some(SlotState {
        active: column(&row, 0, "active")?,
        confirmed_lsn: column(&row, 1, "confirmed_flush_lsn")?,
        retained_bytes: column(&row, 2, "retained WAL")?,
    }))
}

/// Creates the slot when missing; true when it was created.
pub async fn ensure_slot(conn: &mut PgConnection, slot: &str) -> Result<bool> {
    if slot_state(conn, slot).await?.is_some() {
        return Ok(false);
    }
    sqlx::query("select pg_create_logical_replication_slot($1, 'pgoutput')")
        .bind(slot)
        .execute(&mut *conn)
        .await
        .map_err(|e| db_error(&format!("creating slot {slot}"), e))?;
    tracing::info!("created logical replication slot {slot} (pgoutput)");
    Ok(true)
}

pub async fn drop_slot(conn: &mut PgConnection, slot: &str) -> Result<bool> {
    if slot_state(conn, slot).await?.is_none() {
        return Ok(false);
    }
    sqlx::query("select pg_drop_replication_slot($1)")
        .bind(slot)
        .execute(&mut *conn)
        .await
        .map_err(|e| db_error(&format!("dropping slot {slot}"), e))?;
    Ok(true)
}

/// How long [`claim`] waits for a holder that is running a query to end it.
const CLAIM_WAIT: std::time::Duration = std::time::Duration::from_secs(300);

/// The session that holds a slot's stream lock.
pub struct Holder {
    pub pid: i32,
    /// Running a query (`pg_stat_activity.state = 'active'`), not waiting for its client.
    pub busy: bool,
    /// When its current query (or its last one) started.
    pub since: Option<String>,
}

/// The session holding `slot`'s stream lock, if one does.
pub async fn holder(conn: &mut PgConnection, slot: &str) -> Result<Option<Holder>> {
    let row = sqlx::query(
        "select l.pid, coalesce(a.state = 'active', false), a.query_start::text \
         from pg_locks l left join pg_stat_activity a on a.pid = l.pid \
         where l.locktype = 'advisory' and l.granted \
           and l.database = (select oid from pg_database where datname = current_database()) \
           and l.objid = hashtext('backstop stream ' || $1)::oid \
         limit 1",
    )
    .bind(slot)
    .fetch_optional(&mut *conn)
    .await
    .map_err(|e| db_error("finding who follows the slot", e))?;
    let Some(row) = row else { return Ok(None) };
    Ok(Some(Holder {
        pid: column(&row, 0, "pid")?,
        busy: column(&row, 1, "state")?,
        since: column(&row, 2, "query_start")?,
    }))
}

/// Holds the session's advisory lock for `slot`: one stream follows a slot at a time.
///
/// A holder that is idle on two looks half a second apart is a live stream waiting for its
/// next read (the idle session of a killed client ends as soon as the connection closes):
/// refused. A holder that is running a query may be the session of a stream that was just
/// killed: the server notices its client is gone only when the query ends (reading one large
/// transaction takes seconds to minutes), and only then drops the lock. So while the holder
/// is busy the claim waits, up to [`CLAIM_WAIT`], rather than fail a restart that would
/// succeed a moment later.
pub async fn claim(
    conn: &mut PgConnection,
    slot: &str,
    cancel: &crate::cancel::Cancel,
) -> Result<()> {
    let deadline = std::time::Instant::now() + CLAIM_WAIT;
    let mut told = false;
    let mut seen_idle = false;
    loop {
        let got: bool =
            sqlx::query_scalar("select pg_try_advisory_lock(hashtext('backstop stream ' || $1))")
                .bind(slot)
                .fetch_one(&mut *conn)
                .await
                .map_err(|e| db_error("taking the stream's advisory lock", e))?;
        if got {
            return Ok(());
        }
        match holder(conn, slot).await? {
            // Released between the two queries: try again.
            None => seen_idle = false,
            Some(h) if !h.busy && !seen_idle => seen_idle = true,
            Some(h) if !h.busy || std::time::Instant::now() >= deadline => {
                return Err(Error::new(
                    Kind::Locked,
                    format!(
                        "another backstop stream already follows slot {slot} (server process {}, {}): stop it first",
                        h.pid,
                        if h.busy { "still running the query it started" } else { "idle between reads" }
                    ),
                ));
            }
            Some(h) => {
                seen_idle = false;
                if !told {
                    tracing::info!(
                        "slot {slot} is held by server process {}, running a query since {}: waiting up to {} for it to end (the session of a stream that was stopped ends with its query)",
                        h.pid,
                        h.since.as_deref().unwrap_or("an unknown time"),
                        crate::util::format_duration(CLAIM_WAIT)
                    );
                    told = true;
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_millis(500)) => {}
            _ = cancel.cancelled() => return Err(cancel.error()),
        }
    }
}

/// One decoded row of the slot: the message's LSN, the transaction id and the message.
pub struct Change {
    pub lsn: u64,
    pub xid: u32,
    pub data: Vec<u8>,
}

/// What the slot holds, without consuming it, up to about `max_changes` (whole
/// transactions), row by row as the server sends them.
pub fn peek<'c>(
    conn: &'c mut PgConnection,
    slot: &'c str,
    publication: &'c str,
    max_changes: i32,
) -> impl futures::Stream<Item = Result<Change>> + Send + 'c {
    sqlx::query(
        "select lsn::text, xid::text, data from pg_logical_slot_peek_binary_changes($1, NULL, $2, \
           'proto_version', '1', 'publication_names', $3)",
    )
    .bind(slot)
    .bind(max_changes)
    .bind(publication)
    .fetch(conn)
    .map_err(move |e| db_error(&format!("reading the changes of slot {slot}"), e))
    .and_then(|row| async move {
        let lsn: String = column(&row, 0, "lsn")?;
        let xid: String = column(&row, 1, "xid")?;
        Ok(Change {
            lsn: super::pgoutput::parse_lsn(&lsn).unwrap_or(0),
            xid: xid.parse().unwrap_or(0),
            data: column(&row, 2, "data")?,
        })
    })
}

/// Confirms the slot up to `lsn`: the server may then free the WAL before it.
pub async fn advance(conn: &mut PgConnection, slot: &str, lsn: u64) -> Result<()> {
    sqlx::query("select pg_replication_slot_advance($1, $2::pg_lsn)")
        .bind(slot)
        .bind(super::pgoutput::lsn_text(lsn))
        .execute(&mut *conn)
        .await
        .map_err(|e| db_error(&format!("confirming slot {slot}"), e))?;
    Ok(())
}

/// Every sequence's last value (`schema.name` quoted, value).
pub async fn sequences(conn: &mut PgConnection) -> Result<Vec<(String, i64)>> {
    let rows = sqlx::query(
        "select format('%I.%I', schemaname, sequencename), last_value from pg_sequences \
         where last_value is not null and schemaname not in ('pg_catalog', 'information_schema')",
    )
    .fetch_all(&mut *conn)
    .await
    .map_err(|e| db_error("reading the sequences", e))?;
    rows.iter()
        .map(|r| Ok((column(r, 0, "sequence")?, column(r, 1, "last_value")?)))
        .collect()
}

/// The server's WAL position flushed to disk: what logical decoding can read.
pub async fn flush_lsn(conn: &mut PgConnection) -> Result<u64> {
    let text: String = sqlx::query_scalar("select pg_current_wal_flush_lsn()::text")
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| db_error("reading the WAL position", e))?;
    Ok(super::pgoutput::parse_lsn(&text).unwrap_or(0))
}
