//! The runtime library's error type.
//!
//! Messages follow runc's wording where containerd, conmon or podman match on
//! it: "container not running", "does not exist", "container with id exists".

use std::path::PathBuf;

/// What went wrong in a runtime operation.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No container with this ID is known under the runtime's root.
    #[error("container {0:?} does not exist")]
    NotExist(String),
    /// A container with this ID is already present.
    #[error("container with id exists: {0}")]
    Exists(String),
    /// The ID cannot be used as a directory name or contains odd characters.
    #[error(
        "invalid container id {0:?}: use letters, digits, '_', '-', '.' and '+' (not starting with '.')"
    )]
    InvalidId(String),
    /// The operation needs a running (or created) container.
    #[error("container not running")]
    NotRunning,
    /// The operation needs a paused container.
    #[error("container not paused")]
    NotPaused,
    /// The operation is not valid in the container's current status.
    #[error("cannot {op} container {id} in status {status}")]
    BadStatus {
        /// The container.
        id: String,
        /// Its status.
        status: String,
        /// The operation refused.
        op: &'static str,
    },
    /// The bundle's configuration is unusable.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A file could not be read or written.
    #[error("{context}: {}", .path.display())]
    Io {
        /// What was being done.
        context: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A system call failed.
    #[error("{0}")]
    Sys(String, #[source] nix::Error),
    /// A cgroup operation failed.
    #[error("cgroup {0}")]
    Cgroup(String),
    /// Seccomp filter construction or loading failed.
    #[error("seccomp")]
    Seccomp(#[from] crate::seccomp::Error),
    /// A lifecycle hook failed.
    #[error("{kind} hook {path}: {reason}")]
    Hook {
        /// prestart, createRuntime, ...
        kind: &'static str,
        /// The hook binary.
        path: String,
        /// Exit status, timeout or spawn failure.
        reason: String,
    },
    /// The container's init or exec process reported a failure while
    /// setting itself up (the message is what it reported).
    #[error("{0}")]
    Container(String),
    /// A JSON document could not be parsed or written.
    #[error("{context}")]
    Json {
        /// What was being parsed.
        context: String,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// A requested feature is not available on this host.
    #[error("{0}")]
    Unsupported(String),
}

/// Result alias for the runtime library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An I/O error with the file it concerns.
    pub fn io(context: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            context,
            path: path.into(),
            source,
        }
    }

    /// A failed system call, with a description of what was attempted.
    pub fn sys(what: impl Into<String>, errno: nix::Error) -> Self {
        Error::Sys(what.into(), errno)
    }

    /// The whole chain of causes as one line, for logs and CLI output.
    pub fn chain(&self) -> String {
        let mut out = self.to_string();
        let mut cur: Option<&dyn std::error::Error> = std::error::Error::source(self);
        while let Some(e) = cur {
            let s = e.to_string();
            if !s.is_empty() && !out.ends_with(&s) {
                out.push_str(": ");
                out.push_str(&s);
            }
            cur = e.source();
        }
        out
    }
}

/// Attach a description to a nix result.
pub(crate) trait SysContext<T> {
    fn sys(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T> SysContext<T> for nix::Result<T> {
    fn sys(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error::sys(what(), e))
    }
}
