//! Applying a layer: a (compressed) tar stream unpacked into one directory
//! that becomes a read-only overlayfs lower layer.
//!
//! A layer tarball is attacker-controlled input. Every entry is resolved
//! inside the layer root: names are normalised lexically and may not climb
//! above the root; parent directories are opened with `openat2` and
//! `RESOLVE_IN_ROOT`, so a symlink planted by an earlier entry resolves
//! inside the root as if the root were `/`; the final component is created
//! with `*at` calls that never follow it. Absolute hardlink targets are taken
//! relative to the layer root. The uncompressed stream is bounded and hashed
//! while streaming, and its digest must equal the expected diff ID.
//!
//! Whiteouts become overlayfs whiteouts: `.wh.NAME` a character device 0/0
//! named NAME, `.wh..wh..opq` the `trusted.overlay.opaque` xattr on its
//! directory. Ownership, modes (including setuid), times, `user.*` and
//! `security.capability` xattrs, hardlinks, symlinks, device nodes, FIFOs
//! and GNU sparse files are kept.
//!
//! This module does not know about chain IDs, the content store or the
//! database; see `snapshot` and the store for that.

use std::ffi::{CStr, CString, OsStr};
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::digest::{Algorithm, Digest, HashingReader};
use super::sys;
use super::targuard::{self, TarGuard};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("entry {entry:?} escapes the root")]
    Escape { entry: String },
    #[error("entry {entry:?}: hardlink target {target:?} escapes the root")]
    HardlinkEscape { entry: String, target: String },
    #[error("entry {entry:?}: hardlink target {target:?} does not exist in this layer")]
    HardlinkMissing { entry: String, target: String },
    #[error("entry {entry:?}: invalid whiteout")]
    BadWhiteout { entry: String },
    #[error("entry {entry:?}: unsupported tar entry type {kind:?}")]
    Unsupported { entry: String, kind: char },
    #[error("entry {entry:?}: {op}")]
    Entry {
        entry: String,
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("layer root {path}: {op}")]
    Root {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("layer is not a tar stream (compression {0} is not supported)")]
    Compression(&'static str),
    #[error("corrupt or truncated layer stream")]
    Stream(#[source] io::Error),
    #[error("layer stream rejected")]
    Guard(#[source] targuard::Error),
    #[error("uncompressed layer hashes to {actual}, expected diff ID {expected}")]
    DiffId { expected: Digest, actual: Digest },
    #[error("layer has more than {0} entries")]
    TooManyEntries(u64),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Limits applied while unpacking.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Maximum bytes of the uncompressed tar stream.
    pub max_uncompressed: u64,
    /// Maximum number of tar entries.
    pub max_entries: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_uncompressed: 64 << 30,
            max_entries: 4_000_000,
        }
    }
}

/// The compression of a layer blob, detected from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// Sniff the compression of `head` (at least the first few bytes).
    pub fn detect(head: &[u8]) -> std::result::Result<Compression, &'static str> {
        match head {
            [0x1f, 0x8b, ..] => Ok(Compression::Gzip),
            [0x28, 0xb5, 0x2f, 0xfd, ..] => Ok(Compression::Zstd),
            [b'B', b'Z', b'h', ..] => Err("bzip2"),
            [0xfd, b'7', b'z', b'X', b'Z', 0, ..] => Err("xz"),
            _ => Ok(Compression::None),
        }
    }
}

/// Wrap `reader` in the decompressor its first bytes call for.
pub fn decompress<'a, R: Read + 'a>(reader: R) -> Result<(Compression, Box<dyn Read + 'a>)> {
    let mut buf = BufReader::with_capacity(256 << 10, reader);
    let head = buf.fill_buf().map_err(Error::Stream)?;
    let c = Compression::detect(head).map_err(Error::Compression)?;
    let r: Box<dyn Read + 'a> = match c {
        Compression::None => Box::new(buf),
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(buf)),
        Compression::Zstd => {
            Box::new(zstd::stream::read::Decoder::with_buffer(buf).map_err(Error::Stream)?)
        }
    };
    Ok((c, r))
}

