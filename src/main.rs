//! Parse, init tracing, run, map the error to an exit code; nothing else.

use clap::Parser;
use std::io::IsTerminal;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = backstop::cli::Cli::parse();
    if matches!(cli.command, backstop::cli::Command::Daemon(_)) {
        backstop::daemon::bound_malloc_arenas();
    }
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("backstop=info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("backstop: error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(backstop::commands::run(cli));
    // No child outlives the run: the groups of cancelled children are gone before the exit,
    // and no blocking thread keeps the process alive after its result is known.
    backstop::child::wait_stopped(std::time::Duration::from_secs(5));
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!(
                "backstop: error: {}",
                backstop::util::mask_age_secrets(&e.message)
            );
            ExitCode::from(e.kind.exit_code() as u8)
        }
    }
}
