//! Building the container's filesystem view inside its new mount namespace:
//! the spec's mounts, device nodes, `/dev` symlinks, `pivot_root`, masked and
//! read-only paths.
//!
//! Every mount destination is resolved inside the root filesystem with
//! `openat2(RESOLVE_IN_ROOT)` and mounted through the resulting descriptor
//! (`/proc/self/fd/N`), so a symlink planted in the image, or swapped in
//! while we work, cannot redirect a mount onto the host.

use std::ffi::OsStr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sys::stat::{Mode, SFlag};
use nix::unistd::{Gid, Uid};
use oci_spec::runtime::{LinuxDevice, LinuxDeviceType, Mount, Spec};

use crate::error::{Error, Result, SysContext};
use crate::mounts::{self, MountOptions};
use crate::sys;

/// The device nodes every container gets (path, major, minor).
const DEFAULT_DEVICES: &[(&str, i64, i64)] = &[
    ("/dev/null", 1, 3),
    ("/dev/zero", 1, 5),
    ("/dev/full", 1, 7),
    ("/dev/random", 1, 8),
    ("/dev/urandom", 1, 9),
    ("/dev/tty", 5, 0),
];

/// Inputs for preparing a root filesystem.
pub(crate) struct Rootfs<'a> {
    pub spec: &'a Spec,
    pub dir: &'a Path,
    /// The container runs in a user namespace of its own: device nodes are
    /// bind-mounted from the host rather than created.
    pub userns: bool,
    /// Path of the container's cgroup relative to each hierarchy root.
    pub cgroup_path: &'a str,
    /// The host's cgroup hierarchies, as the runtime found them before
    /// forking.
    pub hierarchies: &'a crate::cgroups::Hierarchies,
}

