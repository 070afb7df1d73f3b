//! A container's filesystem from the outside: `export`, `diff` (changes),
//! `cp` (archive get/put/stat), `commit` and `top`.
//!
//! Paths given by clients are resolved inside the container's root, never
//! out of it: `..` stops at the root and symlinks are followed as the
//! container would see them. A running container is paused while its files
//! are read or written, so it cannot swap a directory for a symlink between
//! our resolution and our use of a path (the `docker cp` race).

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use bytes::Bytes;
use serde_json::json;
use tokio::sync::mpsc;

use super::container::Status;
use super::error::{Error, Result};
use super::types::MountPoint;
use super::{Engine, RUNTIME_VM, attrs, blocking};

/// A `Write` that sends chunks into a channel (to stream a body).
pub struct ChanWriter {
    tx: mpsc::Sender<Bytes>,
    buf: Vec<u8>,
}

impl ChanWriter {
    pub fn new(tx: mpsc::Sender<Bytes>) -> ChanWriter {
        ChanWriter {
            tx,
            buf: Vec::with_capacity(64 * 1024),
        }
    }
}

impl Write for ChanWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= 64 * 1024 {
            self.flush()?;
        }
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::take(&mut self.buf));
        self.tx
            .blocking_send(chunk)
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "client went away"))
    }
}

impl Drop for ChanWriter {
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

/// Resolve `path` (as the container names it) to a host path inside
/// `rootfs`. The last component is not followed when it is a symlink.
pub fn resolve_in_root(rootfs: &Path, path: &str) -> Result<PathBuf> {
    let mut stack: Vec<std::ffi::OsString> = Vec::new();
    let mut todo: std::collections::VecDeque<std::ffi::OsString> = Path::new(path)
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect();
    let mut hops = 0;
    while let Some(name) = todo.pop_front() {
        if name == ".." {
            stack.pop();
            continue;
        }
        let host: PathBuf = std::iter::once(rootfs.as_os_str().to_os_string())
            .chain(stack.iter().cloned())
            .chain(std::iter::once(name.clone()))
            .collect();
        let is_last = todo.is_empty();
        match std::fs::symlink_metadata(&host) {
            Ok(m) if m.file_type().is_symlink() && !is_last => {
                hops += 1;
                if hops > 40 {
                    return Err(Error::invalid(format!(
                        "too many levels of symbolic links in {path}"
                    )));
                }
                let target = std::fs::read_link(&host)?;
                if target.is_absolute() {
                    stack.clear();
                }
                for c in target.components().rev() {
                    match c {
                        Component::Normal(n) => todo.push_front(n.to_os_string()),
                        Component::ParentDir => todo.push_front("..".into()),
                        _ => {}
                    }
                }
            }
            _ => stack.push(name),
        }
    }
    Ok(std::iter::once(rootfs.as_os_str().to_os_string())
        .chain(stack)
        .collect())
}

/// The source of the volume or bind mount (the deepest one) whose
/// destination holds `path`, and the rest of `path` below it. `path` is
/// taken lexically, as the container names it.
fn mount_holding(mounts: &[MountPoint], path: &str) -> Option<(PathBuf, String)> {
    let mut parts: Vec<&str> = Vec::new();
    for c in Path::new(path).components() {
        match c {
            Component::Normal(n) => parts.push(n.to_str()?),
            Component::ParentDir => {
                parts.pop();
            }
            _ => {}
        }
    }
    mounts
        .iter()
        .filter(|m| (m.kind == "volume" || m.kind == "bind") && !m.source.is_empty())
        .filter_map(|m| {
            let dest: Vec<&str> = m
                .destination
                .split('/')
                .filter(|p| !p.is_empty() && *p != ".")
                .collect();
            parts
                .starts_with(&dest)
                .then(|| (dest.len(), m, parts[dest.len()..].join("/")))
        })
        .max_by_key(|(depth, _, _)| *depth)
        .map(|(_, m, rest)| (PathBuf::from(&m.source), format!("/{rest}")))
}

/// Docker's path stat (`X-Docker-Container-Path-Stat`), with a Go file mode.
pub fn path_stat(host: &Path, name: &str) -> Result<serde_json::Value> {
    let m = std::fs::symlink_metadata(host)
        .map_err(|_| Error::not_found(format!("Could not find the file {name} in container")))?;
    let mut mode = m.mode() & 0o777;
    let ft = m.file_type();
    if ft.is_dir() {
        mode |= 1 << 31;
    } else if ft.is_symlink() {
        mode |= 1 << 27;
    }
    if m.mode() & 0o4000 != 0 {
        mode |= 1 << 23;
    }
    if m.mode() & 0o2000 != 0 {
        mode |= 1 << 22;
    }
    if m.mode() & 0o1000 != 0 {
        mode |= 1 << 20;
    }
    let link = if ft.is_symlink() {
        std::fs::read_link(host)
            .map(|p| p.display().to_string())
            .unwrap_or_default()
    } else {
        String::new()
    };
    let base = Path::new(name)
        .file_name()
        .map_or_else(|| name.to_string(), |n| n.to_string_lossy().into_owned());
    Ok(json!({
        "name": base,
        "size": m.len(),
        "mode": mode,
        "mtime": vessel_runtime::state::format_rfc3339(m.mtime(), m.mtime_nsec() as u32),
        "linkTarget": link,
    }))
}

/// Pauses a running container for the life of the guard.
struct Paused<'a> {
    engine: &'a Engine,
    id: String,
    active: bool,
}

