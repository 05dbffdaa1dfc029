//! The one error type of the library boundary.
//!
//! Every error a user can see says what failed, on what (file, key, table, URL with its password
//! masked) and, where there is one, what to do next. The [`Kind`] decides the exit code, so the
//! place that knows *why* something failed also decides how a script sees it: bad input is 2, a
//! failed operation 1, a failed verification 3, a held lock 4 (DESIGN.md, "Exit codes").

use std::fmt::Display;

/// How a script sees a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The operation was attempted and failed (I/O, database, store, corruption found mid-run).
    Failed,
    /// Bad usage, policy or input: fix the command or the file and run again.
    Input,
    /// A verification ran and found a problem.
    Verification,
    /// Another run holds the policy's lock.
    Locked,
}

impl Kind {
    pub fn exit_code(self) -> i32 {
        match self {
            Kind::Failed => 1,
            Kind::Input => 2,
            Kind::Verification => 3,
            Kind::Locked => 4,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    pub kind: Kind,
    pub message: String,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(kind: Kind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
        }
    }
    pub fn failed(message: impl Into<String>) -> Self {
        Self::new(Kind::Failed, message)
    }
    pub fn input(message: impl Into<String>) -> Self {
        Self::new(Kind::Input, message)
    }
    /// Prefixes the message with what was being done, keeping the kind.
    pub fn context(self, what: impl Display) -> Self {
        Error {
            kind: self.kind,
            message: format!("{what}: {}", self.message),
        }
    }
}

/// Attach what was being done to a foreign error, choosing the kind at the call site.
pub trait Context<T> {
    fn or_fail(self, what: impl FnOnce() -> String) -> Result<T>;
    fn or_input(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T, E: Display> Context<T> for std::result::Result<T, E> {
    fn or_fail(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error::failed(format!("{}: {e}", what())))
    }
    fn or_input(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error::input(format!("{}: {e}", what())))
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
