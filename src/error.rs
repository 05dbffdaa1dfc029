//! The one error type of the library boundary.
//!
//! Rules (after rustic_core's error module):
//! * Every error a user can see says what failed, on what (file, key, table, URL with its
//!   password masked) and, where there is one, what to do next.
//! * The [`Kind`] is decided where the failure is understood, and it alone decides the exit
//!   code (DESIGN.md, "Exit codes"): bad input is 2, a failed operation 1, a failed
//!   verification 3, a held lock 4, an interrupt 128 + the signal. Nothing branches on message
//!   text: a caller that must tell a case apart matches on the kind.
//! * The foreign error that caused it is kept as [`std::error::Error::source`], so
//!   `RUST_LOG=backstop=debug` can show the whole chain; the message already carries its text.

use std::fmt::Display;

type Source = Box<dyn std::error::Error + Send + Sync + 'static>;

/// How a script sees a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The operation was attempted and failed (I/O, database, store, corruption found mid-run).
    Failed,
    /// Bad usage, policy or input: fix the command or the file and run again.
    Input,
    /// A verification ran and found a problem.
    Verification,
    /// Another run holds a lock this run needs.
    Locked,
    /// Stored data is missing or fails its checks (size, SHA-256, age MAC, plaintext id): the
    /// repository itself is damaged, as opposed to a read that could not be made.
    Damaged,
    /// The identity given matches none of the recipients an object was sealed to. Exit 1: the
    /// repository is fine, the key is not the one it needs.
    WrongKey,
    /// The identity file given is none of the repository's or the policy's recipients: the
    /// operator's mistake at the command line (exit 2), not a verdict on any backup, so a
    /// verify from the command line sends no alert for it (a scheduled one still does).
    WrongIdentity,
    /// The store (or a server) could not be read or reached: refused or dropped connections,
    /// timeouts, name resolution, server errors after the retries, an unreadable disk. Says
    /// nothing about the stored bytes, so verify and check never count it as damage: they
    /// stop with "could not verify" (exit 1).
    Unavailable,
    /// The run's repository lock was lost (gone, expired, taken over, or not refreshable): the
    /// run stopped and committed nothing.
    LockLost,
    /// The run was cancelled by its caller.
    Cancelled,
    /// The run was stopped by a signal (its number).
    Interrupted(i32),
}

impl Kind {
    pub fn exit_code(self) -> i32 {
        match self {
            Kind::Failed
            | Kind::Damaged
            | Kind::WrongKey
            | Kind::Unavailable
            | Kind::LockLost
            | Kind::Cancelled => 1,
            Kind::Input | Kind::WrongIdentity => 2,
            Kind::Verification => 3,
            Kind::Locked => 4,
            Kind::Interrupted(signal) => 128 + signal,
        }
    }
}

impl Kind {
    /// Whether an error of this kind, met while proving a backup, is a finding about the
    /// backup itself: stored data found damaged or missing, or a step that ran and failed on
    /// it (a dump pg_restore refuses). Any other kind (the store unreachable, a cancellation,
    /// a wrong key, bad input) means the proof could not be made.
    pub fn is_finding(self) -> bool {
        matches!(self, Kind::Damaged | Kind::Failed | Kind::Verification)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    pub kind: Kind,
    pub message: String,
    #[source]
    pub source: Option<Source>,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(kind: Kind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
            source: None,
        }
    }
    pub fn failed(message: impl Into<String>) -> Self {
        Self::new(Kind::Failed, message)
    }
    pub fn input(message: impl Into<String>) -> Self {
        Self::new(Kind::Input, message)
    }
    /// Keeps `source` as the cause of this error.
    pub fn with_source(mut self, source: impl Into<Source>) -> Self {
        self.source = Some(source.into());
        self
    }
    /// Prefixes the message with what was being done, keeping the kind and the cause.
    pub fn context(self, what: impl Display) -> Self {
        Error {
            kind: self.kind,
            message: format!("{what}: {}", self.message),
            source: self.source,
        }
    }
    /// The message followed by every cause in the chain, for debug logs.
    pub fn chain(&self) -> String {
        let mut out = self.message.clone();
        let mut next = std::error::Error::source(self);
        while let Some(e) = next {
            out.push_str(&format!("\n  caused by: {e}"));
            next = e.source();
        }
        out
    }
}

/// Attach what was being done to a foreign error, choosing the kind at the call site; the
/// foreign error is kept as the source.
pub trait Context<T> {
    fn or_fail(self, what: impl FnOnce() -> String) -> Result<T>;
    fn or_input(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T, E: Display + Into<Source>> Context<T> for std::result::Result<T, E> {
    fn or_fail(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error::failed(format!("{}: {e}", what())).with_source(e))
    }
    fn or_input(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error::input(format!("{}: {e}", what())).with_source(e))
    }
}

/// Extends a `Result<T, Error>` with context while keeping its kind.
pub trait ResultExt<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T> ResultExt<T> for Result<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| e.context(what()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_design() {
        assert_eq!(Kind::Failed.exit_code(), 1);
        assert_eq!(Kind::WrongKey.exit_code(), 1);
        assert_eq!(Kind::Unavailable.exit_code(), 1);
        assert_eq!(Kind::LockLost.exit_code(), 1);
        assert_eq!(Kind::Input.exit_code(), 2);
        assert_eq!(Kind::Verification.exit_code(), 3);
        assert_eq!(Kind::Locked.exit_code(), 4);
        assert_eq!(Kind::Interrupted(15).exit_code(), 143);
        assert_eq!(Kind::Interrupted(2).exit_code(), 130);
    }

    #[test]
    fn the_chain_keeps_the_cause() {
        let io = std::io::Error::other("disk on fire");
        let e: Result<()> = Err(io).or_fail(|| "writing x".into());
        let e = e.unwrap_err().context("backup");
        assert_eq!(e.message, "backup: writing x: disk on fire");
        assert!(
            e.chain().contains("caused by: disk on fire"),
            "{}",
            e.chain()
        );
    }
}
