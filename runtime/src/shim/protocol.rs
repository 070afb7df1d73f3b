//! The wire protocol between the daemon and a container's shim.
//!
//! Each connection to the shim's unix socket starts with one JSON request
//! line; the shim answers with one JSON response line. After a successful
//! `attach` or `exec` the connection carries binary frames both ways:
//! one byte of kind, a big-endian u32 length, then the payload.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The shim's socket, in its state directory.
pub const SOCKET: &str = "shim.sock";
/// Written when the container has exited, atomically.
pub const EXIT_FILE: &str = "exit.json";
/// The shim's configuration, written by the daemon before launching it.
pub const CONFIG_FILE: &str = "shim.json";
/// The shim's own PID.
pub const PID_FILE: &str = "shim.pid";
/// The shim's diagnostics (it has no terminal).
pub const LOG_FILE: &str = "shim.log";
/// Largest payload of one frame.
pub const MAX_FRAME: usize = 1 << 20;

/// How the shim sets up one container.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ShimConfig {
    /// The container ID (also the runtime's container ID).
    pub id: String,
    /// The OCI bundle.
    pub bundle: PathBuf,
    /// The runtime's state root.
    pub runtime_root: PathBuf,
    /// Where the shim keeps its socket, PID and exit files.
    pub state_dir: PathBuf,
    /// Give the process a terminal.
    pub tty: bool,
    /// Keep the process's stdin open for attach clients.
    pub open_stdin: bool,
    /// Close stdin after the first attach client detaches.
    pub stdin_once: bool,
    /// Where and how to keep the container's output.
    pub log: Option<LogConfig>,
}

/// A json-file log (the format `docker logs` reads).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// The current log file; rotated files get `.1`, `.2`, ...
    pub path: PathBuf,
    /// Rotate when the file would grow beyond this many bytes (0: never).
    pub max_size: u64,
    /// Files to keep, the current one included (at least 1).
    pub max_files: u32,
}

/// A request, the first line of every connection.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
#[allow(clippy::large_enum_variant)] // one request per connection
pub enum Request {
    /// Start the created container.
    Start,
    /// Stream the container's output (and take its input), as frames.
    Attach {
        /// Send stdin frames to the process.
        stdin: bool,
        /// Receive its stdout.
        stdout: bool,
        /// Receive its stderr.
        stderr: bool,
    },
    /// Run another process in the container; the connection then carries
    /// its streams as frames and ends with an exit frame.
    Exec {
        /// The process.
        process: oci_spec::runtime::Process,
        /// Attach its stdin.
        stdin: bool,
    },
    /// Answer once the container has exited.
    Wait,
    /// The container's PID and whether it still runs.
    State,
    /// Send a signal to the container's process (in a VM, `SIGKILL`
    /// kills the VM).
    Signal {
        /// The signal number.
        signal: i32,
    },
    /// Set the terminal size of the container's process.
    Resize {
        /// Rows.
        rows: u16,
        /// Columns.
        cols: u16,
    },
}

/// How a process ended.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExitStatus {
    /// Exit code, or 128 + signal.
    pub code: i32,
    /// The kernel's OOM killer acted in the container's cgroup.
    pub oom_killed: bool,
    /// Unix time of the exit in nanoseconds.
    pub finished_at_ns: i128,
    /// Why the container ended without an exit status of its own (a
    /// microVM whose guest died).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A response line.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Response {
    /// The error, if the request failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// A process ID (container init or exec'd process).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    /// Whether the container still runs (for `state`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running: Option<bool>,
    /// The exit status (for `wait`, once exited).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit: Option<ExitStatus>,
}

/// Frame kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// Client to shim: bytes for the process's stdin.
    Stdin = 0,
    /// Shim to client: the process's stdout (all output with a terminal).
    Stdout = 1,
    /// Shim to client: the process's stderr.
    Stderr = 2,
    /// Client to shim: terminal size, rows then columns, u16 big-endian.
    Resize = 3,
    /// Client to shim: no more stdin.
    CloseStdin = 4,
    /// Shim to client: the process exited; payload is an `ExitStatus` JSON.
    Exit = 5,
}

impl Kind {
    /// Decode a kind byte.
    pub fn from_u8(b: u8) -> Option<Kind> {
        Some(match b {
            0 => Kind::Stdin,
            1 => Kind::Stdout,
            2 => Kind::Stderr,
            3 => Kind::Resize,
            4 => Kind::CloseStdin,
            5 => Kind::Exit,
            _ => return None,
        })
    }
}

/// Append one frame to `out`.
pub fn encode(out: &mut Vec<u8>, kind: Kind, payload: &[u8]) {
    out.push(kind as u8);
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
}

/// Take one complete frame from the front of `buf`, if there is one.
/// Errors on an unknown kind or an oversized frame.
pub fn decode(buf: &mut Vec<u8>) -> Result<Option<(Kind, Vec<u8>)>, String> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let kind = Kind::from_u8(buf[0]).ok_or_else(|| format!("unknown frame kind {}", buf[0]))?;
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    if len > MAX_FRAME {
        return Err(format!("frame of {len} bytes is too large"));
    }
    if buf.len() < 5 + len {
        return Ok(None);
    }
    let payload = buf[5..5 + len].to_vec();
    buf.drain(..5 + len);
    Ok(Some((kind, payload)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_split() {
        let mut wire = Vec::new();
        encode(&mut wire, Kind::Stdout, b"hello");
        encode(&mut wire, Kind::Resize, &[0, 24, 0, 80]);
        let mut buf = wire[..3].to_vec();
        assert_eq!(decode(&mut buf).unwrap(), None);
        buf.extend_from_slice(&wire[3..]);
        assert_eq!(
            decode(&mut buf).unwrap(),
            Some((Kind::Stdout, b"hello".to_vec()))
        );
        assert_eq!(
            decode(&mut buf).unwrap(),
            Some((Kind::Resize, vec![0, 24, 0, 80]))
        );
        assert!(buf.is_empty());
        let mut bad = vec![9, 0, 0, 0, 0];
        assert!(decode(&mut bad).is_err());
    }

    #[test]
    fn requests_are_tagged_json() {
        let r: Request =
            serde_json::from_str(r#"{"op":"attach","stdin":true,"stdout":true,"stderr":false}"#)
                .unwrap();
        assert!(matches!(
            r,
            Request::Attach {
                stdin: true,
                stdout: true,
                stderr: false
            }
        ));
        let line = serde_json::to_string(&Request::Wait).unwrap();
        assert_eq!(line, r#"{"op":"wait"}"#);
    }
}
