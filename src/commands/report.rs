use super::load_policy;
use crate::cli::{ReportArgs, ReportFormat};
use crate::error::{Error, Kind, Result};
use crate::report::{render, Window};
use crate::util::{parse_duration, parse_time};
use chrono::Utc;
use std::path::Path;

fn window(args: &ReportArgs) -> Result<Window> {
    let to = match &args.to {
        Some(t) => parse_time(t).map_err(|e| Error::input(format!("--to: {e}")))?,
        None => Utc::now(),
    };
    let from = match (&args.from, &args.window) {
        (Some(f), _) => parse_time(f).map_err(|e| Error::input(format!("--from: {e}")))?,
        (None, w) => {
            let d = parse_duration(w.as_deref().unwrap_or("30d"))
                .map_err(|e| Error::input(format!("--window: {e}")))?;
            to - chrono::Duration::from_std(d)
                .map_err(|e| Error::input(format!("--window: {e}")))?
        }
    };
    if from >= to {
        return Err(Error::input(format!(
            "the window is empty: --from {} is not before --to {}",
            from.to_rfc3339(),
            to.to_rfc3339()
        )));
    }
    Ok(Window { from, to })
}

/// The named policies, or every `*.toml` in the policies directory.
fn policy_files(args: &ReportArgs, dir: Option<&Path>) -> Result<Vec<String>> {
    if !args.policies.is_empty() {
        return Ok(args.policies.clone());
    }
    let dir = crate::policy::policies_dir_or_default(dir);
    let files = crate::policy::files_in(&dir)
        .map_err(|e| Error::input(format!("{}; pass --policy P or --policies DIR", e.message)))?;
    if files.is_empty() {
        return Err(Error::input(format!(
            "no policies (*.toml) in {}",
            dir.display()
        )));
    }
    Ok(files.iter().map(|p| p.display().to_string()).collect())
}

pub async fn run(args: ReportArgs, dir: &super::Lookup<'_>) -> Result<()> {
    let window = window(&args)?;
    let policies = policy_files(&args, dir.dir)?
        .iter()
        .map(|p| load_policy(p, dir))
        .collect::<Result<Vec<_>>>()?;
    // The error keeps its kind: a repository that does not exist is the operator's to fix
    // (exit 2), one that cannot be read is a failure (exit 1).
    let report = crate::ops::report::run(&policies, &window, true)
        .await
        .map_err(|e| e.context("could not read the repository"))?;
    let text = match args.format {
        ReportFormat::Text => render::text(&report),
        ReportFormat::Markdown => render::markdown(&report),
        ReportFormat::Html => render::html(&report),
        ReportFormat::Json if args.out.is_none() => {
            super::print_json(&report);
            String::new()
        }
        ReportFormat::Json => serde_json::to_string_pretty(&report).unwrap_or_default() + "\n",
    };
    if !text.is_empty() {
        super::emit(text, args.out.as_deref()).await?;
    }
    if report.compliant {
        Ok(())
    } else {
        let failing: Vec<String> = report
            .policies
            .iter()
            .flat_map(|p| {
                p.controls
                    .iter()
                    .filter(|c| !c.compliant)
                    .map(move |c| format!("{}: {}", p.name, c.id))
            })
            .collect();
        Err(Error::new(
            Kind::Verification,
            format!("not compliant: {}", failing.join(", ")),
        ))
    }
}
