//! The content store: immutable blobs addressed by digest.
//!
//! Owns `content/blobs/<alg>/<hex>` and `content/ingest/<ref>`. A blob
//! becomes visible under its digest only after its bytes were hashed, size
//! checked, fsynced and renamed into place; partial writes live in the
//! ingest directory under a reference name and can be resumed. It does not
//! know which blobs are referenced (that is the metadata database's job) and
//! never deletes anything on its own except abandoned temporary ingests.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::digest::{Algorithm, Digest, Hasher};
use super::sys;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("content store {path}: {op}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("blob {expected}: content hashes to {actual}")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("blob {digest}: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        digest: String,
        expected: u64,
        actual: u64,
    },
    #[error("blob {0}: not found")]
    NotFound(Digest),
    #[error("blob {digest}: larger than the {limit} byte limit for this kind of content")]
    TooLarge { digest: Digest, limit: u64 },
    #[error("ingest reference {0:?}: only letters, digits, '.', '_' and '-' are allowed")]
    BadRef(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> Error + 'a {
    move |source| Error::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Prefix of ingest references that belong to one process and are removed
/// when the store is opened again.
const TEMP_PREFIX: &str = "tmp-";

/// Blobs under `root` (the store's `content/` directory).
#[derive(Debug)]
pub struct ContentStore {
    root: PathBuf,
    counter: AtomicU64,
}

/// Damage found by [`ContentStore::verify`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Damage {
    /// A blob file whose bytes do not hash to its name.
    Corrupt { digest: Digest, actual: Digest },
    /// A blob that cannot be read.
    Unreadable { path: PathBuf, error: String },
    /// A file in the blob tree whose name is not a digest.
    Stray { path: PathBuf },
}

