//! The report as text (a terminal summary, non-compliant controls first), Markdown (for an
//! audit ticket) and one self-contained HTML page (inline CSS and SVG, no scripts, legible on
//! A4). JSON is the serde form of [`Report`].

use super::{PolicyReport, Window};
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::fmt::Write;

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub window: Window,
    pub generated_at: DateTime<Utc>,
    pub compliant: bool,
    pub policies: Vec<PolicyReport>,
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "COMPLIANT"
    } else {
        "NON-COMPLIANT"
    }
}

fn mark(status: &str) -> &'static str {
    match status {
        "compliant" => "ok ",
        "not_applicable" => "n/a",
        _ => "FAIL",
    }
}

pub fn text(r: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "backstop compliance report, {} → {}: {}",
        r.window.from.to_rfc3339(),
        r.window.to.to_rfc3339(),
        verdict(r.compliant)
    );
    for p in &r.policies {
        let _ = writeln!(
            out,
            "\npolicy {} ({}; RPO {}, RTO {}, retention {}): {}",
            p.name,
            p.repository,
            p.rpo,
            p.rto,
            p.retention,
            verdict(p.compliant)
        );
        let mut controls: Vec<_> = p.controls.iter().collect();
        controls.sort_by_key(|c| c.compliant);
        for c in controls {
            let _ = writeln!(
                out,
                "  {:<4} {:<26} {} (target: {})",
                mark(c.status),
                c.id,
                c.observed,
                c.target
            );
            if !c.compliant {
                for e in c.evidence.iter().take(10) {
                    let _ = writeln!(out, "         - {e}");
                }
            }
        }
    }
    out
}

fn md_cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

pub fn markdown(r: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Backup compliance report\n\nWindow: {} → {}  \nGenerated: {}  \nVerdict: **{}**",
        r.window.from.to_rfc3339(),
        r.window.to.to_rfc3339(),
        r.generated_at.to_rfc3339(),
        verdict(r.compliant)
    );
    for p in &r.policies {
        let _ = writeln!(
            out,
            "\n## Policy `{}`: {}\n\nRepository {}; RPO {}, RTO {}, retention {}.\n",
            p.name,
            verdict(p.compliant),
            md_cell(&p.repository),
            p.rpo,
            p.rto,
            p.retention
        );
        let _ = writeln!(
            out,
            "| Control | Status | Target | Observed | Evidence |\n|---|---|---|---|---|"
        );
        for c in &p.controls {
            let evidence: Vec<String> = c.evidence.iter().take(10).map(|e| md_cell(e)).collect();
            let _ = writeln!(
                out,
                "| `{}` {} | {} | {} | {} | {} |",
                c.id,
                md_cell(c.title),
                c.status,
                md_cell(&c.target),
                md_cell(&c.observed),
                evidence.join("<br>")
            );
        }
    }
    out
}

pub(crate) fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The window as an SVG: recovery points as ticks, gaps longer than the RPO shaded red,
/// verify runs as bars whose height is restore_s against a dashed line at the RTO, failed
/// runs in red.
fn timeline(p: &PolicyReport, w: &Window) -> String {
    let (width, height, top, base) = (1000.0, 200.0, 20.0, 150.0);
    let span = (w.to - w.from).num_milliseconds().max(1) as f64;
    let x = |t: DateTime<Utc>| {
        40.0 + (t - w.from).num_milliseconds().clamp(0, span as i64) as f64 / span * (width - 60.0)
    };
    let t = &p.timeline;
    let max_s = t
        .verifies
        .iter()
        .filter_map(|v| v.1)
        .fold(t.rto_s, f64::max)
        .max(1.0)
        * 1.1;
    let y = |s: f64| base - (s / max_s) * (base - top);
    let mut svg = format!(
        r#"<svg class="timeline" viewBox="0 0 {width} {height}" width="100%" role="img" aria-label="timeline of {}">"#,
        esc(&p.name)
    );
    let _ = write!(
        svg,
        r##"<rect x="40" y="{top}" width="{}" height="{}" fill="#f7f7f7"/>"##,
        width - 60.0,
        base - top
    );
    for (a, b) in &t.gaps {
        let _ = write!(
            svg,
            r##"<rect class="gap" x="{:.1}" y="{top}" width="{:.1}" height="{}" fill="#e53935" fill-opacity="0.25"><title>gap {} → {}</title></rect>"##,
            x(*a),
            (x(*b) - x(*a)).max(1.0),
            base - top,
            a.to_rfc3339(),
            b.to_rfc3339()
        );
    }
    let _ = write!(
        svg,
        r##"<line class="rto" x1="40" x2="{}" y1="{:.1}" y2="{:.1}" stroke="#fb8c00" stroke-dasharray="6 4"/><text x="{}" y="{:.1}" font-size="11" text-anchor="end" fill="#fb8c00">RTO {:.0}s</text>"##,
        width - 20.0,
        y(t.rto_s),
        y(t.rto_s),
        width - 22.0,
        y(t.rto_s) - 3.0,
        t.rto_s
    );
    for (at, restore, ok) in &t.verifies {
        let h = restore.unwrap_or(0.0);
        let color = if *ok && h <= t.rto_s {
            "#1e88e5"
        } else {
            "#e53935"
        };
        let _ = write!(
            svg,
            r#"<rect class="verify" x="{:.1}" y="{:.1}" width="4" height="{:.1}" fill="{color}"><title>verify {}: {}</title></rect>"#,
            x(*at) - 2.0,
            y(h.max(max_s * 0.02)),
            base - y(h.max(max_s * 0.02)),
            at.to_rfc3339(),
            restore.map_or("no restore measured".into(), |s| format!("{s:.1}s"))
        );
    }
    for (id, at) in &t.points {
        let _ = write!(
            svg,
            r##"<line class="point" x1="{0:.1}" x2="{0:.1}" y1="{1}" y2="{2}" stroke="#2e7d32" stroke-width="2"><title>{3} {4}</title></line>"##,
            x(*at),
            base + 4.0,
            base + 22.0,
            esc(id),
            at.to_rfc3339()
        );
    }
    for at in &t.failed_backups {
        let _ = write!(
            svg,
            r##"<circle class="failed" cx="{:.1}" cy="{}" r="4" fill="#e53935"><title>failed backup {}</title></circle>"##,
            x(*at),
            base + 30.0,
            at.to_rfc3339()
        );
    }
    let _ = write!(
        svg,
        r##"<text x="40" y="{}" font-size="11">{}</text><text x="{}" y="{}" font-size="11" text-anchor="end">{}</text>"##,
        height - 4.0,
        w.from.format("%Y-%m-%d %H:%M"),
        width - 20.0,
        height - 4.0,
        w.to.format("%Y-%m-%d %H:%M")
    );
    svg.push_str("</svg>");
    svg
}

