//! The command line (DESIGN.md, "Command line"): clap derive structs only.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "backstop",
    version,
    about = "Backups of PostgreSQL/Supabase and storage buckets: sealed, deduplicated, offsite, verified, reported."
)]
pub struct Cli {
    /// Directory where `--policy NAME` is looked up as NAME.toml (default: ./policies).
    #[arg(long, global = true, env = "BACKSTOP_POLICIES", value_name = "DIR")]
    pub policies: Option<PathBuf>,
    /// No webhook, mail or health-check ping from this run (for a recovery host and the
    /// runbook's commands).
    #[arg(
        long,
        global = true,
        env = "BACKSTOP_NO_NOTIFY",
        action = clap::ArgAction::SetTrue,
        value_parser = clap::builder::FalseyValueParser::new()
    )]
    pub no_notify: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a new age identity (mode 0600) and print its public key (the recipient).
    Keygen {
        /// Write the identity here (it must not exist); without it, print it on stdout.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Create the repository (backstop.json) that the policy names.
    Init {
        /// The policy: a path, or a name looked up as DIR/NAME.toml (see --policies).
        #[arg(long, value_name = "P")]
        policy: String,
        /// Rebuild a lost backstop.json from the snapshots' manifests (needs --identity).
        #[arg(long)]
        recover: bool,
        /// With --recover: the age identity file that decrypts the manifests.
        #[arg(long, env = "BACKSTOP_IDENTITY", value_name = "FILE")]
        identity: Option<PathBuf>,
    },
    /// Back up the policy's database (and storage) into a new snapshot.
    Backup(BackupArgs),
    /// List the policy's snapshots (no identity needed).
    Snapshots {
        /// The policy: a path, or a name looked up as DIR/NAME.toml (see --policies).
        #[arg(long, value_name = "P")]
        policy: String,
        /// Print exactly one JSON document (the snapshot list) on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Restore a snapshot into a database (and storage).
    Restore(RestoreArgs),
    /// Prove a snapshot: restore it into a scratch database, compare, measure the restore time.
    Verify(VerifyArgs),
    /// Prove the repository intact: every blob present (and, with --read-data, its bytes).
    Check(CheckArgs),
    /// Remove the snapshots retention no longer keeps, and the blobs nothing references (no
    /// identity needed).
    Prune(PruneArgs),
    /// RPO/RTO compliance over a window, from the repository alone (no identity needed).
    Report(ReportArgs),
    /// The policy's recovery runbook, filled with its real names and the repository's facts.
    Runbook(RunbookArgs),
    /// Run every policy's schedule unattended, alert, and serve /healthz, /metrics, /report.
    Daemon(DaemonArgs),
    /// Continuous protection: follow the database's committed transactions through a logical
    /// replication slot and seal them into the repository (until SIGTERM or SIGINT).
    Stream(StreamArgs),
    /// Print shell completions for bash, zsh, fish, elvish or powershell on stdout.
    Completions {
        /// The shell, e.g. `backstop completions bash > /etc/bash_completion.d/backstop`.
        shell: clap_complete::Shell,
    },
    /// Write the man pages (backstop.1 and one per command) generated from this command line.
    Man {
        /// Directory to write them into, e.g. /usr/local/share/man/man1; without it, print
        /// backstop.1 on stdout.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
    /// Policy files.
    Policy {
        #[command(subcommand)]
        action: PolicyCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Check a policy; print OK or every problem with file, line and column.
    Validate {
        /// A path, or a name looked up in the policies directory.
        policy: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Only {
    Db,
    Storage,
    Files,
    Git,
}

#[derive(Debug, Args)]
pub struct BackupArgs {
    /// The policy: a path, or a name looked up as DIR/NAME.toml (see --policies).
    #[arg(long, value_name = "P")]
    pub policy: String,
    /// Back up only one part of what the policy names.
    #[arg(long, value_enum)]
    pub only: Option<Only>,
    /// Print exactly one JSON document (the run record) on stdout.
    #[arg(long)]
    pub json: bool,
    /// Also write this policy's Prometheus metrics to FILE (atomically), for node_exporter's
    /// textfile collector.
    #[arg(long, value_name = "FILE")]
    pub metrics_file: Option<PathBuf>,
    /// Wait up to DURATION (e.g. `10m`) for a conflicting run's lock instead of exiting 4.
    #[arg(long, value_name = "DURATION")]
    pub wait: Option<String>,
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The policy: a path, or a name looked up as DIR/NAME.toml (see --policies).
    #[arg(long, value_name = "P")]
    pub policy: String,
    /// A snapshot id, or `latest`.
    #[arg(long, value_name = "ID|latest", default_value = "latest")]
    pub snapshot: String,
    /// The newest snapshot consistent before this time (RFC 3339, `YYYY-MM-DD HH:MM` UTC, or a date).
    #[arg(long, value_name = "TIME", conflicts_with = "snapshot")]
    pub before: Option<String>,
    /// The age identity file that decrypts the repository.
    #[arg(long, env = "BACKSTOP_IDENTITY", value_name = "FILE")]
    pub identity: Option<PathBuf>,
    /// The database to restore into (created if missing; must be empty unless --force).
    #[arg(long, value_name = "URL")]
    pub db_url: Option<String>,
    /// Write storage objects under DIR/<bucket>/<name>.
    #[arg(long, value_name = "DIR", conflicts_with = "storage_to_source")]
    pub storage_dir: Option<PathBuf>,
    /// Upload storage objects back to the policy's storage source.
    #[arg(long)]
    pub storage_to_source: bool,
    /// Write [[files]] sets under DIR/<set>/<original absolute path>.
    #[arg(long, value_name = "DIR", conflicts_with = "files_to_source")]
    pub files_dir: Option<PathBuf>,
    /// Write [[files]] back to their original paths (existing files only with --force).
    #[arg(long)]
    pub files_to_source: bool,
    /// Clone each [[git]] bundle into DIR/<name> (the bundle itself kept as DIR/<name>.bundle).
    #[arg(long, value_name = "DIR")]
    pub git_dir: Option<PathBuf>,
    /// Restore only one part.
    #[arg(long, value_enum)]
    pub only: Option<Only>,
    /// Allow restoring over a non-empty target database (dropped and recreated) and existing files.
    #[arg(long)]
    pub force: bool,
    /// Allow dropping and replacing the policy's own source database (same host, port and
    /// name) when it is the non-empty target; --force alone never does.
    #[arg(long)]
    pub force_source: bool,
    /// Print exactly one JSON document (the run record) on stdout.
    #[arg(long)]
    pub json: bool,
    /// Wait up to DURATION (e.g. `10m`) for a conflicting run's lock instead of exiting 4.
    #[arg(long, value_name = "DURATION")]
    pub wait: Option<String>,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The policy: a path, or a name looked up as DIR/NAME.toml (see --policies).
    #[arg(long, value_name = "P")]
    pub policy: String,
    /// A snapshot id, or `latest`.
    #[arg(long, value_name = "ID|latest", default_value = "latest")]
    pub snapshot: String,
    /// The age identity file that decrypts the repository (default: BACKSTOP_IDENTITY).
    #[arg(long, env = "BACKSTOP_IDENTITY", value_name = "FILE")]
    pub identity: Option<PathBuf>,
    /// A server where a temporary database may be created (default: [verify] scratch_url).
    #[arg(long, value_name = "URL")]
    pub scratch_url: Option<String>,
    /// Share of storage objects whose content is downloaded and compared: `all` or a percentage
    /// (default: [verify] read_data, else 10%).
    #[arg(long, value_name = "all|PERCENT")]
    pub read_data: Option<String>,
    /// Keep the temporary database for inspection.
    #[arg(long)]
    pub keep: bool,
    /// Print exactly one JSON document (the run record) on stdout.
    #[arg(long)]
    pub json: bool,
    /// Also write this policy's Prometheus metrics to FILE (atomically), for node_exporter's
    /// textfile collector.
    #[arg(long, value_name = "FILE")]
    pub metrics_file: Option<PathBuf>,
    /// Wait up to DURATION (e.g. `10m`) for a conflicting run's lock instead of exiting 4.
    #[arg(long, value_name = "DURATION")]
    pub wait: Option<String>,
}

#[derive(Debug, Args)]
pub struct RunbookArgs {
    /// The policy: a path, or a name looked up as DIR/NAME.toml (see --policies).
    #[arg(long, value_name = "P")]
    pub policy: String,
    /// Markdown (default) or a standalone HTML page.
    #[arg(long, value_enum, default_value = "markdown")]
    pub format: RunbookFormat,
    /// Write it here (atomically) instead of printing it.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RunbookFormat {
    Markdown,
    Html,
}

#[derive(Debug, Args)]
pub struct DaemonArgs {
    /// Serve /healthz, /metrics and /report here, e.g. 127.0.0.1:9187 (off by default).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// How many policies' jobs run at once.
    #[arg(long, value_name = "N", default_value_t = 2)]
    pub max_parallel: usize,
    /// How long running jobs get to finish after SIGTERM/SIGINT before they are cancelled.
    #[arg(long, value_name = "DURATION", default_value = "10m")]
    pub grace: String,
    /// Log each job's start and end as one JSON object per line on stdout.
    #[arg(long)]
    pub json_log: bool,
}

#[derive(Debug, Args)]
pub struct StreamArgs {
    /// The policy: a path, or a name looked up as DIR/NAME.toml (see --policies).
    #[arg(long, value_name = "P")]
    pub policy: String,
    /// Check the server, create the publication and the slot named in [stream], and exit.
    #[arg(long, conflicts_with_all = ["status", "drop"])]
    pub setup: bool,
    /// Print the slot's state, the lag and the sealed segments, and exit.
    #[arg(long, conflicts_with = "drop")]
    pub status: bool,
    /// Drop the slot (the primary then keeps no WAL for it), and exit.
    #[arg(long)]
    pub drop: bool,
    /// Print exactly one JSON document (the stream record) on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Policies to report on (repeatable); default: every policy in --policies DIR.
    #[arg(long = "policy", id = "policy", value_name = "P")]
    pub policies: Vec<String>,
    /// The window, ending now (default 30d).
    #[arg(long, value_name = "DURATION", conflicts_with = "from")]
    pub window: Option<String>,
    /// The window's start (RFC 3339, or a date); with --to, instead of --window.
    #[arg(long, value_name = "TIME")]
    pub from: Option<String>,
    /// The window's end (default now).
    #[arg(long, value_name = "TIME")]
    pub to: Option<String>,
    /// text (a terminal summary), json, markdown (an audit ticket) or html (one self-contained page).
    #[arg(long, value_enum, default_value = "text")]
    pub format: ReportFormat,
    /// Write the report here instead of stdout.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReportFormat {
    Text,
    Json,
    Markdown,
    Html,
}

#[derive(Debug, Args)]
pub struct PruneArgs {
    /// The policy: a path, or a name looked up as DIR/NAME.toml (see --policies).
    #[arg(long, value_name = "P")]
    pub policy: String,
    /// Print the plan and delete nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Remove exactly these snapshots instead of applying the retention rules.
    #[arg(long = "snapshot", value_name = "ID")]
    pub snapshots: Vec<String>,
    /// Remove a --snapshot even when the retention floor keeps it.
    #[arg(long)]
    pub force: bool,
    /// Print exactly one JSON document (the run record) on stdout.
    #[arg(long)]
    pub json: bool,
    /// Also write this policy's Prometheus metrics to FILE (atomically), for node_exporter's
    /// textfile collector.
    #[arg(long, value_name = "FILE")]
    pub metrics_file: Option<PathBuf>,
    /// Wait up to DURATION (e.g. `10m`) for a conflicting run's lock instead of exiting 4.
    #[arg(long, value_name = "DURATION")]
    pub wait: Option<String>,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The policy: a path, or a name looked up as DIR/NAME.toml (see --policies).
    #[arg(long, value_name = "P")]
    pub policy: String,
    /// Also read every blob and compare its SHA-256 with meta.json.
    #[arg(long)]
    pub read_data: bool,
    /// With the identity, also decrypt every manifest and blob and check the plaintext.
    #[arg(long, value_name = "FILE")]
    pub identity: Option<PathBuf>,
    /// Print exactly one JSON document (the run record) on stdout.
    #[arg(long)]
    pub json: bool,
    /// Wait up to DURATION (e.g. `10m`) for a conflicting run's lock instead of exiting 4.
    #[arg(long, value_name = "DURATION")]
    pub wait: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// Every command and every option has a help line (the man pages and completions are made
    /// from them).
    #[test]
    fn every_command_and_option_says_what_it_does() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            let path = format!("{path} {}", cmd.get_name());
            if cmd.get_about().is_none() {
                missing.push(path.clone());
            }
            for arg in cmd.get_arguments() {
                let builtin = ["help", "version"].contains(&arg.get_id().as_str());
                if !builtin && arg.get_help().is_none() {
                    missing.push(format!("{path} --{}", arg.get_id()));
                }
            }
            for sub in cmd.get_subcommands() {
                walk(sub, &path, missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "", &mut missing);
        assert!(missing.is_empty(), "no help line: {missing:?}");
        Cli::command().debug_assert();
    }
}
