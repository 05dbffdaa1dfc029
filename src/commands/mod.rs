//! One file per subcommand: arguments -> request, open the policy and repository, call the
//! operation in [`crate::ops`], write the run record, print. Long operations run with a
//! [`Ctx`] that draws progress on a terminal and turns SIGINT and SIGTERM into a cancellation;
//! a second signal ends the process at once.

mod backup;
mod check;
mod daemon;
mod docs;
mod init;
mod keygen;
mod policy;
mod prune;
mod report;
mod restore;
mod runbook;
mod snapshots;
mod stream;
mod verify;

use crate::cli::{Cli, Command, PolicyCommand};
use crate::error::{Error, Result};
use crate::ops::{Cancel, Ctx, Reason, RunTimes};
use crate::policy::{Policy, Resolve};
use crate::record::Job;
use crate::repo::Repo;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Where `--policy NAME` is looked up, and what loading a policy resolves for this command.
#[derive(Debug, Clone, Copy)]
pub struct Lookup<'a> {
    pub dir: Option<&'a Path>,
    /// Read-only commands and restore resolve only the `${VAR}`s they use (DESIGN.md).
    pub resolve: Resolve,
    /// `--no-notify`: the loaded policy has no `[notify]`.
    pub no_notify: bool,
}

pub async fn run(cli: Cli) -> Result<()> {
    let resolve = match &cli.command {
        Command::Snapshots { .. }
        | Command::Report(_)
        | Command::Runbook(_)
        | Command::Check(_)
        | Command::Restore(_) => Resolve::OnlyUsed,
        Command::Verify(_) if cli.no_notify => Resolve::OnlyUsed,
        _ => Resolve::All,
    };
    let look = Lookup {
        dir: cli.policies.as_deref(),
        resolve,
        no_notify: cli.no_notify,
    };
    let json = json_kind(&cli.command);
    let long_running = matches!(
        cli.command,
        Command::Backup(_)
            | Command::Restore(_)
            | Command::Verify(_)
            | Command::Check(_)
            | Command::Prune(_)
            | Command::Stream(_)
    );
    let result = match lock_wait(&cli.command) {
        Err(e) => Err(e),
        Ok(lock_wait) => {
            let ctx = Ctx {
                progress: Arc::new(crate::progress::Terminal),
                lock_wait,
                ..Ctx::default()
            };
            if long_running {
                cancel_on_signals(ctx.cancel.clone());
            }
            dispatch(cli.command, &look, &ctx).await
        }
    };
    if let (Err(e), Some(kind)) = (&result, json) {
        if !PRINTED.load(Ordering::SeqCst) {
            print_json(&serde_json::json!({
                "kind": kind,
                "ok": false,
                "error": crate::util::mask_age_secrets(&e.message),
            }));
        }
    }
    result
}

/// `--wait DURATION`, or no wait.
fn lock_wait(command: &Command) -> Result<std::time::Duration> {
    let wait = match command {
        Command::Backup(a) => a.wait.as_deref(),
        Command::Restore(a) => a.wait.as_deref(),
        Command::Verify(a) => a.wait.as_deref(),
        Command::Check(a) => a.wait.as_deref(),
        Command::Prune(a) => a.wait.as_deref(),
        _ => None,
    };
    match wait {
        None => Ok(std::time::Duration::ZERO),
        Some(w) => {
            crate::util::parse_duration(w).map_err(|e| Error::input(format!("--wait {w}: {e}")))
        }
    }
}

/// Set once the run's JSON document is on stdout: a failure after it prints no second one.
static PRINTED: AtomicBool = AtomicBool::new(false);

/// The record kind of a command run with `--json` (or `report --format json` to stdout).
fn json_kind(command: &Command) -> Option<&'static str> {
    match command {
        Command::Backup(a) => a.json.then_some("backup"),
        Command::Snapshots { json, .. } => json.then_some("snapshots"),
        Command::Restore(a) => a.json.then_some("restore"),
        Command::Verify(a) => a.json.then_some("verify"),
        Command::Check(a) => a.json.then_some("check"),
        Command::Prune(a) => a.json.then_some("prune"),
        Command::Stream(a) => a.json.then_some("stream"),
        Command::Report(a) => {
            (a.format == crate::cli::ReportFormat::Json && a.out.is_none()).then_some("report")
        }
        _ => None,
    }
}

async fn dispatch(command: Command, look: &Lookup<'_>, ctx: &Ctx) -> Result<()> {
    let dir = look;
    match command {
        Command::Keygen { out } => keygen::run(out.as_deref()),
        Command::Init {
            policy,
            recover,
            identity,
        } => {
            let identity = recover.then_some(identity.as_ref());
            init::run(&load_policy(&policy, dir)?, identity).await
        }
        Command::Backup(args) => backup::run(args, dir, ctx).await,
        Command::Snapshots { policy, json } => {
            snapshots::run(&load_policy(&policy, dir)?, json).await
        }
        Command::Restore(args) => restore::run(args, dir, ctx).await,
        Command::Verify(args) => verify::run(args, dir, ctx).await,
        Command::Check(args) => check::run(args, dir, ctx).await,
        Command::Prune(args) => prune::run(args, dir, ctx).await,
        Command::Report(args) => report::run(args, dir).await,
        Command::Runbook(args) => runbook::run(args, dir).await,
        Command::Daemon(args) => daemon::run(args, look.dir).await,
        Command::Stream(args) => stream::run(args, dir, ctx).await,
        Command::Completions { shell } => docs::completions(shell),
        Command::Man { out } => docs::man(out.as_deref()),
        Command::Policy {
            action: PolicyCommand::Validate { policy },
        } => policy::validate(&policy, look.dir),
    }
}

