//! The verify operation: prove a snapshot by restoring it into a fresh scratch database and
//! comparing what comes back with what was dumped, and measure the restore time that RTO
//! verdicts rest on.
//!
//! * The operation owns the whole lifecycle: it takes a shared repository lock, creates a
//!   uniquely named temporary database (`backstop_verify_...`) on the scratch server (no other
//!   database is touched), and drops it on every path, success, failure, cancellation or a
//!   lost lock, unless `keep` is asked for. Should the operation's future itself be dropped
//!   mid-way, the guard's `Drop` still schedules the drop on the runtime.
//! * The restore uses the same code path as `restore` but carries on past pg_restore errors so
//!   that every one can be judged ([`compare`]). `restore_s` runs from the first download to
//!   pg_restore's exit; [`crate::objectives::rto_met`] judges it against the policy's RTO.

pub mod compare;
pub mod stream;

pub use compare::{Findings, QueryCheck, TableCheck};

use super::{with_shared_lock, Ctx, RunTimes};
use crate::error::{Error, Kind, Result};
use crate::expect::Expect;
use crate::policy::Policy;
use crate::repo::{Repo, Selector};
use crate::seal::Opener;
use crate::source::pgtools::DbUrl;
use crate::source::postgres::{column, connect, quote_ident};
use secrecy::ExposeSecret;
use sqlx::{Connection, Executor};
use std::sync::Arc;
use std::time::Instant;

pub struct Request {
    pub selector: Selector,
    pub opener: Arc<Opener>,
    /// A server where the temporary database may be created.
    pub scratch: Option<DbUrl>,
    /// Share of storage objects whose content is read back, 0.0 to 1.0.
    pub read_share: f64,
    pub queries: Vec<(String, Expect)>,
    /// Keep the temporary database afterwards (for a look at it).
    pub keep: bool,
}

impl Request {
    /// The policy's verify: its `[verify]` read share, scratch server and queries, each
    /// overridable (the command line's `--read-data`, `--scratch-url`).
    pub fn for_policy(
        policy: &Policy,
        selector: Selector,
        opener: Arc<Opener>,
        read_data: Option<&str>,
        scratch_url: Option<&str>,
    ) -> crate::error::Result<Request> {
        use secrecy::ExposeSecret;
        let share = read_data
            .or(policy.verify.read_data.as_deref())
            .unwrap_or("10%");
        let read_share = crate::expect::parse_share(share).map_err(Error::input)?;
        let from_policy = policy
            .verify
            .scratch_url
            .as_ref()
            .map(|s| s.expose_secret().to_string());
        if scratch_url.is_none() {
            policy.require("verify.scratch_url")?;
        }
        let scratch = scratch_url.map(str::to_string).or(from_policy);
        let queries = policy.verify.queries.iter().map(|(sql, e)| {
            crate::expect::parse_expect(e)
                .map(|e| (sql.clone(), e))
                .map_err(Error::input)
        });
        Ok(Request {
            selector,
            scratch: scratch.as_deref().map(DbUrl::parse).transpose()?,
            queries: queries.collect::<crate::error::Result<_>>()?,
            opener,
            read_share,
            keep: false,
        })
    }
}

#[derive(Debug)]
pub struct Outcome {
    pub times: RunTimes,
    pub policy: String,
    pub snapshot_id: Option<String>,
    /// The policy's RTO, in seconds.
    pub rto_s: f64,
    /// `None` when no restore was measured.
    pub rto_met: Option<bool>,
    pub findings: Findings,
    /// The temporary database's name, when one was created.
    pub scratch_database: Option<String>,
    /// Temporary databases that earlier verifies left behind (their process is gone), dropped
    /// by this one.
    pub leftovers_dropped: Vec<String>,
    pub kept: bool,
    /// An error that kept the verification from running to its end.
    pub error: Option<Error>,
}

