//! The compliance report against a real repository: a short history whose RPO a pause breaks,
//! and the HTML page rendered by headless Chromium.

mod common;

use common::Env;
use serde_json::Value;
use std::path::PathBuf;

fn report(env: &Env, args: &[&str]) -> (i32, String, String) {
    let out = env
        .backstop()
        .args(["report", "--policy"])
        .arg(&env.policy)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

fn control<'a>(rec: &'a Value, id: &str) -> &'a Value {
    rec["policies"][0]["controls"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == id)
        .unwrap_or_else(|| panic!("no control {id}: {rec}"))
}

/// A policy with `rpo = "5s"` and a small documents bucket, backed up alone (`--only
/// storage`) so that backups are well under a second apart.
fn short_rpo(env: &Env) {
    let docs = env.dir.path().join("docs/documents");
    std::fs::create_dir_all(&docs).unwrap();
    std::fs::write(docs.join("menu.txt"), b"kimchi jjigae").unwrap();
    let storage = format!(
        "\n[storage]\nkind = \"dir\"\npath = \"{}\"\nbuckets = [\"documents\"]\n",
        env.dir.path().join("docs").display()
    );
    env.write_policy(&env.policy, &storage);
    let text = std::fs::read_to_string(&env.policy).unwrap();
    std::fs::write(&env.policy, text.replace("rpo = \"24h\"", "rpo = \"5s\"")).unwrap();
}

fn storage_backup(env: &Env) -> Value {
    let out = env
        .backstop()
        .args(["backup", "--only", "storage", "--json", "--policy"])
        .arg(&env.policy)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn a_pause_longer_than_the_rpo_turns_the_report_non_compliant_naming_the_gap() {
    let env = Env::new();
    short_rpo(&env);
    let first = storage_backup(&env);
    storage_backup(&env);
    let from: chrono::DateTime<chrono::Utc> =
        first["consistent_at"].as_str().unwrap().parse().unwrap();
    let from = (from - chrono::Duration::seconds(1)).to_rfc3339();

    let (_, out, stderr) = report(&env, &["--from", &from, "--format", "json"]);
    let rec: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out} {stderr}"));
    assert_eq!(
        control(&rec, "max_recovery_point_gap")["compliant"],
        true,
        "{rec}"
    );
    assert_eq!(
        control(&rec, "last_recovery_point_age")["compliant"],
        true,
        "{rec}"
    );
    assert_eq!(control(&rec, "backup_success")["compliant"], true, "{rec}");
    assert_eq!(
        control(&rec, "recovery_points_immutable")["status"],
        "not_applicable"
    );

    std::thread::sleep(std::time::Duration::from_secs(7));
    let (code, out, stderr) = report(&env, &["--from", &from, "--format", "json"]);
    assert_eq!(code, 3, "{stderr}");
    let rec: Value = serde_json::from_str(&out).unwrap();
    let gap = control(&rec, "max_recovery_point_gap");
    assert_eq!(gap["compliant"], false, "{rec}");
    assert!(
        gap["evidence"][0].as_str().unwrap().starts_with("gap "),
        "{gap}"
    );
    assert_eq!(control(&rec, "last_recovery_point_age")["compliant"], false);
    assert!(stderr.contains("test: max_recovery_point_gap"), "{stderr}");

    let (code, text, _) = report(&env, &["--from", &from]);
    assert_eq!(code, 3);
    assert!(
        text.contains("FAIL max_recovery_point_gap") && text.contains("- gap "),
        "{text}"
    );
    let records = common::files_under(&env.repo.join("runs/test"));
    assert!(records
        .iter()
        .any(|p| p.to_string_lossy().contains("-report-")));
}

