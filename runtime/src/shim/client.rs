//! A blocking client of a shim's socket, for command-line tools and tests
//! (`vessel-shim ctl`). The daemon has its own asynchronous client; both
//! speak [`super::protocol`].

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

use super::protocol::{self, Kind, Request, Response};

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The socket could not be reached or the connection failed.
    #[error("shim {path}")]
    Io {
        /// The shim's state directory.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The shim answered with something that is not a response.
    #[error("shim {0}: bad response")]
    BadResponse(String, #[source] serde_json::Error),
    /// The shim refused the request.
    #[error("shim {0}: {1}")]
    Refused(String, String),
    /// The shim sent a frame this client does not know.
    #[error("shim sent frame kind {0}")]
    BadFrame(u8),
}

/// Result alias of this module.
pub type Result<T> = std::result::Result<T, Error>;

/// A connection after its response line: frames follow (attach, exec).
pub struct Conn {
    /// Reads frames.
    pub reader: BufReader<UnixStream>,
    /// Writes frames.
    pub writer: UnixStream,
}

/// Connect to the shim of `state_dir`, send `req`, read the response.
pub fn request(state_dir: &Path, req: &Request) -> Result<(Conn, Response)> {
    let name = state_dir.display().to_string();
    let io = |source| Error::Io {
        path: name.clone(),
        source,
    };
    let dir = std::fs::File::open(state_dir).map_err(io)?;
    let stream = UnixStream::connect(super::short_path(&dir, protocol::SOCKET)).map_err(io)?;
    drop(dir);
    let mut writer = stream.try_clone().map_err(io)?;
    let mut line = serde_json::to_vec(req).expect("requests always serialize");
    line.push(b'\n');
    writer.write_all(&line).map_err(io)?;
    let mut reader = BufReader::new(stream);
    let mut resp = String::new();
    reader.read_line(&mut resp).map_err(io)?;
    let resp: Response =
        serde_json::from_str(&resp).map_err(|e| Error::BadResponse(name.clone(), e))?;
    if let Some(e) = &resp.error {
        return Err(Error::Refused(name, e.clone()));
    }
    Ok((Conn { reader, writer }, resp))
}

/// Read one frame; `None` at the end of the stream.
pub fn read_frame(r: &mut impl Read) -> Result<Option<(Kind, Vec<u8>)>> {
    let io = |source| Error::Io {
        path: "connection".into(),
        source,
    };
    let mut head = [0u8; 5];
    match r.read_exact(&mut head) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(io(e)),
    }
    let kind = Kind::from_u8(head[0]).ok_or(Error::BadFrame(head[0]))?;
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    if len > protocol::MAX_FRAME {
        return Err(Error::BadFrame(head[0]));
    }
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).map_err(io)?;
    Ok(Some((kind, payload)))
}

/// Write one frame.
pub fn write_frame(w: &mut impl Write, kind: Kind, payload: &[u8]) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(payload.len() + 5);
    protocol::encode(&mut buf, kind, payload);
    w.write_all(&buf)
}

/// Stream a connection's output frames to `stdout`/`stderr` until the exit
/// frame; returns the exit status (`None` if the stream ended without one).
pub fn pump_output(
    conn: &mut Conn,
    stdout: &mut dyn Write,
    stderr: &mut dyn Write,
) -> Result<Option<protocol::ExitStatus>> {
    let io = |source| Error::Io {
        path: "output".into(),
        source,
    };
    while let Some((kind, payload)) = read_frame(&mut conn.reader)? {
        match kind {
            Kind::Stdout => stdout.write_all(&payload).map_err(io)?,
            Kind::Stderr => stderr.write_all(&payload).map_err(io)?,
            Kind::Exit => {
                stdout.flush().map_err(io)?;
                stderr.flush().map_err(io)?;
                let status = serde_json::from_slice(&payload)
                    .map_err(|e| Error::BadResponse("exit frame".into(), e))?;
                return Ok(Some(status));
            }
            _ => {}
        }
    }
    Ok(None)
}
