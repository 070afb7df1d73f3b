//! The engine's error type. Each error has a kind that the API layer maps to
//! an HTTP status in one place (`api::status_of`); the message is what the
//! client shows, in Docker's wording where clients match on it.

use std::fmt;

/// The class of an error, independent of transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The thing asked for does not exist (404).
    NotFound,
    /// The request conflicts with the current state (409).
    Conflict,
    /// The request is malformed or names invalid values (400).
    InvalidArgument,
    /// Nothing to do (304).
    NotModified,
    /// Not supported by this daemon (501).
    NotImplemented,
    /// The service cannot answer this (503).
    Unavailable,
    /// Access refused (401/403).
    Unauthorized,
    /// Refused because of what the thing is or holds (403), e.g. removing
    /// a network that still has endpoints.
    Forbidden,
    /// Anything else (500).
    Internal,
}

/// An engine error: a kind and a message with its causes.
#[derive(Debug, Clone)]
pub struct Error {
    pub kind: Kind,
    pub message: String,
}

/// Result alias for the engine.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(kind: Kind, message: impl Into<String>) -> Error {
        Error {
            kind,
            message: message.into(),
        }
    }
    pub fn not_found(m: impl Into<String>) -> Error {
        Error::new(Kind::NotFound, m)
    }
    pub fn conflict(m: impl Into<String>) -> Error {
        Error::new(Kind::Conflict, m)
    }
    pub fn invalid(m: impl Into<String>) -> Error {
        Error::new(Kind::InvalidArgument, m)
    }
    pub fn internal(m: impl Into<String>) -> Error {
        Error::new(Kind::Internal, m)
    }
    pub fn not_modified() -> Error {
        Error::new(Kind::NotModified, "")
    }

    /// An internal error from any error with a source chain.
    pub fn from_err(context: &str, e: &dyn std::error::Error) -> Error {
        Error::internal(format!("{context}: {}", chain(e)))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

/// An error and all its sources on one line.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !text.is_empty() && !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = s.source();
    }
    out
}

impl From<crate::images::Error> for Error {
    fn from(e: crate::images::Error) -> Error {
        use crate::images::Error as E;
        match &e {
            E::NotFound(r) => Error::new(Kind::NotFound, format!("No such image: {r}")),
            E::InUse { .. } | E::MultipleTags { .. } => Error::new(Kind::Conflict, chain(&e)),
            E::Reference(_) | E::Ambiguous { .. } => Error::new(Kind::InvalidArgument, chain(&e)),
            _ => Error::new(Kind::Internal, chain(&e)),
        }
    }
}

impl From<vessel_runtime::Error> for Error {
    fn from(e: vessel_runtime::Error) -> Error {
        use vessel_runtime::Error as E;
        let kind = match &e {
            E::NotExist(_) => Kind::NotFound,
            E::NotRunning | E::NotPaused | E::BadStatus { .. } | E::Exists(_) => Kind::Conflict,
            E::Config(_) | E::InvalidId(_) => Kind::InvalidArgument,
            _ => Kind::Internal,
        };
        Error::new(kind, e.chain())
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Error {
        Error::internal(e.to_string())
    }
}
