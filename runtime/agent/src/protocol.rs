//! The host<->agent protocol: framed messages over one byte stream (the
//! microVM's virtio-console port on the guest side, a unix socket on the
//! host side).
//!
//! Owns the wire format and the message types, nothing else. A frame is a
//! 12-byte header followed by its payload:
//!
//! ```text
//! 0      4     5       6        8           12
//! | len  | kind | flags | unused | process id | payload (len bytes) ...
//! ```
//!
//! `len` and the process id are little-endian. Data frames (stdin, stdout,
//! stderr) carry raw bytes, at most [`MAX_DATA`] per frame; control frames
//! carry JSON. The host picks process ids; 0 is never a process.
//!
//! A session: the agent sends [`Message::Ready`]; the host sends
//! [`Message::Start`] (root filesystem, hostname, the container's main
//! process) and later any number of [`Message::Exec`]; the agent answers
//! each with `Started` or `Error`, streams `Stdout`/`Stderr`, and sends
//! `Exited` after the last output of that process. When the main process
//! has exited the host sends [`Message::Shutdown`] (or closes the stream)
//! and the agent kills what is left and powers the VM off.

use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};

/// Protocol version the agent announces in `Ready`.
pub const VERSION: u32 = 1;
/// Largest payload of a data frame.
pub const MAX_DATA: usize = 32 * 1024;
/// Largest payload of any frame.
pub const MAX_FRAME: usize = 1 << 20;
/// Name of the virtio-console port the agent looks for.
pub const PORT_NAME: &str = "vessel.agent";
const HEADER: usize = 12;

/// Frame kinds.
mod kind {
    pub const START: u8 = 1;
    pub const EXEC: u8 = 2;
    pub const STDIN: u8 = 3;
    pub const STDIN_CLOSE: u8 = 4;
    pub const SIGNAL: u8 = 5;
    pub const RESIZE: u8 = 6;
    pub const SHUTDOWN: u8 = 7;
    pub const READY: u8 = 16;
    pub const STARTED: u8 = 17;
    pub const STDOUT: u8 = 18;
    pub const STDERR: u8 = 19;
    pub const EXITED: u8 = 20;
    pub const ERROR: u8 = 21;
}

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("channel i/o")]
    Io(#[from] io::Error),
    #[error("frame of {0} bytes exceeds the {MAX_FRAME}-byte limit")]
    TooLarge(usize),
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    #[error("malformed {kind} frame")]
    Payload {
        kind: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("{kind} frame needs a process id")]
    NoProcess { kind: &'static str },
}

/// Result alias of this module.
pub type Result<T> = std::result::Result<T, Error>;

/// How the container's root filesystem is made.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RootSpec {
    /// Serials of the read-only layer disks, lowest layer first.
    pub layers: Vec<String>,
    /// Where writes go.
    #[serde(default)]
    pub scratch: Scratch,
    /// Mount the overlay read-only.
    #[serde(default)]
    pub readonly: bool,
}

/// The writable upper layer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Scratch {
    /// A tmpfs in guest RAM, optionally limited.
    #[default]
    Tmpfs,
    /// A tmpfs limited to this many MiB.
    TmpfsLimited(u64),
    /// An ext4 disk with this serial.
    Disk(String),
}

/// A resource limit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rlimit {
    /// OCI name, e.g. `RLIMIT_NOFILE`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Soft limit.
    pub soft: u64,
    /// Hard limit.
    pub hard: u64,
}

/// A process to run inside the container root.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessSpec {
    /// Program and arguments; the program is looked up in the `PATH` of
    /// `env` when it has no slash.
    pub args: Vec<String>,
    /// `KEY=value` pairs.
    #[serde(default)]
    pub env: Vec<String>,
    /// Working directory inside the root (created if missing).
    #[serde(default = "root_dir")]
    pub cwd: String,
    /// User ID.
    #[serde(default)]
    pub uid: u32,
    /// Group ID.
    #[serde(default)]
    pub gid: u32,
    /// Supplementary groups.
    #[serde(default)]
    pub additional_gids: Vec<u32>,
    /// Run on a pseudo-terminal (stdout and stderr merge into stdout).
    #[serde(default)]
    pub terminal: bool,
    /// Resource limits.
    #[serde(default)]
    pub rlimits: Vec<Rlimit>,
}