/// What unpacking found.
#[derive(Debug, Clone)]
pub struct Applied {
    pub diff_id: Digest,
    /// Bytes of the uncompressed tar stream.
    pub tar_size: u64,
    pub compression: Compression,
    pub entries: u64,
}

/// Unpack the layer blob `reader` (tar, gzip or zstd) into the existing
/// empty directory `dest`, checking the diff ID when one is expected.
pub fn apply(
    reader: impl Read,
    dest: &Path,
    expected_diff_id: Option<&Digest>,
    limits: &Limits,
) -> Result<Applied> {
    let (compression, decoded) = decompress(reader)?;
    let guard = TarGuard::new(decoded, limits.max_uncompressed);
    let hashing = HashingReader::new(guard, Algorithm::Sha256);
    let mut archive = tar::Archive::new(hashing);
    let root = sys::open_dir_path(dest).map_err(|source| Error::Root {
        op: "open",
        path: dest.to_path_buf(),
        source,
    })?;
    let mut unpacker = Unpacker {
        root,
        parent_cache: None,
        dirs: Vec::new(),
        entries: 0,
        limits: limits.clone(),
    };
    let entries = archive.entries().map_err(stream_error)?;
    for entry in entries {
        let entry = entry.map_err(stream_error)?;
        unpacker.entry(entry)?;
    }
    unpacker.finish_dirs()?;
    let (diff_id, tar_size, _) = archive
        .into_inner()
        .drain_and_finish()
        .map_err(stream_error)?;
    if let Some(want) = expected_diff_id {
        if *want != diff_id {
            return Err(Error::DiffId {
                expected: want.clone(),
                actual: diff_id,
            });
        }
    }
    Ok(Applied {
        diff_id,
        tar_size,
        compression,
        entries: unpacker.entries,
    })
}

fn stream_error(e: io::Error) -> Error {
    if e.get_ref().is_some_and(
        <dyn std::error::Error + std::marker::Send + std::marker::Sync + 'static>::is::<
            targuard::Error,
        >,
    ) {
        let inner = e
            .into_inner()
            .expect("checked above that there is an inner error");
        return match inner.downcast::<targuard::Error>() {
            Ok(g) => Error::Guard(*g),
            Err(other) => Error::Stream(io::Error::other(other)),
        };
    }
    Error::Stream(e)
}

/// Normalise an entry name into components below the root. `.` and empty
/// components vanish, `..` removes the previous component, and climbing
/// above the root is an error. Leading `/` is dropped (names are relative
/// to the layer root).
pub fn clean_components(raw: &[u8]) -> Option<Vec<&[u8]>> {
    let mut out: Vec<&[u8]> = Vec::new();
    for comp in raw.split(|b| *b == b'/') {
        match comp {
            b"" | b"." => {}
            b".." => {
                out.pop()?;
            }
            c => out.push(c),
        }
    }
    Some(out)
}

fn join(components: &[&[u8]]) -> PathBuf {
    PathBuf::from(OsStr::from_bytes(&components.join(&b'/')))
}

struct Unpacker {
    root: OwnedFd,
    /// The last parent directory opened, by its normalised path.
    parent_cache: Option<(Vec<u8>, OwnedFd)>,
    /// Directories whose times are set at the end (children change them).
    dirs: Vec<(Vec<u8>, i64, i64)>,
    entries: u64,
    limits: Limits,
}

const OPAQUE_XATTR: &CStr = c"trusted.overlay.opaque";

