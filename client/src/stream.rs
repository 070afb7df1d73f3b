//! Container stdio streams: the API's multiplexed framing (an 8-byte header
//! of stream id and big-endian length before each chunk), raw TTY streams,
//! pumping a hijacked attach/exec connection to and from the local
//! terminal, and detach-key detection.
//!
//! Terminal modes and resizing are the caller's business ([`crate::term`]).

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Stream errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid detach keys {0:?}: {1}")]
    DetachKeys(String, String),
    #[error("stream: unknown stream id {0} in multiplexed framing")]
    BadFrame(u8),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The default detach sequence: ctrl-p, ctrl-q.
pub const DEFAULT_DETACH_KEYS: &str = "ctrl-p,ctrl-q";

/// Parse a detach sequence (`ctrl-p,ctrl-q`, `a,ctrl-@`) into bytes.
pub fn parse_detach_keys(s: &str) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    for key in s.split(',') {
        let k = key.trim();
        if let Some(c) = k.strip_prefix("ctrl-") {
            let mut chars = c.chars();
            let (Some(ch), None) = (chars.next(), chars.next()) else {
                return Err(Error::DetachKeys(s.to_string(), format!("bad key {k:?}")));
            };
            let code = match ch {
                'a'..='z' => ch as u8 - b'a' + 1,
                '@' => 0,
                '[' => 27,
                '\\' => 28,
                ']' => 29,
                '^' => 30,
                '_' => 31,
                _ => return Err(Error::DetachKeys(s.to_string(), format!("bad key {k:?}"))),
            };
            out.push(code);
        } else {
            let mut chars = k.chars();
            match (chars.next(), chars.next()) {
                (Some(ch), None) if ch.is_ascii() => out.push(ch as u8),
                _ => return Err(Error::DetachKeys(s.to_string(), format!("bad key {k:?}"))),
            }
        }
    }
    if out.is_empty() {
        return Err(Error::DetachKeys(s.to_string(), "empty".to_string()));
    }
    Ok(out)
}

/// Copy a multiplexed stream to `stdout`/`stderr` until EOF.
pub async fn demux<R, O, E>(mut r: R, out: &mut O, err: &mut E) -> Result<()>
where
    R: AsyncRead + Unpin,
    O: AsyncWrite + Unpin,
    E: AsyncWrite + Unpin,
{
    let mut header = [0u8; 8];
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match read_full(&mut r, &mut header).await? {
            0 => return Ok(()),
            8 => {}
            _ => return Err(Error::Io(std::io::ErrorKind::UnexpectedEof.into())),
        }
        let mut left = u32::from_be_bytes([header[4], header[5], header[6], header[7]]) as usize;
        let id = header[0];
        while left > 0 {
            let n = left.min(buf.len());
            r.read_exact(&mut buf[..n]).await?;
            match id {
                0 | 1 => {
                    out.write_all(&buf[..n]).await?;
                }
                2 => {
                    err.write_all(&buf[..n]).await?;
                }
                3 => {
                    // The daemon reports a system error on stream 3.
                    err.write_all(&buf[..n]).await?;
                }
                other => return Err(Error::BadFrame(other)),
            }
            left -= n;
        }
        out.flush().await?;
        err.flush().await?;
    }
}

async fn read_full<R: AsyncRead + Unpin>(r: &mut R, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        let n = r.read(&mut buf[got..]).await?;
        if n == 0 {
            break;
        }
        got += n;
    }
    Ok(got)
}

/// Demultiplex a whole buffer (for logs read at once); returns
/// (stdout, stderr).
pub fn demux_bytes(data: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let (mut o, mut e) = (Vec::new(), Vec::new());
    let mut i = 0;
    while i + 8 <= data.len() {
        let len = u32::from_be_bytes([data[i + 4], data[i + 5], data[i + 6], data[i + 7]]) as usize;
        let end = (i + 8 + len).min(data.len());
        if data[i] == 2 {
            e.extend_from_slice(&data[i + 8..end]);
        } else {
            o.extend_from_slice(&data[i + 8..end]);
        }
        i = end;
    }
    (o, e)
}

/// Frame one chunk the way the daemon does (for tests and tools).
pub fn frame(stream: u8, data: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(data.len() + 8);
    v.extend_from_slice(&[stream, 0, 0, 0]);
    v.extend_from_slice(&(data.len() as u32).to_be_bytes());
    v.extend_from_slice(data);
    v
}

/// Watches input for the detach sequence.
pub struct DetachMatcher {
    keys: Vec<u8>,
    matched: usize,
}

impl DetachMatcher {
    /// A matcher for `keys`.
    pub fn new(keys: Vec<u8>) -> DetachMatcher {
        DetachMatcher { keys, matched: 0 }
    }