fn root_dir() -> String {
    "/".to_string()
}

/// The first request: set up the root and run the main process.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartRequest {
    /// The root filesystem.
    pub root: RootSpec,
    /// The guest's host name.
    #[serde(default)]
    pub hostname: String,
    /// The container's main process.
    pub process: ProcessSpec,
}

/// What the agent says about itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadyInfo {
    /// Protocol version.
    pub version: u32,
    /// The guest kernel release.
    pub kernel: String,
}

/// How a process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitInfo {
    /// Exit code, or 128 + signal number when killed by a signal.
    pub code: i32,
    /// The signal that killed it, if any.
    pub signal: Option<i32>,
}

/// One protocol message; `id` is the process it concerns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// Host: set up the root and start the main process `id`.
    Start { id: u32, request: StartRequest },
    /// Host: start another process `id` in the running container.
    Exec { id: u32, process: ProcessSpec },
    /// Host: bytes for the process's standard input.
    Stdin { id: u32, data: Vec<u8> },
    /// Host: close the process's standard input.
    StdinClose { id: u32 },
    /// Host: send a signal to the process.
    Signal { id: u32, signal: i32 },
    /// Host: resize the process's terminal.
    Resize { id: u32, rows: u16, cols: u16 },
    /// Host: stop everything and power off.
    Shutdown,
    /// Agent: ready for `Start`.
    Ready(ReadyInfo),
    /// Agent: process `id` runs with this guest PID.
    Started { id: u32, pid: i32 },
    /// Agent: standard output (or terminal output) of the process.
    Stdout { id: u32, data: Vec<u8> },
    /// Agent: standard error of the process.
    Stderr { id: u32, data: Vec<u8> },
    /// Agent: the process ended; no output for it follows.
    Exited { id: u32, exit: ExitInfo },
    /// Agent: a request failed (`id` 0 for failures outside a process).
    Error { id: u32, message: String },
}

#[derive(Serialize, Deserialize)]
struct SignalBody {
    signal: i32,
}

#[derive(Serialize, Deserialize)]
struct ResizeBody {
    rows: u16,
    cols: u16,
}

#[derive(Serialize, Deserialize)]
struct StartedBody {
    pid: i32,
}

#[derive(Serialize, Deserialize)]
struct ErrorBody {
    message: String,
}

fn json<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("protocol types always serialize")
}

fn parse<'a, T: Deserialize<'a>>(kind: &'static str, payload: &'a [u8]) -> Result<T> {
    serde_json::from_slice(payload).map_err(|source| Error::Payload { kind, source })
}

impl Message {
    fn parts(&self) -> (u8, u32, Vec<u8>) {
        match self {
            Message::Start { id, request } => (kind::START, *id, json(request)),
            Message::Exec { id, process } => (kind::EXEC, *id, json(process)),
            Message::Stdin { id, data } => (kind::STDIN, *id, data.clone()),
            Message::StdinClose { id } => (kind::STDIN_CLOSE, *id, Vec::new()),
            Message::Signal { id, signal } => {
                (kind::SIGNAL, *id, json(&SignalBody { signal: *signal }))
            }
            Message::Resize { id, rows, cols } => (
                kind::RESIZE,
                *id,
                json(&ResizeBody {
                    rows: *rows,
                    cols: *cols,
                }),
            ),
            Message::Shutdown => (kind::SHUTDOWN, 0, Vec::new()),
            Message::Ready(info) => (kind::READY, 0, json(info)),
            Message::Started { id, pid } => (kind::STARTED, *id, json(&StartedBody { pid: *pid })),
            Message::Stdout { id, data } => (kind::STDOUT, *id, data.clone()),
            Message::Stderr { id, data } => (kind::STDERR, *id, data.clone()),
            Message::Exited { id, exit } => (kind::EXITED, *id, json(exit)),
            Message::Error { id, message } => (
                kind::ERROR,
                *id,
                json(&ErrorBody {
                    message: message.clone(),
                }),
            ),
        }
    }

    /// Encode into a frame.
    pub fn encode(&self) -> Vec<u8> {
        let (k, id, payload) = self.parts();
        let mut f = Vec::with_capacity(HEADER + payload.len());
        f.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        f.push(k);
        f.extend_from_slice(&[0, 0, 0]);
        f.extend_from_slice(&id.to_le_bytes());
        f.extend_from_slice(&payload);
        f
    }