impl<'a> Paused<'a> {
    async fn new(engine: &'a Engine, id: &str) -> Paused<'a> {
        let running = match engine.get(id) {
            Ok(e) => e.rec.lock().await.state.status == Status::Running,
            Err(_) => false,
        };
        let paused = running && engine.runtime_freeze(id, true).await.is_ok();
        Paused {
            engine,
            id: id.to_string(),
            active: paused,
        }
    }

    async fn done(self) {
        if self.active {
            let _ = self.engine.runtime_freeze(&self.id, false).await;
        }
    }
}

impl Engine {
    async fn runtime_freeze(&self, id: &str, freeze: bool) -> Result<()> {
        let root = self.paths.runtime_root();
        let id = id.to_string();
        blocking(move || {
            let r = vessel_runtime::Root::open(&root)?;
            if freeze {
                vessel_runtime::container::pause(&r, &id)?;
            } else {
                vessel_runtime::container::resume(&r, &id)?;
            }
            Ok(())
        })
        .await
    }

    async fn rootfs_of(&self, reference: &str) -> Result<(String, PathBuf)> {
        let entry = self.get(reference)?;
        let c = entry.rec.lock().await;
        self.mount_rootfs(&c).await?;
        Ok((c.id.clone(), self.paths.container(&c.id).join("rootfs")))
    }

    /// Where the container's `path` is found from the host: a root
    /// directory and the path below it. A running container is seen through
    /// `/proc/PID/root`, in its own mount namespace, so its volumes, binds
    /// and tmpfs mounts appear as they do inside. For a stopped one the
    /// volume or bind mount whose destination holds `path` is used, else
    /// its root filesystem. (A microVM's files live in the guest: only its
    /// root filesystem is reachable.)
    async fn view_of(&self, reference: &str, path: &str) -> Result<(String, PathBuf, String)> {
        let entry = self.get(reference)?;
        let c = entry.rec.lock().await;
        if c.state.status.is_live() && c.state.pid > 0 && c.host_config.runtime != RUNTIME_VM {
            let root = PathBuf::from(format!("/proc/{}/root", c.state.pid));
            if root.is_dir() {
                return Ok((c.id.clone(), root, path.to_string()));
            }
        }
        if let Some((root, rest)) = mount_holding(&c.mounts, path) {
            return Ok((c.id.clone(), root, rest));
        }
        self.mount_rootfs(&c).await?;
        let rootfs = self.paths.container(&c.id).join("rootfs");
        Ok((c.id.clone(), rootfs, path.to_string()))
    }

    /// `GET /containers/{id}/export`: the whole filesystem as a tar stream.
    pub async fn export(&self, reference: &str) -> Result<mpsc::Receiver<Bytes>> {
        let (id, rootfs) = self.rootfs_of(reference).await?;
        let (tx, rx) = mpsc::channel(16);
        tokio::task::spawn_blocking(move || {
            let w = ChanWriter::new(tx);
            if let Err(e) = crate::images::ImageStore::export(&rootfs, w) {
                tracing::warn!(%id, error = %e, "export");
            }
        });
        let entry = self.get(reference)?;
        let c = entry.rec.lock().await;
        self.events.emit("container", "export", &c.id, attrs(&c));
        Ok(rx)
    }

    /// `HEAD /containers/{id}/archive`: the stat of a path.
    pub async fn archive_stat(&self, reference: &str, path: &str) -> Result<serde_json::Value> {
        let (id, root, rel) = self.view_of(reference, path).await?;
        let guard = Paused::new(self, &id).await;
        let r = resolve_in_root(&root, &rel).and_then(|h| path_stat(&h, path));
        guard.done().await;
        r
    }

