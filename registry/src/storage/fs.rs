//! The filesystem storage driver.
//!
//! Layout below the root directory:
//!
//! ```text
//! blobs/<alg>/<hex[0..2]>/<hex>          blob content, immutable once renamed in
//! uploads/<id>                           upload in progress (appended in order)
//! tmp/                                   write-temp files, renamed into place
//! repositories/<name>/_blobs/<alg>/<hex>       link: repository may serve the blob
//! repositories/<name>/_manifests/<alg>/<hex>   link: repository holds the manifest
//! repositories/<name>/_tags/<tag>              file holding the tagged digest
//! repositories/<name>/_referrers/<alg>/<subject-hex>/<alg>:<hex>   referrer link
//! ```
//!
//! Every object appears under its final name by `rename(2)` from `tmp/` or
//! `uploads/` (same filesystem), after `fsync` when durability is enabled, so
//! a crash leaves either the whole object or nothing. Blob content is hashed
//! while it streams in; the hash state lives in memory and is rebuilt from
//! the upload file after a restart. This module owns the on-disk format and
//! nothing about the protocol.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::SystemTime;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use tokio::sync::{Mutex, mpsc};

use super::{BlobInfo, BlobReader, ByteStream, Error, LinkKind, Result, StorageDriver, UploadInfo};
use crate::digest::{Algorithm, Digest, Hasher};
use crate::oci;

/// Chunk size for streaming reads and for batching writes.
const CHUNK: usize = 1 << 20;
/// Chunk size when streaming a blob out.
const STREAM_CHUNK: usize = 2 << 20;
/// Blobs up to this size are read into memory in one step when served.
const WHOLE_READ_LIMIT: u64 = 4 << 20;

/// Options for the filesystem driver.
#[derive(Debug, Clone)]
pub struct FsOptions {
    /// fsync files and directories before publishing them (default on).
    /// Without it a crash cannot expose partial objects, but a power loss
    /// may lose recently acknowledged ones.
    pub fsync: bool,
}

impl Default for FsOptions {
    fn default() -> Self {
        FsOptions { fsync: true }
    }
}

/// A held process lock on a store (see [`FsDriver::process_lock`]).
pub struct StoreLock {
    _file: File,
}

struct UploadState {
    /// Bytes hashed by `hasher` (equals the file size while in sync).
    size: u64,
    /// SHA-256 of the first `size` bytes; `None` until rebuilt.
    hasher: Option<Hasher>,
}

/// Storage in a local directory.
pub struct FsDriver {
    root: PathBuf,
    opts: FsOptions,
    uploads: StdMutex<HashMap<String, Arc<Mutex<UploadState>>>>,
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |source| Error::Io {
        op,
        path: path.display().to_string(),
        source,
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) => Err(Error::Io {
            op: "run blocking task",
            path: String::new(),
            source: std::io::Error::other(e.to_string()),
        }),
    }
}

