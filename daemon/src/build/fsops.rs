//! File operations of the builder that touch untrusted trees: the build
//! context tar, trees a COPY reads and the root file system a COPY or ADD
//! writes into, and tar archives ADD unpacks.
//!
//! Every path is resolved inside its root with `openat2(RESOLVE_IN_ROOT)`,
//! so a symlink or `..` in a context, an image or an archive can never lead
//! outside it. Once a directory is resolved, entries are created below it
//! one name at a time, and an existing non-directory in the way is removed
//! rather than written through. This module decides nothing about what to
//! copy (that is the executor's job); it only does it safely.

use std::ffi::OsStr;
use std::fs;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use crate::images::layer::clean_components;
use crate::images::sys;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {op}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("archive entry {0:?} escapes the destination")]
    Escapes(String),
    #[error("reading the archive")]
    Archive(#[source] io::Error),
    #[error(
        "archive entry {name:?}: hard link target {target:?} is not a file inside the archive root"
    )]
    BadLink { name: String, target: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

fn io_err(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io { op, path, source }
}

/// Split a path (absolute or relative, possibly with `..`) into its
/// normal components, clamping `..` at the root, as path resolution
/// inside a root does.
pub fn clean_in_root(p: &str) -> PathBuf {
    let mut out = PathBuf::new();
    for c in Path::new(p).components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    out
}

/// Whether a relative path climbs above its start (`../x`, `a/../../x`).
pub fn escapes(p: &str) -> bool {
    let mut depth: i64 = 0;
    for c in Path::new(p).components() {
        match c {
            Component::Normal(_) => depth += 1,
            Component::ParentDir => {
                depth -= 1;
                if depth < 0 {
                    return true;
                }
            }
            Component::RootDir => depth = 0,
            _ => {}
        }
    }
    false
}

/// A directory handle that all resolution is confined to.
pub struct Root {
    path: PathBuf,
    fd: OwnedFd,
}

impl Root {
    pub fn open(path: &Path) -> Result<Root> {
        let fd = sys::open_dir_path(path).map_err(io_err("open root", path))?;
        Ok(Root {
            path: path.to_path_buf(),
            fd,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The host path `rel` resolves to inside the root (following symlinks
    /// as if the root were `/`), or `None` when it does not exist.
    pub fn resolve(&self, rel: &Path) -> Result<Option<PathBuf>> {
        match sys::open_in_root(self.fd.as_fd(), rel, libc::O_PATH, 0) {
            Ok(fd) => Ok(Some(fd_path(&fd).map_err(io_err("resolve", rel))?)),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
            Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => Ok(None),
            Err(e) => Err(io_err("resolve", self.path.join(rel))(e)),
        }
    }

    /// Like [`Root::resolve`] but the last component is not followed when it
    /// is a symlink: the host path of the entry itself.
    pub fn resolve_nofollow(&self, rel: &Path) -> Result<Option<PathBuf>> {
        let Some(name) = rel.file_name() else {
            return self.resolve(rel);
        };
        let parent = rel.parent().unwrap_or(Path::new(""));
        let Some(dir) = self.resolve(parent)? else {
            return Ok(None);
        };
        if !dir.is_dir() {
            return Ok(None);
        }
        let p = dir.join(name);
        Ok(p.symlink_metadata().is_ok().then_some(p))
    }

    /// Make sure the directory `rel` exists inside the root, creating the
    /// missing components (mode 0755, owned by `owner` when given), and
    /// return its host path. A non-directory in the way is an error.
    pub fn mkdir_all(&self, rel: &Path, owner: Option<(u32, u32)>) -> Result<PathBuf> {
        let mut cur = PathBuf::new();
        let mut host = self
            .path
            .canonicalize()
            .map_err(io_err("open root", &self.path))?;
        for c in rel.components() {
            let Component::Normal(name) = c else { continue };
            cur.push(name);
            match self.resolve(&cur)? {
                Some(p) if p.is_dir() => host = p,
                Some(p) => {
                    return Err(Error::Io {
                        op: "create directory",
                        path: p,
                        source: io::Error::from_raw_os_error(libc::ENOTDIR),
                    });
                }
                None => {
                    // The parent resolved to `host`; the name is one
                    // component, so nothing can redirect it.
                    let p = host.join(name);
                    if p.symlink_metadata().is_ok() {
                        // A dangling symlink: replace it with the directory.
                        fs::remove_file(&p).map_err(io_err("remove", &p))?;
                    }
                    fs::create_dir(&p).map_err(io_err("create directory", &p))?;
                    fs::set_permissions(&p, fs::Permissions::from_mode(0o755))
                        .map_err(io_err("chmod", &p))?;
                    if let Some((u, g)) = owner {
                        std::os::unix::fs::lchown(&p, Some(u), Some(g))
                            .map_err(io_err("chown", &p))?;
                    }
                    host = p;
                }
            }
        }
        Ok(host)
    }
}

/// The host path of an open descriptor.
fn fd_path(fd: &OwnedFd) -> io::Result<PathBuf> {
    fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// Remove whatever is at `p` (not following a symlink), if anything.
pub fn remove_entry(p: &Path) -> Result<()> {
    match p.symlink_metadata() {
        Ok(m) if m.is_dir() => fs::remove_dir_all(p).map_err(io_err("remove", p)),
        Ok(_) => fs::remove_file(p).map_err(io_err("remove", p)),
        Err(_) => Ok(()),
    }
}

/// Copy one entry (file, symlink or directory tree) from host path `src`
/// to host path `dst`, whose parent exists. Symlinks inside are copied as
/// symlinks, never followed. `map` gives each entry's owner and mode from
/// its source metadata; `skip` is asked with the path relative to `src`.
pub fn copy_tree(
    src: &Path,
    dst: &Path,
    map: &dyn Fn(&fs::Metadata) -> (u32, u32, u32),
    skip: &dyn Fn(&Path) -> bool,
) -> Result<u64> {
    copy_entry(src, dst, Path::new(""), map, skip)
}

fn copy_entry(
    src: &Path,
    dst: &Path,
    rel: &Path,
    map: &dyn Fn(&fs::Metadata) -> (u32, u32, u32),
    skip: &dyn Fn(&Path) -> bool,
) -> Result<u64> {
    let meta = src.symlink_metadata().map_err(io_err("stat", src))?;
    let (uid, gid, mode) = map(&meta);
    let ft = meta.file_type();
    let mut count = 1;
    if ft.is_dir() {
        match dst.symlink_metadata() {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                fs::remove_file(dst).map_err(io_err("remove", dst))?;
                fs::create_dir(dst).map_err(io_err("create directory", dst))?;
            }
            Err(_) => fs::create_dir(dst).map_err(io_err("create directory", dst))?,
        }
        let mut names: Vec<_> = fs::read_dir(src)
            .map_err(io_err("read directory", src))?
            .filter_map(std::result::Result::ok)
            .map(|e| e.file_name())
            .collect();
        names.sort();
        for n in names {
            let r = rel.join(&n);
            if skip(&r) {
                continue;
            }
            count += copy_entry(&src.join(&n), &dst.join(&n), &r, map, skip)?;
        }
        std::os::unix::fs::lchown(dst, Some(uid), Some(gid)).map_err(io_err("chown", dst))?;
        fs::set_permissions(dst, fs::Permissions::from_mode(mode)).map_err(io_err("chmod", dst))?;
        set_mtime(dst, &meta);
        return Ok(count);
    }
    remove_entry(dst)?;
    if ft.is_symlink() {
        let target = fs::read_link(src).map_err(io_err("read link", src))?;
        std::os::unix::fs::symlink(&target, dst).map_err(io_err("create symlink", dst))?;
        std::os::unix::fs::lchown(dst, Some(uid), Some(gid)).map_err(io_err("chown", dst))?;
        return Ok(count);
    }
    if ft.is_file() {
        let mut from = fs::File::open(src).map_err(io_err("open", src))?;
        let mut to = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(dst)
            .map_err(io_err("create", dst))?;
        io::copy(&mut from, &mut to).map_err(io_err("copy", dst))?;
        drop(to);
        std::os::unix::fs::lchown(dst, Some(uid), Some(gid)).map_err(io_err("chown", dst))?;
        fs::set_permissions(dst, fs::Permissions::from_mode(mode)).map_err(io_err("chmod", dst))?;
        set_mtime(dst, &meta);
        return Ok(count);
    }
    // Devices, fifos and sockets are not copied.
    Ok(0)
}

fn set_mtime(p: &Path, meta: &fs::Metadata) {
    let t = filetime(meta.mtime(), meta.mtime_nsec());
    let Ok(c) = sys::cstr(p) else { return };
    let times = [t, t];
    // SAFETY: `c` is a valid C string and `times` two valid timespecs for the call.
    unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        );
    }
}

fn filetime(secs: i64, nsec: i64) -> libc::timespec {
    libc::timespec {
        tv_sec: secs as libc::time_t,
        tv_nsec: nsec as libc::c_long,
    }
}

/// What [`extract`] does with entry metadata.
#[derive(Debug, Clone, Copy)]
pub struct ExtractOptions {
    /// Keep the archive's owners (ADD) instead of root (the context).
    pub keep_owner: bool,
    /// Override every entry's owner.
    pub owner: Option<(u32, u32)>,
}

/// Unpack a tar stream into the directory `root`, every name resolved
/// inside it. Entries that climb out of the root are an error; symlinks
/// are created as written and resolved inside the root when later entries
/// pass through them; hard links must point at an existing file inside the
/// root. Devices, fifos and whiteout-like names get no special meaning.
pub fn extract(reader: impl Read, root_dir: &Path, o: ExtractOptions) -> Result<u64> {
    let root = Root::open(root_dir)?;
    let mut archive = tar::Archive::new(reader);
    let mut n = 0;
    let mut dirs: Vec<(PathBuf, u32, i64)> = Vec::new();
    for entry in archive.entries().map_err(Error::Archive)? {
        let mut entry = entry.map_err(Error::Archive)?;
        let raw = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw).into_owned();
        let Some(comps) = clean_components(&raw) else {
            return Err(Error::Escapes(shown));
        };
        if comps.is_empty() {
            continue;
        }
        let rel: PathBuf = comps.iter().map(|c| OsStr::from_bytes(c)).collect();
        let name = rel
            .file_name()
            .expect("non-empty components")
            .to_os_string();
        let parent = root.mkdir_all(rel.parent().unwrap_or(Path::new("")), None)?;
        let dst = parent.join(&name);
        let h = entry.header();
        let mode = h.mode().unwrap_or(0o644) & 0o7777;
        let (uid, gid) = match (o.owner, o.keep_owner) {
            (Some(ow), _) => ow,
            (None, true) => (h.uid().unwrap_or(0) as u32, h.gid().unwrap_or(0) as u32),
            (None, false) => (0, 0),
        };
        let mtime = h.mtime().unwrap_or(0) as i64;
        let kind = h.entry_type();
        match kind {
            tar::EntryType::Directory => {
                match dst.symlink_metadata() {
                    Ok(m) if m.is_dir() => {}
                    Ok(_) => {
                        fs::remove_file(&dst).map_err(io_err("remove", &dst))?;
                        fs::create_dir(&dst).map_err(io_err("create directory", &dst))?;
                    }
                    Err(_) => fs::create_dir(&dst).map_err(io_err("create directory", &dst))?,
                }
                std::os::unix::fs::lchown(&dst, Some(uid), Some(gid))
                    .map_err(io_err("chown", &dst))?;
                dirs.push((dst, mode, mtime));
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                remove_entry(&dst)?;
                let mut f = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&dst)
                    .map_err(io_err("create", &dst))?;
                io::copy(&mut entry, &mut f).map_err(Error::Archive)?;
                drop(f);
                std::os::unix::fs::lchown(&dst, Some(uid), Some(gid))
                    .map_err(io_err("chown", &dst))?;
                fs::set_permissions(&dst, fs::Permissions::from_mode(mode))
                    .map_err(io_err("chmod", &dst))?;
                set_times(&dst, mtime);
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .map(|b| OsStr::from_bytes(&b).to_os_string())
                    .unwrap_or_default();
                remove_entry(&dst)?;
                std::os::unix::fs::symlink(&target, &dst)
                    .map_err(io_err("create symlink", &dst))?;
                std::os::unix::fs::lchown(&dst, Some(uid), Some(gid))
                    .map_err(io_err("chown", &dst))?;
            }
            tar::EntryType::Link => {
                let target_raw = entry.link_name_bytes().unwrap_or_default().into_owned();
                let target_shown = String::from_utf8_lossy(&target_raw).into_owned();
                let bad = || Error::BadLink {
                    name: shown.clone(),
                    target: target_shown.clone(),
                };
                let Some(tc) = clean_components(&target_raw) else {
                    return Err(bad());
                };
                let trel: PathBuf = tc.iter().map(|c| OsStr::from_bytes(c)).collect();
                let Some(src) = root.resolve_nofollow(&trel)? else {
                    return Err(bad());
                };
                if !src.symlink_metadata().is_ok_and(|m| m.is_file()) {
                    return Err(bad());
                }
                remove_entry(&dst)?;
                fs::hard_link(&src, &dst).map_err(io_err("create hard link", &dst))?;
            }
            // Devices, fifos, extended headers: nothing to create.
            _ => continue,
        }
        n += 1;
    }
    // Directory modes last, so a read-only directory can still be filled.
    for (d, mode, mtime) in dirs.iter().rev() {
        fs::set_permissions(d, fs::Permissions::from_mode(*mode)).map_err(io_err("chmod", d))?;
        set_times(d, *mtime);
    }
    Ok(n)
}

fn set_times(p: &Path, mtime: i64) {
    let Ok(c) = sys::cstr(p) else { return };
    let t = filetime(mtime, 0);
    let times = [t, t];
    // SAFETY: `c` is a valid C string and `times` two valid timespecs for the call.
    unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        );
    }
}