impl Unpacker {
    fn entry<R: Read>(&mut self, mut entry: tar::Entry<'_, R>) -> Result<()> {
        self.entries += 1;
        if self.entries > self.limits.max_entries {
            return Err(Error::TooManyEntries(self.limits.max_entries));
        }
        let raw = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw).into_owned();
        let kind = entry.header().entry_type();
        if matches!(kind, tar::EntryType::XGlobalHeader) {
            return Ok(());
        }
        let comps = clean_components(&raw).ok_or_else(|| Error::Escape {
            entry: shown.clone(),
        })?;
        let e = |op: &'static str| {
            let entry = shown.clone();
            move |source| Error::Entry { entry, op, source }
        };
        if comps.is_empty() {
            // The layer root itself: take its metadata.
            if kind.is_dir() {
                let fd = sys::open_in_root(
                    self.root.as_fd(),
                    Path::new("."),
                    libc::O_RDONLY | libc::O_DIRECTORY,
                    0,
                )
                .map_err(e("open root"))?;
                set_owner_mode_fd(&entry, fd.as_fd()).map_err(e("set owner and mode"))?;
                let (s, ns) = pax_info(&mut entry).map_err(e("read extended header"))?.0;
                self.dirs.push((Vec::new(), s, ns));
                return Ok(());
            }
            return Err(Error::Escape { entry: shown });
        }
        let (name, parent) = comps.split_last().expect("checked non-empty above");
        let name_c = CString::new(*name).map_err(|_| Error::Escape {
            entry: shown.clone(),
        })?;

        // Whiteouts.
        if let Some(target) = name.strip_prefix(b".wh.") {
            let parent_fd = self.parent(parent).map_err(e("open parent directory"))?;
            if target == b".wh..opq" {
                let dir = sys::openat(
                    parent_fd.as_fd(),
                    c".",
                    libc::O_RDONLY | libc::O_DIRECTORY,
                    0,
                )
                .map_err(e("open opaque directory"))?;
                sys::fsetxattr(dir.as_fd(), OPAQUE_XATTR, b"y")
                    .map_err(e("mark directory opaque"))?;
                return Ok(());
            }
            if target.starts_with(b".wh.") {
                // Other AUFS metadata (`.wh..wh.plnk`, `.wh..wh.aufs`): not content.
                tracing::debug!(entry = %shown, "skipping aufs metadata entry");
                return Ok(());
            }
            if target.is_empty() || target == b"." || target == b".." {
                return Err(Error::BadWhiteout { entry: shown });
            }
            let t = CString::new(target).map_err(|_| Error::BadWhiteout {
                entry: shown.clone(),
            })?;
            self.remove_existing(parent_fd.as_fd(), &t, false)
                .map_err(e("remove whiteout target"))?;
            sys::mknodat(parent_fd.as_fd(), &t, libc::S_IFCHR, sys::makedev(0, 0))
                .map_err(e("create whiteout"))?;
            self.cache(parent, parent_fd);
            return Ok(());
        }

        let parent_fd = self.parent(parent).map_err(e("open parent directory"))?;
        let pfd = parent_fd.as_fd();
        let header = entry.header().clone();
        // Blank numeric fields mean 0, as GNU tar reads them.
        let uid = header.uid().unwrap_or(0) as u32;
        let gid = header.gid().unwrap_or(0) as u32;
        let mode = (header.mode().map_err(e("read mode"))? & 0o7777) as libc::mode_t;
        let ((ms, mns), xattrs) = pax_info(&mut entry).map_err(e("read extended header"))?;

        match kind {
            tar::EntryType::Directory => {
                match sys::lstatat(pfd, &name_c).map_err(e("stat"))? {
                    Some(st) if st.st_mode & libc::S_IFMT == libc::S_IFDIR => {}
                    Some(_) => {
                        self.remove_existing(pfd, &name_c, true)
                            .map_err(e("replace existing entry"))?;
                        sys::mkdirat(pfd, &name_c, 0o700).map_err(e("create directory"))?;
                    }
                    None => sys::mkdirat(pfd, &name_c, 0o700).map_err(e("create directory"))?,
                }
                let fd = sys::openat(pfd, &name_c, libc::O_RDONLY | libc::O_DIRECTORY, 0)
                    .map_err(e("open directory"))?;
                sys::fchown(fd.as_fd(), uid, gid).map_err(e("set owner"))?;
                sys::fchmod(fd.as_fd(), mode).map_err(e("set mode"))?;
                for (k, v) in &xattrs {
                    sys::fsetxattr(fd.as_fd(), k, v).map_err(e("set extended attribute"))?;
                }
                let mut path = parent.join(&b'/');
                if !path.is_empty() {
                    path.push(b'/');
                }
                path.extend_from_slice(name);
                self.dirs.push((path, ms, mns));
            }
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                self.remove_existing(pfd, &name_c, false)
                    .map_err(e("replace existing entry"))?;
                let fd = sys::openat(
                    pfd,
                    &name_c,
                    libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL,
                    0o600,
                )
                .map_err(e("create file"))?;
                let mut file = File::from(fd);
                if kind == tar::EntryType::GNUSparse {
                    copy_sparse(&mut entry, &mut file)
                        .map_err(|err| entry_read_error(&shown, err))?;
                } else {
                    copy_plain(&mut entry, &mut file)
                        .map_err(|err| entry_read_error(&shown, err))?;
                }
                sys::fchown(file.as_fd(), uid, gid).map_err(e("set owner"))?;
                sys::fchmod(file.as_fd(), mode).map_err(e("set mode"))?;
                for (k, v) in &xattrs {
                    sys::fsetxattr(file.as_fd(), k, v).map_err(e("set extended attribute"))?;
                }
                drop(file);
                sys::set_times_nofollow(pfd, &name_c, ms, mns).map_err(e("set times"))?;
            }
            tar::EntryType::Symlink => {
                let target = entry.link_name_bytes().ok_or_else(|| Error::Entry {
                    entry: shown.clone(),
                    op: "read symlink target",
                    source: io::Error::new(io::ErrorKind::InvalidData, "missing"),
                })?;
                let target = CString::new(target.into_owned()).map_err(|_| Error::Escape {
                    entry: shown.clone(),
                })?;
                self.remove_existing(pfd, &name_c, false)
                    .map_err(e("replace existing entry"))?;
                sys::symlinkat(&target, pfd, &name_c).map_err(e("create symlink"))?;
                sys::fchownat_nofollow(pfd, &name_c, uid, gid).map_err(e("set owner"))?;
                for (k, v) in &xattrs {
                    sys::lsetxattr_at(pfd, &name_c, k, v).map_err(e("set extended attribute"))?;
                }
                sys::set_times_nofollow(pfd, &name_c, ms, mns).map_err(e("set times"))?;
                // A symlink may now stand where a cached directory path led.
                self.parent_cache = None;
            }
            tar::EntryType::Link => {
                let raw_target = entry
                    .link_name_bytes()
                    .map(std::borrow::Cow::into_owned)
                    .unwrap_or_default();
                let tshown = String::from_utf8_lossy(&raw_target).into_owned();
                let tcomps = clean_components(&raw_target)
                    .filter(|c| !c.is_empty())
                    .ok_or_else(|| Error::HardlinkEscape {
                        entry: shown.clone(),
                        target: tshown.clone(),
                    })?;
                if tcomps == comps {
                    return Ok(());
                }
                let (tname, tparent) = tcomps.split_last().expect("checked non-empty above");
                let missing = || Error::HardlinkMissing {
                    entry: shown.clone(),
                    target: tshown.clone(),
                };
                let tparent_fd = match sys::open_in_root(
                    self.root.as_fd(),
                    &join(tparent),
                    libc::O_PATH | libc::O_DIRECTORY,
                    0,
                ) {
                    Ok(fd) => fd,
                    Err(err) if err.raw_os_error() == Some(libc::ENOENT) => return Err(missing()),
                    Err(err) => return Err(e("open hardlink target directory")(err)),
                };
                let tname_c = CString::new(*tname).map_err(|_| missing())?;
                if sys::lstatat(tparent_fd.as_fd(), &tname_c)
                    .map_err(e("stat hardlink target"))?
                    .is_none()
                {
                    return Err(missing());
                }
                self.remove_existing(pfd, &name_c, false)
                    .map_err(e("replace existing entry"))?;
                sys::linkat(tparent_fd.as_fd(), &tname_c, pfd, &name_c)
                    .map_err(e("create hardlink"))?;
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                let (major, minor) = if kind == tar::EntryType::Fifo {
                    (0, 0)
                } else {
                    (
                        header
                            .device_major()
                            .map_err(e("read device number"))?
                            .unwrap_or(0),
                        header
                            .device_minor()
                            .map_err(e("read device number"))?
                            .unwrap_or(0),
                    )
                };

                let fmt = match kind {
                    tar::EntryType::Char => libc::S_IFCHR,
                    tar::EntryType::Block => libc::S_IFBLK,
                    _ => libc::S_IFIFO,
                };
                self.remove_existing(pfd, &name_c, false)
                    .map_err(e("replace existing entry"))?;
                sys::mknodat(pfd, &name_c, fmt | 0o600, sys::makedev(major, minor))
                    .map_err(e("create device node"))?;
                sys::fchownat_nofollow(pfd, &name_c, uid, gid).map_err(e("set owner"))?;
                sys::fchmodat(pfd, &name_c, mode).map_err(e("set mode"))?;
                for (k, v) in &xattrs {
                    sys::lsetxattr_at(pfd, &name_c, k, v).map_err(e("set extended attribute"))?;
                }
                sys::set_times_nofollow(pfd, &name_c, ms, mns).map_err(e("set times"))?;
            }
            other => {
                return Err(Error::Unsupported {
                    entry: shown,
                    kind: other.as_byte() as char,
                });
            }
        }
        self.cache(parent, parent_fd);
        Ok(())
    }

    fn cache(&mut self, parent: &[&[u8]], fd: OwnedFd) {
        if self.parent_cache.is_none()
            || self
                .parent_cache
                .as_ref()
                .is_some_and(|(p, _)| *p != parent.join(&b'/'))
        {
            self.parent_cache = Some((parent.join(&b'/'), fd));
        } else if let Some((_, cached)) = self.parent_cache.as_mut() {
            *cached = fd;
        }
    }

    /// The parent directory of an entry, created (mode 0755, root-owned) if
    /// missing, always resolved inside the root.
    fn parent(&mut self, parent: &[&[u8]]) -> io::Result<OwnedFd> {
        let key = parent.join(&b'/');
        if let Some((p, _)) = &self.parent_cache {
            if *p == key {
                let (_, fd) = self.parent_cache.take().expect("checked above");
                return Ok(fd);
            }
        }
        let path = join(parent);
        match sys::open_in_root(
            self.root.as_fd(),
            &path,
            libc::O_PATH | libc::O_DIRECTORY,
            0,
        ) {
            Ok(fd) => return Ok(fd),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => return Err(e),
        }
        // Create the missing components one by one, each resolved from the
        // layer root so a symlink among them still resolves inside it.
        for i in 1..=parent.len() {
            let prefix = join(&parent[..i]);
            match sys::open_in_root(
                self.root.as_fd(),
                &prefix,
                libc::O_PATH | libc::O_DIRECTORY,
                0,
            ) {
                Ok(_) => continue,
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                Err(e) => return Err(e),
            }
            let up = sys::open_in_root(
                self.root.as_fd(),
                &join(&parent[..i - 1]),
                libc::O_PATH | libc::O_DIRECTORY,
                0,
            )?;
            let name = sys::cstr(OsStr::from_bytes(parent[i - 1]))?;
            match sys::mkdirat(up.as_fd(), &name, 0o755) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
                Err(e) => return Err(e),
            }
        }
        sys::open_in_root(
            self.root.as_fd(),
            &path,
            libc::O_PATH | libc::O_DIRECTORY,
            0,
        )
    }

    /// Remove whatever is at `dir/name` (recursively for a directory unless
    /// `keep_dir`), never following symlinks.
    fn remove_existing(
        &mut self,
        dir: BorrowedFd<'_>,
        name: &CStr,
        keep_dir: bool,
    ) -> io::Result<()> {
        let Some(st) = sys::lstatat(dir, name)? else {
            return Ok(());
        };
        if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
            if keep_dir {
                return Ok(());
            }
            self.parent_cache = None;
            remove_tree_at(dir, name)
        } else {
            sys::unlinkat(dir, name, false)
        }
    }

    fn finish_dirs(&mut self) -> Result<()> {
        self.parent_cache = None;
        let dirs = std::mem::take(&mut self.dirs);
        for (path, s, ns) in dirs.iter().rev() {
            let shown = String::from_utf8_lossy(path).into_owned();
            let e = |source| Error::Entry {
                entry: shown.clone(),
                op: "set directory times",
                source,
            };
            let comps = clean_components(path).unwrap_or_default();
            let (parent_fd, name) = match comps.split_last() {
                Some((name, parent)) => {
                    let fd = match sys::open_in_root(
                        self.root.as_fd(),
                        &join(parent),
                        libc::O_PATH | libc::O_DIRECTORY,
                        0,
                    ) {
                        Ok(fd) => fd,
                        // Removed again by a later entry.
                        Err(err) if err.raw_os_error() == Some(libc::ENOENT) => continue,
                        Err(err) => return Err(e(err)),
                    };
                    (
                        fd,
                        CString::new(*name).map_err(|_| Error::Escape {
                            entry: shown.clone(),
                        })?,
                    )
                }
                None => (
                    sys::open_in_root(
                        self.root.as_fd(),
                        Path::new("."),
                        libc::O_PATH | libc::O_DIRECTORY,
                        0,
                    )
                    .map_err(e)?,
                    CString::from(c"."),
                ),
            };
            match sys::set_times_nofollow(parent_fd.as_fd(), &name, *s, *ns) {
                Err(err) if err.raw_os_error() == Some(libc::ENOENT) => {}
                other => other.map_err(e)?,
            }
        }
        Ok(())
    }
}