impl Outcome {
    fn new(policy: &str, rto_s: f64, kept: bool) -> Outcome {
        Outcome {
            times: RunTimes::start(),
            policy: policy.to_string(),
            snapshot_id: None,
            rto_s,
            rto_met: None,
            findings: Findings::default(),
            scratch_database: None,
            leftovers_dropped: Vec::new(),
            kept,
            error: None,
        }
    }

    pub fn not_started(policy: &str, error: Error) -> Outcome {
        let mut out = Outcome::new(policy, 0.0, false);
        out.error = Some(error);
        out.times.finish();
        out
    }

    /// Verified: ran to its end and found no problem.
    pub fn ok(&self) -> bool {
        self.error.is_none() && self.findings.problems.is_empty()
    }
}

/// Refuses an identity that is none of the repository's or the policy's recipients
/// ([`Kind::WrongIdentity`]): it could open nothing, and the proof would say nothing.
pub fn check_identity(policy: &Policy, repo: &Repo, req: &Request) -> crate::error::Result<()> {
    let mut recipients = repo.config.recipients.clone();
    recipients.extend(policy.recipients.iter().cloned());
    req.opener.check_matches(&recipients)
}

pub async fn run(policy: &Policy, repo: &Repo, req: &Request, ctx: &Ctx) -> Outcome {
    let ctx = ctx.for_run();
    let rto = policy.objectives.rto;
    let mut out = Outcome::new(&policy.name, rto.as_secs_f64(), req.keep);
    let run_id = out.times.run_id.clone();
    let result = match check_identity(policy, repo, req) {
        Err(e) => Err(e),
        Ok(()) => {
            let work = verify(policy, repo, req, &ctx, &mut out);
            with_shared_lock(repo, "verify", &run_id, &ctx, work).await
        }
    };
    out.rto_met = crate::objectives::rto_met(out.findings.restore_s, rto);
    if out.rto_met == Some(false) {
        out.findings.problems.push(format!(
            "the restore took {:.1}s, over the RTO of {:.0}s",
            out.findings.restore_s.unwrap_or(0.0),
            out.rto_s
        ));
    }
    out.times.finish();
    // A proof that could not be made (the store unreachable, a cancellation) is no verdict on
    // the backup: exit 1, and whatever was found before it is not reported as damage.
    out.error = result.err().map(|e| match e.kind {
        Kind::Unavailable => e.context("could not verify (nothing was found damaged)"),
        _ => e,
    });
    out
}

