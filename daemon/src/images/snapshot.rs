//! Snapshots: one read-only directory per layer chain ID under
//! `snapshots/<hex>`, shared by every image whose layer chain has that
//! prefix, and the overlay mounts that stack them into a container rootfs.
//!
//! A snapshot is unpacked into `snapshots/.tmp-*`, made durable with
//! `syncfs`, and renamed to its chain ID; removal renames it to
//! `snapshots/.del-*` first, so a name that exists is always complete. The
//! database decides which snapshots are referenced; this module never
//! deletes on its own except leftovers of interrupted work.
//!
//! Mounting: classic `mount(2)` takes at most one page of option data, which
//! a long `lowerdir=` list overflows (about 40 layers with paths under
//! /var/lib/vessel). [`mount`] therefore uses the new mount API and adds one
//! lower directory per `fsconfig(FSCONFIG_SET_STRING, "lowerdir+", path)`
//! call (Linux 6.8+), which has no total length limit. On older kernels it
//! falls back to `mount(2)`; when the option string would not fit in a page
//! it creates a scratch directory of symlinks with one- or two-character
//! names next to the target and mounts from a forked child whose working
//! directory is that scratch directory, so the option string holds only the
//! short relative names (overlay resolves them once, at mount time) and this
//! process's working directory never changes. The symlinks are removed
//! right after.

use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::digest::Digest;
use super::sys;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("snapshot {path}: {op}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("mount {target}: {op}")]
    Mount {
        op: &'static str,
        target: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("mount: no lower directories given")]
    NoLayers,
    #[error("mount: path {0} contains a character overlayfs cannot take (',' ':' or newline)")]
    BadPath(PathBuf),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> Error + 'a {
    move |source| Error::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// The chain IDs of a stack of layers, bottom first:
/// `chain(0) = diff(0)`, `chain(n) = sha256(chain(n-1) + " " + diff(n))`.
pub fn chain_ids(diff_ids: &[Digest]) -> Vec<Digest> {
    let mut out: Vec<Digest> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(prev) => Digest::sha256_of(format!("{prev} {d}").as_bytes()),
        };
        out.push(next);
    }
    out
}

/// The snapshot directories under one store.
#[derive(Debug)]
pub struct Snapshots {
    root: PathBuf,
    counter: AtomicU64,
}

/// A snapshot being unpacked; removed on drop unless committed.
#[derive(Debug)]
pub struct TempSnapshot {
    path: PathBuf,
    done: bool,
}

impl TempSnapshot {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempSnapshot {
    fn drop(&mut self) {
        if !self.done {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

impl Snapshots {
    /// Open `root` and remove leftovers of interrupted unpacking or removal.
    pub fn open(root: &Path) -> Result<Snapshots> {
        fs::create_dir_all(root).map_err(io_err("create directory", root))?;
        for entry in fs::read_dir(root).map_err(io_err("read directory", root))? {
            let entry = entry.map_err(io_err("read directory", root))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with(".tmp-") || name.starts_with(".del-") {
                tracing::info!(path = %entry.path().display(), "removing leftover snapshot directory");
                fs::remove_dir_all(entry.path())
                    .map_err(io_err("remove leftover", &entry.path()))?;
            }
        }
        Ok(Snapshots {
            root: root.to_path_buf(),
            counter: AtomicU64::new(0),
        })
    }

    pub fn path(&self, chain: &Digest) -> PathBuf {
        self.root.join(chain.hex())
    }

    /// A fresh empty directory to unpack into.
    pub fn temp(&self) -> Result<TempSnapshot> {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let path = self.root.join(format!(".tmp-{}-{n}", std::process::id()));
        fs::create_dir(&path).map_err(io_err("create directory", &path))?;
        Ok(TempSnapshot { path, done: false })
    }

    /// Flush everything written to the snapshot filesystem.
    pub fn sync(&self) -> Result<()> {
        let dir = fs::File::open(&self.root).map_err(io_err("open", &self.root))?;
        sys::syncfs(dir.as_fd()).map_err(io_err("syncfs", &self.root))
    }

    /// Move an unpacked (and synced) snapshot into place under `chain`,
    /// replacing an unreferenced directory of that name left by a crash.
    pub fn commit(&self, mut tmp: TempSnapshot, chain: &Digest) -> Result<()> {
        let dest = self.path(chain);
        if dest.exists() {
            self.remove(chain)?;
        }
        fs::rename(&tmp.path, &dest).map_err(io_err("move into place", &dest))?;
        tmp.done = true;
        sys::fsync_dir(&self.root).map_err(io_err("fsync", &self.root))
    }

    /// Remove the snapshot directory of `chain` if it exists.
    pub fn remove(&self, chain: &Digest) -> Result<()> {
        let path = self.path(chain);
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let del = self
            .root
            .join(format!(".del-{}-{}-{n}", chain.hex(), std::process::id()));
        match fs::rename(&path, &del) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err("rename for removal", &path)(e)),
        }
        fs::remove_dir_all(&del).map_err(io_err("remove", &del))
    }

    /// Chain IDs that have a directory.
    pub fn list(&self) -> Result<Vec<Digest>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.root).map_err(io_err("read directory", &self.root))? {
            let entry = entry.map_err(io_err("read directory", &self.root))?;
            if let Ok(d) = format!("sha256:{}", entry.file_name().to_string_lossy()).parse() {
                out.push(d);
            }
        }
        out.sort();
        Ok(out)
    }
}