    /// Decode a frame's kind, process id and payload.
    pub fn decode(k: u8, id: u32, payload: &[u8]) -> Result<Message> {
        let need_id = |kind: &'static str| {
            if id == 0 {
                Err(Error::NoProcess { kind })
            } else {
                Ok(id)
            }
        };
        Ok(match k {
            kind::START => Message::Start {
                id: need_id("start")?,
                request: parse("start", payload)?,
            },
            kind::EXEC => Message::Exec {
                id: need_id("exec")?,
                process: parse("exec", payload)?,
            },
            kind::STDIN => Message::Stdin {
                id: need_id("stdin")?,
                data: payload.to_vec(),
            },
            kind::STDIN_CLOSE => Message::StdinClose {
                id: need_id("stdin close")?,
            },
            kind::SIGNAL => Message::Signal {
                id: need_id("signal")?,
                signal: parse::<SignalBody>("signal", payload)?.signal,
            },
            kind::RESIZE => {
                let r: ResizeBody = parse("resize", payload)?;
                Message::Resize {
                    id: need_id("resize")?,
                    rows: r.rows,
                    cols: r.cols,
                }
            }
            kind::SHUTDOWN => Message::Shutdown,
            kind::READY => Message::Ready(parse("ready", payload)?),
            kind::STARTED => Message::Started {
                id: need_id("started")?,
                pid: parse::<StartedBody>("started", payload)?.pid,
            },
            kind::STDOUT => Message::Stdout {
                id: need_id("stdout")?,
                data: payload.to_vec(),
            },
            kind::STDERR => Message::Stderr {
                id: need_id("stderr")?,
                data: payload.to_vec(),
            },
            kind::EXITED => Message::Exited {
                id: need_id("exited")?,
                exit: parse("exited", payload)?,
            },
            kind::ERROR => Message::Error {
                id,
                message: parse::<ErrorBody>("error", payload)?.message,
            },
            other => return Err(Error::UnknownKind(other)),
        })
    }

    /// Write this message as one frame.
    pub fn write_to(&self, w: &mut impl Write) -> Result<()> {
        w.write_all(&self.encode())?;
        Ok(())
    }

    /// Read one message; `Ok(None)` on a clean end of stream between frames.
    pub fn read_from(r: &mut impl Read) -> Result<Option<Message>> {
        let mut h = [0u8; HEADER];
        let mut got = 0;
        while got < HEADER {
            match r.read(&mut h[got..]) {
                Ok(0) if got == 0 => return Ok(None),
                Ok(0) => return Err(Error::Io(io::ErrorKind::UnexpectedEof.into())),
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        let len = u32::from_le_bytes(h[0..4].try_into().expect("4 bytes")) as usize;
        if len > MAX_FRAME {
            return Err(Error::TooLarge(len));
        }
        let id = u32::from_le_bytes(h[8..12].try_into().expect("4 bytes"));
        let mut payload = vec![0u8; len];
        r.read_exact(&mut payload)?;
        Message::decode(h[4], id, &payload).map(Some)
    }
}

/// Incremental decoder for non-blocking readers: feed bytes, take messages.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: Vec<u8>,
}

impl Decoder {
    /// A decoder with nothing buffered.
    pub fn new() -> Decoder {
        Decoder::default()
    }