    /// `GET /containers/{id}/archive`: a tar of a path and its stat.
    pub async fn archive_get(
        &self,
        reference: &str,
        path: &str,
    ) -> Result<(serde_json::Value, mpsc::Receiver<Bytes>)> {
        let (id, root, rel) = self.view_of(reference, path).await?;
        let guard = Paused::new(self, &id).await;
        let host = match resolve_in_root(&root, &rel) {
            Ok(h) => h,
            Err(e) => {
                guard.done().await;
                return Err(e);
            }
        };
        let stat = match path_stat(&host, path) {
            Ok(s) => s,
            Err(e) => {
                guard.done().await;
                return Err(e);
            }
        };
        let name = stat["name"].as_str().unwrap_or("").to_string();
        let (tx, rx) = mpsc::channel(16);
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        tokio::task::spawn_blocking(move || {
            let mut b = tar::Builder::new(ChanWriter::new(tx));
            b.follow_symlinks(false);
            let r = if host.symlink_metadata().is_ok_and(|m| m.is_dir()) {
                b.append_dir_all(&name, &host)
            } else {
                b.append_path_with_name(&host, &name)
            };
            if let Err(e) = r.and_then(|()| b.finish()) {
                tracing::warn!(error = %e, "archive");
            }
            let _ = done_tx.send(());
        });
        // Thaw the container once the tar is complete.
        let engine_guard = guard;
        let _ = done_rx.await;
        engine_guard.done().await;
        Ok((stat, rx))
    }

    /// `PUT /containers/{id}/archive`: extract a tar into a directory.
    pub async fn archive_put(
        &self,
        reference: &str,
        path: &str,
        body: mpsc::Receiver<Bytes>,
    ) -> Result<()> {
        let (id, root, rel) = self.view_of(reference, path).await?;
        let guard = Paused::new(self, &id).await;
        let result = async {
            let host = resolve_in_root(&root, &rel)?;
            let meta = std::fs::metadata(&host).map_err(|_| {
                Error::not_found(format!("Could not find the file {path} in container {id}"))
            })?;
            if !meta.is_dir() {
                return Err(Error::invalid(format!(
                    "extraction point is not a directory: {path}"
                )));
            }
            blocking(move || {
                let reader = ChanReader::new(body);
                let limits = crate::images::Limits::default();
                crate::images::layer::apply(reader, &host, None, &limits).map_err(|e| {
                    Error::invalid(format!(
                        "extracting the archive: {}",
                        super::error::chain(&e)
                    ))
                })?;
                Ok(())
            })
            .await
        }
        .await;
        guard.done().await;
        result
    }

    /// `GET /containers/{id}/changes`: files added (1), changed (0) or
    /// deleted (2) relative to the image.
    pub async fn changes(&self, reference: &str) -> Result<Vec<serde_json::Value>> {
        let entry = self.get(reference)?;
        let (id, image) = {
            let c = entry.rec.lock().await;
            (c.id.clone(), c.image_id.clone())
        };
        let upper = self.paths.container(&id).join("upper");
        let images = self.images.clone();
        blocking(move || {
            let lowers = images.lowerdirs(&image)?;
            let mut out = Vec::new();
            walk_changes(&upper, Path::new("/"), &lowers, &mut out);
            out.sort_by(|a: &serde_json::Value, b| a["Path"].as_str().cmp(&b["Path"].as_str()));
            Ok(out)
        })
        .await
    }

    /// `POST /commit`: a new image from the container's changes.
    pub async fn commit(
        &self,
        reference: &str,
        options: crate::images::CommitOptions,
        pause: bool,
    ) -> Result<String> {
        let entry = self.get(reference)?;
        let (id, image) = {
            let c = entry.rec.lock().await;
            (c.id.clone(), c.image_id.clone())
        };
        let guard = if pause {
            Some(Paused::new(self, &id).await)
        } else {
            None
        };
        let upper = self.paths.container(&id).join("upper");
        let images = self.images.clone();
        let r =
            blocking(move || Ok(images.commit(&upper, Some(&image), &options)?.to_string())).await;
        if let Some(g) = guard {
            g.done().await;
        }
        let new_id = r?;
        let c = entry.rec.lock().await;
        let mut a = attrs(&c);
        a.insert("imageID".into(), new_id.clone());
        self.events.emit("container", "commit", &c.id, a);
        Ok(new_id)
    }