pub fn load_policy(arg: &str, look: &Lookup) -> Result<Policy> {
    let path = crate::policy::resolve(arg, look.dir);
    let by_name = !arg.contains('/') && !arg.ends_with(".toml");
    if by_name && !path.exists() {
        return Err(crate::policy::unknown_name(arg, look.dir));
    }
    let mut policy = crate::policy::load_resolving(&path, look.resolve)?;
    if look.no_notify {
        policy.notify = None;
    }
    for u in policy
        .unresolved
        .iter()
        .filter(|u| u.key.starts_with("notify."))
    {
        if policy.notify.is_some() {
            tracing::info!(
                "{}: {}: environment variable {} is not set: nothing is sent there from this run",
                path.display(),
                u.key,
                u.var
            );
        }
    }
    Ok(policy)
}

/// The policy and its repository; on failure, the name to record the run under (the policy's
/// name when it loaded, else the argument) and the error.
pub async fn open(arg: &str, dir: &Lookup<'_>) -> Result<(Policy, Repo), (String, Error)> {
    let policy = load_policy(arg, dir).map_err(|e| (arg.to_string(), e))?;
    match crate::ops::open_repo(&policy).await {
        Ok(repo) => Ok((policy, repo)),
        Err(e) => Err((policy.name, e)),
    }
}

pub fn opener(identity: Option<&PathBuf>) -> Result<crate::seal::Opener> {
    let path = identity.ok_or_else(|| {
        Error::input("no identity: pass --identity FILE or set BACKSTOP_IDENTITY (for verify also [verify] identity) to the age identity file that decrypts this repository")
    })?;
    crate::seal::Opener::from_file(path)
}

/// Ends a run: writes its record to the repository (when one was opened) and prints it with
/// `--json`.
pub async fn record_run(
    repo: Option<&Repo>,
    job: Job,
    times: &RunTimes,
    record: &impl serde::Serialize,
    json: bool,
) {
    if let Some(repo) = repo {
        crate::ops::save_record(repo, job, times, record).await;
    }
    if json {
        print_json(record);
    }
}

/// A job (backup, verify, prune, check) from the command line, through the same lifecycle as
/// the daemon's ([`crate::jobs`]); `request` builds its request from the loaded policy. A
/// policy that does not load ends the job at once: its record (named after the argument) is
/// printed, nothing is saved or sent.
pub async fn run_job(
    arg: &str,
    dir: &Lookup<'_>,
    job: Job,
    request: impl FnOnce(&Policy) -> Result<crate::jobs::Request>,
    ctx: &Ctx,
    metrics_file: Option<&Path>,
    json: bool,
) -> crate::jobs::Outcome {
    let policy = match load_policy(arg, dir) {
        Ok(p) => p,
        Err(e) => {
            let outcome = crate::jobs::Outcome::not_started(job, arg, e);
            if json {
                print_json(&outcome.record());
            }
            return outcome;
        }
    };
    let options = crate::jobs::Options {
        metrics_file,
        remembered: None,
        unattended: false,
    };
    let done = crate::jobs::run(&policy, job, request(&policy), ctx, &options).await;
    if json {
        print_json(&done.record);
    }
    done.outcome
}

/// The run's error, for the exit code; logs its cause chain at debug level.
pub fn result_of(error: Option<Error>) -> Result<()> {
    match error {
        None => Ok(()),
        Some(e) => {
            tracing::debug!("{}", e.chain());
            Err(e)
        }
    }
}

/// A generated document: written atomically to `out` (and said so on stderr), or printed.
pub async fn emit(text: String, out: Option<&Path>) -> Result<()> {
    match out {
        Some(path) => {
            let body = std::io::Cursor::new(text.into_bytes());
            crate::localfs::write_file_atomically(path, body, true).await?;
            eprintln!("wrote {}", path.display());
        }
        None => print!("{text}"),
    }
    Ok(())
}

/// Prints the one JSON document of `--json` on stdout.
pub fn print_json(value: &impl serde::Serialize) {
    match serde_json::to_string_pretty(value) {
        Ok(text) => {
            println!("{text}");
            PRINTED.store(true, Ordering::SeqCst);
        }
        Err(e) => eprintln!("backstop: error: encoding the JSON record: {e}"),
    }
}

pub use crate::util::human_bytes;

/// The first SIGINT or SIGTERM cancels the run (it stops at its next safe point, writes its
/// record, releases its lock and exits 130 or 143); a second one exits at once.
fn cancel_on_signals(cancel: Cancel) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        tracing::warn!("cannot listen for signals; SIGINT and SIGTERM will end runs at once");
        return;
    };
    tokio::spawn(async move {
        let mut seen = false;
        loop {
            let (n, name) = tokio::select! {
                _ = int.recv() => (2, "SIGINT"),
                _ = term.recv() => (15, "SIGTERM"),
            };
            if seen {
                eprintln!("backstop: {name} again: exiting at once");
                crate::child::kill_all();
                std::process::exit(128 + n);
            }
            seen = true;
            eprintln!("backstop: {name}: stopping at the next safe point (again to exit at once)");
            cancel.cancel(Reason::Signal(n, name));
        }
    });
}
