use crate::cli::DaemonArgs;
use crate::error::{Error, Result};
use std::path::Path;

/// `backstop daemon`: the policy directory is `--policies`, else `BACKSTOP_POLICIES`, else
/// `./policies`.
pub async fn run(args: DaemonArgs, dir: Option<&Path>) -> Result<()> {
    let dir = crate::policy::policies_dir_or_default(dir);
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