fn set_owner_mode_fd<R: Read>(entry: &tar::Entry<'_, R>, fd: BorrowedFd<'_>) -> io::Result<()> {
    let h = entry.header();
    sys::fchown(fd, h.uid().unwrap_or(0) as u32, h.gid().unwrap_or(0) as u32)?;
    sys::fchmod(fd, (h.mode()? & 0o7777) as libc::mode_t)
}

fn entry_read_error(entry: &str, err: io::Error) -> Error {
    if err.get_ref().is_some_and(
        <dyn std::error::Error + std::marker::Send + std::marker::Sync + 'static>::is::<
            targuard::Error,
        >,
    ) {
        return stream_error(err);
    }
    if err.kind() == io::ErrorKind::UnexpectedEof
        || err.kind() == io::ErrorKind::InvalidData
        || err.kind() == io::ErrorKind::InvalidInput
    {
        return Error::Stream(err);
    }
    Error::Entry {
        entry: entry.to_string(),
        op: "write file data",
        source: err,
    }
}

/// Remove `dir/name` and everything below it without following symlinks.
pub fn remove_tree_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    let sub = sys::openat(dir, name, libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
    let listing = std::fs::read_dir(format!(
        "/proc/self/fd/{}",
        std::os::fd::AsRawFd::as_raw_fd(&sub)
    ))?;
    for child in listing {
        let child = child?;
        let cname = sys::cstr(child.file_name())?;
        if child.file_type()?.is_dir() {
            remove_tree_at(sub.as_fd(), &cname)?;
        } else {
            sys::unlinkat(sub.as_fd(), &cname, false)?;
        }
    }
    drop(sub);
    sys::unlinkat(dir, name, true)
}