/// A mount as plain data, for whoever assembles a container rootfs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// `overlay` or `bind`.
    pub fstype: String,
    pub source: PathBuf,
    /// Overlay: lower directories, topmost first. Empty for a bind mount.
    pub lowerdirs: Vec<PathBuf>,
    pub upperdir: Option<PathBuf>,
    pub workdir: Option<PathBuf>,
    pub read_only: bool,
}

impl Mount {
    /// The mount for a stack of layers (topmost first) with an optional
    /// writable upper/work pair.
    pub fn for_layers(lowerdirs: Vec<PathBuf>, upper_work: Option<(PathBuf, PathBuf)>) -> Mount {
        let (upperdir, workdir) = upper_work.map_or((None, None), |(u, w)| (Some(u), Some(w)));
        if lowerdirs.len() == 1 && upperdir.is_none() {
            return Mount {
                fstype: "bind".into(),
                source: lowerdirs[0].clone(),
                lowerdirs: Vec::new(),
                upperdir: None,
                workdir: None,
                read_only: true,
            };
        }
        Mount {
            fstype: "overlay".into(),
            source: PathBuf::from("overlay"),
            read_only: upperdir.is_none(),
            lowerdirs,
            upperdir,
            workdir,
        }
    }

    /// Mount options in the classic `mount(2)` form (may exceed a page).
    pub fn options(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.fstype == "bind" {
            out.push("rbind".into());
        }
        if self.read_only {
            out.push("ro".into());
        }
        if !self.lowerdirs.is_empty() {
            let l: Vec<String> = self
                .lowerdirs
                .iter()
                .map(|p| p.display().to_string())
                .collect();
            out.push(format!("lowerdir={}", l.join(":")));
        }
        if let Some(u) = &self.upperdir {
            out.push(format!("upperdir={}", u.display()));
        }
        if let Some(w) = &self.workdir {
            out.push(format!("workdir={}", w.display()));
        }
        out
    }
}

/// How [`mount`] attached an overlay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// New mount API, one `lowerdir+` per layer.
    LowerdirPlus,
    /// Classic `mount(2)` with full paths.
    Classic,
    /// Classic `mount(2)` through short symlink names.
    ClassicShortLinks,
    Bind,
}

/// Mount `m` at `target`.
pub fn mount(m: &Mount, target: &Path) -> Result<Method> {
    mount_with(m, target, false)
}