async fn verify(
    policy: &Policy,
    repo: &Repo,
    req: &Request,
    ctx: &Ctx,
    out: &mut Outcome,
) -> Result<()> {
    let meta = repo.find(&req.selector).await?;
    out.snapshot_id = Some(meta.id.clone());
    let t = Instant::now();
    let manifest = match repo.read_manifest(&meta, &req.opener).await {
        Ok(m) => m,
        Err(e) if !e.kind.is_finding() => return Err(e),
        Err(e) => {
            out.findings.problems.push(e.message);
            return Ok(());
        }
    };
    out.findings.phases.push(super::Phase::since("manifest", t));
    let ids = repo.snapshot_blob_ids(
        &manifest,
        &meta,
        policy
            .repository
            .dedup_key
            .as_ref()
            .map(|k| k.expose_secret()),
    )?;
    let scratch = match (&manifest.database, &req.scratch) {
        (None, _) => None,
        (Some(_), None) => return Err(Error::input(
            "no scratch server: pass --scratch-url URL or set [verify] scratch_url in the policy",
        )),
        (Some(_), Some(url)) => {
            out.leftovers_dropped = drop_leftovers(url).await?;
            Some(Scratch::create(url, &meta.id).await?)
        }
    };
    out.scratch_database = scratch.as_ref().map(|s| s.name.clone());
    let options = compare::Options {
        target: scratch.as_ref().map(|s| s.url()),
        read_share: req.read_share,
        allow_missing_extensions: policy.verify.allow_missing_extensions.clone(),
        queries: req.queries.clone(),
        ahead: policy.repository.connections,
        restore: policy.restore.clone(),
    };
    tracing::info!("verifying snapshot {} of policy {}", meta.id, policy.name);
    let reader = Arc::new(crate::repo::reader::BlobReader::new(
        repo.store.clone(),
        req.opener.clone(),
        ids.clone(),
        &meta,
    ));
    let examined = ctx.cancel.run(compare::examine(
        repo,
        &meta,
        &manifest,
        req.opener.clone(),
        ids,
        &options,
        ctx.progress.as_ref(),
        &mut out.findings,
    ));
    let mut result = examined.await;
    if result.is_ok() {
        let ahead = policy.repository.connections;
        let findings = &mut out.findings;
        result = ctx
            .cancel
            .run(async {
                if let Some(fm) = &manifest.files {
                    let t = Instant::now();
                    let (checked, problems) = super::files::verify(&reader, fm, ahead).await?;
                    findings.files_checked = checked;
                    findings.problems.extend(problems);
                    findings.phases.push(super::Phase::since("files", t));
                }
                if let (Some(url), true) = (&req.scratch, manifest.database.is_some()) {
                    let t = Instant::now();
                    let proof = stream::prove(
                        policy,
                        repo,
                        &meta,
                        &manifest,
                        req.opener.clone(),
                        url,
                        &policy.restore,
                    )
                    .await?;
                    if let Some(p) = proof {
                        findings.problems.extend(p.problems);
                        findings.notes.extend(p.notes);
                        findings.stream_checked = p.checked;
                        findings.phases.push(super::Phase::since("stream", t));
                    }
                }
                if let Some(gm) = &manifest.git {
                    let t = Instant::now();
                    findings
                        .problems
                        .extend(super::git::verify(&reader, gm, ahead).await?);
                    findings.git_checked = gm.repositories.len() as u64;
                    findings.phases.push(super::Phase::since("git", t));
                }
                Ok(())
            })
            .await;
    }
    if let Some(scratch) = scratch {
        if req.keep {
            scratch.keep();
        } else if let Err(e) = scratch.drop_now().await {
            out.findings.problems.push(e.message);
        }
    }
    result
}

/// A fresh name for the temporary database, at most 63 bytes.
pub fn scratch_name(snapshot: &str) -> String {
    let clean: String = snapshot
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .take(30)
        .collect();
    format!("backstop_verify_{clean}_{:08x}", rand::random::<u32>())
}

/// The temporary database: dropped by [`Scratch::drop_now`], kept by [`Scratch::keep`], and
/// dropped in the background if the guard goes away without either (a dropped future).
pub(super) struct Scratch {
    server: DbUrl,
    name: String,
    armed: bool,
}

impl Scratch {
    pub(super) async fn create(server: &DbUrl, snapshot: &str) -> Result<Scratch> {
        let name = scratch_name(snapshot);
        admin(server, &format!("CREATE DATABASE {}", quote_ident(&name))).await?;
        let scratch = Scratch {
            server: server.clone(),
            name,
            armed: true,
        };
        // Who made it, so that a later verify can tell a leftover from a database in use.
        let comment = format!(
            "{LEFTOVER_MARK} host={} pid={} started={}",
            crate::util::host(),
            std::process::id(),
            chrono::Utc::now().to_rfc3339()
        );
        let sql = format!(
            "COMMENT ON DATABASE {} IS '{}'",
            quote_ident(&scratch.name),
            comment.replace('\'', "''")
        );
        admin(server, &sql).await?;
        Ok(scratch)
    }

    pub(super) fn url(&self) -> DbUrl {
        self.server.with_database(&self.name)
    }

    fn keep(mut self) {
        self.armed = false;
        tracing::info!(
            "kept the temporary database {} on {}",
            self.name,
            self.server.masked()
        );
    }

    pub(super) async fn drop_now(mut self) -> Result<()> {
        self.armed = false;
        drop_database(&self.server, &self.name).await
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let (server, name) = (self.server.clone(), self.name.clone());
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if let Err(e) = drop_database(&server, &name).await {
                    tracing::warn!("{}", e.message);
                }
            });
        }
    }
}