/// The modification time (PAX `mtime` may carry a fraction) and the
/// `SCHILY.xattr.*` records we apply: `user.*` and `security.capability`.
/// Others (notably `trusted.*`, which would let a layer forge overlayfs
/// metadata) are dropped.
#[allow(clippy::type_complexity)]
fn pax_info<R: Read>(
    entry: &mut tar::Entry<'_, R>,
) -> io::Result<((i64, i64), Vec<(CString, Vec<u8>)>)> {
    let mut time = (entry.header().mtime().map_or(0, |m| m as i64), 0);
    let mut out = Vec::new();
    if let Some(pax) = entry.pax_extensions()? {
        for ext in pax {
            let ext = ext?;
            if ext.key_bytes() == b"mtime" {
                if let Some(t) = std::str::from_utf8(ext.value_bytes())
                    .ok()
                    .and_then(parse_pax_time)
                {
                    time = t;
                }
                continue;
            }
            let Some(name) = ext.key_bytes().strip_prefix(b"SCHILY.xattr.") else {
                continue;
            };
            if name.starts_with(b"user.") || name == b"security.capability" {
                if let Ok(c) = CString::new(name) {
                    out.push((c, ext.value_bytes().to_vec()));
                }
            } else {
                tracing::debug!(xattr = %String::from_utf8_lossy(name), "dropping extended attribute from layer");
            }
        }
    }
    Ok((time, out))
}

