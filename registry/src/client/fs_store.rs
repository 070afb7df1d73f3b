//! A directory-backed [`BlobSink`] and [`BlobSource`]: `blobs/<alg>/<hex>`
//! (the blob tree of an OCI image layout) plus `ingest/` for partial
//! downloads. Used by tests, benchmarks and tools; the daemon brings its
//! own content store.

use std::collections::HashMap;
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use bytes::{Bytes, BytesMut};
use tokio::sync::mpsc;

use super::{BlobSink, BlobSource, Reference};
use crate::digest::Digest;
use crate::storage::ByteStream;

/// Blobs in a directory.
pub struct FsStore {
    root: PathBuf,
    sources: Mutex<HashMap<Digest, Vec<Reference>>>,
}

async fn blocking_io<T: Send + 'static>(
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))?
}

fn file_stream(mut f: std::fs::File, offset: u64) -> ByteStream {
    let (tx, mut rx) = mpsc::channel::<std::io::Result<Bytes>>(4);
    tokio::task::spawn_blocking(move || {
        if let Err(e) = f.seek(SeekFrom::Start(offset)) {
            let _ = tx.blocking_send(Err(e));
            return;
        }
        loop {
            let mut buf = BytesMut::zeroed(1 << 20);
            match f.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    buf.truncate(n);
                    if tx.blocking_send(Ok(buf.freeze())).is_err() {
                        return;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
            }
        }
    });
    Box::pin(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)))
}

impl FsStore {
    /// A store rooted at `root` (created if missing).
    pub fn open(root: impl Into<PathBuf>) -> std::io::Result<FsStore> {
        let root = root.into();
        std::fs::create_dir_all(root.join("blobs"))?;
        std::fs::create_dir_all(root.join("ingest"))?;
        Ok(FsStore {
            root,
            sources: Mutex::new(HashMap::new()),
        })
    }

    /// Path of a stored blob.
    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.root
            .join("blobs")
            .join(d.algorithm().as_str())
            .join(d.hex())
    }

    fn ingest_path(&self, d: &Digest) -> PathBuf {
        self.root
            .join("ingest")
            .join(format!("{}-{}", d.algorithm().as_str(), d.hex()))
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Store bytes directly (manifests, test fixtures).
    pub fn put(&self, data: &[u8]) -> std::io::Result<Digest> {
        let d = Digest::sha256_of(data);
        let p = self.blob_path(&d);
        std::fs::create_dir_all(p.parent().expect("blob paths have a parent"))?;
        let tmp = self.ingest_path(&d).with_extension("put");
        std::fs::write(&tmp, data)?;
        std::fs::rename(&tmp, &p)?;
        Ok(d)
    }

    /// Record that `r`'s repository holds `d` (offered for mounts).
    pub fn remember_source(&self, d: &Digest, r: Reference) {
        self.sources
            .lock()
            .expect("sources lock is not poisoned")
            .entry(d.clone())
            .or_default()
            .push(r);
    }
}

#[async_trait::async_trait]
impl BlobSink for FsStore {
    async fn has(&self, digest: &Digest) -> std::io::Result<bool> {
        let p = self.blob_path(digest);
        blocking_io(move || Ok(p.is_file())).await
    }

    async fn partial(&self, digest: &Digest) -> std::io::Result<Option<(u64, ByteStream)>> {
        let p = self.ingest_path(digest);
        blocking_io(move || match std::fs::File::open(&p) {
            Ok(f) => {
                let n = f.metadata()?.len();
                Ok(Some((n, file_stream(f, 0))))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        })
        .await
    }

    async fn write(&self, digest: &Digest, offset: u64, data: Bytes) -> std::io::Result<()> {
        let p = self.ingest_path(digest);
        blocking_io(move || {
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(false)
                .open(&p)?;
            if offset == 0 {
                f.set_len(0)?;
            }
            f.seek(SeekFrom::Start(offset))?;
            f.write_all(&data)?;
            Ok(())
        })
        .await
    }

    async fn commit(&self, digest: &Digest, _size: u64) -> std::io::Result<()> {
        let src = self.ingest_path(digest);
        let dst = self.blob_path(digest);
        blocking_io(move || {
            std::fs::create_dir_all(dst.parent().expect("blob paths have a parent"))?;
            if !src.exists() {
                // Empty blob: nothing was written.
                std::fs::write(&src, b"")?;
            }
            std::fs::File::open(&src)?.sync_all()?;
            std::fs::rename(&src, &dst)
        })
        .await
    }

    async fn discard(&self, digest: &Digest) -> std::io::Result<()> {
        let p = self.ingest_path(digest);
        blocking_io(move || match std::fs::remove_file(&p) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        })
        .await
    }
}

#[async_trait::async_trait]
impl BlobSource for FsStore {
    async fn open(&self, digest: &Digest) -> std::io::Result<ByteStream> {
        self.open_at(digest, 0).await
    }

    async fn open_at(&self, digest: &Digest, offset: u64) -> std::io::Result<ByteStream> {
        let p = self.blob_path(digest);
        let f = blocking_io(move || std::fs::File::open(&p)).await?;
        Ok(file_stream(f, offset))
    }

    fn mount_candidates(&self, digest: &Digest) -> Vec<Reference> {
        self.sources
            .lock()
            .expect("sources lock is not poisoned")
            .get(digest)
            .cloned()
            .unwrap_or_default()
    }
}