impl FsDriver {
    /// Open (creating if needed) a store rooted at `root`.
    pub fn open(root: impl Into<PathBuf>, opts: FsOptions) -> Result<FsDriver> {
        let root = root.into();
        for sub in ["blobs", "uploads", "tmp", "repositories"] {
            let p = root.join(sub);
            fs::create_dir_all(&p).map_err(io_err("create directory", &p))?;
        }
        // Temp files left by a crash are never referenced: clear them.
        let tmp = root.join("tmp");
        if let Ok(rd) = fs::read_dir(&tmp) {
            for e in rd.flatten() {
                let _ = fs::remove_file(e.path());
            }
        }
        Ok(FsDriver {
            root,
            opts,
            uploads: StdMutex::new(HashMap::new()),
        })
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Take the store's process lock: shared for a serving registry (any
    /// number may serve one root), exclusive for an offline sweep, which
    /// must not run beside a server in another process because the GC lock
    /// that protects pushes lives in the server's memory. Fails with
    /// `WouldBlock` when the other kind is held. Released on drop.
    pub fn process_lock(&self, exclusive: bool) -> Result<StoreLock> {
        let p = self.root.join("registry.lock");
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)
            .map_err(io_err("open lock", &p))?;
        let op = if exclusive {
            libc::LOCK_EX
        } else {
            libc::LOCK_SH
        } | libc::LOCK_NB;
        // SAFETY: flock(2) on a descriptor we own for the duration of the call.
        let rc = unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&f), op) };
        if rc != 0 {
            return Err(io_err("lock", &p)(std::io::Error::last_os_error()));
        }
        Ok(StoreLock { _file: f })
    }

    fn blob_path(&self, d: &Digest) -> PathBuf {
        blob_path(&self.root, d)
    }

    fn upload_path(&self, id: &str) -> Result<PathBuf> {
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(Error::UploadUnknown(id.to_string()));
        }
        Ok(self.root.join("uploads").join(id))
    }

    fn repo_dir(&self, repo: &str) -> Result<PathBuf> {
        if !oci::valid_repository(repo) {
            return Err(Error::Io {
                op: "resolve repository",
                path: repo.to_string(),
                source: std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "invalid repository name",
                ),
            });
        }
        Ok(self.root.join("repositories").join(repo))
    }

    fn link_path(&self, repo: &str, kind: LinkKind, d: &Digest) -> Result<PathBuf> {
        let sub = match kind {
            LinkKind::Blob => "_blobs",
            LinkKind::Manifest => "_manifests",
        };
        Ok(self
            .repo_dir(repo)?
            .join(sub)
            .join(d.algorithm().as_str())
            .join(d.hex()))
    }

    fn tag_path(&self, repo: &str, tag: &str) -> Result<PathBuf> {
        if !oci::valid_tag(tag) {
            return Err(Error::Io {
                op: "resolve tag",
                path: tag.to_string(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "invalid tag"),
            });
        }
        Ok(self.repo_dir(repo)?.join("_tags").join(tag))
    }

    fn referrer_dir(&self, repo: &str, subject: &Digest) -> Result<PathBuf> {
        Ok(self
            .repo_dir(repo)?
            .join("_referrers")
            .join(subject.algorithm().as_str())
            .join(subject.hex()))
    }

    fn upload_state(&self, id: &str) -> Arc<Mutex<UploadState>> {
        let mut map = self
            .uploads
            .lock()
            .expect("upload map lock is never poisoned by a panic-free section");
        map.entry(id.to_string())
            .or_insert_with(|| {
                Arc::new(Mutex::new(UploadState {
                    size: 0,
                    hasher: None,
                }))
            })
            .clone()
    }

    fn forget_upload(&self, id: &str) {
        self.uploads
            .lock()
            .expect("upload map lock is never poisoned by a panic-free section")
            .remove(id);
    }
}

fn blob_path(root: &Path, d: &Digest) -> PathBuf {
    root.join("blobs")
        .join(d.algorithm().as_str())
        .join(&d.hex()[..2])
        .join(d.hex())
}

fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(io_err("fsync directory", dir))
}

/// Write `data` to a fresh temp file and rename it to `dest`.
fn write_atomic(root: &Path, dest: &Path, data: &[u8], durable: bool) -> Result<()> {
    let parent = dest
        .parent()
        .expect("destinations are always below the root");
    fs::create_dir_all(parent).map_err(io_err("create directory", parent))?;
    let tmp = root.join("tmp").join(format!("{}", rand::random::<u64>()));
    let res = (|| {
        let mut f = File::create(&tmp).map_err(io_err("create", &tmp))?;
        f.write_all(data).map_err(io_err("write", &tmp))?;
        if durable {
            f.sync_all().map_err(io_err("fsync", &tmp))?;
        }
        fs::rename(&tmp, dest).map_err(io_err("rename into", dest))?;
        if durable {
            fsync_dir(parent)?;
        }
        Ok(())
    })();
    if res.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    res
}

/// Create an empty marker file atomically (it has no content to tear).
fn touch_link(dest: &Path, durable: bool) -> Result<()> {
    let parent = dest.parent().expect("links are always below the root");
    fs::create_dir_all(parent).map_err(io_err("create directory", parent))?;
    match OpenOptions::new().write(true).create_new(true).open(dest) {
        Ok(_) => {
            if durable {
                fsync_dir(parent)?;
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(io_err("create link", dest)(e)),
    }
}

fn remove_file_if_present(p: &Path) -> Result<bool> {
    match fs::remove_file(p) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_err("remove", p)(e)),
    }
}

fn set_mtime_now(p: &Path) -> std::io::Result<()> {
    File::open(p)?.set_modified(SystemTime::now())
}

