//! `backstop runbook`: the recovery procedure of one policy, generated from the policy and the
//! repository (the newest snapshot's meta.json and the last verify record; no identity), with
//! the policy's real names in every command.
//!
//! Every command is a complete line. Secrets stay `${VAR}` references: the runbook names the
//! variables to set, and embeds the policy file (which holds only `${VAR}`s for secrets; any
//! literal value of a secret-bearing key is replaced by a `${...}` placeholder, and URL
//! passwords are masked). The fenced `sh` blocks of "Full disaster recovery" run in order, as
//! written, with `bash -euo pipefail`: a test does exactly that.

use crate::error::Result;
use crate::policy::{GitLocation, Location, Policy, StorageKind, StorageSource};
use crate::repo::format::Meta;
use crate::report::render::esc;
use crate::util::format_duration;
use std::fmt::Write;

/// What the repository says, for the runbook's facts.
#[derive(Debug, Default)]
pub struct Facts {
    pub newest: Option<Meta>,
    pub snapshots: usize,
    /// The last verify record, if any.
    pub last_verify: Option<crate::record::VerifyRecord>,
}

/// One block of the document, rendered as Markdown or HTML.
enum Block {
    Heading(u8, String),
    Para(String),
    List(Vec<String>),
    Code(&'static str, String),
}

struct Doc(Vec<Block>);

impl Doc {
    fn h(&mut self, level: u8, t: impl Into<String>) {
        self.0.push(Block::Heading(level, t.into()));
    }
    /// A numbered subsection of the current section ("3." gives 3.1, 3.2, ...): numbers stay
    /// continuous whichever subsections the policy has.
    fn sub(&mut self, t: impl AsRef<str>) {
        let mut count = 1;
        let mut section = String::new();
        for b in self.0.iter().rev() {
            match b {
                Block::Heading(3, _) => count += 1,
                Block::Heading(2, title) => {
                    section = title.split(' ').next().unwrap_or_default().to_string();
                    break;
                }
                _ => {}
            }
        }
        self.h(3, format!("{section}{count} {}", t.as_ref()));
    }
    fn p(&mut self, t: impl Into<String>) {
        self.0.push(Block::Para(t.into()));
    }
    fn list(&mut self, items: Vec<String>) {
        self.0.push(Block::List(items));
    }
    fn sh(&mut self, t: impl Into<String>) {
        self.0.push(Block::Code("sh", t.into()));
    }
    fn text(&mut self, t: impl Into<String>) {
        self.0.push(Block::Code("text", t.into()));
    }

    fn markdown(&self) -> String {
        let mut out = String::new();
        for b in &self.0 {
            match b {
                Block::Heading(l, t) => {
                    let _ = writeln!(out, "{} {t}\n", "#".repeat(*l as usize));
                }
                Block::Para(t) => {
                    let _ = writeln!(out, "{t}\n");
                }
                Block::List(items) => {
                    for i in items {
                        let _ = writeln!(out, "- {i}");
                    }
                    out.push('\n');
                }
                Block::Code(lang, t) => {
                    let _ = writeln!(out, "```{lang}\n{}\n```\n", t.trim_end());
                }
            }
        }
        out
    }

    /// The table of contents: every section and subsection, linked.
    fn toc(&self, inline: &dyn Fn(&str) -> String) -> String {
        let mut out = String::from("<nav class=\"toc\"><h2>Contents</h2><ul>");
        for (i, b) in self.0.iter().enumerate() {
            if let Block::Heading(l @ 2..=3, t) = b {
                let _ = write!(
                    out,
                    "<li class=\"toc{l}\"><a href=\"#s{i}\">{}</a></li>",
                    inline(t)
                );
            }
        }
        out.push_str("</ul></nav>");
        out
    }

