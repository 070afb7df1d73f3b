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

fn content_type(tty: bool) -> &'static str {
    if tty {
        "application/vnd.docker.raw-stream"
    } else {
        "application/vnd.docker.multiplexed-stream"
    }
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

/// Relay between a hijacked client connection and a shim stream until the
/// process exits (or the client goes away). Calls `on_exit` with the exit
/// status when the shim reports one.
pub fn spawn_hijacked(
    upgrade: hyper::upgrade::OnUpgrade,
    conn: impl std::future::Future<Output = Result<shim::Conn, crate::engine::error::Error>>
    + Send
    + 'static,
    tty: bool,
    stdin: bool,
    resize: Option<mpsc::Receiver<(u16, u16)>>,
    on_exit: impl FnOnce(Option<ExitStatus>) + Send + 'static,
) {
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
                tracing::debug!(error = %e.message, "attach");
                let _ = client_w.shutdown().await;
                on_exit(None);
                return;
            }
        };
        let writer = Arc::new(Mutex::new(writer));
        // Client -> process: stdin, then "no more stdin" at end of file.
        let input = if stdin {
            let w = writer.clone();
            Some(tokio::spawn(async move {
                let mut buf = vec![0u8; 32 * 1024];
                loop {
                    match client_r.read(&mut buf).await {
                        Ok(0) | Err(_) => {
                            let _ = shim::write_frame(&mut *w.lock().await, Kind::CloseStdin, b"")
                                .await;
                            break;
                        }
                        Ok(n) => {
                            if shim::write_frame(&mut *w.lock().await, Kind::Stdin, &buf[..n])
                                .await
                                .is_err()
                            {
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
        loop {
            match shim::read_frame(&mut reader).await {
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
    fn frames_follow_dockers_header() {
        assert_eq!(docker_frame(2, b"hi"), [2, 0, 0, 0, 0, 0, 0, 2, b'h', b'i']);
    }
}
