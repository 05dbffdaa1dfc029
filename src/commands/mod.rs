//! One file per subcommand: load the policy, call the library, print the record.

mod backup;
mod check;
mod init;
mod keygen;
mod policy;
mod restore;
mod snapshots;
mod verify;

use crate::cli::{Cli, Command, PolicyCommand};
use crate::error::{Error, Result};
use crate::policy::Policy;
use crate::repo::Repo;
use std::path::{Path, PathBuf};

pub async fn run(cli: Cli) -> Result<()> {
    let dir = cli.policies.as_deref();
    match cli.command {
        Command::Keygen { out } => keygen::run(out.as_deref()),
        Command::Init { policy } => init::run(&load_policy(&policy, dir)?).await,
        Command::Backup(args) => backup::run(args, dir).await,
        Command::Snapshots { policy, json } => {
            snapshots::run(&load_policy(&policy, dir)?, json).await
        }
        Command::Restore(args) => restore::run(args, dir).await,
        Command::Verify(args) => verify::run(args, dir).await,
        Command::Check(args) => check::run(args, dir).await,
        Command::Policy {
            action: PolicyCommand::Validate { policy },
        } => policy::validate(&policy, dir),
    }
}

pub fn load_policy(arg: &str, dir: Option<&Path>) -> Result<Policy> {
    crate::policy::load(&crate::policy::resolve(arg, dir))
}

pub async fn open_repo(policy: &Policy) -> Result<Repo> {
    let store = crate::store::open(&policy.repository).await?;
    Repo::open(store, &policy.name).await
}

pub fn opener(identity: Option<&PathBuf>) -> Result<crate::seal::Opener> {
    let path = identity.ok_or_else(|| {
        Error::input("no identity: pass --identity FILE or set BACKSTOP_IDENTITY to the age identity file that decrypts this repository")
    })?;
    crate::seal::Opener::from_file(path)
}

/// Ends a run: writes its record to the repository (when one was opened; a failure to write
/// it is logged, the run's outcome stands) and prints it with `--json`.
pub async fn record_run(
    repo: Option<&Repo>,
    kind: &str,
    id: &str,
    started_at: chrono::DateTime<chrono::Utc>,
    record: &impl serde::Serialize,
    json: bool,
) {
    if let Some(repo) = repo {
        if let Err(e) = crate::repo::runs::write(
            repo.store.as_ref(),
            &repo.policy,
            kind,
            id,
            started_at,
            record,
        )
        .await
        {
            tracing::warn!("could not write the run record: {}", e.message);
        }
    }
    if json {
        print_json(record);
    }
}

/// Prints the one JSON document of `--json` on stdout.
pub fn print_json(value: &impl serde::Serialize) {
    match serde_json::to_string_pretty(value) {
        Ok(text) => println!("{text}"),
        Err(e) => eprintln!("backstop: error: encoding the JSON record: {e}"),
    }
}

pub fn human_bytes(n: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", units[u])
    }
}

/// Resolves when the process is asked to stop (Ctrl-C or SIGTERM).
pub async fn interrupted() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}