const LEFTOVER_MARK: &str = "backstop verify";

/// Drops the temporary databases that verifies on this host left behind when they were killed
/// (their comment names this host and a process that no longer exists). Those of other hosts,
/// of live processes, and those without the comment (older versions) are left alone.
async fn drop_leftovers(server: &DbUrl) -> Result<Vec<String>> {
    let mut conn = connect(server).await?;
    let rows = sqlx::query(
        "select datname::text, coalesce(shobj_description(oid, 'pg_database'), '') \
         from pg_database where datname like 'backstop\\_verify\\_%'",
    )
    .fetch_all(&mut conn)
    .await;
    let _ = conn.close().await;
    let rows = rows.map_err(|e| {
        Error::failed(format!("listing databases on {}: {e}", server.masked())).with_source(e)
    })?;
    let (host, mut dropped) = (crate::util::host(), Vec::new());
    for row in rows {
        let name: String = column(&row, 0, "pg_database.datname")?;
        let comment: String = column(&row, 1, "the database's comment")?;
        let Some(rest) = comment.strip_prefix(LEFTOVER_MARK) else {
            continue;
        };
        let field = |k: &str| {
            rest.split_whitespace()
                .find_map(|f| f.strip_prefix(k).map(str::to_string))
        };
        let pid = field("pid=").and_then(|p| p.parse::<u32>().ok());
        if field("host=").as_deref() != Some(host.as_str()) {
            continue;
        }
        if let Some(pid) = pid.filter(|p| !crate::util::process_alive(*p)) {
            drop_database(server, &name).await?;
            tracing::warn!(
                "dropped {name} on {}: a verify (pid {pid}) left it behind when it was killed",
                server.masked()
            );
            dropped.push(name);
        }
    }
    Ok(dropped)
}

async fn drop_database(server: &DbUrl, name: &str) -> Result<()> {
    let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", quote_ident(name));
    admin(server, &sql).await.map_err(|e| {
        e.context(format!(
            "the temporary database {name} could not be dropped"
        ))
    })
}

/// Runs one statement through the scratch URL's own database.
async fn admin(server: &DbUrl, sql: &str) -> Result<()> {
    let mut conn = connect(server).await?;
    let result = conn.execute(sql).await;
    let _ = conn.close().await;
    result
        .map(|_| ())
        .map_err(|e| Error::failed(format!("{sql} on {}: {e}", server.masked())).with_source(e))
}

/// The run record of this operation.
impl From<&Outcome> for crate::record::VerifyRecord {
    fn from(o: &Outcome) -> Self {
        let f = &o.findings;
        crate::record::VerifyRecord {
            kind: crate::record::Job::Verify,
            ok: o.ok(),
            snapshot_id: o.snapshot_id.clone(),
            policy: o.policy.clone(),
            run_id: o.times.run_id.clone(),
            started_at: o.times.started_at,
            finished_at: o.times.finished_at,
            duration_s: o.times.duration_s,
            restore_s: f.restore_s,
            rto_s: o.rto_s,
            rto_met: o.rto_met,
            tables: f.tables.clone(),
            objects_checked: f.objects_checked,
            objects_read: f.objects_read,
            objects_failed: f.objects_failed,
            queries: f.queries.clone(),
            problems: f.problems.clone(),
            names_mapped: f.names_mapped.clone(),
            files_checked: f.files_checked,
            git_checked: f.git_checked,
            stream_checked: f.stream_checked.clone(),
            notes: f.notes.clone(),
            missing_extensions: f.missing_extensions.clone(),
            expected_failures: f.expected_failures.clone(),
            phases: f.phases.clone(),
            scratch_database: o.scratch_database.clone(),
            leftovers_dropped: o.leftovers_dropped.clone(),
            kept: o.kept,
            tool_version: crate::record::TOOL_VERSION.to_string(),
            error: crate::record::error_text(&o.error),
        }
    }
}
