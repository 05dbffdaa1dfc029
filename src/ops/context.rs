//! What every operation runs with: a progress sink and a cancellation handle.
//!
//! Progress is passed in, never drawn by the library: the command line passes a sink that draws
//! bars on a terminal ([`crate::progress::Terminal`]), the daemon and tests pass their own or
//! [`NoProgress`]. Cancellation is a token with a reason: the caller cancels it (a signal, a
//! daemon shutting down), or the run's lock refresher does when the lock is lost. An operation
//! stops at its next safe point, commits nothing after it, and reports the reason.

pub use crate::cancel::{Cancel, Reason};
use std::sync::Arc;
use std::time::Duration;

/// One progress bar: bytes done so far.
pub trait Bar: Send + Sync {
    fn inc(&self, bytes: u64);
    fn finish(&self) {}
}

/// Makes bars for long work (`label` names it: "backup", "restore", "check").
pub trait ProgressSink: Send + Sync {
    fn bar(&self, label: &str, total: Option<u64>) -> Box<dyn Bar>;
}

/// No progress shown.
pub struct NoProgress;

struct NoBar;

impl Bar for NoBar {
    fn inc(&self, _: u64) {}
}

impl ProgressSink for NoProgress {
    fn bar(&self, _: &str, _: Option<u64>) -> Box<dyn Bar> {
        Box::new(NoBar)
    }
}

/// The execution context of one or many operations.
#[derive(Clone)]
pub struct Ctx {
    pub progress: Arc<dyn ProgressSink>,
    pub cancel: Cancel,
    /// How long a run lock lives without a refresh (refreshed every third of it).
    pub lock_ttl: Duration,
    /// How long a run waits for a conflicting lock of another process before it fails with
    /// exit 4 (`--wait`; zero by default).
    pub lock_wait: Duration,
    /// Wait without limit for locks this very process holds: the daemon's jobs queue behind
    /// each other instead of failing.
    pub queue_own_locks: bool,
}

impl Default for Ctx {
    fn default() -> Ctx {
        Ctx {
            progress: Arc::new(NoProgress),
            cancel: Cancel::new(),
            lock_ttl: crate::repo::lock::TTL,
            lock_wait: Duration::ZERO,
            queue_own_locks: false,
        }
    }
}

impl Ctx {
    /// The same context with a child cancellation token, for one run.
    pub fn for_run(&self) -> Ctx {
        Ctx {
            progress: self.progress.clone(),
            cancel: self.cancel.child(),
            lock_ttl: self.lock_ttl,
            lock_wait: self.lock_wait,
            queue_own_locks: self.queue_own_locks,
        }
    }
}