fn hash_file(path: &Path, alg: Algorithm) -> Result<(Digest, u64)> {
    let mut f = File::open(path).map_err(io_err("open", path))?;
    let mut h = Hasher::new(alg);
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(io_err("read", path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        total += n as u64;
    }
    Ok((h.finish(), total))
}

fn list_digest_dir(dir: &Path) -> Result<Vec<Digest>> {
    let mut out = Vec::new();
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(io_err("list", dir)(e)),
    };
    for alg in rd {
        let alg = alg.map_err(io_err("list", dir))?;
        let alg_name = alg.file_name().to_string_lossy().into_owned();
        let sub = alg.path();
        for e in fs::read_dir(&sub).map_err(io_err("list", &sub))? {
            let e = e.map_err(io_err("list", &sub))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if let Ok(d) = format!("{alg_name}:{name}").parse() {
                out.push(d);
            }
        }
    }
    out.sort();
    Ok(out)
}

fn collect_repos(base: &Path, dir: &Path, out: &mut Vec<String>) -> Result<()> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err("list", dir)(e)),
    };
    let mut is_repo = false;
    for e in rd {
        let e = e.map_err(io_err("list", dir))?;
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('_') {
            is_repo |= name == "_manifests" || name == "_blobs" || name == "_tags";
        } else if e.file_type().map_err(io_err("stat", dir))?.is_dir() {
            collect_repos(base, &e.path(), out)?;
        }
    }
    if is_repo {
        if let Ok(rel) = dir.strip_prefix(base) {
            out.push(rel.to_string_lossy().into_owned());
        }
    }
    Ok(())
}

/// A read-only shared mapping of a whole blob file, unmapped on drop.
///
/// Blob files are immutable once renamed into place: the store never
/// truncates or rewrites them, it only unlinks them (which keeps a mapping
/// valid), so reads through the mapping cannot fault.
struct Mapping {
    ptr: std::ptr::NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is read-only and never written through; the memory
// stays valid until `Drop`, whichever thread runs it.
unsafe impl Send for Mapping {}
// SAFETY: shared access is read-only.
unsafe impl Sync for Mapping {}

impl Mapping {
    fn of(f: &File, len: u64) -> std::io::Result<Mapping> {
        let len = usize::try_from(len).map_err(std::io::Error::other)?;
        if len == 0 {
            return Err(std::io::Error::other("empty file"));
        }
        // SAFETY: a fresh mapping (addr NULL) of `len` bytes of a file we
        // hold open for reading; the result is checked against MAP_FAILED.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                std::os::fd::AsRawFd::as_raw_fd(f),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: advice on the range just mapped; failure is harmless.
        unsafe {
            libc::madvise(ptr, len, libc::MADV_SEQUENTIAL);
        }
        let ptr = std::ptr::NonNull::new(ptr.cast::<u8>())
            .ok_or_else(|| std::io::Error::other("mmap returned NULL"))?;
        Ok(Mapping { ptr, len })
    }
}

impl AsRef<[u8]> for Mapping {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: `ptr` points at `len` readable bytes for the mapping's
        // lifetime (see the type's invariant).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the region `of` mapped, once.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}

/// Stream a file (or a range of it) from a blocking reader thread.
fn stream_file(mut f: File, path: PathBuf, start: u64, len: u64) -> ByteStream {
    let (tx, mut rx) = mpsc::channel::<std::io::Result<Bytes>>(4);
    tokio::task::spawn_blocking(move || {
        if let Err(e) = f.seek(SeekFrom::Start(start)) {
            let _ = tx.blocking_send(Err(e));
            return;
        }
        let mut left = len;
        while left > 0 {
            let want = left.min(STREAM_CHUNK as u64);
            // read_to_end fills spare capacity without zeroing it first.
            let mut buf = Vec::with_capacity(want as usize);
            match (&mut f).take(want).read_to_end(&mut buf) {
                Ok(0) => {
                    let _ = tx.blocking_send(Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        format!("{} ended early", path.display()),
                    )));
                    return;
                }
                Ok(n) => {
                    left -= n as u64;
                    if tx.blocking_send(Ok(Bytes::from(buf))).is_err() {
                        return; // the client went away
                    }
                }
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
            }
        }
    });
    Box::pin(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)))
}