    /// Append received bytes.
    pub fn feed(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next complete message, if one is buffered.
    pub fn next_message(&mut self) -> Result<Option<Message>> {
        if self.buf.len() < HEADER {
            return Ok(None);
        }
        let len = u32::from_le_bytes(self.buf[0..4].try_into().expect("4 bytes")) as usize;
        if len > MAX_FRAME {
            return Err(Error::TooLarge(len));
        }
        if self.buf.len() < HEADER + len {
            return Ok(None);
        }
        let id = u32::from_le_bytes(self.buf[8..12].try_into().expect("4 bytes"));
        let msg = Message::decode(self.buf[4], id, &self.buf[HEADER..HEADER + len]);
        self.buf.drain(..HEADER + len);
        msg.map(Some)
    }
}

/// `code` for a wait status: the exit code, or 128 + signal.
pub fn exit_info(status: i32) -> ExitInfo {
    if libc::WIFSIGNALED(status) {
        let sig = libc::WTERMSIG(status);
        ExitInfo {
            code: 128 + sig,
            signal: Some(sig),
        }
    } else {
        ExitInfo {
            code: libc::WEXITSTATUS(status),
            signal: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> Vec<Message> {
        vec![
            Message::Start {
                id: 1,
                request: StartRequest {
                    root: RootSpec {
                        layers: vec!["layer-0".into(), "layer-1".into()],
                        scratch: Scratch::Disk("scratch".into()),
                        readonly: false,
                    },
                    hostname: "c1".into(),
                    process: ProcessSpec {
                        args: vec!["sh".into(), "-c".into(), "echo hi".into()],
                        env: vec!["PATH=/bin".into()],
                        cwd: "/".into(),
                        terminal: true,
                        rlimits: vec![Rlimit {
                            kind: "RLIMIT_NOFILE".into(),
                            soft: 1024,
                            hard: 1024,
                        }],
                        ..Default::default()
                    },
                },
            },
            Message::Exec {
                id: 2,
                process: ProcessSpec {
                    args: vec!["ls".into()],
                    ..Default::default()
                },
            },
            Message::Stdin {
                id: 1,
                data: b"input\n".to_vec(),
            },
            Message::StdinClose { id: 1 },
            Message::Signal { id: 1, signal: 15 },
            Message::Resize {
                id: 1,
                rows: 24,
                cols: 80,
            },
            Message::Shutdown,
            Message::Ready(ReadyInfo {
                version: VERSION,
                kernel: "6.1".into(),
            }),
            Message::Started { id: 1, pid: 42 },
            Message::Stdout {
                id: 1,
                data: vec![0, 1, 2, 255],
            },
            Message::Stderr {
                id: 2,
                data: Vec::new(),
            },
            Message::Exited {
                id: 1,
                exit: ExitInfo {
                    code: 7,
                    signal: None,
                },
            },
            Message::Error {
                id: 0,
                message: "no such layer".into(),
            },
        ]
    }

    #[test]
    fn every_message_round_trips_through_a_stream() {
        let mut wire = Vec::new();
        for m in all() {
            m.write_to(&mut wire).unwrap();
        }
        let mut r = wire.as_slice();
        for m in all() {
            assert_eq!(Message::read_from(&mut r).unwrap(), Some(m));
        }
        assert_eq!(Message::read_from(&mut r).unwrap(), None);
    }

    #[test]
    fn decoder_handles_split_frames() {
        let wire: Vec<u8> = all().iter().flat_map(Message::encode).collect();
        let mut d = Decoder::new();
        let mut got = Vec::new();
        for b in wire.chunks(5) {
            d.feed(b);
            while let Some(m) = d.next_message().unwrap() {
                got.push(m);
            }
        }
        assert_eq!(got, all());
    }

    #[test]
    fn bad_frames_are_errors() {
        let mut f = Message::Shutdown.encode();
        f[4] = 99;
        assert!(matches!(
            Message::read_from(&mut f.as_slice()),
            Err(Error::UnknownKind(99))
        ));
        let mut f = Message::StdinClose { id: 1 }.encode();
        f[8] = 0;
        assert!(matches!(
            Message::read_from(&mut f.as_slice()),
            Err(Error::NoProcess { .. })
        ));
        let mut f = Message::Signal { id: 1, signal: 9 }.encode();
        let n = f.len();
        f[n - 2] = b'x';
        assert!(matches!(
            Message::read_from(&mut f.as_slice()),
            Err(Error::Payload { .. })
        ));
        let mut f = Message::Shutdown.encode();
        f[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            Message::read_from(&mut f.as_slice()),
            Err(Error::TooLarge(_))
        ));
        let f = Message::Stdout {
            id: 1,
            data: vec![1; 10],
        }
        .encode();
        assert!(matches!(
            Message::read_from(&mut &f[..15]),
            Err(Error::Io(_))
        ));
        // Unknown fields in requests are refused.
        let bad = br#"{"args":["x"],"bogus":1}"#;
        assert!(Message::decode(2, 1, bad).is_err());
    }

    #[test]
    fn exit_codes() {
        assert_eq!(
            exit_info(7 << 8),
            ExitInfo {
                code: 7,
                signal: None
            }
        );
        assert_eq!(
            exit_info(9),
            ExitInfo {
                code: 137,
                signal: Some(9)
            }
        );
    }
}