/// Whether a file starts like a tar archive we unpack (plain, gzip, bzip2
/// or xz), by content as Docker decides it. Returns the compression.
pub fn sniff_archive(path: &Path) -> Option<&'static str> {
    let mut head = [0u8; 512];
    let mut f = fs::File::open(path).ok()?;
    let mut got = 0;
    while got < head.len() {
        match f.read(&mut head[got..]) {
            Ok(0) => break,
            Ok(k) => got += k,
            Err(_) => return None,
        }
    }
    let h = &head[..got];
    if h.starts_with(&[0x1f, 0x8b]) {
        return Some("gzip");
    }
    if h.starts_with(b"BZh") || h.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        // Recognised but not supported by this builder: copied as a file.
        return None;
    }
    if got >= 262 && &h[257..262] == b"ustar" {
        return Some("tar");
    }
    None
}

/// Sum of a tree's content for cache keys: names, types, modes and file
/// contents (not times, not owners), in a stable order.
pub fn checksum_tree(p: &Path, h: &mut sha2::Sha256, skip: &dyn Fn(&Path) -> bool) -> Result<()> {
    checksum_entry(p, Path::new(""), h, skip)
}

fn checksum_entry(
    p: &Path,
    rel: &Path,
    h: &mut sha2::Sha256,
    skip: &dyn Fn(&Path) -> bool,
) -> Result<()> {
    use sha2::Digest as _;
    let meta = p.symlink_metadata().map_err(io_err("stat", p))?;
    h.update(rel.as_os_str().as_bytes());
    h.update([0]);
    h.update(format!("{:o}", meta.mode()).as_bytes());
    h.update([0]);
    let ft = meta.file_type();
    if ft.is_symlink() {
        let t = fs::read_link(p).map_err(io_err("read link", p))?;
        h.update(t.as_os_str().as_bytes());
    } else if ft.is_file() {
        h.update(meta.len().to_le_bytes());
        let mut f = fs::File::open(p).map_err(io_err("open", p))?;
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let k = f.read(&mut buf).map_err(io_err("read", p))?;
            if k == 0 {
                break;
            }
            h.update(&buf[..k]);
        }
    } else if ft.is_dir() {
        let mut names: Vec<_> = fs::read_dir(p)
            .map_err(io_err("read directory", p))?
            .filter_map(std::result::Result::ok)
            .map(|e| e.file_name())
            .collect();
        names.sort();
        for n in names {
            let r = rel.join(&n);
            if skip(&r) {
                continue;
            }
            checksum_entry(&p.join(&n), &r, h, skip)?;
        }
    }
    h.update([0xff]);
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn tar_with(entries: &[(&str, tar::EntryType, &[u8], &str)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, kind, data, link) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*kind);
            h.set_mode(0o644);
            h.set_size(data.len() as u64);
            // Write raw names so `..` survives the builder's checks.
            let raw = name.as_bytes();
            h.as_old_mut().name[..raw.len()].copy_from_slice(raw);
            if !link.is_empty() {
                h.set_link_name(link).unwrap();
            }
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    /// A context's copy: owners become root.
    const PLAIN: ExtractOptions = ExtractOptions {
        keep_owner: false,
        owner: None,
    };

    #[test]
    fn dotdot_entries_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        fs::create_dir(&root).unwrap();
        let t = tar_with(&[("../escape", tar::EntryType::Regular, b"x", "")]);
        let e = extract(&t[..], &root, PLAIN);
        assert!(matches!(e, Err(Error::Escapes(_))), "{e:?}");
        assert!(!dir.path().join("escape").exists());
    }

    #[test]
    fn symlink_then_write_through_stays_inside() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let outside = dir.path().join("outside");
        fs::create_dir(&root).unwrap();
        fs::create_dir(&outside).unwrap();
        let link_target = outside.to_str().unwrap().to_string();
        let t = tar_with(&[
            ("evil", tar::EntryType::Symlink, b"", &link_target),
            ("evil/pwned", tar::EntryType::Regular, b"x", ""),
            ("up", tar::EntryType::Symlink, b"", "../../.."),
            ("up/pwned2", tar::EntryType::Regular, b"y", ""),
        ]);
        extract(&t[..], &root, PLAIN).unwrap();
        assert!(!outside.join("pwned").exists());
        assert!(!dir.path().join("pwned2").exists());
        // Both landed inside the root: the dangling link was replaced by a
        // directory, the climbing one resolves to the root itself.
        assert!(root.join("evil/pwned").exists());
        assert!(root.join("pwned2").exists());
    }

    #[test]
    fn hardlink_outside_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        fs::create_dir(&root).unwrap();
        let t = tar_with(&[("h", tar::EntryType::Link, b"", "../../etc/passwd")]);
        let e = extract(&t[..], &root, PLAIN);
        assert!(e.is_err());
        assert!(!root.join("h").exists());
    }

    #[test]
    fn escapes_detects_climbing() {
        assert!(escapes("../x"));
        assert!(escapes("a/../../x"));
        assert!(!escapes("a/../x"));
        assert!(!escapes("/x"));
        assert_eq!(clean_in_root("/../a/./b/../c"), PathBuf::from("a/c"));
    }
}
