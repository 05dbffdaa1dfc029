//! The command line's progress sink: bytes, rate and ETA on a terminal (stderr), nothing
//! otherwise, so cron mail and CI logs stay clean. The library only sees
//! [`crate::ops::ProgressSink`]; other callers (the daemon, tests) pass their own.

use crate::ops::{Bar, ProgressSink};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;

/// Draws bars on stderr when it is a terminal.
pub struct Terminal;

struct TerminalBar(Option<ProgressBar>);

impl ProgressSink for Terminal {
    fn bar(&self, label: &str, total: Option<u64>) -> Box<dyn Bar> {
        if !std::io::stderr().is_terminal() {
            return Box::new(TerminalBar(None));
        }
        let bar = ProgressBar::with_draw_target(total, ProgressDrawTarget::stderr());
        let template = if total.is_some() {
            "{msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}"
        } else {
            "{msg} {bytes} {binary_bytes_per_sec} {elapsed}"
        };
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(label.to_string());
        Box::new(TerminalBar(Some(bar)))
    }
}

impl Bar for TerminalBar {
    fn inc(&self, n: u64) {
        if let Some(b) = &self.0 {
            if b.length().is_some_and(|l| b.position() + n > l) {
                b.set_length(b.position() + n);
            }
            b.inc(n);
        }
    }

    fn finish(&self) {
        if let Some(b) = &self.0 {
            b.finish_and_clear();
        }
    }
}

impl Drop for TerminalBar {
    fn drop(&mut self) {
        self.finish();
    }
}
