//! Streams between API clients and container processes: Docker's stream
//! multiplexing (an 8-byte header per chunk naming stdout or stderr, none
//! with a terminal), hijacked connections for attach and exec, and the
//! plain streamed-body fallback for clients that do not upgrade.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Mutex, mpsc};
use vessel_runtime::shim::protocol::{ExitStatus, Kind};

use super::Body;
use crate::engine::shim;

/// Docker's multiplexed-stream frame: stream id, three zero bytes, a
/// big-endian length, then the payload.
pub fn docker_frame(stream: u8, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + data.len());
    out.push(stream);
    out.extend_from_slice(&[0, 0, 0]);
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(data);
    out
}

/// The media type of an attach/exec stream.
pub fn content_type(tty: bool) -> &'static str {
    if tty {
        "application/vnd.docker.raw-stream"
    } else {
        "application/vnd.docker.multiplexed-stream"
    }
}

/// An error written on a stream instead of an HTTP status, as Docker does
/// once the stream has begun: the text and CRLF, on stdout when multiplexed.
pub fn error_on_stream(tty: bool, message: &str) -> Vec<u8> {
    let text = format!("{message}\r\n").into_bytes();
    if tty { text } else { docker_frame(1, &text) }
}

/// The 101 response that starts a hijacked stream.
pub fn upgrade_response(tty: bool) -> Response<Body> {
    let mut r = Response::new(super::empty());
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(content_type(tty)),
    );
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("tcp"));
    r
}

/// How a hijacked stream treats the client's input.
pub struct Hijack {
    /// Raw terminal stream (no multiplexing).
    pub tty: bool,
    /// Relay the client's input to the process.
    pub stdin: bool,
    /// At the end of the client's input, close the process's stdin (Docker
    /// does for `StdinOnce` containers and for execs without a terminal);
    /// otherwise the client's end of input only ends this attach.
    pub close_stdin: bool,
    /// The key sequence that detaches the client and leaves the process
    /// running (`detachKeys`; Docker's default is ctrl-p ctrl-q).
    pub detach_keys: Vec<u8>,
    /// After a detach, keep following the process so `on_exit` still
    /// learns its exit status (execs).
    pub follow_after_detach: bool,
    /// Terminal resizes for the process.
    pub resize: Option<mpsc::Receiver<(u16, u16)>>,
}

/// Docker's `detachKeys` syntax: comma-separated keys, each a single
/// character or `ctrl-X` (X one of `a`-`z`, `@`, `[`, `\`, `]`, `^`, `_`).
pub fn parse_detach_keys(spec: &str) -> Result<Vec<u8>, crate::engine::error::Error> {
    let bad =
        || crate::engine::error::Error::invalid(format!("Invalid detach keys ({spec}) provided"));
    let mut out = Vec::new();
    for key in spec.split(',') {
        let key = key.trim();
        if let Some(c) = key.strip_prefix("ctrl-") {
            let c = c.to_ascii_lowercase();
            let b = match c.as_bytes() {
                [b @ b'a'..=b'z'] => b - b'a' + 1,
                [b'@'] => 0,
                [b @ (b'[' | b'\\' | b']' | b'^' | b'_')] => b - b'@',
                _ => return Err(bad()),
            };
            out.push(b);
        } else if key.len() == 1 {
            out.push(key.as_bytes()[0]);
        } else {
            return Err(bad());
        }
    }
    if out.is_empty() {
        return Err(bad());
    }
    Ok(out)
}

/// Docker's default detach sequence: ctrl-p, ctrl-q.
pub const DEFAULT_DETACH_KEYS: [u8; 2] = [0x10, 0x11];

/// Finds the detach sequence in a byte stream split across reads. Bytes
/// that may start the sequence are held back until it is clear whether it
/// follows.
struct DetachScanner {
    keys: Vec<u8>,
    matched: usize,
}

