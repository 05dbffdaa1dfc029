use super::load_policy;
use crate::cli::{RunbookArgs, RunbookFormat};
use crate::error::Result;

/// `backstop runbook`: prints the policy's recovery runbook, or writes it to `--out`.
pub async fn run(args: RunbookArgs, dir: &super::Lookup<'_>) -> Result<()> {
    let policy = load_policy(&args.policy, dir)?;
    let text = crate::ops::runbook::run(&policy, args.format == RunbookFormat::Html).await?;
    super::emit(text, args.out.as_deref()).await?;
    Ok(())
}