fn parse_pax_time(v: &str) -> Option<(i64, i64)> {
    let (s, frac) = v.split_once('.').unwrap_or((v, ""));
    let s = s.parse::<i64>().ok()?;
    let mut digits: String = frac.chars().take(9).filter(char::is_ascii_digit).collect();
    while digits.len() < 9 {
        digits.push('0');
    }
    Some((s, digits.parse::<i64>().unwrap_or(0)))
}

fn copy_plain(r: &mut impl Read, f: &mut File) -> io::Result<u64> {
    let mut buf = vec![0u8; 256 << 10];
    let mut total = 0;
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        f.write_all(&buf[..n])?;
        total += n as u64;
    }
}

/// Copy leaving holes where whole 4 KiB blocks are zero.
fn copy_sparse(r: &mut impl Read, f: &mut File) -> io::Result<u64> {
    const BLOCK: usize = 4096;
    let mut buf = vec![0u8; 256 << 10];
    let mut total: u64 = 0;
    loop {
        // Fill the buffer completely (or to EOF) so blocks stay aligned.
        let mut filled = 0;
        while filled < buf.len() {
            match r.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if filled == 0 {
            break;
        }
        for chunk in buf[..filled].chunks(BLOCK) {
            if chunk.iter().all(|b| *b == 0) {
                f.seek(SeekFrom::Current(chunk.len() as i64))?;
            } else {
                f.write_all(chunk)?;
            }
        }
        total += filled as u64;
        if filled < buf.len() {
            break;
        }
    }
    f.set_len(total)?;
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleans_names() {
        let c = |s: &str| {
            clean_components(s.as_bytes()).map(|v| {
                v.iter()
                    .map(|c| String::from_utf8_lossy(c).into_owned())
                    .collect::<Vec<_>>()
            })
        };
        assert_eq!(c("./a/b/").unwrap(), ["a", "b"]);
        assert_eq!(c("/etc/passwd").unwrap(), ["etc", "passwd"]);
        assert_eq!(c("a/../b").unwrap(), ["b"]);
        assert!(c("../x").is_none());
        assert!(c("a/../../x").is_none());
        assert!(c(".").unwrap().is_empty());
    }

    #[test]
    fn detects_compression() {
        assert_eq!(Compression::detect(&[0x1f, 0x8b, 8]), Ok(Compression::Gzip));
        assert_eq!(
            Compression::detect(&[0x28, 0xb5, 0x2f, 0xfd]),
            Ok(Compression::Zstd)
        );
        assert_eq!(Compression::detect(b"BZh9"), Err("bzip2"));
        assert_eq!(Compression::detect(b"bin/"), Ok(Compression::None));
    }
}
