//! Shell completions and man pages, generated from the clap definitions in [`crate::cli`], so
//! they never drift from the command line.

use crate::cli::Cli;
use crate::error::{Error, Result};
use clap::CommandFactory;
use std::path::Path;

pub fn completions(shell: clap_complete::Shell) -> Result<()> {
    let mut cmd = Cli::command();
    clap_complete::generate(shell, &mut cmd, "backstop", &mut std::io::stdout());
    Ok(())
}

/// Writes backstop.1 and backstop-COMMAND.1 (and backstop-policy-validate.1) into `out`, or
/// prints backstop.1 on stdout.
pub fn man(out: Option<&Path>) -> Result<()> {
    let cmd = Cli::command();
    let Some(dir) = out else {
        return clap_mangen::Man::new(cmd)
            .render(&mut std::io::stdout())
            .map_err(|e| Error::failed(format!("writing the man page: {e}")));
    };
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::input(format!("cannot create {}: {e}", dir.display())))?;
    clap_mangen::generate_to(cmd, dir)
        .map_err(|e| Error::failed(format!("writing man pages into {}: {e}", dir.display())))?;
    println!("wrote the man pages into {}", dir.display());
    Ok(())
}