impl DetachScanner {
    /// Feed input; returns the bytes to forward and whether the sequence
    /// was completed (the bytes after it are dropped, as Docker does).
    fn feed(&mut self, data: &[u8]) -> (Vec<u8>, bool) {
        let mut out = Vec::with_capacity(data.len());
        for &b in data {
            if self.keys.is_empty() {
                out.push(b);
                continue;
            }
            if b == self.keys[self.matched] {
                self.matched += 1;
                if self.matched == self.keys.len() {
                    self.matched = 0;
                    return (out, true);
                }
                continue;
            }
            if self.matched > 0 {
                out.extend_from_slice(&self.keys[..self.matched]);
                self.matched = 0;
                if b == self.keys[0] {
                    self.matched = 1;
                    continue;
                }
            }
            out.push(b);
        }
        (out, false)
    }
}

/// Relay between a hijacked client connection and a shim stream until the
/// process exits, the client detaches or goes away. Calls `on_exit` with
/// the exit status when the shim reports one.
pub fn spawn_hijacked(
    upgrade: hyper::upgrade::OnUpgrade,
    conn: impl std::future::Future<Output = Result<shim::Conn, crate::engine::error::Error>>
    + Send
    + 'static,
    opts: Hijack,
    on_exit: impl FnOnce(Option<ExitStatus>) + Send + 'static,
) {
    let Hijack {
        tty,
        stdin,
        close_stdin,
        detach_keys,
        follow_after_detach,
        resize,
    } = opts;
    tokio::spawn(async move {
        let upgraded = match upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(error = %e, "upgrade");
                on_exit(None);
                return;
            }
        };
        let io = TokioIo::new(upgraded);
        let (mut client_r, mut client_w) = tokio::io::split(io);
        let shim::Conn { mut reader, writer } = match conn.await {
            Ok(c) => c,
            Err(e) => {
                // The process never started (or the attach failed after the
                // switch): the client reads why on the stream, as with Docker.
                tracing::debug!(error = %e.message, "attach");
                let _ = client_w.write_all(&error_on_stream(tty, &e.message)).await;
                let _ = client_w.shutdown().await;
                on_exit(None);
                return;
            }
        };
        let writer = Arc::new(Mutex::new(writer));
        // Set when this client stops listening while the process goes on
        // (detach keys, or the end of its input without closing stdin).
        let (detached_tx, mut detached_rx) = tokio::sync::watch::channel(false);
        // Client -> process: stdin, then "no more stdin" at end of file.
        let input = if stdin {
            let w = writer.clone();
            let mut scanner = DetachScanner {
                keys: detach_keys,
                matched: 0,
            };
            Some(tokio::spawn(async move {
                let mut buf = vec![0u8; 32 * 1024];
                loop {
                    match client_r.read(&mut buf).await {
                        Ok(0) | Err(_) => {
                            if close_stdin {
                                let _ =
                                    shim::write_frame(&mut *w.lock().await, Kind::CloseStdin, b"")
                                        .await;
                            } else {
                                let _ = detached_tx.send(true);
                            }
                            break;
                        }
                        Ok(n) => {
                            let (data, detach) = scanner.feed(&buf[..n]);
                            if !data.is_empty()
                                && shim::write_frame(&mut *w.lock().await, Kind::Stdin, &data)
                                    .await
                                    .is_err()
                            {
                                break;
                            }
                            if detach {
                                let _ = detached_tx.send(true);
                                break;
                            }
                        }
                    }
                }
            }))
        } else {
            None
        };
        let resizer = resize.map(|mut rx| {
            let w = writer.clone();
            tokio::spawn(async move {
                while let Some((rows, cols)) = rx.recv().await {
                    let mut p = rows.to_be_bytes().to_vec();
                    p.extend_from_slice(&cols.to_be_bytes());
                    if shim::write_frame(&mut *w.lock().await, Kind::Resize, &p)
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            })
        });
        // Process -> client.
        let mut exit = None;
        let mut detached = false;
        loop {
            let frame = tokio::select! {
                f = shim::read_frame(&mut reader) => f,
                // (An error only means the input side is gone without
                // detaching: then this branch is disabled.)
                Ok(_) = detached_rx.wait_for(|d| *d) => {
                    detached = true;
                    break;
                }
            };
            match frame {
                Ok(Some((Kind::Stdout, data))) => {
                    let out = if tty { data } else { docker_frame(1, &data) };
                    if client_w.write_all(&out).await.is_err() {
                        break;
                    }
                }
                Ok(Some((Kind::Stderr, data))) => {
                    let out = if tty { data } else { docker_frame(2, &data) };
                    if client_w.write_all(&out).await.is_err() {
                        break;
                    }
                }
                Ok(Some((Kind::Exit, payload))) => {
                    exit = serde_json::from_slice(&payload).ok();
                    break;
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
        if detached {
            let _ = client_w.flush().await;
            let _ = client_w.shutdown().await;
            if let Some(t) = resizer {
                t.abort();
            }
            if follow_after_detach {
                // Nobody reads the output any more; wait for the exit.
                while let Ok(Some((kind, payload))) = shim::read_frame(&mut reader).await {
                    if kind == Kind::Exit {
                        exit = serde_json::from_slice(&payload).ok();
                        break;
                    }
                }
                on_exit(exit);
            } else {
                on_exit(None);
            }
            return;
        }
        // Record the exit before the client sees the end of the stream: the
        // docker CLI asks for the exit code as soon as it does.
        on_exit(exit);
        let _ = client_w.flush().await;
        let _ = client_w.shutdown().await;
        if let Some(t) = input {
            t.abort();
        }
        if let Some(t) = resizer {
            t.abort();
        }
    });
}

/// Without an upgrade: stream the output as the response body.
pub fn body_stream(
    conn: impl std::future::Future<Output = Result<shim::Conn, crate::engine::error::Error>>
    + Send
    + 'static,
    tty: bool,
    on_exit: impl FnOnce(Option<ExitStatus>) + Send + 'static,
) -> Response<Body> {
    let (tx, rx) = mpsc::channel::<Bytes>(16);
    tokio::spawn(async move {
        let Ok(shim::Conn { mut reader, writer }) = conn.await else {
            on_exit(None);
            return;
        };
        let _keep = writer;
        let mut exit = None;
        loop {
            match shim::read_frame(&mut reader).await {
                Ok(Some((kind @ (Kind::Stdout | Kind::Stderr), data))) => {
                    let id = if kind == Kind::Stdout { 1 } else { 2 };
                    let out = if tty { data } else { docker_frame(id, &data) };
                    if tx.send(Bytes::from(out)).await.is_err() {
                        break;
                    }
                }
                Ok(Some((Kind::Exit, payload))) => {
                    exit = serde_json::from_slice(&payload).ok();
                    break;
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
        on_exit(exit);
    });
    super::streaming(StatusCode::OK, content_type(tty), rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detach_keys_parse_like_docker() {
        assert_eq!(
            parse_detach_keys("ctrl-p,ctrl-q").unwrap(),
            DEFAULT_DETACH_KEYS
        );
        assert_eq!(
            parse_detach_keys("ctrl-@,a,ctrl-[").unwrap(),
            [0, b'a', 0x1b]
        );
        assert!(parse_detach_keys("ctrl-1").is_err());
        assert!(parse_detach_keys("ab").is_err());
    }

    #[test]
    fn detach_sequence_is_found_across_reads() {
        let mut s = DetachScanner {
            keys: DEFAULT_DETACH_KEYS.to_vec(),
            matched: 0,
        };
        assert_eq!(s.feed(b"ab\x10"), (b"ab".to_vec(), false));
        // A broken sequence releases the held byte.
        assert_eq!(s.feed(b"x\x10"), (b"\x10x".to_vec(), false));
        assert_eq!(s.feed(b"\x10\x11rest"), (b"\x10".to_vec(), true));
        let mut none = DetachScanner {
            keys: Vec::new(),
            matched: 0,
        };
        assert_eq!(none.feed(b"\x10\x11"), (b"\x10\x11".to_vec(), false));
    }

    #[test]
    fn frames_follow_dockers_header() {
        assert_eq!(docker_frame(2, b"hi"), [2, 0, 0, 0, 0, 0, 0, 2, b'h', b'i']);
    }
}