#[test]
fn the_html_report_renders_in_headless_chromium_with_every_control_and_one_mark_per_point() {
    let env = Env::new();
    let ids: Vec<String> = (0..3)
        .map(|_| {
            env.backup_json()["snapshot_id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let out = env
        .backstop()
        .args(["verify", "--json", "--policy"])
        .arg(&env.policy)
        .arg("--scratch-url")
        .arg(env.scratch.url("postgres"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let html = env.dir.path().join("report.html");
    let (code, _, stderr) = report(
        &env,
        &[
            "--window",
            "1h",
            "--format",
            "html",
            "--out",
            html.to_str().unwrap(),
        ],
    );
    assert!(code == 0 || code == 3, "{stderr}");

    let browser = common::chromium();
    let profile = tempfile::tempdir().unwrap();
    let headless = |extra: &[&str]| {
        std::process::Command::new(&browser)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--hide-scrollbars",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .args(extra)
            .arg(format!("file://{}", html.display()))
            .output()
            .unwrap()
    };
    let dom = headless(&["--dump-dom"]);
    assert!(
        dom.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&dom.stderr)
    );
    let dom = String::from_utf8_lossy(&dom.stdout).to_string();
    assert!(
        dom.contains("<code>test</code>"),
        "the policy name is not shown"
    );
    for id in [
        "last_recovery_point_age",
        "max_recovery_point_gap",
        "restore_test_performed",
        "restore_time",
        "verification_success",
        "backup_success",
        "minimum_retention",
        "recovery_points_encrypted",
        "recovery_points_immutable",
        "storage_consistency",
    ] {
        assert!(
            dom.contains(&format!(r#"<code class="control-id">{id}</code>"#)),
            "{id} not rendered"
        );
    }
    assert_eq!(
        dom.matches(r#"class="point""#).count(),
        ids.len(),
        "one mark per recovery point"
    );
    assert_eq!(dom.matches(r#"class="verify""#).count(), 1);
    // The summary table first, a labelled time axis, the restore time written beside its bar,
    // and times to the second.
    let summary = dom
        .find(r#"<table class="summary">"#)
        .expect("a summary table");
    assert!(
        summary < dom.find("control-id").unwrap(),
        "the summary comes first"
    );
    assert!(dom[summary..].contains("<td><code>test</code></td>"));
    assert!(dom.contains(r#"class="axis-label""#) && dom.contains("time (UTC, minutes)"));
    assert_eq!(dom.matches(r#"class="tick""#).count(), 7);
    assert_eq!(dom.matches(r#"class="verify-label""#).count(), 1);
    let nanos = regex_lite_nanos(&dom);
    assert!(nanos.is_none(), "a time shown below the second: {nanos:?}");

    let artifacts = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    for (name, size) in [("report.png", "1280,1754"), ("report-390.png", "390,1754")] {
        let png = artifacts.join(name);
        let _ = std::fs::remove_file(&png);
        let shot = headless(&[
            &format!("--screenshot={}", png.display()),
            &format!("--window-size={size}"),
        ]);
        assert!(
            shot.status.success(),
            "{}",
            String::from_utf8_lossy(&shot.stderr)
        );
        let bytes = std::fs::read(&png).unwrap();
        assert!(
            bytes.starts_with(b"\x89PNG") && bytes.len() > 20_000,
            "screenshot of {} bytes",
            bytes.len()
        );
        eprintln!("screenshot kept at {}", png.display());
    }
}

/// The first RFC 3339 time with a fraction of a second (`12:34:56.789`), if any.
fn regex_lite_nanos(text: &str) -> Option<String> {
    let b = text.as_bytes();
    (8..b.len().saturating_sub(1)).find_map(|i| {
        let time = &b[i - 8..i];
        let shaped = time[2] == b':'
            && time[5] == b':'
            && [0, 1, 3, 4, 6, 7].iter().all(|&j| time[j].is_ascii_digit());
        (shaped && b[i] == b'.' && b[i + 1].is_ascii_digit())
            .then(|| String::from_utf8_lossy(&b[i - 8..(i + 10).min(b.len())]).into_owned())
    })
}

/// The runbook's HTML has a table of contents and continuous numbers, and printed to PDF by
/// Chromium every page is readable and no command line is cut: each line of every code block
/// is in the PDF's text (wrapped, never clipped at the page's edge).
#[test]
fn the_runbook_prints_to_pdf_with_a_table_of_contents_and_no_cut_line() {
    let env = Env::new();
    short_rpo(&env);
    storage_backup(&env);
    let html = env.dir.path().join("runbook.html");
    let out = env
        .backstop()
        .args(["runbook", "--format", "html", "--policy"])
        .arg(&env.policy)
        .arg("--out")
        .arg(&html)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(
        page.contains(r#"<nav class="toc">"#),
        "no table of contents"
    );
    // Storage but no files or git: 3.1, 3.2, 3.3 (database), 3.4 (buckets), 3.5 (checks).
    for n in ["3.1 ", "3.2 ", "3.3 ", "3.4 ", "3.5 "] {
        assert!(page.contains(&format!(">{n}")), "no section {n}");
    }
    assert!(
        !page.contains(">3.6 ") && !page.contains(">3.7 "),
        "numbers skip"
    );

    let pdf = env.dir.path().join("runbook.pdf");
    let profile = tempfile::tempdir().unwrap();
    let printed = std::process::Command::new(common::chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-pdf-header-footer",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--print-to-pdf={}", pdf.display()))
        .arg(format!("file://{}", html.display()))
        .output()
        .unwrap();
    assert!(
        printed.status.success() && pdf.exists(),
        "chromium --print-to-pdf failed: {}",
        String::from_utf8_lossy(&printed.stderr)
    );
    let text = std::process::Command::new("pdftotext")
        .arg(&pdf)
        .arg("-")
        .output()
        .expect("pdftotext (Debian's poppler-utils; scripts/test.sh installs it)");
    assert!(text.status.success());
    // Whitespace and hyphens aside: a line wrapped after a `-` comes back from pdftotext
    // without it (it takes the hyphen for a word break).
    let squeeze = |s: &str| {
        s.chars()
            .filter(|c| !c.is_whitespace() && *c != '-')
            .collect::<String>()
    };
    let printed_text = squeeze(&String::from_utf8_lossy(&text.stdout));
    let unescape = |s: &str| {
        s.replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", "\"")
            .replace("&#39;", "'")
            .replace("&amp;", "&")
    };
    let mut lines = 0;
    for block in page.split("<pre><code").skip(1) {
        let body = block.split_once('>').unwrap().1;
        let body = unescape(body.split("</code></pre>").next().unwrap());
        for line in body.lines().map(squeeze).filter(|l| !l.is_empty()) {
            lines += 1;
            let near: String = printed_text
                .find(&line[..line.len().min(24)])
                .map(|i| {
                    printed_text[i..]
                        .chars()
                        .take(line.chars().count() + 20)
                        .collect()
                })
                .unwrap_or_default();
            assert!(
                printed_text.contains(&line),
                "cut in the PDF: {line}\nthe PDF has: {near}"
            );
        }
    }
    assert!(lines > 20, "only {lines} command lines checked");

    // Every page renders to an image with something on it; the pages are kept as artifacts.
    let artifacts = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("artifacts/runbook");
    let _ = std::fs::remove_dir_all(&artifacts);
    std::fs::create_dir_all(&artifacts).unwrap();
    let ok = std::process::Command::new("pdftoppm")
        .args(["-r", "50", "-png"])
        .arg(&pdf)
        .arg(artifacts.join("page"))
        .status()
        .expect("pdftoppm (Debian's poppler-utils)");
    assert!(ok.success());
    let pages = common::files_under(&artifacts);
    assert!(pages.len() >= 2, "{} pages", pages.len());
    for p in &pages {
        let size = std::fs::metadata(p).unwrap().len();
        assert!(
            size > 3_000,
            "{} is nearly blank ({size} bytes)",
            p.display()
        );
    }
    eprintln!("runbook pages kept in {}", artifacts.display());
}
