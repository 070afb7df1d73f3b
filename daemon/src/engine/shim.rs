//! The daemon's side of the shim protocol: launching a container's shim
//! and talking to it over its unix socket (async, for the API server).

use std::path::{Path, PathBuf};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use vessel_runtime::shim::protocol::{self, ExitStatus, Kind, Request, Response, ShimConfig};

use super::error::{Error, Result};

/// Find the `vessel-shim` binary: next to the running daemon, else on PATH.
pub fn find_binary() -> PathBuf {
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
    {
        for candidate in [dir.join("vessel-shim"), dir.join("../vessel-shim")] {
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    PathBuf::from("vessel-shim")
}

/// Write the shim's config and run it; returns the container's init PID
/// once the container is created.
pub async fn launch(binary: &Path, cfg: &ShimConfig) -> Result<i32> {
    tokio::fs::create_dir_all(&cfg.state_dir).await?;
    for stale in [protocol::EXIT_FILE, protocol::SOCKET, protocol::PID_FILE] {
        let _ = tokio::fs::remove_file(cfg.state_dir.join(stale)).await;
    }
    let data = serde_json::to_vec(cfg).map_err(|e| Error::internal(e.to_string()))?;
    tokio::fs::write(cfg.state_dir.join(protocol::CONFIG_FILE), data).await?;
    let out = tokio::process::Command::new(binary)
        .arg(&cfg.state_dir)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|e| Error::internal(format!("run {}: {e}", binary.display())))?;
    if !out.status.success() {
        let msg = String::from_utf8_lossy(&out.stderr);
        let msg = msg.trim().trim_start_matches("vessel-shim: ");
        return Err(runtime_error(msg));
    }
    let launched: vessel_runtime::shim::Launched = serde_json::from_slice(&out.stdout)
        .map_err(|e| Error::internal(format!("shim output: {e}")))?;
    Ok(launched.pid)
}

/// Docker reports runtime failures as "OCI runtime create failed: ..." and
/// clients map a missing executable to exit status 127.
pub fn runtime_error(msg: &str) -> Error {
    let kind =
        if msg.contains("executable file not found") || msg.contains("no such file or directory") {
            super::error::Kind::InvalidArgument
        } else {
            super::error::Kind::Internal
        };
    Error::new(
        kind,
        format!("failed to create task for container: OCI runtime create failed: {msg}: unknown"),
    )
}

/// A connection to a shim after its response line.
pub struct Conn {
    pub reader: BufReader<tokio::net::unix::OwnedReadHalf>,
    pub writer: tokio::net::unix::OwnedWriteHalf,
}

/// Connect, send a request, read the response line.
pub async fn request(state_dir: &Path, req: &Request) -> Result<(Conn, Response)> {
    let stream = connect(state_dir)
        .await
        .map_err(|e| Error::conflict(format!("container is not running (shim: {e})")))?;
    let (r, mut w) = stream.into_split();
    let mut line = serde_json::to_vec(req).map_err(|e| Error::internal(e.to_string()))?;
    line.push(b'\n');
    w.write_all(&line).await?;
    let mut reader = BufReader::new(r);
    let mut resp_line = String::new();
    reader.read_line(&mut resp_line).await?;
    if resp_line.is_empty() {
        return Err(Error::conflict(
            "container is not running (shim closed the connection)",
        ));
    }
    let resp: Response = serde_json::from_str(&resp_line)
        .map_err(|e| Error::internal(format!("shim response: {e}")))?;
    if let Some(e) = &resp.error {
        return Err(runtime_error(e));
    }
    Ok((Conn { reader, writer: w }, resp))
}

/// Send a request whose answer is all that matters.
pub async fn call(state_dir: &Path, req: &Request) -> Result<Response> {
    request(state_dir, req).await.map(|(_, r)| r)
}

/// Read one frame; `None` at the end of the stream.
pub async fn read_frame(
    r: &mut BufReader<tokio::net::unix::OwnedReadHalf>,
) -> Result<Option<(Kind, Vec<u8>)>> {
    let mut head = [0u8; 5];
    match r.read_exact(&mut head).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let kind = Kind::from_u8(head[0])
        .ok_or_else(|| Error::internal(format!("shim sent frame kind {}", head[0])))?;
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    if len > protocol::MAX_FRAME {
        return Err(Error::internal("shim sent an oversized frame"));
    }
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).await?;
    Ok(Some((kind, payload)))
}

/// Write one frame.
pub async fn write_frame(
    w: &mut tokio::net::unix::OwnedWriteHalf,
    kind: Kind,
    payload: &[u8],
) -> Result<()> {
    let mut buf = Vec::with_capacity(payload.len() + 5);
    protocol::encode(&mut buf, kind, payload);
    w.write_all(&buf).await?;
    Ok(())
}

/// The exit status the shim recorded, if the container has exited.
pub fn read_exit(state_dir: &Path) -> Option<ExitStatus> {
    let data = std::fs::read(state_dir.join(protocol::EXIT_FILE)).ok()?;
    serde_json::from_slice(&data).ok()
}

/// Connect to a shim's socket (through a descriptor of its directory, as
/// the full path may exceed the unix socket path limit).
async fn connect(state_dir: &Path) -> std::io::Result<UnixStream> {
    let dir = std::fs::File::open(state_dir)?;
    let stream =
        UnixStream::connect(vessel_runtime::shim::short_path(&dir, protocol::SOCKET)).await;
    drop(dir);
    stream
}

/// Whether a shim is alive behind its socket.
pub async fn alive(state_dir: &Path) -> bool {
    connect(state_dir).await.is_ok()
}