    fn html(&self, title: &str) -> String {
        let inline = |t: &str| {
            // `code` spans, the only inline markup the runbook uses.
            let mut out = String::new();
            for (i, part) in esc(t).split('`').enumerate() {
                if i % 2 == 1 {
                    let _ = write!(out, "<code>{part}</code>");
                } else {
                    out.push_str(part);
                }
            }
            out
        };
        let mut out = format!(
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title><style>{CSS}</style></head><body>",
            esc(title)
        );
        for (i, b) in self.0.iter().enumerate() {
            match b {
                Block::Heading(l, t) => {
                    let _ = write!(out, "<h{l} id=\"s{i}\">{}</h{l}>", inline(t));
                    if *l == 1 {
                        out.push_str(&self.toc(&inline));
                    }
                }
                Block::Para(t) => {
                    let _ = write!(out, "<p>{}</p>", inline(t));
                }
                Block::List(items) => {
                    out.push_str("<ul>");
                    for i in items {
                        let _ = write!(out, "<li>{}</li>", inline(i));
                    }
                    out.push_str("</ul>");
                }
                Block::Code(lang, t) => {
                    let _ = write!(
                        out,
                        "<pre><code class=\"language-{lang}\">{}</code></pre>",
                        esc(t.trim_end())
                    );
                }
            }
        }
        out.push_str("</body></html>\n");
        out
    }
}

/// Screen and print: commands wrap instead of running off the page (a long line breaks
/// anywhere, as a terminal would show it), sections start on a page of their own in print,
/// and code blocks are not split across pages where they fit on one.
const CSS: &str = "body{font:14px/1.5 system-ui,sans-serif;margin:24px auto;max-width:60em;color:#222}\
pre{background:#f4f4f4;padding:8px;white-space:pre-wrap;overflow-wrap:anywhere}\
code{font:13px ui-monospace,monospace}h2{margin-top:32px}\
nav.toc ul{list-style:none;padding-left:0}nav.toc li.toc3{padding-left:1.5em}\
@page{size:A4;margin:15mm}\
@media print{body{margin:0;max-width:none;font-size:11pt}pre{page-break-inside:avoid}\
h2,h3{page-break-after:avoid}nav.toc{page-break-after:always}a{color:inherit;text-decoration:none}}";

/// Keys whose literal values are secrets: replaced by a `${...}` placeholder in the runbook.
const SECRET_KEYS: [&str; 9] = [
    "key",
    "secret_access_key",
    "dedup_key",
    "webhook",
    "healthcheck",
    "smtp_url",
    "scratch_url",
    "access_key_id",
    "url",
];

/// The policy file as the runbook embeds it: literal secrets replaced, URL passwords masked.
/// Every value the policy loads as a secret ([`Policy::secrets`]) is replaced by a `${...}`
/// placeholder wherever it is written, inline tables included; the key list below catches
/// the rest (an access key id, a credentialed URL) line by line.
fn policy_text(policy: &Policy) -> String {
    let mut text = std::fs::read_to_string(&policy.path).unwrap_or_default();
    // The file as loaded again with every section (a `--no-notify` load has no [notify]).
    let whole = crate::policy::load_resolving(&policy.path, crate::policy::Resolve::OnlyUsed);
    let secrets = whole.as_ref().unwrap_or(policy).secrets();
    for (key, value) in secrets {
        let placeholder = format!("{}_{}", policy.name, key.replace('.', "_"))
            .to_uppercase()
            .replace('-', "_");
        for quote in ['"', '\''] {
            let literal = format!("{quote}{value}{quote}");
            text = text.replace(&literal, &format!("\"${{{placeholder}}}\""));
        }
    }
    text.lines()
        .map(|line| {
            let Some((key, value)) = line.split_once('=') else {
                return line.to_string();
            };
            let k = key.trim();
            let v = value.trim();
            let literal = v.starts_with('"') && !v.starts_with("\"${");
            let secret = SECRET_KEYS.contains(&k) && (k != "url" || v.contains('@'));
            if literal && secret {
                let placeholder = format!("{}_{k}", policy.name)
                    .to_uppercase()
                    .replace('-', "_");
                format!("{key}= \"${{{placeholder}}}\"")
            } else {
                crate::util::mask_url(line)
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The `${NAME}`s a recovery host needs, in order of appearance: every one but those of
/// `[notify]`, `[database] url`, `[storage]` and `[verify] scratch_url`, which restore and the
/// read-only commands leave unresolved (DESIGN.md).
fn recovery_variables(text: &str) -> Vec<String> {
    let mut section = String::new();
    let mut out: Vec<String> = Vec::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('[') {
            section = t.trim_matches(['[', ']', ' ']).to_string();
            continue;
        }
        let key = t.split('=').next().unwrap_or_default().trim();
        let full = format!("{section}.{key}");
        let later = section.starts_with("notify")
            || section == "storage"
            || full == "database.url"
            || full == "verify.scratch_url";
        if !later {
            for v in variables(line) {
                if !out.contains(&v) {
                    out.push(v);
                }
            }
        }
    }
    out
}

/// Every `${NAME}` in `text`, in order of appearance.
fn variables(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else { break };
        let name = after[..end].to_string();
        if !out.contains(&name) {
            out.push(name);
        }
        rest = &after[end..];
    }
    out
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The runbook of `policy`, as Markdown (`html`: a standalone HTML page).
pub fn render(policy: &Policy, facts: &Facts, html: bool) -> Result<String> {
    let doc = build(policy, facts);
    let title = format!("Recovery runbook: policy {}", policy.name);
    Ok(if html {
        doc.html(&title)
    } else {
        doc.markdown()
    })
}

/// What every section is written from.
struct Sources<'a> {
    policy: &'a Policy,
    facts: &'a Facts,
    name: &'a str,
    /// The policy copy that section 3.2 writes, as the commands name it.
    p: &'static str,
    /// The policy file as embedded (secrets replaced).
    embedded: String,
    /// The policy file's absolute path on this host.
    path: String,
    /// The variables a recovery host must set.
    vars: Vec<String>,
}

fn build(policy: &Policy, facts: &Facts) -> Doc {
    let embedded = policy_text(policy);
    // Absolute, so the commands work from any directory.
    let path = std::fs::canonicalize(&policy.path).unwrap_or_else(|_| policy.path.clone());
    let c = Sources {
        policy,
        facts,
        name: &policy.name,
        p: "\"$RESTORE_DIR/policy.toml\"",
        // What a recovery host must set: the repository's and the files' variables; not the
        // dead source's URL, nor where alerts and pings go (the runbook's commands send none).
        vars: recovery_variables(&embedded),
        embedded,
        path: path.display().to_string(),
    };
    let mut d = Doc(Vec::new());
    header(&mut d, &c);
    for section in [
        facts_section,
        identity,
        prerequisites,
        disaster_recovery,
        rollback,
        one_object,
        dependencies,
        confirm,
        manual_path,
        application,
    ] {
        section(&mut d, &c);
    }
    d
}

/// The title and where the runbook comes from.
fn header(d: &mut Doc, c: &Sources) {
    let (policy, name, path) = (c.policy, c.name, &c.path);
    d.h(1, format!("Recovery runbook: policy `{name}`"));
    d.p(format!(
        "Generated by backstop {} on {} from the policy file `{}` and its repository `{}`. Regenerate it after each change of the policy: `backstop runbook --policy {} --out runbook.md`.",
        env!("CARGO_PKG_VERSION"),
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC"),
        path,
        crate::util::mask_url(&policy.repository.url),
        path
    ));
}

/// Section Objectives and facts.
fn facts_section(d: &mut Doc, c: &Sources) {
    let policy = c.policy;
    let facts = c.facts;
    d.h(2, "Objectives and facts");
    let mut facts_list = vec![
        format!(
            "RPO {} (a recovery point at least this recent must exist), RTO {} (a restore must take at most this long), retention {}.",
            format_duration(policy.objectives.rpo),
            format_duration(policy.objectives.rto),
            format_duration(policy.objectives.retention)
        ),
        format!("Snapshots in the repository: {}.", facts.snapshots),
    ];
    if let Some(s) = &policy.schedule {
        let cron = |c: &Option<crate::schedule::Cron>| {
            c.as_ref()
                .map_or("not scheduled".to_string(), |c| format!("`{}`", c.text))
        };
        facts_list.push(format!(
            "Schedule ({}): backup {}, verify {}, prune {}.",
            s.timezone,
            cron(&s.backup),
            cron(&s.verify),
            cron(&s.prune)
        ));
    }
    match &facts.newest {
        Some(m) => {
            facts_list.push(format!(
                "Newest snapshot `{}`, consistent at {}, {} referenced in the repository.",
                m.id,
                m.consistent_at.to_rfc3339(),
                crate::util::human_bytes(m.bytes_referenced)
            ));
            if let Some(db) = &m.db {
                facts_list.push(format!(
                    "Database: PostgreSQL {}, {} tables, {} rows, a {} dump.",
                    db.server_version,
                    db.tables,
                    db.rows,
                    crate::util::human_bytes(db.bytes_plain)
                ));
            }
            if let Some(st) = &m.storage {
                facts_list.push(format!(
                    "Storage: {} objects, {}.",
                    st.objects,
                    crate::util::human_bytes(st.bytes_plain)
                ));
            }
            if let Some(f) = &m.files {
                facts_list.push(format!("Files: {} in {} sets, {}.", f.files, f.sets, crate::util::human_bytes(f.bytes_plain)));
            }
            if let Some(g) = &m.git {
                for r in &g.repositories {
                    facts_list.push(format!(
                        "Git `{}`: HEAD at `{}`, {} refs.",
                        r.name,
                        r.head.as_deref().unwrap_or("none"),
                        r.refs
                    ));
                }
            }
        }
        None => facts_list.push("No snapshot yet: run `backstop backup` first; the figures below appear once one exists.".into()),
    }
    match facts.last_verify.as_ref() {
        Some(v) => facts_list.push(format!(
            "Expected restore time: {:.0} s, measured by the last verify at {} ({}); the RTO is {}.",
            v.restore_s.unwrap_or(0.0),
            v.finished_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            if v.ok { "verified" } else { "it FAILED: see its record under runs/" },
            format_duration(policy.objectives.rto)
        )),
        None => facts_list.push("No verify has run yet, so the restore time is not known: run `backstop verify` on a host with the identity.".into()),
    }
    d.list(facts_list);
}

/// Section 1. The identity.
fn identity(d: &mut Doc, c: &Sources) {
    let policy = c.policy;
    d.h(2, "1. The identity");
    d.p(format!(
        "Every snapshot is encrypted to these age public keys: {}. The matching private identity file is deliberately not on the backup host. Whoever holds it (the on-call lead's password manager, the offline copy in the safe) must hand it over first; a restore cannot start without it. Save it as a file readable only by you and point `BACKSTOP_IDENTITY` at it.",
        policy.recipients.iter().map(|r| format!("`{r}`")).collect::<Vec<_>>().join(", ")
    ));
    d.text("chmod 600 /secure/backstop-identity.txt\nexport BACKSTOP_IDENTITY=/secure/backstop-identity.txt");
}

/// Section 2. Prerequisites.
fn prerequisites(d: &mut Doc, c: &Sources) {
    let policy = c.policy;
    let facts = c.facts;
    let vars = &c.vars;
    d.h(2, "2. Prerequisites");
    let major = facts
        .newest
        .as_ref()
        .and_then(|m| m.db.as_ref())
        .and_then(|db| {
            db.server_version
                .split(['.', ' '])
                .next()
                .map(str::to_string)
        });
    let mut prereq = vec![format!(
        "backstop {} (`cargo install --path . --locked` from its source, or the release binary), on `PATH`.",
        env!("CARGO_PKG_VERSION")
    )];
    if policy.database.is_some() {
        prereq.push(format!(
            "PostgreSQL client tools (`pg_restore`, `psql`) of major version {} or newer, and a target server of that version: `apt-get install postgresql-client-{}`.",
            major.as_deref().unwrap_or("(the source's)"),
            major.as_deref().unwrap_or("NN")
        ));
    }
    if !policy.git.is_empty() {
        prereq.push("git (`apt-get install git`).".into());
    }
    prereq.push(
        "For the manual path only: `age`, `zstd` and `jq` (`apt-get install age zstd jq`).".into(),
    );
    match &policy.repository.location {
        Location::Dir(dir) => prereq.push(format!(
            "The repository directory `{}` on this host: if the old host is gone, copy it back from its offsite copy to the same path first.",
            dir.display()
        )),
        Location::S3 { bucket, prefix } => prereq.push(format!(
            "Network access to the bucket `{bucket}` (prefix `{prefix}`) and read credentials for it."
        )),
    }
    prereq.push(format!(
        "These environment variables, which the policy's repository (and file sets) refer to: {}. Nothing else: the source's URL, the webhook, the mail server and the health-check URLs are not needed, and the runbook's commands run with `BACKSTOP_NO_NOTIFY=1` (`--no-notify`), so nothing on the recovery host alerts or pings production's receivers.",
        vars.iter()
            .map(|v| format!("`{v}`"))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    d.list(prereq);
}

/// Section 3. Full disaster recovery on a new host.
fn disaster_recovery(d: &mut Doc, c: &Sources) {
    let policy = c.policy;
    let facts = c.facts;
    let p = c.p;
    let embedded = &c.embedded;
    let vars = &c.vars;
    d.h(2, "3. Full disaster recovery on a new host");
    d.p("Run the blocks below in order, in one shell (`bash`), after setting the variables of step 3.1. `TARGET_DB_URL` names the new, empty database; `RESTORE_DIR` an empty directory where documents, files and code are written for inspection before they go live.");
    d.sub("Environment");
    let mut env_block =
        String::from(": \"${BACKSTOP_IDENTITY:?set it to the identity file (section 1)}\"\n");
    if policy.database.is_some() {
        env_block.push_str(": \"${TARGET_DB_URL:?set it to the new database, e.g. postgres://postgres:PASSWORD@new-host:5432/postgres}\"\n");
    }
    env_block.push_str(": \"${RESTORE_DIR:?set it to an empty directory}\"\n");
    for v in vars {
        let _ = writeln!(env_block, ": \"${{{v}:?the policy needs {v}}}\"");
    }
    env_block.push_str(
        "# No alert, mail or ping from the recovery host.\nexport BACKSTOP_NO_NOTIFY=1\nbackstop --version\nmkdir -p \"$RESTORE_DIR\"",
    );
    d.sh(env_block);
    d.sub("The policy and the repository");
    d.p("The policy file, as it was when this runbook was made (secrets are `${VAR}` references):");
    d.sh(format!(
        "cat > {p} <<'BACKSTOP_POLICY'\n{embedded}\nBACKSTOP_POLICY\nbackstop snapshots --policy {p}"
    ));
    if facts.newest.is_some() && policy.database.is_some() {
        d.sub("Database");
        let mut text = format!(
            "The newest snapshot's database goes into `TARGET_DB_URL` (created if missing; it must be empty). Roles it refers to are created first (without passwords: set them afterwards){}.",
            facts
                .newest
                .as_ref()
                .and_then(|m| m.db.as_ref())
                .filter(|db| !db.roles.is_empty())
                .map(|db| format!(": {}", db.roles.join(", ")))
                .unwrap_or_default()
        );
        text.push_str(" To restore an earlier point instead, see section 4.");
        d.p(text);
        d.sh(format!(
            "backstop restore --policy {p} --only db --db-url \"$TARGET_DB_URL\""
        ));
    }
    if let (Some(st), Some(_)) = (&policy.storage, &facts.newest) {
        recover_buckets(d, policy, st, p);
    }
    if !policy.files.is_empty() && facts.newest.is_some() {
        d.sub("Configuration files");
        d.p(format!(
            "The sets {} are written under `$RESTORE_DIR/files/<set>/<original path>` with their modes and mtimes (and owners, as root). Review them, then put them in place with `backstop restore --policy {p} --only files --files-to-source` (it refuses to replace an existing file without `--force`).",
            policy.files.iter().map(|f| format!("`{}` ({})", f.name, f.paths.join(", "))).collect::<Vec<_>>().join(", ")
        ));
        d.sh(format!(
            "backstop restore --policy {p} --only files --files-dir \"$RESTORE_DIR/files\""
        ));
    }
    if !policy.git.is_empty() && facts.newest.is_some() {
        d.sub("Code");
        d.p("Each repository is cloned from its bundle into `$RESTORE_DIR/git/<name>`, every branch and tag at its recorded commit, `origin` pointing where it came from; the bundle stays beside it.");
        d.sh(format!(
            "backstop restore --policy {p} --only git --git-dir \"$RESTORE_DIR/git\""
        ));
    }
    if let Some(m) = &facts.newest {
        recovery_checks(d, policy, m);
    }
}

/// Section 3's buckets: restored for inspection, and compared with storage.objects.
fn recover_buckets(d: &mut Doc, policy: &Policy, st: &StorageSource, p: &str) {
    d.sub("Buckets, and their consistency with storage.objects");
    let dest = match st.kind {
        StorageKind::Dir => "their directory",
        StorageKind::S3 => "the S3 source",
        StorageKind::Supabase => "the new Supabase project",
    };
    d.p(format!(
        "The objects of {} are written under `$RESTORE_DIR/storage/<bucket>/<name>` (names that are not safe paths are mapped and listed in `restore-names.tsv`). To put them back into {dest} directly, run the same command with `--storage-to-source` instead of `--storage-dir` once the policy's `[storage]` points there.",
        st.buckets.iter().map(|b| format!("`{b}`")).collect::<Vec<_>>().join(", ")
    ));
    let mut block = format!(
        "backstop restore --policy {p} --only storage --storage-dir \"$RESTORE_DIR/storage\""
    );
    if policy.database.is_some() {
        let buckets = st
            .buckets
            .iter()
            .map(|b| format!("'{}'", b.replace('\'', "''")))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "select bucket_id || '/' || name from storage.objects where bucket_id in ({buckets})"
        );
        let _ = write!(
            block,
            "\n# Every storage.objects row should have its object, and every object its row.\n\
             psql -X \"$TARGET_DB_URL\" -Atc {} | LC_ALL=C sort > \"$RESTORE_DIR/objects-in-db.txt\"\n\
             (cd \"$RESTORE_DIR/storage\" && find . -type f ! -name restore-names.tsv | sed 's|^\\./||' | LC_ALL=C sort) > \"$RESTORE_DIR/objects-restored.txt\"\n\
             echo \"rows without object: $(LC_ALL=C comm -23 \"$RESTORE_DIR/objects-in-db.txt\" \"$RESTORE_DIR/objects-restored.txt\" | wc -l)\"\n\
             echo \"objects without row: $(LC_ALL=C comm -13 \"$RESTORE_DIR/objects-in-db.txt\" \"$RESTORE_DIR/objects-restored.txt\" | wc -l)\"",
            shell_quote(&sql)
        );
        d.p("A row without its object breaks a download in the app, an object without a row is invisible to it. The backup recorded the mismatches it saw (its record's `storage.mismatches`); any others mean the restore is incomplete.");
    }
    d.sh(block);
}

/// Section 3's checks: the tables restored and each repository's HEAD.
fn recovery_checks(d: &mut Doc, policy: &Policy, m: &Meta) {
    d.sub("Checks");
    let mut block = String::new();
    if let (Some(db), Some(_)) = (&m.db, &policy.database) {
        let _ = write!(
            block,
            "tables=$(psql -X \"$TARGET_DB_URL\" -Atc \"select count(*) from pg_class c join pg_namespace n on n.oid = c.relnamespace where c.relkind in ('r', 'p') and n.nspname not in ('pg_catalog', 'information_schema') and n.nspname not like 'pg_toast%'\")\n\
             echo \"tables restored: $tables (the snapshot holds {})\"\n",
            db.tables
        );
    }
    if let Some(g) = &m.git {
        for r in &g.repositories {
            if let Some(head) = &r.head {
                let _ = writeln!(
                    block,
                    "test \"$(git -C \"$RESTORE_DIR/git/{}\" rev-parse HEAD)\" = {}",
                    r.name,
                    shell_quote(head)
                );
            }
        }
    }
    block.push_str("echo \"recovery steps done: continue with section 7, then section 9\"");
    d.sh(block);
}

/// Section 4. Rollback to an earlier point (and 4.1, to a moment).
fn rollback(d: &mut Doc, c: &Sources) {
    let policy = c.policy;
    let p = c.p;
    d.h(2, "4. Rollback to an earlier point");
    d.p("List the recovery points, then restore the newest one before a time (RFC 3339, `YYYY-MM-DD HH:MM` in UTC, or a date) into a new database, check it, and switch the application over. `--force` replaces a non-empty target: never point it at the live database by mistake. Sections 4, 5 and 7 use the policy copy of section 3.2 and its variables.");
    d.text(format!(
        "backstop snapshots --policy {p}\nbackstop restore --no-notify --policy {p} --before \"2026-01-31 03:00\" --db-url \"$TARGET_DB_URL\"",
    ));

    if let Some(st) = &policy.stream {
        d.sub("Restore to a moment (the change stream)");
        d.p(format!(
            "This policy follows its database's committed transactions through the slot `{}`: a restore can bring it back to any moment between two snapshots, sealed every {} (the last sealed commit is `last_commit_at` of `stream --status`). Find the last good moment before the incident: `snapshots` shows the span the stream covers after each snapshot; the application's own logs or `select max(created_at) from ...` on the damaged database give the time of the first bad change. Restore to just before it into a new database, check it, then switch the application over. `--before now` restores everything sealed.",
            st.slot,
            format_duration(st.seal_every)
        ));
        d.text(format!(
            "backstop snapshots --policy {p}\nbackstop restore --no-notify --policy {p} --before \"2026-01-31T21:59:30Z\" --only db --db-url \"$TARGET_DB_URL\"",
        ));
        d.p("If the moment falls after a table changed shape (a migration: DDL is not in the stream) and before the next snapshot, the restore refuses and names the nearest exact points: the last transaction before the change, and the next snapshot. Restore to one of them, and replay the missing changes by hand from the application's own records if needed. Tables named unprotected (no primary key) come back as their snapshot had them.");
    }
}

/// Section 5. One bucket object or one file.
fn one_object(d: &mut Doc, c: &Sources) {
    let policy = c.policy;
    let p = c.p;
    d.h(2, "5. Recovering one bucket object or one file");
    d.p("Restore the part into a scratch directory and copy out what is needed; nothing else is touched.");
    let mut one = String::new();
    if let Some(st) = &policy.storage {
        let b = st.buckets.first().cloned().unwrap_or_default();
        let _ = writeln!(
            one,
            "backstop restore --no-notify --policy {p} --only storage --storage-dir \"$RESTORE_DIR/one-object\"\ncp \"$RESTORE_DIR/one-object/{b}/PATH/OF/OBJECT\" ./",
        );
    }
    if let Some(f) = policy.files.first() {
        let _ = writeln!(
            one,
            "backstop restore --no-notify --policy {p} --only files --files-dir \"$RESTORE_DIR/one-file\"\nls \"$RESTORE_DIR/one-file/{}/\"",
            f.name
        );
    }
    if one.is_empty() {
        one.push_str("(this policy backs up neither storage nor files)");
    }
    d.text(one);
}

/// Section 6. PostgreSQL, extensions, roles.
fn dependencies(d: &mut Doc, c: &Sources) {
    let policy = c.policy;
    let facts = c.facts;
    d.h(2, "6. Dependency recovery: PostgreSQL, extensions, roles");
    match facts.newest.as_ref().and_then(|m| m.db.as_ref()) {
        Some(db) => {
            d.p(format!(
                "The source ran PostgreSQL {}. The target server needs that major version or newer, and these extensions available (Supabase-only ones such as `pg_graphql` or `supabase_vault` exist only on Supabase; elsewhere they fail to create and the tables that need them are reported): {}.",
                db.server_version,
                if db.extensions.is_empty() { "none recorded".into() } else { db.extensions.join(", ") }
            ));
            d.p(format!(
                "Roles the database refers to (backstop creates missing ones without login and without password; give them passwords and grants as before): {}.",
                if db.roles.is_empty() { "none recorded".into() } else { db.roles.join(", ") }
            ));
        }
        None => d.p("No database snapshot yet: the PostgreSQL version, extensions and roles appear here after the first backup."),
    }
    if policy.database.is_some() {
        d.p("The roles with every attribute and membership are in the manifest as `database.roles_sql` (`pg_dumpall --roles-only --no-role-passwords`); see section 8 for how to read it.");
    }
}

/// Section 7. Confirming the recovery worked.
fn confirm(d: &mut Doc, c: &Sources) {
    let p = c.p;
    d.h(2, "7. Confirming the recovery worked");
    d.list(vec![
        format!(
            "Prove the snapshot itself: `backstop verify --no-notify --policy {p} --scratch-url \"$SCRATCH_DB_URL\"` (`SCRATCH_DB_URL`: a server where a temporary database may be created, e.g. the new one's `postgres` database) restores it into a temporary database, compares every table's rows and checksum with the backup's, reads documents, files and bundles back, and times the restore against the RTO.",
        ),
        "Compare the restored database's row counts with the snapshot's (`backstop snapshots --json`), run the application's smoke tests, open a few documents through the application.".into(),
        format!(
            "Run `backstop check --no-notify --policy {p} --read-data` to prove every stored byte of the repository is intact.",
        ),
    ]);
}

/// Section 8. The manual path, without backstop.
fn manual_path(d: &mut Doc, c: &Sources) {
    let policy = c.policy;
    let name = c.name;
    d.h(2, "8. The manual path, without backstop");
    let repo_dir = match &policy.repository.location {
        Location::Dir(dir) => format!("REPO={}", shell_quote(&dir.display().to_string())),
        Location::S3 { bucket, prefix } => format!(
            "aws s3 sync s3://{bucket}/{prefix} ./repo   # with the repository's read credentials\nREPO=./repo"
        ),
    };
    d.p("If backstop itself cannot run, the repository is readable with standard tools (`age`, `zstd`, `jq`, `pg_restore`, `psql`):");
    d.text(format!(
        "{repo_dir}\nPOLICY={}\nKEY=\"$BACKSTOP_IDENTITY\"\nDB_URL=\"$TARGET_DB_URL\"\n{}",
        shell_quote(name),
        manual_recipe()
    ));
}

/// Section 9. Redeploy and rollback of the application.
fn application(d: &mut Doc, c: &Sources) {
    let policy = c.policy;
    d.h(2, "9. Redeploy and rollback of the application");
    match &policy.runbook.redeploy {
        Some(r) => {
            d.p("Redeploy (from the policy's `[runbook] redeploy`):");
            d.text(r.trim().to_string());
        }
        None => d.p("Fill in the application's redeploy commands in the policy's `[runbook] redeploy = \"\"\"...\"\"\"` (build, migrate, restart, health check) and generate this runbook again."),
    }
    match &policy.runbook.rollback {
        Some(r) => {
            d.p("Rollback (from the policy's `[runbook] rollback`):");
            d.text(r.trim().to_string());
        }
        None => d.p("Fill in the application's rollback commands in the policy's `[runbook] rollback = \"\"\"...\"\"\"` (the previous release, and the database point of section 4 if a migration must be undone)."),
    }
    if !policy.git.is_empty() {
        d.p(format!(
            "The code of each release is in the restored repositories ({}): `git -C \"$RESTORE_DIR/git/NAME\" checkout TAG` gives the tree to build.",
            policy.git.iter().map(|g| match &g.location {
                GitLocation::Local(p) => format!("`{}` from {}", g.name, p.display()),
                GitLocation::Url(u) => format!("`{}` from {u}", g.name),
            }).collect::<Vec<_>>().join(", ")
        ));
    }
}

/// The README's tested manual-recovery recipe, from between its markers.
fn manual_recipe() -> String {
    const README: &str = include_str!("../README.md");
    README
        .split("<!-- recipe:begin -->")
        .nth(1)
        .and_then(|r| r.split("<!-- recipe:end -->").next())
        .map(|r| {
            r.trim()
                .trim_start_matches("```bash")
                .trim_end_matches("```")
                .trim()
                .to_string()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variables_are_found_once_in_order() {
        assert_eq!(
            variables("a = \"${A}\"\nb = \"${B}x${A}\""),
            vec!["A".to_string(), "B".to_string()]
        );
    }

    #[test]
    fn the_manual_recipe_comes_from_the_readme() {
        let r = manual_recipe();
        assert!(r.contains("age -d -i \"$KEY\""), "{r}");
        assert!(!r.contains("```"));
    }
}