impl ContentStore {
    /// Open (creating if needed) the content store under `root` and remove
    /// temporary ingests left by a previous process.
    pub fn open(root: &Path) -> Result<ContentStore> {
        for alg in [Algorithm::Sha256, Algorithm::Sha512] {
            let d = root.join("blobs").join(alg.name());
            fs::create_dir_all(&d).map_err(io_err("create directory", &d))?;
        }
        let ingest = root.join("ingest");
        fs::create_dir_all(&ingest).map_err(io_err("create directory", &ingest))?;
        for entry in fs::read_dir(&ingest).map_err(io_err("read directory", &ingest))? {
            let entry = entry.map_err(io_err("read directory", &ingest))?;
            if entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
                tracing::info!(path = %entry.path().display(), "removing abandoned ingest");
                fs::remove_file(entry.path())
                    .map_err(io_err("remove abandoned ingest", &entry.path()))?;
            }
        }
        Ok(ContentStore {
            root: root.to_path_buf(),
            counter: AtomicU64::new(0),
        })
    }

    /// Where the blob with `digest` lives (whether or not it exists).
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root
            .join("blobs")
            .join(digest.algorithm().name())
            .join(digest.hex())
    }

    /// Size of the blob, or `None` when the store does not have it.
    pub fn size(&self, digest: &Digest) -> Result<Option<u64>> {
        let p = self.blob_path(digest);
        match fs::metadata(&p) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err("stat blob", &p)(e)),
        }
    }

    pub fn contains(&self, digest: &Digest) -> bool {
        self.blob_path(digest).is_file()
    }

    pub fn open_blob(&self, digest: &Digest) -> Result<File> {
        let p = self.blob_path(digest);
        File::open(&p).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                Error::NotFound(digest.clone())
            } else {
                io_err("open blob", &p)(e)
            }
        })
    }

    /// Read a whole (small) blob, refusing blobs larger than `limit`, and
    /// check that its bytes still hash to its digest.
    pub fn read_blob(&self, digest: &Digest, limit: u64) -> Result<Vec<u8>> {
        let f = self.open_blob(digest)?;
        let mut data = Vec::new();
        f.take(limit + 1)
            .read_to_end(&mut data)
            .map_err(io_err("read blob", &self.blob_path(digest)))?;
        if data.len() as u64 > limit {
            return Err(Error::TooLarge {
                digest: digest.clone(),
                limit,
            });
        }
        let mut h = digest.algorithm().hasher();
        h.update(&data);
        let actual = h.finish();
        if actual != *digest {
            return Err(Error::DigestMismatch {
                expected: digest.clone(),
                actual,
            });
        }
        Ok(data)
    }

    /// Store a small in-memory blob and return its digest.
    pub fn put(&self, data: &[u8]) -> Result<Digest> {
        let digest = Digest::sha256_of(data);
        if !self.contains(&digest) {
            let mut w = self.temp_writer(Algorithm::Sha256)?;
            w.write_all(data).map_err(io_err("write ingest", &w.path))?;
            w.commit(Some(&digest), Some(data.len() as u64))?;
        }
        Ok(digest)
    }

    /// A writer for a new blob under a fresh temporary ingest reference,
    /// removed if the writer is dropped without commit or the process dies.
    pub fn temp_writer(&self, algorithm: Algorithm) -> Result<Writer> {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let name = format!("{TEMP_PREFIX}{}-{n}", std::process::id());
        self.writer_at(&name, algorithm, true)
    }

    /// A resumable writer under the caller's reference `name` (for example a
    /// download keyed by its expected digest). When an ingest of that name
    /// exists, its bytes are rehashed and writing continues at its end
    /// ([`Writer::offset`]). The ingest survives drops and restarts until it
    /// is committed or [`ContentStore::abort_ingest`] is called.
    pub fn resumable_writer(&self, name: &str, algorithm: Algorithm) -> Result<Writer> {
        if name.is_empty()
            || name.starts_with(TEMP_PREFIX)
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
            || name.starts_with('.')
        {
            return Err(Error::BadRef(name.to_string()));
        }
        self.writer_at(name, algorithm, false)
    }

    /// Remove a resumable ingest.
    pub fn abort_ingest(&self, name: &str) -> Result<()> {
        let p = self.root.join("ingest").join(name);
        match fs::remove_file(&p) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err("remove ingest", &p)(e)),
            _ => Ok(()),
        }
    }

    fn writer_at(&self, name: &str, algorithm: Algorithm, temporary: bool) -> Result<Writer> {
        let path = self.root.join("ingest").join(name);
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&path)
            .map_err(io_err("open ingest", &path))?;
        let mut hasher = algorithm.hasher();
        let mut offset = 0u64;
        if !temporary {
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = file.read(&mut buf).map_err(io_err("read ingest", &path))?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                offset += n as u64;
            }
        }
        Ok(Writer {
            file: Some(file),
            path,
            blobs: self.root.join("blobs"),
            hasher: Some(hasher),
            count: offset,
            temporary,
        })
    }

    /// Path of the ingest named `name` (a caller-managed partial blob).
    pub fn ingest_path(&self, name: &str) -> PathBuf {
        self.root.join("ingest").join(name)
    }

    /// Publish the ingest `name`, whose bytes the caller has verified to
    /// hash to `digest`: fsync, rename into place, fsync the directory.
    /// Returns false when the blob already existed (the ingest is dropped).
    pub fn publish_ingest(&self, name: &str, digest: &Digest) -> Result<bool> {
        let src = self.ingest_path(name);
        let dest = self.blob_path(digest);
        if dest.exists() {
            let _ = fs::remove_file(&src);
            return Ok(false);
        }
        match File::open(&src) {
            Ok(f) => f.sync_all().map_err(io_err("fsync ingest", &src))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // An empty blob: nothing was written.
                File::create(&src).map_err(io_err("create ingest", &src))?;
            }
            Err(e) => return Err(io_err("open ingest", &src)(e)),
        }
        fs::rename(&src, &dest).map_err(io_err("move blob into place", &dest))?;
        let dir = dest.parent().expect("blob paths have a parent");
        sys::fsync_dir(dir).map_err(io_err("fsync directory", dir))?;
        Ok(true)
    }

    /// The first bytes of a blob (up to 512), to tell JSON from layers.
    pub fn read_head(&self, digest: &Digest) -> Result<Vec<u8>> {
        let p = self.blob_path(digest);
        let mut f = File::open(&p).map_err(io_err("open blob", &p))?;
        let mut buf = vec![0u8; 512];
        let mut n = 0;
        while n < buf.len() {
            match f.read(&mut buf[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io_err("read blob", &p)(e)),
            }
        }
        buf.truncate(n);
        Ok(buf)
    }

    /// Delete a blob. Missing blobs are not an error.
    pub fn delete(&self, digest: &Digest) -> Result<()> {
        let p = self.blob_path(digest);
        match fs::remove_file(&p) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err("remove blob", &p)(e)),
            _ => Ok(()),
        }
    }

    /// Every blob in the store.
    pub fn list(&self) -> Result<Vec<Digest>> {
        let mut out = Vec::new();
        for alg in [Algorithm::Sha256, Algorithm::Sha512] {
            let dir = self.root.join("blobs").join(alg.name());
            for entry in fs::read_dir(&dir).map_err(io_err("read directory", &dir))? {
                let entry = entry.map_err(io_err("read directory", &dir))?;
                if let Ok(d) =
                    format!("{}:{}", alg.name(), entry.file_name().to_string_lossy()).parse()
                {
                    out.push(d);
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// Rehash every blob and report damage.
    pub fn verify(&self) -> Result<Vec<Damage>> {
        let mut damage = Vec::new();
        for alg in [Algorithm::Sha256, Algorithm::Sha512] {
            let dir = self.root.join("blobs").join(alg.name());
            for entry in fs::read_dir(&dir).map_err(io_err("read directory", &dir))? {
                let entry = entry.map_err(io_err("read directory", &dir))?;
                let path = entry.path();
                let Ok(digest) = format!("{}:{}", alg.name(), entry.file_name().to_string_lossy())
                    .parse::<Digest>()
                else {
                    damage.push(Damage::Stray { path });
                    continue;
                };
                match hash_file(&path, alg) {
                    Ok(actual) if actual == digest => {}
                    Ok(actual) => damage.push(Damage::Corrupt { digest, actual }),
                    Err(e) => damage.push(Damage::Unreadable {
                        path,
                        error: e.to_string(),
                    }),
                }
            }
        }
        Ok(damage)
    }
}

fn hash_file(path: &Path, alg: Algorithm) -> io::Result<Digest> {
    let mut f = File::open(path)?;
    let mut h: Hasher = alg.hasher();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(h.finish());
        }
        h.update(&buf[..n]);
    }
}

/// A blob being written. Bytes are hashed as they are written; nothing is
/// visible under a digest until [`Writer::commit`].
pub struct Writer {
    file: Option<File>,
    path: PathBuf,
    blobs: PathBuf,
    hasher: Option<Hasher>,
    count: u64,
    temporary: bool,
}

impl Writer {
    /// Bytes in the ingest so far (where a resumed write continues).
    pub fn offset(&self) -> u64 {
        self.count
    }

    /// Verify size and digest, fsync, and move the blob into place. When
    /// `expected` is `None` the blob is stored under whatever it hashes to.
    pub fn commit(
        self,
        expected: Option<&Digest>,
        expected_size: Option<u64>,
    ) -> Result<(Digest, u64)> {
        self.commit_report(expected, expected_size)
            .map(|(d, n, _)| (d, n))
    }

    /// Like [`Writer::commit`], also saying whether the blob is new (false
    /// when the store already had it and the ingest was dropped).
    pub fn commit_report(
        mut self,
        expected: Option<&Digest>,
        expected_size: Option<u64>,
    ) -> Result<(Digest, u64, bool)> {
        let file = self
            .file
            .take()
            .expect("a writer holds its file until commit");
        let actual = self
            .hasher
            .take()
            .expect("a writer holds its hasher until commit")
            .finish();
        let size = self.count;
        let fail = |e: Error, path: &Path| {
            let _ = fs::remove_file(path);
            Err(e)
        };
        if let Some(want) = expected_size {
            if want != size {
                return fail(
                    Error::SizeMismatch {
                        digest: expected.map_or_else(|| actual.to_string(), ToString::to_string),
                        expected: want,
                        actual: size,
                    },
                    &self.path,
                );
            }
        }
        if let Some(want) = expected {
            if *want != actual {
                return fail(
                    Error::DigestMismatch {
                        expected: want.clone(),
                        actual,
                    },
                    &self.path,
                );
            }
        }
        let dest = self
            .blobs
            .join(actual.algorithm().name())
            .join(actual.hex());
        if dest.exists() {
            let _ = fs::remove_file(&self.path);
            return Ok((actual, size, false));
        }
        file.sync_all()
            .map_err(io_err("fsync ingest", &self.path))?;
        drop(file);
        fs::rename(&self.path, &dest).map_err(io_err("move blob into place", &dest))?;
        let dir = dest.parent().expect("blob paths have a parent");
        sys::fsync_dir(dir).map_err(io_err("fsync directory", dir))?;
        Ok((actual, size, true))
    }
}

impl Write for Writer {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let file = self
            .file
            .as_mut()
            .expect("a writer holds its file until commit");
        let n = file.write(buf)?;
        if let Some(h) = self.hasher.as_mut() {
            h.update(&buf[..n]);
        }
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        if self.file.is_some() && self.temporary {
            let _ = fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_verify_and_detect_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let cs = ContentStore::open(dir.path()).unwrap();
        let d = cs.put(b"hello").unwrap();
        assert_eq!(cs.read_blob(&d, 100).unwrap(), b"hello");
        assert!(cs.verify().unwrap().is_empty());
        fs::write(cs.blob_path(&d), b"hellO").unwrap();
        assert!(matches!(
            cs.read_blob(&d, 100),
            Err(Error::DigestMismatch { .. })
        ));
        assert_eq!(cs.verify().unwrap().len(), 1);
    }

    #[test]
    fn wrong_digest_is_not_stored() {
        let dir = tempfile::tempdir().unwrap();
        let cs = ContentStore::open(dir.path()).unwrap();
        let mut w = cs.temp_writer(Algorithm::Sha256).unwrap();
        w.write_all(b"abc").unwrap();
        let wrong = Digest::sha256_of(b"abd");
        assert!(matches!(
            w.commit(Some(&wrong), None),
            Err(Error::DigestMismatch { .. })
        ));
        assert!(cs.list().unwrap().is_empty());
        assert_eq!(fs::read_dir(dir.path().join("ingest")).unwrap().count(), 0);
    }

    #[test]
    fn resumes_an_ingest() {
        let dir = tempfile::tempdir().unwrap();
        let cs = ContentStore::open(dir.path()).unwrap();
        let data = b"0123456789".repeat(1000);
        {
            let mut w = cs.resumable_writer("dl-1", Algorithm::Sha256).unwrap();
            w.write_all(&data[..4000]).unwrap();
        }
        let cs = ContentStore::open(dir.path()).unwrap();
        let mut w = cs.resumable_writer("dl-1", Algorithm::Sha256).unwrap();
        assert_eq!(w.offset(), 4000);
        w.write_all(&data[4000..]).unwrap();
        let want = Digest::sha256_of(&data);
        let (d, n) = w.commit(Some(&want), Some(data.len() as u64)).unwrap();
        assert_eq!((d, n), (want, 10000));
        assert!(cs.resumable_writer("../x", Algorithm::Sha256).is_err());
    }

    #[test]
    fn temporary_ingests_are_removed_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let cs = ContentStore::open(dir.path()).unwrap();
        let w = cs.temp_writer(Algorithm::Sha256).unwrap();
        std::mem::forget(w);
        assert_eq!(fs::read_dir(dir.path().join("ingest")).unwrap().count(), 1);
        ContentStore::open(dir.path()).unwrap();
        assert_eq!(fs::read_dir(dir.path().join("ingest")).unwrap().count(), 0);
    }
}