#[async_trait::async_trait]
impl StorageDriver for FsDriver {
    fn name(&self) -> &'static str {
        "filesystem"
    }

    async fn blob_info(&self, digest: &Digest) -> Result<Option<BlobInfo>> {
        let p = self.blob_path(digest);
        blocking(move || match fs::metadata(&p) {
            Ok(m) => Ok(Some(BlobInfo {
                size: m.len(),
                modified: m.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            })),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err("stat", &p)(e)),
        })
        .await
    }

    async fn read_blob(&self, digest: &Digest, range: Option<Range<u64>>) -> Result<BlobReader> {
        let path = self.blob_path(digest);
        let digest = digest.clone();
        blocking(move || {
            let mut f = match File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(Error::BlobUnknown(digest));
                }
                Err(e) => return Err(io_err("open", &path)(e)),
            };
            let size = f.metadata().map_err(io_err("stat", &path))?.len();
            let want = range.unwrap_or(0..size);
            if want.start > want.end || want.end > size {
                return Err(Error::RangeNotSatisfiable {
                    digest,
                    start: want.start,
                    end: want.end,
                    size,
                });
            }
            let len = want.end - want.start;
            if len <= WHOLE_READ_LIMIT {
                let mut buf = Vec::with_capacity(len as usize);
                f.seek(SeekFrom::Start(want.start))
                    .map_err(io_err("seek", &path))?;
                let got = (&mut f)
                    .take(len)
                    .read_to_end(&mut buf)
                    .map_err(io_err("read", &path))?;
                if got as u64 != len {
                    return Err(Error::Corrupt {
                        path: path.display().to_string(),
                        what: format!("{got} bytes where {len} were expected"),
                    });
                }
                let data = Bytes::from(buf);
                return Ok(BlobReader {
                    size,
                    stream: Box::pin(futures_util::stream::iter([Ok(data)])),
                });
            }
            // Large blobs are served from a read-only mapping: the bytes go
            // from the page cache to the socket with one copy, no reader
            // thread. Fall back to reading if mapping fails.
            match Mapping::of(&f, size) {
                Ok(m) => {
                    let all = Bytes::from_owner(m);
                    let (start, end) = (want.start as usize, want.end as usize);
                    let chunks: Vec<std::io::Result<Bytes>> = (start..end)
                        .step_by(STREAM_CHUNK)
                        .map(|a| Ok(all.slice(a..(a + STREAM_CHUNK).min(end))))
                        .collect();
                    Ok(BlobReader {
                        size,
                        stream: Box::pin(futures_util::stream::iter(chunks)),
                    })
                }
                Err(e) => {
                    tracing::debug!(path = %path.display(), error = %e, "mmap failed; streaming with read");
                    Ok(BlobReader {
                        size,
                        stream: stream_file(f, path, want.start, len),
                    })
                }
            }
        })
        .await
    }

    async fn read_blob_bytes(&self, digest: &Digest, limit: u64) -> Result<Bytes> {
        let p = self.blob_path(digest);
        let d = digest.clone();
        blocking(move || {
            let mut f = match File::open(&p) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(Error::BlobUnknown(d));
                }
                Err(e) => return Err(io_err("open", &p)(e)),
            };
            let size = f.metadata().map_err(io_err("stat", &p))?.len();
            if size > limit {
                return Err(Error::TooLarge { digest: d, limit });
            }
            let mut buf = Vec::with_capacity(size as usize);
            f.read_to_end(&mut buf).map_err(io_err("read", &p))?;
            Ok(Bytes::from(buf))
        })
        .await
    }

    async fn put_blob(&self, digest: &Digest, data: Bytes) -> Result<()> {
        let mut h = Hasher::new(digest.algorithm());
        h.update(&data);
        let actual = h.finish();
        if &actual != digest {
            return Err(Error::DigestMismatch {
                expected: digest.clone(),
                actual,
            });
        }
        let root = self.root.clone();
        let dest = self.blob_path(digest);
        let durable = self.opts.fsync;
        blocking(move || {
            if dest.exists() {
                return set_mtime_now(&dest).map_err(io_err("touch", &dest));
            }
            write_atomic(&root, &dest, &data, durable)
        })
        .await
    }

    async fn touch_blob(&self, digest: &Digest) -> Result<()> {
        let p = self.blob_path(digest);
        let d = digest.clone();
        blocking(move || match set_mtime_now(&p) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Error::BlobUnknown(d)),
            Err(e) => Err(io_err("touch", &p)(e)),
        })
        .await
    }

    async fn delete_blob(&self, digest: &Digest) -> Result<bool> {
        let p = self.blob_path(digest);
        blocking(move || remove_file_if_present(&p)).await
    }

    async fn list_blobs(&self) -> Result<Vec<(Digest, BlobInfo)>> {
        let base = self.root.join("blobs");
        blocking(move || {
            let mut out = Vec::new();
            for alg in fs::read_dir(&base).map_err(io_err("list", &base))? {
                let alg = alg.map_err(io_err("list", &base))?;
                let alg_name = alg.file_name().to_string_lossy().into_owned();
                for pre in fs::read_dir(alg.path()).map_err(io_err("list", &alg.path()))? {
                    let pre = pre.map_err(io_err("list", &alg.path()))?;
                    for e in fs::read_dir(pre.path()).map_err(io_err("list", &pre.path()))? {
                        let e = e.map_err(io_err("list", &pre.path()))?;
                        let Ok(d) = format!("{alg_name}:{}", e.file_name().to_string_lossy())
                            .parse::<Digest>()
                        else {
                            continue;
                        };
                        let Ok(m) = e.metadata() else { continue };
                        out.push((
                            d,
                            BlobInfo {
                                size: m.len(),
                                modified: m.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                            },
                        ));
                    }
                }
            }
            out.sort_by(|a, b| a.0.cmp(&b.0));
            Ok(out)
        })
        .await
    }

    async fn create_upload(&self, id: &str) -> Result<()> {
        let p = self.upload_path(id)?;
        blocking(move || {
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&p)
                .map(drop)
                .map_err(io_err("create upload", &p))
        })
        .await?;
        let st = self.upload_state(id);
        *st.lock().await = UploadState {
            size: 0,
            hasher: Some(Hasher::new(Algorithm::Sha256)),
        };
        Ok(())
    }

    async fn upload_size(&self, id: &str) -> Result<u64> {
        let p = self.upload_path(id)?;
        let id = id.to_string();
        blocking(move || match fs::metadata(&p) {
            Ok(m) => Ok(m.len()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Error::UploadUnknown(id)),
            Err(e) => Err(io_err("stat", &p)(e)),
        })
        .await
    }

    async fn append_upload(&self, id: &str, offset: u64, mut data: ByteStream) -> Result<u64> {
        let p = self.upload_path(id)?;
        let st = self.upload_state(id);
        let mut st = st.lock().await;
        let idc = id.to_string();
        let p2 = p.clone();
        let opened = blocking(move || {
            let f = match OpenOptions::new().append(true).open(&p2) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(Error::UploadUnknown(idc));
                }
                Err(e) => return Err(io_err("open upload", &p2)(e)),
            };
            let size = f.metadata().map_err(io_err("stat", &p2))?.len();
            Ok((f, size))
        })
        .await;
        let (file, size) = match opened {
            Ok(x) => x,
            Err(e) => {
                drop(st);
                if matches!(e, Error::UploadUnknown(_)) {
                    // Do not keep state for ids that do not exist.
                    self.forget_upload(id);
                }
                return Err(e);
            }
        };
        if offset != size {
            return Err(Error::OffsetMismatch {
                id: id.to_string(),
                offset,
                size,
            });
        }
        // Keep the running hash only while it covers exactly the file.
        let hasher = match st.hasher.take() {
            Some(h) if st.size == size => Some(h),
            _ => None,
        };

        // Batch the body into large buffers and hand them to a writer thread
        // that hashes and writes, so network receive overlaps disk work.
        let (tx, mut rx) = mpsc::channel::<Bytes>(4);
        let writer_path = p.clone();
        let writer = tokio::task::spawn_blocking(move || {
            let mut file = file;
            let mut hasher = hasher;
            let mut written = 0u64;
            while let Some(buf) = rx.blocking_recv() {
                if let Err(e) = file.write_all(&buf) {
                    return (None, written, Some(io_err("write upload", &writer_path)(e)));
                }
                if let Some(h) = hasher.as_mut() {
                    h.update(&buf);
                }
                written += buf.len() as u64;
            }
            (hasher, written, None)
        });
        let mut body_err = None;
        let mut pending = BytesMut::new();
        loop {
            match data.next().await {
                Some(Ok(chunk)) => {
                    if pending.is_empty() && chunk.len() >= CHUNK {
                        if tx.send(chunk).await.is_err() {
                            break;
                        }
                        continue;
                    }
                    pending.extend_from_slice(&chunk);
                    if pending.len() >= CHUNK && tx.send(pending.split().freeze()).await.is_err() {
                        break;
                    }
                }
                Some(Err(e)) => {
                    body_err = Some(e);
                    break;
                }
                None => break,
            }
        }
        if !pending.is_empty() {
            let _ = tx.send(pending.freeze()).await;
        }
        drop(tx);
        let (hasher, written, write_err) = writer.await.map_err(|e| Error::Io {
            op: "write upload",
            path: p.display().to_string(),
            source: std::io::Error::other(e.to_string()),
        })?;
        let new_size = size + written;
        st.size = new_size;
        st.hasher = if write_err.is_some() { None } else { hasher };
        if let Some(e) = write_err {
            return Err(e);
        }
        if let Some(e) = body_err {
            return Err(Error::Body(e));
        }
        Ok(new_size)
    }

    async fn commit_upload(&self, id: &str, digest: &Digest) -> Result<u64> {
        let p = self.upload_path(id)?;
        let st_arc = self.upload_state(id);
        let mut st = st_arc.lock().await;
        let hasher = st.hasher.take();
        let known = st.size;
        let dest = self.blob_path(digest);
        let durable = self.opts.fsync;
        let expected = digest.clone();
        let idc = id.to_string();
        let res = blocking(move || {
            let f = match OpenOptions::new().write(true).open(&p) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(Error::UploadUnknown(idc));
                }
                Err(e) => return Err(io_err("open upload", &p)(e)),
            };
            let size = f.metadata().map_err(io_err("stat", &p))?.len();
            let actual = match hasher {
                Some(h) if known == size && expected.algorithm() == Algorithm::Sha256 => h.finish(),
                _ => hash_file(&p, expected.algorithm())?.0,
            };
            if actual != expected {
                let _ = fs::remove_file(&p);
                return Err(Error::DigestMismatch { expected, actual });
            }
            if dest.exists() {
                // Deduplicated: the content is already stored.
                let _ = fs::remove_file(&p);
                set_mtime_now(&dest).map_err(io_err("touch", &dest))?;
                return Ok(size);
            }
            if durable {
                f.sync_all().map_err(io_err("fsync", &p))?;
            }
            drop(f);
            set_mtime_now(&p).map_err(io_err("touch", &p))?;
            let parent = dest.parent().expect("blob paths have a parent");
            fs::create_dir_all(parent).map_err(io_err("create directory", parent))?;
            fs::rename(&p, &dest).map_err(io_err("rename into", &dest))?;
            if durable {
                fsync_dir(parent)?;
            }
            Ok(size)
        })
        .await;
        drop(st);
        if !matches!(res, Err(Error::Io { .. })) {
            self.forget_upload(id);
        }
        res
    }

    async fn cancel_upload(&self, id: &str) -> Result<bool> {
        let p = self.upload_path(id)?;
        let st = self.upload_state(id);
        let _guard = st.lock().await;
        let r = blocking(move || remove_file_if_present(&p)).await;
        self.forget_upload(id);
        r
    }

    async fn list_uploads(&self) -> Result<Vec<UploadInfo>> {
        let dir = self.root.join("uploads");
        blocking(move || {
            let mut out = Vec::new();
            for e in fs::read_dir(&dir).map_err(io_err("list", &dir))? {
                let e = e.map_err(io_err("list", &dir))?;
                let Ok(m) = e.metadata() else { continue };
                out.push(UploadInfo {
                    id: e.file_name().to_string_lossy().into_owned(),
                    size: m.len(),
                    modified: m.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                });
            }
            out.sort_by(|a, b| a.id.cmp(&b.id));
            Ok(out)
        })
        .await
    }

    async fn link(&self, repo: &str, kind: LinkKind, digest: &Digest) -> Result<()> {
        let p = self.link_path(repo, kind, digest)?;
        let durable = self.opts.fsync;
        blocking(move || touch_link(&p, durable)).await
    }

    async fn unlink(&self, repo: &str, kind: LinkKind, digest: &Digest) -> Result<bool> {
        let p = self.link_path(repo, kind, digest)?;
        blocking(move || remove_file_if_present(&p)).await
    }

    async fn is_linked(&self, repo: &str, kind: LinkKind, digest: &Digest) -> Result<bool> {
        let p = self.link_path(repo, kind, digest)?;
        blocking(move || Ok(p.exists())).await
    }

    async fn list_links(&self, repo: &str, kind: LinkKind) -> Result<Vec<Digest>> {
        let sub = match kind {
            LinkKind::Blob => "_blobs",
            LinkKind::Manifest => "_manifests",
        };
        let dir = self.repo_dir(repo)?.join(sub);
        blocking(move || list_digest_dir(&dir)).await
    }

    async fn set_tag(&self, repo: &str, tag: &str, digest: &Digest) -> Result<()> {
        let p = self.tag_path(repo, tag)?;
        let root = self.root.clone();
        let body = digest.to_string();
        let durable = self.opts.fsync;
        blocking(move || write_atomic(&root, &p, body.as_bytes(), durable)).await
    }

    async fn get_tag(&self, repo: &str, tag: &str) -> Result<Option<Digest>> {
        let p = self.tag_path(repo, tag)?;
        blocking(move || match fs::read_to_string(&p) {
            Ok(s) => s
                .trim()
                .parse()
                .map(Some)
                .map_err(|e: crate::digest::Error| Error::Corrupt {
                    path: p.display().to_string(),
                    what: e.to_string(),
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err("read tag", &p)(e)),
        })
        .await
    }

    async fn delete_tag(&self, repo: &str, tag: &str) -> Result<bool> {
        let p = self.tag_path(repo, tag)?;
        blocking(move || remove_file_if_present(&p)).await
    }

    async fn list_tags(&self, repo: &str) -> Result<Option<Vec<String>>> {
        let dir = self.repo_dir(repo)?;
        blocking(move || {
            if !dir.join("_manifests").is_dir()
                && !dir.join("_tags").is_dir()
                && !dir.join("_blobs").is_dir()
            {
                return Ok(None);
            }
            let tags_dir = dir.join("_tags");
            let mut tags = Vec::new();
            match fs::read_dir(&tags_dir) {
                Ok(rd) => {
                    for e in rd {
                        let e = e.map_err(io_err("list", &tags_dir))?;
                        let name = e.file_name().to_string_lossy().into_owned();
                        if oci::valid_tag(&name) {
                            tags.push(name);
                        }
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("list", &tags_dir)(e)),
            }
            tags.sort();
            Ok(Some(tags))
        })
        .await
    }

    async fn add_referrer(&self, repo: &str, subject: &Digest, referrer: &Digest) -> Result<()> {
        let p = self.referrer_dir(repo, subject)?.join(referrer.to_string());
        let durable = self.opts.fsync;
        blocking(move || touch_link(&p, durable)).await
    }

    async fn remove_referrer(
        &self,
        repo: &str,
        subject: &Digest,
        referrer: &Digest,
    ) -> Result<bool> {
        let p = self.referrer_dir(repo, subject)?.join(referrer.to_string());
        blocking(move || remove_file_if_present(&p)).await
    }

    async fn list_referrers(&self, repo: &str, subject: &Digest) -> Result<Vec<Digest>> {
        let dir = self.referrer_dir(repo, subject)?;
        blocking(move || {
            let mut out = Vec::new();
            match fs::read_dir(&dir) {
                Ok(rd) => {
                    for e in rd {
                        let e = e.map_err(io_err("list", &dir))?;
                        if let Ok(d) = e.file_name().to_string_lossy().parse() {
                            out.push(d);
                        }
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("list", &dir)(e)),
            }
            out.sort();
            Ok(out)
        })
        .await
    }

    async fn list_repositories(&self) -> Result<Vec<String>> {
        let base = self.root.join("repositories");
        blocking(move || {
            let mut out = Vec::new();
            collect_repos(&base, &base, &mut out)?;
            out.retain(|r| oci::valid_repository(r));
            out.sort();
            Ok(out)
        })
        .await
    }
}