fn proc_fd_path(fd: BorrowedFd<'_>) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

impl Rootfs<'_> {
    /// Set up propagation, mount everything the spec lists and create
    /// devices. Runs in the container's mount namespace, before `pivot_root`.
    pub(crate) fn prepare(&self) -> Result<()> {
        let linux = self.spec.linux().as_ref();
        let prop = match linux.and_then(|l| l.rootfs_propagation().as_deref()) {
            None | Some("") => MsFlags::MS_SLAVE | MsFlags::MS_REC,
            Some(p) => mounts::propagation(p)
                .ok_or_else(|| Error::Config(format!("unknown rootfsPropagation {p:?}")))?,
        };
        mount(None::<&str>, "/", None::<&str>, prop, None::<&str>)
            .sys(|| "set propagation of /".into())?;
        self.make_parent_private()?;
        mount(
            Some(self.dir),
            self.dir,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .sys(|| format!("bind {} onto itself", self.dir.display()))?;
        let root = nix::fcntl::open(
            self.dir,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .sys(|| format!("open {}", self.dir.display()))?;

        let mut dev_is_bind = false;
        for m in self.spec.mounts().as_deref().unwrap_or_default() {
            self.mount_one(root.as_fd(), m)?;
            if m.destination() == Path::new("/dev") && mounts::parse(opts(m)).bind {
                dev_is_bind = true;
            }
        }
        if !dev_is_bind {
            self.create_devices(root.as_fd())?;
            self.dev_symlinks(root.as_fd())?;
        }
        // Like other runtimes, create a missing working directory.
        if let Some(p) = self.spec.process() {
            ensure_dir(root.as_fd(), p.cwd(), false)?;
        }
        Ok(())
    }

    /// `pivot_root` needs the new root's parent mount not to be shared.
    fn make_parent_private(&self) -> Result<()> {
        let info = std::fs::read_to_string("/proc/self/mountinfo")
            .map_err(|e| Error::io("read mountinfo", "/proc/self/mountinfo", e))?;
        let mut best: Option<(PathBuf, bool)> = None;
        for line in info.lines() {
            let Some((pre, _)) = line.split_once(" - ") else {
                continue;
            };
            let fields: Vec<&str> = pre.split(' ').collect();
            let Some(mp) = fields.get(4) else { continue };
            let mp = PathBuf::from(unescape(mp));
            if self.dir.starts_with(&mp)
                && best
                    .as_ref()
                    .is_none_or(|(b, _)| mp.as_os_str().len() >= b.as_os_str().len())
            {
                let shared = fields.iter().skip(6).any(|f| f.starts_with("shared:"));
                best = Some((mp, shared));
            }
        }
        if let Some((mp, true)) = best {
            mount(
                None::<&str>,
                &mp,
                None::<&str>,
                MsFlags::MS_PRIVATE,
                None::<&str>,
            )
            .sys(|| format!("make {} private", mp.display()))?;
        }
        Ok(())
    }

    fn mount_one(&self, root: BorrowedFd<'_>, m: &Mount) -> Result<()> {
        let o = mounts::parse(opts(m));
        let dest = m.destination();
        let typ = m
            .typ()
            .as_deref()
            .unwrap_or(if o.bind { "bind" } else { "" });
        if o.idmap {
            return Err(Error::Unsupported(format!(
                "mount {}: idmapped mounts are not supported",
                dest.display()
            )));
        }
        match typ {
            "cgroup" | "cgroup2" => return self.mount_cgroup(root, m, &o),
            "bind" => return Self::bind_mount(root, m, &o),
            _ if o.bind => return Self::bind_mount(root, m, &o),
            _ => {}
        }
        let must_be_plain_dir = matches!(typ, "proc" | "sysfs");
        let target = ensure_dir(root, dest, must_be_plain_dir)?;
        let target_path = proc_fd_path(target.as_fd());
        let source = m
            .source()
            .as_ref()
            .map_or_else(|| PathBuf::from(typ), Clone::clone);
        let data = (!o.data.is_empty()).then_some(o.data.as_str());
        let res = mount(Some(&source), &target_path, Some(typ), o.flags, data);
        match res {
            Ok(()) => {}
            // Without a network namespace of its own, a user namespace cannot
            // mount sysfs; give it the host's, read-only, as runc does.
            Err(Errno::EPERM) if typ == "sysfs" && self.userns => {
                mount(
                    Some("/sys"),
                    &target_path,
                    None::<&str>,
                    MsFlags::MS_BIND | MsFlags::MS_REC,
                    None::<&str>,
                )
                .sys(|| format!("bind /sys at {}", dest.display()))?;
                remount_bind(&target_path, MsFlags::MS_RDONLY | o.flags)?;
            }
            Err(e) => {
                return Err(Error::sys(format!("mount {typ} at {}", dest.display()), e));
            }
        }
        if o.tmpcopyup && typ == "tmpfs" {
            // The descriptor still refers to the directory under the new
            // tmpfs: copy what was there into the tmpfs.
            let over = sys::open_in_root(
                root,
                dest,
                OFlag::O_PATH | OFlag::O_DIRECTORY,
                Mode::empty(),
            )
            .sys(|| format!("reopen {}", dest.display()))?;
            copy_tree(target.as_fd(), over.as_fd()).map_err(|e| Error::io("tmpcopyup", dest, e))?;
        }
        Self::post_mount(root, dest, &o)
    }

    fn bind_mount(root: BorrowedFd<'_>, m: &Mount, o: &MountOptions) -> Result<()> {
        let dest = m.destination();
        let source = m.source().as_ref().ok_or_else(|| {
            Error::Config(format!("bind mount at {} has no source", dest.display()))
        })?;
        // Open the source first so what we stat is what we mount.
        let src = nix::fcntl::open(source, OFlag::O_PATH | OFlag::O_CLOEXEC, Mode::empty())
            .sys(|| format!("bind mount source {}", source.display()))?;
        let st = nix::sys::stat::fstat(src.as_fd()).sys(|| format!("stat {}", source.display()))?;
        let is_dir = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR;
        let target = if is_dir {
            ensure_dir(root, dest, false)?
        } else {
            ensure_file(root, dest)?
        };
        let target_path = proc_fd_path(target.as_fd());
        let mut flags = MsFlags::MS_BIND;
        if o.recursive {
            flags |= MsFlags::MS_REC;
        }
        mount(
            Some(&proc_fd_path(src.as_fd())),
            &target_path,
            None::<&str>,
            flags,
            None::<&str>,
        )
        .sys(|| format!("bind {} at {}", source.display(), dest.display()))?;
        let remount_flags = o.flags & !MsFlags::MS_REMOUNT;
        if !remount_flags.is_empty() {
            // A bind mount ignores most flags; apply them with a remount,
            // keeping the flags the kernel locks on the source mount.
            let reopened = sys::open_in_root(root, dest, OFlag::O_PATH, Mode::empty())
                .sys(|| format!("reopen {}", dest.display()))?;
            remount_bind(&proc_fd_path(reopened.as_fd()), remount_flags)?;
        }
        Self::post_mount(root, dest, o)
    }

    /// Propagation and recursive attributes, applied to the mount now at
    /// `dest`.
    fn post_mount(root: BorrowedFd<'_>, dest: &Path, o: &MountOptions) -> Result<()> {
        if o.propagation.is_empty() && o.recursive_attrs == 0 {
            return Ok(());
        }
        let fd = sys::open_in_root(root, dest, OFlag::O_PATH, Mode::empty())
            .sys(|| format!("reopen {}", dest.display()))?;
        let path = proc_fd_path(fd.as_fd());
        for p in &o.propagation {
            mount(None::<&str>, &path, None::<&str>, *p, None::<&str>)
                .sys(|| format!("set propagation of {}", dest.display()))?;
        }
        if o.recursive_attrs != 0 {
            set_recursive_attrs(fd.as_fd(), o.recursive_attrs)
                .sys(|| format!("set recursive attributes on {}", dest.display()))?;
        }
        Ok(())
    }

    /// Give the container a view of its own cgroup: on cgroup2 a cgroup2
    /// mount (with a cgroup namespace) or a bind of its directory; on v1 a
    /// tmpfs with each hierarchy's container directory bound in, like the
    /// host's /sys/fs/cgroup but rooted at the container.
    fn mount_cgroup(&self, root: BorrowedFd<'_>, m: &Mount, o: &MountOptions) -> Result<()> {
        let dest = m.destination();
        let layout = self.hierarchies.layout();
        let target = ensure_dir(root, dest, true)?;
        let target_path = proc_fd_path(target.as_fd());
        let rel = self.cgroup_path.trim_start_matches('/');
        let ro_flags = o.flags | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
        // Bind `src` at `sub` below `base`, then remount it through a fresh
        // descriptor (the old one still names the directory underneath).
        let bind_ro = |src: &Path, base: BorrowedFd<'_>, sub: &Path| -> Result<()> {
            let at = ensure_dir(base, sub, false)?;
            mount(
                Some(src),
                &proc_fd_path(at.as_fd()),
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .sys(|| format!("bind {} at {}", src.display(), dest.join(sub).display()))?;
            let fresh = sys::open_in_root(base, sub, OFlag::O_PATH, Mode::empty())
                .sys(|| format!("reopen {}", dest.join(sub).display()))?;
            remount_bind(&proc_fd_path(fresh.as_fd()), ro_flags)
        };
        if layout == crate::cgroups::Layout::V2 {
            let cgns = crate::spec::has_namespace(
                self.spec,
                oci_spec::runtime::LinuxNamespaceType::Cgroup,
            );
            if cgns {
                return mount(
                    Some("cgroup2"),
                    &target_path,
                    Some("cgroup2"),
                    o.flags,
                    None::<&str>,
                )
                .sys(|| format!("mount cgroup2 at {}", dest.display()));
            }
            drop(target);
            return bind_ro(&Path::new("/sys/fs/cgroup").join(rel), root, dest);
        }
        mount(
            Some("tmpfs"),
            &target_path,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            Some("mode=755"),
        )
        .sys(|| format!("mount tmpfs at {}", dest.display()))?;
        let tmpfs = sys::open_in_root(
            root,
            dest,
            OFlag::O_PATH | OFlag::O_DIRECTORY,
            Mode::empty(),
        )
        .sys(|| format!("reopen {}", dest.display()))?;
        for (mountpoint, name, kind) in host_cgroup_mounts(self.hierarchies) {
            let sub = if kind == "cgroup2" {
                "unified".to_string()
            } else {
                name.clone()
            };
            let source = mountpoint.join(rel);
            if !source.exists() {
                continue;
            }
            bind_ro(&source, tmpfs.as_fd(), Path::new(&sub))?;
            // Co-mounted controllers ("cpu,cpuacct") also get their single
            // names as symlinks, as on the host.
            if sub.contains(',') {
                for part in sub.split(',') {
                    let _ = nix::unistd::symlinkat(sub.as_str(), tmpfs.as_fd(), part);
                }
            }
        }
        if o.flags.contains(MsFlags::MS_RDONLY) {
            let fresh = sys::open_in_root(root, dest, OFlag::O_PATH, Mode::empty())
                .sys(|| format!("reopen {}", dest.display()))?;
            remount_bind(&proc_fd_path(fresh.as_fd()), ro_flags | MsFlags::MS_RDONLY)?;
        }
        Ok(())
    }

    fn create_devices(&self, root: BorrowedFd<'_>) -> Result<()> {
        let spec_devices = self
            .spec
            .linux()
            .as_ref()
            .and_then(|l| l.devices().as_deref())
            .unwrap_or_default();
        let old_umask = nix::sys::stat::umask(Mode::empty());
        let result = (|| {
            for (path, major, minor) in DEFAULT_DEVICES {
                if spec_devices.iter().any(|d| d.path() == Path::new(path)) {
                    continue;
                }
                let mut d = LinuxDevice::default();
                d.set_path(PathBuf::from(path));
                d.set_typ(LinuxDeviceType::C);
                d.set_major(*major);
                d.set_minor(*minor);
                d.set_file_mode(Some(0o666));
                d.set_uid(Some(0));
                d.set_gid(Some(0));
                self.create_device(root, &d)?;
            }
            for d in spec_devices {
                self.create_device(root, d)?;
            }
            Ok(())
        })();
        nix::sys::stat::umask(old_umask);
        result
    }

    fn create_device(&self, root: BorrowedFd<'_>, d: &LinuxDevice) -> Result<()> {
        let path = d.path();
        if !path.is_absolute() || !path.starts_with("/dev") {
            return Err(Error::Config(format!(
                "device path {} must be absolute and below /dev",
                path.display()
            )));
        }
        let (parent, name) = split_parent(path)?;
        let dir = ensure_dir(root, parent, false)?;
        let kind = match d.typ() {
            LinuxDeviceType::B => SFlag::S_IFBLK,
            LinuxDeviceType::P => SFlag::S_IFIFO,
            _ => SFlag::S_IFCHR,
        };
        let mode = Mode::from_bits_truncate(d.file_mode().unwrap_or(0o666) & 0o7777);
        let dev = nix::sys::stat::makedev(d.major() as u64, d.minor() as u64);
        let made = if self.userns {
            Err(Errno::EPERM)
        } else {
            nix::sys::stat::mknodat(dir.as_fd(), name, kind, mode, dev)
        };
        match made {
            Ok(()) => {
                nix::unistd::fchownat(
                    dir.as_fd(),
                    name,
                    d.uid().map(Uid::from_raw),
                    d.gid().map(Gid::from_raw),
                    nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
                )
                .sys(|| format!("chown {}", path.display()))?;
            }
            Err(Errno::EEXIST) => {}
            Err(Errno::EPERM) if kind != SFlag::S_IFIFO => {
                // In a user namespace device nodes cannot be made: bind the
                // host's node instead.
                let target = ensure_file(root, path)?;
                mount(
                    Some(path),
                    &proc_fd_path(target.as_fd()),
                    None::<&str>,
                    MsFlags::MS_BIND,
                    None::<&str>,
                )
                .sys(|| format!("bind host device {}", path.display()))?;
            }
            Err(e) => return Err(Error::sys(format!("mknod {}", path.display()), e)),
        }
        Ok(())
    }

    fn dev_symlinks(&self, root: BorrowedFd<'_>) -> Result<()> {
        let dev = ensure_dir(root, Path::new("/dev"), false)?;
        let mut links = vec![
            ("/proc/self/fd", "fd"),
            ("/proc/self/fd/0", "stdin"),
            ("/proc/self/fd/1", "stdout"),
            ("/proc/self/fd/2", "stderr"),
        ];
        if Path::new("/proc/kcore").exists() {
            links.push(("/proc/kcore", "core"));
        }
        let has_devpts = self
            .spec
            .mounts()
            .as_deref()
            .unwrap_or_default()
            .iter()
            .any(|m| m.destination() == Path::new("/dev/pts"));
        if has_devpts {
            // The container's own devpts instance provides ptmx.
            let _ =
                nix::unistd::unlinkat(dev.as_fd(), "ptmx", nix::unistd::UnlinkatFlags::NoRemoveDir);
            links.push(("pts/ptmx", "ptmx"));
        }
        for (target, name) in links {
            match nix::unistd::symlinkat(target, dev.as_fd(), name) {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(e) => return Err(Error::sys(format!("symlink /dev/{name}"), e)),
            }
        }
        Ok(())
    }
}

/// Turn the prepared root into `/`: `pivot_root`, then detach the old root.
pub(crate) fn pivot(rootfs: &Path) -> Result<()> {
    let old = nix::fcntl::open(
        "/",
        OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .sys(|| "open /".into())?;
    let new = nix::fcntl::open(
        rootfs,
        OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .sys(|| format!("open {}", rootfs.display()))?;
    nix::unistd::fchdir(new.as_fd()).sys(|| "chdir to the new root".into())?;
    // Stacking the old root on top of the new one avoids needing a
    // directory for it inside the container.
    nix::unistd::pivot_root(".", ".").sys(|| format!("pivot_root to {}", rootfs.display()))?;
    nix::unistd::fchdir(old.as_fd()).sys(|| "chdir to the old root".into())?;
    // Do not let the unmount below propagate to the host.
    mount(
        None::<&str>,
        ".",
        None::<&str>,
        MsFlags::MS_SLAVE | MsFlags::MS_REC,
        None::<&str>,
    )
    .sys(|| "make the old root a slave".into())?;
    umount2(".", MntFlags::MNT_DETACH).sys(|| "detach the old root".into())?;
    nix::unistd::chdir("/").sys(|| "chdir /".into())?;
    Ok(())
}

/// Move the root into place and chroot, for `--no-pivot` (roots on
/// filesystems where `pivot_root` is impossible, such as initramfs).
pub(crate) fn move_root(rootfs: &Path) -> Result<()> {
    nix::unistd::chdir(rootfs).sys(|| format!("chdir {}", rootfs.display()))?;
    mount(
        Some(rootfs),
        "/",
        None::<&str>,
        MsFlags::MS_MOVE,
        None::<&str>,
    )
    .sys(|| format!("move {} to /", rootfs.display()))?;
    nix::unistd::chroot(".").sys(|| "chroot".into())?;
    nix::unistd::chdir("/").sys(|| "chdir /".into())?;
    Ok(())
}

/// Hide paths: a directory gets an empty read-only tmpfs, anything else
/// `/dev/null` bound over it. Missing paths are skipped.
pub(crate) fn mask_paths(paths: &[String]) -> Result<()> {
    for p in paths {
        let target = Path::new(p);
        let st = match nix::sys::stat::stat(target) {
            Ok(st) => st,
            Err(Errno::ENOENT) => continue,
            Err(e) => return Err(Error::sys(format!("stat masked path {p}"), e)),
        };
        let is_dir = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR;
        let res = if is_dir {
            mount(
                Some("tmpfs"),
                target,
                Some("tmpfs"),
                MsFlags::MS_RDONLY,
                Some("size=0,nr_inodes=1"),
            )
        } else {
            mount(
                Some("/dev/null"),
                target,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
        };
        res.sys(|| format!("mask {p}"))?;
    }
    Ok(())
}

/// Make paths read-only with a bind remount. Missing paths are skipped.
pub(crate) fn readonly_paths(paths: &[String]) -> Result<()> {
    for p in paths {
        let target = Path::new(p);
        match mount(
            Some(target),
            target,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        ) {
            Ok(()) => {}
            Err(Errno::ENOENT) => continue,
            Err(e) => return Err(Error::sys(format!("bind read-only path {p}"), e)),
        }
        remount_bind(target, MsFlags::MS_RDONLY | MsFlags::MS_REC)?;
    }
    Ok(())
}

/// Remount `/` read-only.
pub(crate) fn readonly_root() -> Result<()> {
    remount_bind(Path::new("/"), MsFlags::MS_RDONLY)
}

/// Remount a bind mount with extra flags, keeping those the kernel locks.
pub(crate) fn remount_bind(target: &Path, flags: MsFlags) -> Result<()> {
    let locked = nix::sys::statvfs::statvfs(target)
        .map_or_else(|_| MsFlags::empty(), |s| mounts::locked_flags(&s));
    let rec = flags & MsFlags::MS_REC;
    let all = MsFlags::MS_BIND
        | MsFlags::MS_REMOUNT
        | (flags & !MsFlags::MS_REC)
        | (locked & !MsFlags::MS_RDONLY)
        | rec;
    mount(None::<&str>, target, None::<&str>, all, None::<&str>)
        .sys(|| format!("remount {} with {flags:?}", target.display()))
}

fn set_recursive_attrs(fd: BorrowedFd<'_>, attrs: u64) -> nix::Result<()> {
    #[repr(C)]
    struct MountAttr {
        attr_set: u64,
        attr_clr: u64,
        propagation: u64,
        userns_fd: u64,
    }
    let attr = MountAttr {
        attr_set: attrs,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    let empty = c"";
    // SAFETY: mount_setattr reads `size_of::<MountAttr>()` bytes from a valid,
    // properly laid out struct; the path is a valid empty C string used with
    // AT_EMPTY_PATH on an open descriptor.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_raw_fd(),
            empty.as_ptr(),
            (libc::AT_EMPTY_PATH | libc::AT_RECURSIVE) as libc::c_uint,
            &raw const attr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    Errno::result(rc).map(drop)
}

fn opts(m: &Mount) -> &[String] {
    m.options().as_deref().unwrap_or_default()
}

fn split_parent(path: &Path) -> Result<(&Path, &OsStr)> {
    match (path.parent(), path.file_name()) {
        (Some(p), Some(n)) => Ok((p, n)),
        _ => Err(Error::Config(format!(
            "{} has no parent directory",
            path.display()
        ))),
    }
}

/// Open `path` inside `root` as a directory, creating missing components.
///
/// The walk resolves the path the way `RESOLVE_IN_ROOT` would, but creates
/// what is missing on the way: `..` stops at the root, a symlink's target is
/// followed (an absolute one from the root), and directories named through
/// a dangling symlink are created where the symlink points, inside the root.
/// Each step opens the next component relative to the previous descriptor
/// with `O_NOFOLLOW`, so a concurrent swap cannot redirect it. With
/// `no_symlinks`, any symlink on the way is an error (for /proc and /sys,
/// which must be real directories).
pub(crate) fn ensure_dir(root: BorrowedFd<'_>, path: &Path, no_symlinks: bool) -> Result<OwnedFd> {
    const MAX_LINKS: usize = 40;
    let reopen = |stack: &[std::ffi::OsString]| -> Result<OwnedFd> {
        let rel: PathBuf = stack.iter().collect();
        sys::open_in_root(
            root,
            &rel,
            OFlag::O_PATH | OFlag::O_DIRECTORY,
            Mode::empty(),
        )
        .sys(|| format!("open /{} inside the root", rel.display()))
    };
    let mut stack: Vec<std::ffi::OsString> = Vec::new();
    let mut cur = reopen(&stack)?;
    let mut todo: std::collections::VecDeque<std::ffi::OsString> = path
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect();
    let mut links = 0;
    while let Some(name) = todo.pop_front() {
        if name == ".." {
            stack.pop();
            cur = reopen(&stack)?;
            continue;
        }
        let shown = || {
            let p: PathBuf = stack.iter().chain(std::iter::once(&name)).collect();
            format!("/{}", p.display())
        };
        let st = match nix::sys::stat::fstatat(
            cur.as_fd(),
            name.as_os_str(),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        ) {
            Ok(st) => Some(st),
            Err(Errno::ENOENT) => None,
            Err(e) => return Err(Error::sys(format!("stat {}", shown()), e)),
        };
        let kind = st.map(|st| SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT);
        match kind {
            None => match nix::sys::stat::mkdirat(
                cur.as_fd(),
                name.as_os_str(),
                Mode::from_bits_truncate(0o755),
            ) {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(e) => return Err(Error::sys(format!("mkdir {}", shown()), e)),
            },
            Some(SFlag::S_IFLNK) => {
                if no_symlinks {
                    return Err(Error::Config(format!(
                        "mount destination {} is a symlink, refusing to follow it",
                        shown()
                    )));
                }
                links += 1;
                if links > MAX_LINKS {
                    return Err(Error::sys(
                        format!("resolve {}", path.display()),
                        Errno::ELOOP,
                    ));
                }
                let target = nix::fcntl::readlinkat(cur.as_fd(), name.as_os_str())
                    .sys(|| format!("readlink {}", shown()))?;
                let target = PathBuf::from(target);
                if target.is_absolute() {
                    stack.clear();
                    cur = reopen(&stack)?;
                }
                for c in target.components().rev() {
                    match c {
                        Component::Normal(n) => todo.push_front(n.to_os_string()),
                        Component::ParentDir => todo.push_front("..".into()),
                        _ => {}
                    }
                }
                continue;
            }
            Some(_) => {}
        }
        let next = nix::fcntl::openat(
            cur.as_fd(),
            name.as_os_str(),
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .sys(|| format!("open {} inside the root", shown()))?;
        stack.push(name);
        cur = next;
    }
    Ok(cur)
}

/// Open `path` inside `root` as a file to bind over, creating it (and its
/// parents) if missing.
pub(crate) fn ensure_file(root: BorrowedFd<'_>, path: &Path) -> Result<OwnedFd> {
    match sys::open_in_root(root, path, OFlag::O_PATH, Mode::empty()) {
        Ok(fd) => return Ok(fd),
        Err(Errno::ENOENT) => {}
        Err(e) => {
            return Err(Error::sys(
                format!("open {} inside the root", path.display()),
                e,
            ));
        }
    }
    let (parent, name) = split_parent(path)?;
    let dir = ensure_dir(root, parent, false)?;
    match nix::fcntl::openat(
        dir.as_fd(),
        name,
        OFlag::O_CREAT | OFlag::O_WRONLY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
        Mode::from_bits_truncate(0o644),
    ) {
        Ok(_) | Err(Errno::EEXIST) => {}
        Err(e) => return Err(Error::sys(format!("create {}", path.display()), e)),
    }
    sys::open_in_root(root, path, OFlag::O_PATH, Mode::empty())
        .sys(|| format!("open {} inside the root", path.display()))
}

/// Cgroup hierarchies mounted on the host: (mount point, controllers as the
/// directory is named, filesystem type).
fn host_cgroup_mounts(hierarchies: &crate::cgroups::Hierarchies) -> Vec<(PathBuf, String, String)> {
    let mut out = Vec::new();
    for (mp, v2) in hierarchies.mount_points() {
        let mp = PathBuf::from(unescape(&mp.to_string_lossy()));
        if !mp.starts_with("/sys/fs/cgroup") {
            continue;
        }
        let Some(name) = mp.file_name().and_then(OsStr::to_str).map(str::to_string) else {
            continue;
        };
        let fstype = if v2 { "cgroup2" } else { "cgroup" };
        out.push((mp, name, fstype.to_string()));
    }
    out
}

fn unescape(field: &str) -> String {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(u8::is_ascii_digit) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Copy a directory tree from `src` into `dst` (both directory descriptors),
/// keeping modes, owners and symlinks. Used by `tmpcopyup`.
fn copy_tree(src: BorrowedFd<'_>, dst: BorrowedFd<'_>) -> std::io::Result<()> {
    use nix::dir::Dir;
    let dir_fd = nix::fcntl::openat(
        src,
        ".",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    let mut dir = Dir::from_fd(dir_fd)?;
    let entries: Vec<Vec<u8>> = dir
        .iter()
        .flatten()
        .map(|e| e.file_name().to_bytes().to_vec())
        .filter(|n| n != b"." && n != b"..")
        .collect();
    for name in entries {
        let name = OsStr::from_bytes(&name);
        let st = nix::sys::stat::fstatat(src, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)?;
        let kind = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT;
        let mode = Mode::from_bits_truncate(st.st_mode & 0o7777);
        let owner = (
            Some(Uid::from_raw(st.st_uid)),
            Some(Gid::from_raw(st.st_gid)),
        );
        if kind == SFlag::S_IFDIR {
            match nix::sys::stat::mkdirat(dst, name, mode) {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(e) => return Err(e.into()),
            }
            let s = nix::fcntl::openat(
                src,
                name,
                OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            )?;
            let d = nix::fcntl::openat(
                dst,
                name,
                OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            )?;
            copy_tree(s.as_fd(), d.as_fd())?;
        } else if kind == SFlag::S_IFLNK {
            let target = nix::fcntl::readlinkat(src, name)?;
            nix::unistd::symlinkat(target.as_os_str(), dst, name)?;
        } else if kind == SFlag::S_IFREG {
            let s = nix::fcntl::openat(
                src,
                name,
                OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            )?;
            let d = nix::fcntl::openat(
                dst,
                name,
                OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_CLOEXEC,
                mode,
            )?;
            let mut s = std::fs::File::from(s);
            let mut d = std::fs::File::from(d);
            std::io::copy(&mut s, &mut d)?;
        } else {
            nix::sys::stat::mknodat(dst, name, kind, mode, st.st_rdev)?;
        }
        nix::unistd::fchownat(
            dst,
            name,
            owner.0,
            owner.1,
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )?;
    }
    Ok(())
}
