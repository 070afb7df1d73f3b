//! Writing a directory tree as a tar stream: `export` of a container's
//! filesystem, and `commit` of an overlayfs upper directory as a layer, where
//! overlay whiteouts (character device 0/0) become `.wh.NAME` entries and
//! opaque directories (`trusted.overlay.opaque=y`) get `.wh..wh..opq`.
//!
//! Entries are sorted by name; hardlinked files are written once and linked
//! after; `user.*` and `security.capability` xattrs are kept. The tree must
//! not change while it is written (pause the container). This module does
//! not store anything.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use super::sys;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {op}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("writing the tar stream")]
    Write(#[source] io::Error),
    #[error("{0}: file changed size while being written")]
    Changed(PathBuf),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> Error + 'a {
    move |source| Error::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// How to read the tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A plain filesystem (a mounted container rootfs).
    Plain,
    /// An overlayfs upper directory: translate whiteouts and opaque dirs.
    OverlayUpper,
}

/// Write the tree under `root` as a tar stream to `w`.
pub fn write_tree(root: &Path, w: impl Write, mode: Mode) -> Result<()> {
    let mut b = tar::Builder::new(w);
    b.follow_symlinks(false);
    let mut links: HashMap<(u64, u64), PathBuf> = HashMap::new();
    walk(root, Path::new(""), &mut b, mode, &mut links)?;
    b.into_inner()
        .map_err(Error::Write)?
        .flush()
        .map_err(Error::Write)?;
    Ok(())
}

fn base_header(meta: &fs::Metadata, kind: tar::EntryType) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(meta.mode() & 0o7777);
    h.set_uid(u64::from(meta.uid()));
    h.set_gid(u64::from(meta.gid()));
    h.set_mtime(meta.mtime().max(0) as u64);
    h.set_size(0);
    h
}

fn xattr_records(path: &Path) -> Result<Vec<(String, Vec<u8>)>> {
    let mut out = Vec::new();
    for name in sys::llistxattr(path).map_err(io_err("list extended attributes", path))? {
        let n = name.to_bytes();
        if !(n.starts_with(b"user.") || n == b"security.capability") {
            continue;
        }
        if let Some(v) =
            sys::lgetxattr(path, &name).map_err(io_err("read extended attribute", path))?
        {
            out.push((format!("SCHILY.xattr.{}", String::from_utf8_lossy(n)), v));
        }
    }
    Ok(out)
}

fn walk<W: Write>(
    root: &Path,
    rel: &Path,
    b: &mut tar::Builder<W>,
    mode: Mode,
    links: &mut HashMap<(u64, u64), PathBuf>,
) -> Result<()> {
    let dir = root.join(rel);
    let mut names: Vec<_> = fs::read_dir(&dir)
        .map_err(io_err("read directory", &dir))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<io::Result<_>>()
        .map_err(io_err("read directory", &dir))?;
    names.sort_by(|a, c| a.as_bytes().cmp(c.as_bytes()));
    for name in names {
        let path = dir.join(&name);
        let relp = rel.join(&name);
        let meta = fs::symlink_metadata(&path).map_err(io_err("stat", &path))?;
        let ft = meta.file_type();
        let pax = xattr_records(&path)?;
        if !pax.is_empty() {
            b.append_pax_extensions(pax.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
                .map_err(Error::Write)?;
        }
        if ft.is_dir() {
            let mut h = base_header(&meta, tar::EntryType::Directory);
            let mut p = relp.clone().into_os_string();
            p.push("/");
            b.append_data(&mut h, &p, io::empty())
                .map_err(Error::Write)?;
            if mode == Mode::OverlayUpper
                && sys::lgetxattr(&path, c"trusted.overlay.opaque")
                    .map_err(io_err("read opaque flag", &path))?
                    .as_deref()
                    == Some(b"y")
            {
                let mut h = base_header(&meta, tar::EntryType::Regular);
                h.set_mode(0o644);
                b.append_data(&mut h, relp.join(".wh..wh..opq"), io::empty())
                    .map_err(Error::Write)?;
            }
            walk(root, &relp, b, mode, links)?;
        } else if ft.is_file() {
            if meta.nlink() > 1 {
                let key = (meta.dev(), meta.ino());
                if let Some(first) = links.get(&key) {
                    let mut h = base_header(&meta, tar::EntryType::Link);
                    b.append_link(&mut h, &relp, first).map_err(Error::Write)?;
                    continue;
                }
                links.insert(key, relp.clone());
            }
            let mut h = base_header(&meta, tar::EntryType::Regular);
            h.set_size(meta.len());
            let f = fs::File::open(&path).map_err(io_err("open", &path))?;
            let mut r = f.take(meta.len());
            let mut counted = Counter { r: &mut r, n: 0 };
            b.append_data(&mut h, &relp, &mut counted)
                .map_err(Error::Write)?;
            if counted.n != meta.len() {
                return Err(Error::Changed(path));
            }
        } else if ft.is_symlink() {
            let target = fs::read_link(&path).map_err(io_err("read symlink", &path))?;
            let mut h = base_header(&meta, tar::EntryType::Symlink);
            b.append_link(&mut h, &relp, &target)
                .map_err(Error::Write)?;
        } else if ft.is_char_device() && mode == Mode::OverlayUpper && meta.rdev() == 0 {
            let mut h = base_header(&meta, tar::EntryType::Regular);
            h.set_mode(0o644);
            let mut wh = std::ffi::OsString::from(".wh.");
            wh.push(&name);
            b.append_data(&mut h, rel.join(wh), io::empty())
                .map_err(Error::Write)?;
        } else if ft.is_char_device() || ft.is_block_device() || ft.is_fifo() {
            let kind = if ft.is_char_device() {
                tar::EntryType::Char
            } else if ft.is_block_device() {
                tar::EntryType::Block
            } else {
                tar::EntryType::Fifo
            };
            let mut h = base_header(&meta, kind);
            let (major, minor) = sys::major_minor(meta.rdev());
            h.set_device_major(major).map_err(Error::Write)?;
            h.set_device_minor(minor).map_err(Error::Write)?;
            b.append_data(&mut h, &relp, io::empty())
                .map_err(Error::Write)?;
        } else {
            tracing::debug!(path = %path.display(), "skipping socket");
        }
    }
    Ok(())
}

struct Counter<'a, R> {
    r: &'a mut R,
    n: u64,
}

impl<R: Read> Read for Counter<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.r.read(buf)?;
        self.n += n as u64;
        Ok(n)
    }
}