    /// `GET /containers/{id}/top`: `ps` output for the container's processes.
    pub async fn top(
        &self,
        reference: &str,
        ps_args: &str,
    ) -> Result<(Vec<String>, Vec<Vec<String>>)> {
        let entry = self.get(reference)?;
        let id = {
            let c = entry.rec.lock().await;
            if !c.state.status.is_live() {
                return Err(Error::conflict(format!(
                    "Container {} is not running",
                    c.id
                )));
            }
            c.id.clone()
        };
        let root = self.paths.runtime_root();
        let pids = blocking(move || {
            let r = vessel_runtime::Root::open(&root)?;
            Ok(vessel_runtime::container::pids(&r, &id)?)
        })
        .await?;
        let args: Vec<String> = if ps_args.is_empty() {
            vec!["-ef".into()]
        } else {
            ps_args.split_whitespace().map(String::from).collect()
        };
        let out = tokio::process::Command::new("ps")
            .args(&args)
            .output()
            .await
            .map_err(|e| Error::internal(format!("ps: {e}")))?;
        if !out.status.success() {
            return Err(Error::invalid(format!(
                "Error running ps: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let mut lines = text.lines();
        let header: Vec<String> = lines
            .next()
            .unwrap_or("")
            .split_whitespace()
            .map(String::from)
            .collect();
        let pid_col = header
            .iter()
            .position(|h| h == "PID")
            .ok_or_else(|| Error::invalid("Couldn't find PID field in ps output"))?;
        let mut procs = Vec::new();
        for l in lines {
            let fields: Vec<&str> = l.split_whitespace().collect();
            let Some(pid) = fields.get(pid_col).and_then(|p| p.parse::<i32>().ok()) else {
                continue;
            };
            if !pids.contains(&pid) {
                continue;
            }
            // The last column (the command) may contain spaces.
            let mut row: Vec<String> = fields
                .iter()
                .take(header.len() - 1)
                .map(|s| (*s).to_string())
                .collect();
            row.push(
                fields
                    .iter()
                    .skip(header.len() - 1)
                    .copied()
                    .collect::<Vec<_>>()
                    .join(" "),
            );
            procs.push(row);
        }
        Ok((header, procs))
    }
}

fn exists_in_lower(lowers: &[PathBuf], rel: &Path) -> bool {
    lowers.iter().any(|l| {
        l.join(rel.strip_prefix("/").unwrap_or(rel))
            .symlink_metadata()
            .is_ok()
    })
}

fn walk_changes(dir: &Path, rel: &Path, lowers: &[PathBuf], out: &mut Vec<serde_json::Value>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let path = e.path();
        let r = rel.join(e.file_name());
        let Ok(meta) = path.symlink_metadata() else {
            continue;
        };
        if std::os::unix::fs::FileTypeExt::is_char_device(&meta.file_type()) && meta.rdev() == 0 {
            out.push(json!({"Path": r.display().to_string(), "Kind": 2}));
            continue;
        }
        let kind = i32::from(!exists_in_lower(lowers, &r));
        out.push(json!({"Path": r.display().to_string(), "Kind": kind}));
        if meta.is_dir() {
            walk_changes(&path, &r, lowers, out);
        }
    }
}

/// A `Read` over a channel of chunks (a request body).
pub struct ChanReader {
    rx: mpsc::Receiver<Bytes>,
    cur: Bytes,
}

impl ChanReader {
    pub fn new(rx: mpsc::Receiver<Bytes>) -> ChanReader {
        ChanReader {
            rx,
            cur: Bytes::new(),
        }
    }
}

impl std::io::Read for ChanReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.cur.is_empty() {
            match self.rx.blocking_recv() {
                Some(b) => self.cur = b,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len());
        buf[..n].copy_from_slice(&self.cur[..n]);
        self.cur = self.cur.slice(n..);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_below_a_mount_go_to_its_source() {
        let m = |kind: &str, source: &str, destination: &str| MountPoint {
            kind: kind.into(),
            name: String::new(),
            source: source.into(),
            destination: destination.into(),
            driver: String::new(),
            mode: String::new(),
            rw: true,
            propagation: String::new(),
        };
        let mounts = [
            m("volume", "/v/data", "/data"),
            m("bind", "/host/deep", "/data/deep/"),
            m("tmpfs", "", "/scratch"),
        ];
        let got = |p: &str| mount_holding(&mounts, p);
        assert_eq!(got("/data/x"), Some(("/v/data".into(), "/x".into())));
        assert_eq!(got("/data"), Some(("/v/data".into(), "/".into())));
        assert_eq!(
            got("/data/deep/a/b"),
            Some(("/host/deep".into(), "/a/b".into()))
        );
        assert_eq!(
            got("/data/../data/y"),
            Some(("/v/data".into(), "/y".into()))
        );
        assert_eq!(
            got("/database/x"),
            None,
            "a prefix of a name is not a parent"
        );
        assert_eq!(got("/scratch/x"), None, "no host source");
        assert_eq!(got("/etc/passwd"), None);
    }

    #[test]
    fn paths_resolve_inside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::os::unix::fs::symlink("/a", root.join("link")).unwrap();
        std::os::unix::fs::symlink("../../../../etc", root.join("a/escape")).unwrap();
        assert_eq!(resolve_in_root(root, "/link/b").unwrap(), root.join("a/b"));
        assert_eq!(resolve_in_root(root, "/../../a").unwrap(), root.join("a"));
        // A symlink climbing out lands at the root's own /etc.
        assert_eq!(
            resolve_in_root(root, "/a/escape/passwd").unwrap(),
            root.join("etc/passwd")
        );
        // The last component is not followed.
        assert_eq!(resolve_in_root(root, "/link").unwrap(), root.join("link"));
    }
}