const CSS: &str = "body{font:13px/1.4 system-ui,sans-serif;margin:24px;color:#222}h1{font-size:20px}h2{font-size:16px;margin-top:28px}\
table{border-collapse:collapse;width:100%;margin:8px 0}td,th{border:1px solid #ccc;padding:4px 6px;vertical-align:top;text-align:left}\
.compliant{color:#2e7d32;font-weight:600}.non_compliant{color:#c62828;font-weight:600}.not_applicable{color:#777}\
.verdict{padding:2px 8px;border-radius:3px;color:#fff}.ok{background:#2e7d32}.bad{background:#c62828}\
ul{margin:0;padding-left:16px}@media print{body{margin:10mm}table{page-break-inside:auto}tr{page-break-inside:avoid}}@page{size:A4}";

pub fn html(r: &Report) -> String {
    let badge = |ok: bool| {
        format!(
            r#"<span class="verdict {}">{}</span>"#,
            if ok { "ok" } else { "bad" },
            verdict(ok)
        )
    };
    let mut out = format!(
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><title>backstop compliance report</title><style>{CSS}</style></head><body><h1>Backup compliance report {}</h1><p>Window {} → {}; generated {}.</p>"#,
        badge(r.compliant),
        r.window.from.to_rfc3339(),
        r.window.to.to_rfc3339(),
        r.generated_at.to_rfc3339()
    );
    for p in &r.policies {
        let _ = write!(
            out,
            r#"<section class="policy"><h2>Policy <code>{}</code> {}</h2><p>Repository {}; RPO {}, RTO {}, retention {}.</p>"#,
            esc(&p.name),
            badge(p.compliant),
            esc(&p.repository),
            p.rpo,
            p.rto,
            p.retention
        );
        out.push_str("<table><tr><th>Control</th><th>Status</th><th>Target</th><th>Observed</th><th>Evidence</th></tr>");
        for c in &p.controls {
            let ev: String = c
                .evidence
                .iter()
                .take(20)
                .map(|e| format!("<li>{}</li>", esc(e)))
                .collect();
            let _ = write!(
                out,
                r#"<tr><td><code class="control-id">{}</code><br>{}</td><td class="{}">{}</td><td>{}</td><td>{}</td><td><ul>{ev}</ul></td></tr>"#,
                c.id,
                esc(c.title),
                c.status,
                c.status.replace('_', " "),
                esc(&c.target),
                esc(&c.observed)
            );
        }
        out.push_str("</table><h3>Timeline</h3>");
        out.push_str(&timeline(p, &r.window));
        out.push_str(r#"<p>Green ticks: recovery points. Red shading: gaps longer than the RPO. Bars: verify runs, height = measured restore time against the dashed RTO line; red when failed or over the RTO. Red dots: failed backups.</p><h3>Runs</h3><table><tr><th>Time</th><th>Kind</th><th>Outcome</th><th>Snapshot</th><th>Detail</th></tr>"#);
        for run in p.runs.iter().take(500) {
            let _ = write!(
                out,
                r#"<tr><td>{}</td><td>{}</td><td class="{}">{}</td><td>{}</td><td>{}</td></tr>"#,
                run.at.to_rfc3339(),
                run.kind,
                if run.ok { "compliant" } else { "non_compliant" },
                if run.ok { "ok" } else { "failed" },
                esc(&run.snapshot),
                esc(&run.summary)
            );
        }
        out.push_str("</table></section>");
    }
    out.push_str("</body></html>\n");
    out
}
