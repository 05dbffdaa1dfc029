//! The report as text (a terminal summary, non-compliant controls first), Markdown (for an
//! audit ticket) and one self-contained HTML page (inline CSS and SVG, no scripts, legible on
//! A4). JSON is the serde form of [`Report`].

use super::{PolicyReport, Status, ToSecs, Window};
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

fn mark(status: Status) -> &'static str {
    match status {
        Status::Compliant => "ok ",
        Status::NotApplicable => "n/a",
        Status::NotTested => "NT",
        Status::NonCompliant => "FAIL",
    }
}

pub fn text(r: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "backstop compliance report, {} → {}: {}",
        r.window.from.to_rfc3339_secs(),
        r.window.to.to_rfc3339_secs(),
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
        r.window.from.to_rfc3339_secs(),
        r.window.to.to_rfc3339_secs(),
        r.generated_at.to_rfc3339_secs(),
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

/// Where things go on the timeline: time across, restore seconds up.
struct Plot {
    from: DateTime<Utc>,
    span_ms: f64,
    width: f64,
    top: f64,
    base: f64,
    max_s: f64,
}

impl Plot {
    fn x(&self, at: DateTime<Utc>) -> f64 {
        let ms = (at - self.from)
            .num_milliseconds()
            .clamp(0, self.span_ms as i64) as f64;
        50.0 + ms / self.span_ms * (self.width - 70.0)
    }

    fn y(&self, s: f64) -> f64 {
        self.base - (s / self.max_s) * (self.base - self.top)
    }

    /// A band from `a` to `b` (at least 2 px wide) between heights `y0` and `y0 + h`, with
    /// its span as its title.
    fn band(
        &self,
        svg: &mut String,
        (class, color, what): (&str, &str, &str),
        (y0, h): (f64, f64),
        (a, b): (DateTime<Utc>, DateTime<Utc>),
    ) {
        let _ = write!(
            svg,
            r##"<rect class="{class}" x="{:.1}" y="{y0}" width="{:.1}" height="{h}" fill="{color}"><title>{what} {} → {}</title></rect>"##,
            self.x(a),
            (self.x(b) - self.x(a)).max(2.0),
            a.to_rfc3339_secs(),
            b.to_rfc3339_secs()
        );
    }
}

/// The window as an SVG: recovery points as ticks, gaps longer than the RPO shaded red,
/// verify runs as bars whose height is restore_s against a dashed line at the RTO, failed
/// runs in red.
fn timeline(p: &PolicyReport, w: &Window) -> String {
    let (width, height, top, base) = (1000.0, 240.0, 20.0, 150.0);
    let t = &p.timeline;
    // The axis starts at the repository's creation when that is inside the window: a young
    // repository fills the width instead of a sliver at its right edge.
    let from = t.start.unwrap_or(w.from).max(w.from);
    let max_s = t
        .verifies
        .iter()
        .filter_map(|v| v.1)
        .fold(t.rto_s, f64::max)
        .max(1.0)
        * 1.1;
    let plot = Plot {
        from,
        span_ms: (w.to - from).num_milliseconds().max(1) as f64,
        width,
        top,
        base,
        max_s,
    };
    let mut svg = format!(
        r#"<svg class="timeline" viewBox="0 0 {width} {height}" width="100%" role="img" aria-label="timeline of {}">"#,
        esc(&p.name)
    );
    let _ = write!(
        svg,
        r##"<rect x="50" y="{top}" width="{}" height="{}" fill="#f7f7f7"/><text class="axis-label" x="12" y="{:.1}" font-size="11" transform="rotate(-90 12 {:.1})" text-anchor="middle">restore time (s)</text>"##,
        width - 70.0,
        base - top,
        (top + base) / 2.0,
        (top + base) / 2.0
    );
    let red = "#e53935\" fill-opacity=\"0.25";
    for gap in &t.gaps {
        plot.band(&mut svg, ("gap", red, "gap"), (top, base - top), *gap);
    }
    stream_lanes(&mut svg, &plot, t);
    let _ = write!(
        svg,
        r##"<line class="rto" x1="50" x2="{}" y1="{:.1}" y2="{:.1}" stroke="#fb8c00" stroke-dasharray="6 4"/><text x="{}" y="{:.1}" font-size="11" text-anchor="end" fill="#fb8c00">RTO {:.0}s</text>"##,
        width - 20.0,
        plot.y(t.rto_s),
        plot.y(t.rto_s),
        width - 22.0,
        plot.y(t.rto_s) - 3.0,
        t.rto_s
    );
    verify_bars(&mut svg, &plot, t);
    for (id, at) in &t.points {
        let _ = write!(
            svg,
            r##"<line class="point" x1="{0:.1}" x2="{0:.1}" y1="{1}" y2="{2}" stroke="#2e7d32" stroke-width="2"><title>{3} {4}</title></line>"##,
            plot.x(*at),
            base + 4.0,
            base + 22.0,
            esc(id),
            at.to_rfc3339_secs()
        );
    }
    for at in &t.failed_backups {
        let _ = write!(
            svg,
            r##"<circle class="failed" cx="{:.1}" cy="{}" r="4" fill="#e53935"><title>failed backup {}</title></circle>"##,
            plot.x(*at),
            base + 28.0,
            at.to_rfc3339_secs()
        );
    }
    svg.push_str(&axis(from, w.to, &|at| plot.x(at), height - 22.0));
    svg.push_str("</svg>");
    svg
}

/// The change stream's lane under the recovery points: the spans it covers, the windows it
/// did not, and the spans whose replay a verify proved.
fn stream_lanes(svg: &mut String, plot: &Plot, t: &super::Timeline) {
    let lane = plot.base + 36.0;
    for span in &t.covered {
        let style = ("stream-covered", "#43a047", "stream covers");
        plot.band(svg, style, (lane, 8.0), *span);
    }
    for span in &t.uncovered {
        let style = ("stream-uncovered", "#fb8c00", "not covered");
        plot.band(svg, style, (lane, 8.0), *span);
    }
    for (a, b, ok) in &t.proofs {
        let color = if *ok { "#1e88e5" } else { "#e53935" };
        let style = ("stream-proof", color, "stream replay proven");
        plot.band(svg, style, (lane + 10.0, 4.0), (*a, *b));
    }
}

/// Each verify as a bar as high as its restore took, red when it failed or took longer than
/// the RTO, labelled with its seconds when there are few enough to read.
fn verify_bars(svg: &mut String, plot: &Plot, t: &super::Timeline) {
    let label_each = t.verifies.len() <= 30;
    for (at, restore, ok) in &t.verifies {
        let h = restore.unwrap_or(0.0);
        let color = if *ok && h <= t.rto_s {
            "#1e88e5"
        } else {
            "#e53935"
        };
        let bar_top = plot.y(h.max(plot.max_s * 0.02));
        let _ = write!(
            svg,
            r#"<rect class="verify" x="{:.1}" y="{bar_top:.1}" width="4" height="{:.1}" fill="{color}"><title>verify {}: {}</title></rect>"#,
            plot.x(*at) - 2.0,
            plot.base - bar_top,
            at.to_rfc3339_secs(),
            restore.map_or("no restore measured".into(), |s| format!("{s:.1}s"))
        );
        // Restore times far below the RTO are a sliver of a bar: the figure says them.
        if label_each {
            let _ = write!(
                svg,
                r#"<text class="verify-label" x="{:.1}" y="{:.1}" font-size="10" text-anchor="middle" fill="{color}">{}</text>"#,
                plot.x(*at),
                bar_top - 3.0,
                restore.map_or("-".into(), |s| format!("{s:.1}s"))
            );
        }
    }
}

/// Tick marks and labels under the timeline: days beyond two days, hours beyond two hours,
/// else minutes and seconds.
fn axis(
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    x: &dyn Fn(DateTime<Utc>) -> f64,
    y: f64,
) -> String {
    let (format, unit) = match (to - from).num_minutes() {
        m if m > 48 * 60 => ("%Y-%m-%d", "days"),
        m if m > 120 => ("%m-%d %H:%M", "hours"),
        _ => ("%H:%M:%S", "minutes"),
    };
    let mut out = String::new();
    let ticks = 6;
    for i in 0..=ticks {
        let at = from + (to - from) * i / ticks;
        let anchor = match i {
            0 => "start",
            i if i == ticks => "end",
            _ => "middle",
        };
        let _ = write!(
            out,
            r##"<line x1="{0:.1}" x2="{0:.1}" y1="{1}" y2="{2}" stroke="#999"/><text class="tick" x="{0:.1}" y="{3}" font-size="10" text-anchor="{anchor}">{4}</text>"##,
            x(at),
            y - 4.0,
            y,
            y + 10.0,
            at.format(format)
        );
    }
    let _ = write!(
        out,
        r#"<text class="axis-label" x="525" y="{}" font-size="11" text-anchor="middle">time (UTC, {unit})</text>"#,
        y + 21.0
    );
    out
}

const CSS: &str = "body{font:13px/1.4 system-ui,sans-serif;margin:24px;color:#222}h1{font-size:20px}h2{font-size:16px;margin-top:28px}\
table{border-collapse:collapse;width:100%;margin:8px 0}td,th{border:1px solid #ccc;padding:4px 6px;vertical-align:top;text-align:left}\
.compliant{color:#2e7d32;font-weight:600}.non_compliant{color:#c62828;font-weight:600}.not_applicable{color:#777}.not_tested{color:#616161;background:#eee;font-weight:600}\
.verdict{padding:2px 8px;border-radius:3px;color:#fff}.ok{background:#2e7d32}.bad{background:#c62828}\
ul{margin:0;padding-left:16px}@media print{body{margin:10mm}table{page-break-inside:auto}tr{page-break-inside:avoid}}@page{size:A4}";

/// The worst control of a policy: a failure before an untested one before a pass.
fn worst(p: &PolicyReport) -> Option<&super::Control> {
    p.controls.iter().min_by_key(|c| c.status)
}

/// One row per policy: its verdict, its worst control and its newest recovery point.
fn summary(r: &Report) -> String {
    let mut out = String::from(
        r#"<table class="summary"><tr><th>Policy</th><th>Verdict</th><th>Worst control</th><th>Newest recovery point</th></tr>"#,
    );
    for p in &r.policies {
        let worst = worst(p).filter(|c| !c.compliant);
        let newest = p
            .timeline
            .newest
            .map_or("none".into(), |t| t.to_rfc3339_secs());
        let _ = write!(
            out,
            r#"<tr><td><code>{}</code></td><td class="{}">{}</td><td>{}</td><td>{newest}</td></tr>"#,
            esc(&p.name),
            if p.compliant {
                "compliant"
            } else {
                "non_compliant"
            },
            verdict(p.compliant),
            worst.map_or("none failing".into(), |c| format!(
                "<code>{}</code> ({})",
                c.id,
                c.status.as_str().replace('_', " ")
            ))
        );
    }
    out.push_str("</table>");
    out
}

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
        r.window.from.to_rfc3339_secs(),
        r.window.to.to_rfc3339_secs(),
        r.generated_at.to_rfc3339_secs()
    );
    out.push_str(&summary(r));
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
                c.status.as_str().replace('_', " "),
                esc(&c.target),
                esc(&c.observed)
            );
        }
        out.push_str("</table><h3>Timeline</h3>");
        out.push_str(&timeline(p, &r.window));
        out.push_str(r#"<p>Green ticks: recovery points. Red shading: gaps longer than the RPO. Bars: verify runs, height = measured restore time against the dashed RTO line, labelled in seconds; red when failed or over the RTO. Red dots: failed backups. Under them, with a change stream: green band, the span the stream covers; orange, a window it does not; blue line, a span whose replay verify proved.</p><h3>Runs</h3><table><tr><th>Time</th><th>Kind</th><th>Outcome</th><th>Snapshot</th><th>Detail</th></tr>"#);
        for run in p.runs.iter().take(500) {
            let _ = write!(
                out,
                r#"<tr><td>{}</td><td>{}</td><td class="{}">{}</td><td>{}</td><td>{}</td></tr>"#,
                run.at.to_rfc3339_secs(),
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
