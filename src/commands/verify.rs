use super::{open, opener, record_run, result_of};
use crate::cli::VerifyArgs;
use crate::error::{Error, Kind, Result};
use crate::expect::{parse_expect, parse_share};
use crate::ops::verify::{self, Outcome, Request};
use crate::ops::Ctx;
use crate::policy::Policy;
use crate::record::VerifyRecord;
use crate::repo::Selector;
use crate::source::pgtools::DbUrl;
use secrecy::ExposeSecret;
use std::path::Path;
use std::sync::Arc;

fn request(args: &VerifyArgs, policy: &Policy) -> Result<Request> {
    let share = args.read_data.clone().or(policy.verify.read_data.clone());
    let read_share = parse_share(share.as_deref().unwrap_or("10%")).map_err(Error::input)?;
    let from_policy = policy.verify.scratch_url.as_ref();
    let scratch = (args.scratch_url.clone()).or(from_policy.map(|s| s.expose_secret().to_string()));
    let queries = policy.verify.queries.iter().map(|(sql, e)| {
        parse_expect(e)
            .map(|e| (sql.clone(), e))
            .map_err(Error::input)
    });
    Ok(Request {
        selector: match args.snapshot.as_str() {
            "latest" => Selector::Latest,
            id => Selector::Id(id.to_string()),
        },
        scratch: scratch.as_deref().map(DbUrl::parse).transpose()?,
        queries: queries.collect::<Result<_>>()?,
        opener: Arc::new(opener(args.identity.as_ref())?),
        read_share,
        keep: args.keep,
    })
}

pub async fn run(args: VerifyArgs, dir: Option<&Path>, ctx: &Ctx) -> Result<()> {
    let (repo, out) = match open(&args.policy, dir).await {
        Ok((policy, repo)) => match request(&args, &policy) {
            Ok(req) => {
                let out = verify::run(&policy, &repo, &req, ctx).await;
                (Some(repo), out)
            }
            Err(e) => (None, Outcome::not_started(&policy.name, e)),
        },
        Err((name, e)) => (None, Outcome::not_started(&name, e)),
    };
    record_run(
        repo.as_ref(),
        "verify",
        &out.times,
        &VerifyRecord::from(&out),
        args.json,
    )
    .await;
    if out.error.is_some() {
        return result_of(out.error);
    }
    let f = &out.findings;
    f.problems.iter().for_each(|p| eprintln!("problem: {p}"));
    f.expected_failures
        .iter()
        .for_each(|p| eprintln!("expected: {p}"));
    if !f.names_mapped.is_empty() {
        eprintln!(
            "note: {} object names are not safe file paths; --storage-dir writes them under mapped names (listed in restore-names.tsv), --storage-to-source exactly: {}",
            f.names_mapped.len(),
            f.names_mapped.join(", ")
        );
    }
    let summary = format!(
        "snapshot {}: {} tables compared, {} objects checked ({} read), {} queries; restore {}",
        out.snapshot_id.as_deref().unwrap_or("?"),
        f.tables.len(),
        f.objects_checked,
        f.objects_read,
        f.queries.len(),
        f.restore_s
            .map(|r| format!("{r:.1}s (RTO {:.0}s)", out.rto_s))
            .unwrap_or_else(|| "not measured".into())
    );
    if out.ok() {
        eprintln!("verified {summary}");
        return Ok(());
    }
    let problems = f.problems.len();
    let message = format!("verification failed for {summary}: {problems} problems");
    Err(Error::new(Kind::Verification, message))
}