    /// Feed input; returns the bytes to forward and whether the sequence
    /// completed (in which case the rest is dropped). Bytes that may start
    /// the sequence are held back until it is clear they do not.
    pub fn feed(&mut self, input: &[u8]) -> (Vec<u8>, bool) {
        let mut out = Vec::with_capacity(input.len());
        for &b in input {
            if b == self.keys[self.matched] {
                self.matched += 1;
                if self.matched == self.keys.len() {
                    return (out, true);
                }
            } else {
                out.extend_from_slice(&self.keys[..self.matched]);
                self.matched = 0;
                if b == self.keys[0] {
                    self.matched = 1;
                    if self.keys.len() == 1 {
                        return (out, true);
                    }
                } else {
                    out.push(b);
                }
            }
        }
        (out, false)
    }
}

/// Standard output or error as an `AsyncWrite` that writes straight
/// through (blocking, as a terminal write is), so output from the two
/// streams appears in the order the container wrote it and is complete
/// when the command exits.
pub struct StdWriter {
    err: bool,
}

impl StdWriter {
    /// Standard output.
    pub fn stdout() -> StdWriter {
        StdWriter { err: false }
    }

    /// Standard error.
    pub fn stderr() -> StdWriter {
        StdWriter { err: true }
    }
}

impl AsyncWrite for StdWriter {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        use std::io::Write;
        let r = if self.err {
            std::io::stderr().write_all(buf)
        } else {
            std::io::stdout().write_all(buf)
        };
        std::task::Poll::Ready(r.map(|()| buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::io::Write;
        let r = if self.err {
            std::io::stderr().flush()
        } else {
            std::io::stdout().flush()
        };
        std::task::Poll::Ready(r)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.poll_flush(cx)
    }
}

/// How an attach session ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachEnd {
    /// The container's output ended.
    Closed,
    /// The user typed the detach sequence.
    Detached,
}

/// Pump a hijacked connection: output to stdout/stderr (demultiplexed
/// unless `tty`), and, when `stdin` is set, standard input to the
/// connection (half-closing it at EOF). With `detach` (TTY only, as in the
/// docker CLI), the sequence ends the session.
pub async fn pump<S>(conn: S, tty: bool, stdin: bool, detach: Option<Vec<u8>>) -> Result<AttachEnd>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (rd, mut wr) = tokio::io::split(conn);
    let (detach_tx, mut detach_rx) = tokio::sync::oneshot::channel::<()>();
    let input = if stdin {
        Some(tokio::spawn(async move {
            let mut input = tokio::io::stdin();
            let mut buf = vec![0u8; 4096];
            let mut matcher = detach.map(DetachMatcher::new);
            loop {
                let n = match input.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                let (data, done) = match &mut matcher {
                    Some(m) => m.feed(&buf[..n]),
                    None => (buf[..n].to_vec(), false),
                };
                if !data.is_empty() && wr.write_all(&data).await.is_err() {
                    break;
                }
                let _ = wr.flush().await;
                if done {
                    let _ = detach_tx.send(());
                    return;
                }
            }
            let _ = wr.shutdown().await;
        }))
    } else {
        drop(wr);
        None
    };
    let output = async move {
        let mut out = StdWriter::stdout();
        let mut err = StdWriter::stderr();
        if tty {
            copy_flushing(rd, &mut out).await
        } else {
            demux(rd, &mut out, &mut err).await
        }
    };
    let result = tokio::select! {
        r = output => r.map(|()| AttachEnd::Closed),
        Ok(()) = &mut detach_rx => Ok(AttachEnd::Detached),
    };
    if let Some(h) = input {
        h.abort();
    }
    result
}

async fn copy_flushing<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    mut r: R,
    w: &mut W,
) -> Result<()> {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            w.flush().await?;
            return Ok(());
        }
        w.write_all(&buf[..n]).await?;
        w.flush().await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detach_keys_parse() {
        assert_eq!(parse_detach_keys("ctrl-p,ctrl-q").unwrap(), vec![16, 17]);
        assert_eq!(parse_detach_keys("a,ctrl-@").unwrap(), vec![b'a', 0]);
        assert!(parse_detach_keys("ctrl-1").is_err());
        assert!(parse_detach_keys("ab").is_err());
    }

    #[test]
    fn detach_matcher_holds_back_prefixes() {
        let mut m = DetachMatcher::new(vec![16, 17]);
        assert_eq!(m.feed(b"ab\x10"), (b"ab".to_vec(), false));
        assert_eq!(m.feed(b"x"), (b"\x10x".to_vec(), false));
        assert_eq!(m.feed(b"\x10\x10\x11rest"), (b"\x10".to_vec(), true));
    }

    #[tokio::test]
    async fn demux_splits_streams() {
        let mut data = frame(1, b"out1 ");
        data.extend(frame(2, b"err"));
        data.extend(frame(1, b"out2"));
        let (mut o, mut e) = (Vec::new(), Vec::new());
        demux(&data[..], &mut o, &mut e).await.unwrap();
        assert_eq!(o, b"out1 out2");
        assert_eq!(e, b"err");
        assert_eq!(demux_bytes(&data), (b"out1 out2".to_vec(), b"err".to_vec()));
        let (mut o, mut e) = (Vec::new(), Vec::new());
        assert!(demux(&data[..5], &mut o, &mut e).await.is_err());
    }
}