/// Like [`mount`]; `classic_only` skips the new mount API (to exercise the
/// fallback for kernels before 6.8).
pub fn mount_with(m: &Mount, target: &Path, classic_only: bool) -> Result<Method> {
    let merr = |op| {
        move |source| Error::Mount {
            op,
            target: target.to_path_buf(),
            source,
        }
    };
    if m.fstype == "bind" {
        let src = m.source.to_string_lossy();
        sys::mount(&src, target, "", libc::MS_BIND | libc::MS_REC, None)
            .map_err(merr("bind mount"))?;
        if m.read_only {
            sys::mount(
                "",
                target,
                "",
                libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_REC,
                None,
            )
            .map_err(merr("remount read-only"))?;
        }
        return Ok(Method::Bind);
    }
    if m.lowerdirs.is_empty() {
        return Err(Error::NoLayers);
    }
    for p in m.lowerdirs.iter().chain(&m.upperdir).chain(&m.workdir) {
        if p.as_os_str()
            .as_bytes()
            .iter()
            .any(|b| matches!(b, b',' | b':' | b'\n'))
        {
            return Err(Error::BadPath(p.clone()));
        }
    }
    if !classic_only {
        match mount_lowerdir_plus(m, target) {
            Ok(()) => return Ok(Method::LowerdirPlus),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP)
                ) =>
            {
                tracing::debug!(error = %e, "overlay lowerdir+ unavailable, using mount(2)");
            }
            Err(e) => return Err(merr("mount overlay")(e)),
        }
    }
    let flags = if m.read_only { libc::MS_RDONLY } else { 0 };
    let data = classic_data(m, &m.lowerdirs);
    if data.len() < sys::page_size() {
        sys::mount("overlay", target, "overlay", flags, Some(&data))
            .map_err(merr("mount overlay"))?;
        return Ok(Method::Classic);
    }
    // Too long for one page: mount through short relative symlink names,
    // from a child process whose working directory holds the links.
    let target = std::path::absolute(target).map_err(merr("resolve target"))?;
    let parent = target.parent().unwrap_or(Path::new("/"));
    let links = parent.join(format!(
        ".ovl-{}-{}",
        std::process::id(),
        LINKS.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = fs::remove_dir_all(&links);
    fs::create_dir(&links).map_err(merr("create short-link directory"))?;
    let result = (|| {
        let mut short = Vec::with_capacity(m.lowerdirs.len());
        for (i, l) in m.lowerdirs.iter().enumerate() {
            let name = base36(i);
            std::os::unix::fs::symlink(std::path::absolute(l)?, links.join(&name))?;
            short.push(PathBuf::from(name));
        }
        let mut abs = m.clone();
        abs.upperdir = m.upperdir.as_deref().map(std::path::absolute).transpose()?;
        abs.workdir = m.workdir.as_deref().map(std::path::absolute).transpose()?;
        let data = classic_data(&abs, &short);
        if data.len() >= sys::page_size() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{} layers do not fit in one page of mount options",
                    m.lowerdirs.len()
                ),
            ));
        }
        sys::mount_overlay_in_dir(&links, &target, flags, &data)
    })();
    let _ = fs::remove_dir_all(&links);
    result.map_err(merr("mount overlay through short links"))?;
    Ok(Method::ClassicShortLinks)
}

static LINKS: AtomicU64 = AtomicU64::new(0);

fn base36(mut n: usize) -> String {
    let digits = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut s = Vec::new();
    loop {
        s.push(digits[n % 36]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    s.reverse();
    String::from_utf8(s).expect("base36 digits are ASCII")
}

fn classic_data(m: &Mount, lowers: &[PathBuf]) -> Vec<u8> {
    let mut d = OsString::from("lowerdir=");
    for (i, l) in lowers.iter().enumerate() {
        if i > 0 {
            d.push(":");
        }
        d.push(l);
    }
    if let (Some(u), Some(w)) = (&m.upperdir, &m.workdir) {
        d.push(",upperdir=");
        d.push(u);
        d.push(",workdir=");
        d.push(w);
    }
    d.into_vec()
}

fn mount_lowerdir_plus(m: &Mount, target: &Path) -> io::Result<()> {
    let ctx = sys::FsContext::open("overlay")?;
    for l in &m.lowerdirs {
        ctx.set_string("lowerdir+", l.as_os_str())?;
    }
    if let (Some(u), Some(w)) = (&m.upperdir, &m.workdir) {
        ctx.set_string("upperdir", u.as_os_str())?;
        ctx.set_string("workdir", w.as_os_str())?;
    }
    let attr = u32::from(m.read_only); // MOUNT_ATTR_RDONLY
    ctx.mount_at(target, attr)
}

/// Unmount a rootfs mounted by [`mount`].
pub fn unmount(target: &Path) -> Result<()> {
    sys::umount(target, 0).map_err(|source| Error::Mount {
        op: "unmount",
        target: target.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_follow_the_spec() {
        let a = Digest::sha256_of(b"a");
        let b = Digest::sha256_of(b"b");
        let c = chain_ids(&[a.clone(), b.clone()]);
        assert_eq!(c[0], a);
        assert_eq!(c[1], Digest::sha256_of(format!("{a} {b}").as_bytes()));
    }

    #[test]
    fn single_layer_without_upper_is_a_bind() {
        let m = Mount::for_layers(vec![PathBuf::from("/a")], None);
        assert_eq!(m.fstype, "bind");
        let m = Mount::for_layers(
            vec![PathBuf::from("/a"), PathBuf::from("/b")],
            Some(("/u".into(), "/w".into())),
        );
        assert_eq!(m.options(), ["lowerdir=/a:/b", "upperdir=/u", "workdir=/w"]);
        assert_eq!(base36(37), "11");
    }
}
