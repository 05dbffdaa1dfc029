use crate::cli::DaemonArgs;
use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// `backstop daemon`: the policy directory is `--policies`, else `BACKSTOP_POLICIES`, else
/// `./policies`.
pub async fn run(args: DaemonArgs, dir: Option<&Path>) -> Result<()> {
    let dir = dir
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os("BACKSTOP_POLICIES").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("policies"));
    let grace = crate::util::parse_duration(&args.grace)
        .map_err(|e| Error::input(format!("--grace: {e}")))?;
    crate::daemon::run(crate::daemon::Options {
        dir,
        listen: args.listen,
        max_parallel: args.max_parallel,
        grace,
        json_log: args.json_log,
    })
    .await
}
