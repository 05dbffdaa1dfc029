//! Cancellation with a reason: the caller cancels a run (a signal, a daemon shutting down), or
//! the run's lock refresher does when the lock is lost. A leaf module: the repository's locks
//! and the operations both use it.

use crate::error::{Error, Kind, Result};
use std::sync::{Arc, Mutex};
use tokio_util::sync::CancellationToken;

/// Why a run was cancelled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// The caller asked.
    Requested,
    /// A signal (its number and name) reached the process.
    Signal(i32, &'static str),
    /// The run's repository lock was lost; the text says how.
    LockLost(String),
}

/// A cancellation token that remembers why it was cancelled. Children are cancelled with
/// their parent (and report the parent's reason); cancelling a child leaves the parent alone.
#[derive(Clone, Default)]
pub struct Cancel {
    token: CancellationToken,
    reasons: Vec<Arc<Mutex<Option<Reason>>>>,
}

impl Cancel {
    pub fn new() -> Cancel {
        Cancel {
            token: CancellationToken::new(),
            reasons: vec![Arc::new(Mutex::new(None))],
        }
    }

    /// A token for one run: cancelled when this one is, and cancellable on its own.
    pub fn child(&self) -> Cancel {
        let mut reasons = vec![Arc::new(Mutex::new(None))];
        reasons.extend(self.reasons.iter().cloned());
        Cancel {
            token: self.token.child_token(),
            reasons,
        }
    }

    /// Cancels, keeping the first reason given.
    pub fn cancel(&self, reason: Reason) {
        if let Some(slot) = self.reasons.first() {
            let mut slot = crate::util::lock(slot);
            if slot.is_none() {
                *slot = Some(reason);
            }
        }
        self.token.cancel();
    }

    pub fn is_cancelled(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Resolves once cancelled.
    pub async fn cancelled(&self) {
        self.token.cancelled().await
    }

    /// The reason: this token's own, else the nearest parent's.
    pub fn reason(&self) -> Option<Reason> {
        if !self.is_cancelled() {
            return None;
        }
        self.reasons
            .iter()
            .find_map(|r| crate::util::lock(r).clone())
            .or(Some(Reason::Requested))
    }

    /// `Ok` while not cancelled; else the error that says why.
    pub fn check(&self) -> Result<()> {
        match self.reason() {
            None => Ok(()),
            Some(r) => Err(cancelled_error(&r)),
        }
    }

    /// The error of a cancelled run (call after [`Cancel::cancelled`] resolved).
    pub fn error(&self) -> Error {
        cancelled_error(&self.reason().unwrap_or(Reason::Requested))
    }

    /// Runs `work` until it ends or the token is cancelled; then `work` is dropped at its
    /// current await point and the cancellation's error is returned.
    pub async fn run<T>(&self, work: impl std::future::Future<Output = Result<T>>) -> Result<T> {
        tokio::select! {
            r = work => r,
            _ = self.cancelled() => Err(self.error()),
        }
    }
}

impl Reason {
    /// The error of a run stopped for this reason.
    pub fn error(&self) -> Error {
        cancelled_error(self)
    }
}

fn cancelled_error(reason: &Reason) -> Error {
    match reason {
        Reason::Requested => Error::new(Kind::Cancelled, "the run was cancelled"),
        Reason::Signal(n, name) => {
            Error::new(Kind::Interrupted(*n), format!("interrupted by {name}"))
        }
        Reason::LockLost(how) => Error::new(
            Kind::LockLost,
            format!(
                "lock lost: the repository lock was lost ({how}); the run stopped and committed nothing"
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_reports_its_parents_reason_and_not_the_other_way() {
        let parent = Cancel::new();
        let child = parent.child();
        child.cancel(Reason::LockLost("gone".into()));
        assert!(child.is_cancelled());
        assert!(!parent.is_cancelled());
        assert_eq!(child.error().kind, Kind::LockLost);
        let other = parent.child();
        parent.cancel(Reason::Signal(15, "SIGTERM"));
        assert_eq!(other.error().kind, Kind::Interrupted(15));
        assert_eq!(other.error().message, "interrupted by SIGTERM");
        assert!(other.check().is_err());
    }
}
