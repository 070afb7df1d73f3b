//! The raw Linux system calls the image store needs, each behind a small
//! safe function: resolution of paths inside a root (`openat2` with
//! `RESOLVE_IN_ROOT`), `*at` file creation that never follows the final
//! component, extended attributes, `syncfs`, and the new mount API.
//!
//! Nothing here knows about images or layers; callers decide policy.

use std::ffi::{CStr, CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Convert a path or name to a C string, refusing interior NUL bytes.
pub fn cstr(p: impl AsRef<OsStr>) -> io::Result<CString> {
    CString::new(p.as_ref().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn check_fd(rc: libc::c_long) -> io::Result<OwnedFd> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        // SAFETY: the kernel just returned this descriptor to us; nobody else owns it.
        Ok(unsafe { OwnedFd::from_raw_fd(rc as RawFd) })
    }
}

/// Open a directory (any path, following symlinks) as an `O_PATH` handle.
pub fn open_dir_path(path: &Path) -> io::Result<OwnedFd> {
    let c = cstr(path)?;
    // SAFETY: `c` is a valid C string alive for the call.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    check_fd(fd as libc::c_long)
}

/// `struct open_how` of `openat2(2)`.
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

/// `openat2(root, path, flags, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)`:
/// every component, `..` and symlink target is resolved as if `root` were
/// `/`, so the result is always inside `root`.
pub fn open_in_root(
    root: BorrowedFd<'_>,
    path: &Path,
    flags: libc::c_int,
    mode: libc::mode_t,
) -> io::Result<OwnedFd> {
    let c = cstr(if path.as_os_str().is_empty() {
        Path::new(".")
    } else {
        path
    })?;
    let how = OpenHow {
        flags: (flags | libc::O_CLOEXEC) as u64,
        mode: if flags & libc::O_CREAT != 0 {
            mode as u64
        } else {
            0
        },
        resolve: libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS,
    };
    // SAFETY: `how` and `c` are valid for the call and the size passed is the
    // size of the struct we pass.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            root.as_raw_fd(),
            c.as_ptr(),
            &raw const how,
            std::mem::size_of::<OpenHow>(),
        )
    };
    check_fd(rc)
}

/// `openat` of a single name below `dir` that never follows a final symlink.
pub fn openat(
    dir: BorrowedFd<'_>,
    name: &CStr,
    flags: libc::c_int,
    mode: libc::mode_t,
) -> io::Result<OwnedFd> {
    // SAFETY: `name` is a valid C string; the descriptor is borrowed for the call.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            flags | libc::O_CLOEXEC | libc::O_NOFOLLOW,
            mode as libc::c_uint,
        )
    };
    check_fd(fd as libc::c_long)
}

/// `fstatat(dir, name, AT_SYMLINK_NOFOLLOW)`; `None` when it does not exist.
pub fn lstatat(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<Option<libc::stat>> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `st` is writable memory of the right size; `name` is a C string.
    let rc = unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            name.as_ptr(),
            st.as_mut_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if rc < 0 {
        let e = io::Error::last_os_error();
        return if e.raw_os_error() == Some(libc::ENOENT) {
            Ok(None)
        } else {
            Err(e)
        };
    }
    // SAFETY: fstatat succeeded, so it filled `st`.
    Ok(Some(unsafe { st.assume_init() }))
}

pub fn mkdirat(dir: BorrowedFd<'_>, name: &CStr, mode: libc::mode_t) -> io::Result<()> {
    // SAFETY: valid C string and borrowed descriptor.
    check(unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), mode) })
}

pub fn mknodat(
    dir: BorrowedFd<'_>,
    name: &CStr,
    mode: libc::mode_t,
    dev: libc::dev_t,
) -> io::Result<()> {
    // SAFETY: valid C string and borrowed descriptor.
    check(unsafe { libc::mknodat(dir.as_raw_fd(), name.as_ptr(), mode, dev) })
}

pub fn symlinkat(target: &CStr, dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    // SAFETY: valid C strings and borrowed descriptor.
    check(unsafe { libc::symlinkat(target.as_ptr(), dir.as_raw_fd(), name.as_ptr()) })
}

/// Hard link `old_dir/old_name` to `new_dir/new_name` without following a
/// symlink at `old_name` (the link then names the symlink itself).
pub fn linkat(
    old_dir: BorrowedFd<'_>,
    old_name: &CStr,
    new_dir: BorrowedFd<'_>,
    new_name: &CStr,
) -> io::Result<()> {
    // SAFETY: valid C strings and borrowed descriptors.
    check(unsafe {
        libc::linkat(
            old_dir.as_raw_fd(),
            old_name.as_ptr(),
            new_dir.as_raw_fd(),
            new_name.as_ptr(),
            0,
        )
    })
}

pub fn unlinkat(dir: BorrowedFd<'_>, name: &CStr, is_dir: bool) -> io::Result<()> {
    let flags = if is_dir { libc::AT_REMOVEDIR } else { 0 };
    // SAFETY: valid C string and borrowed descriptor.
    check(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), flags) })
}

pub fn fchownat_nofollow(dir: BorrowedFd<'_>, name: &CStr, uid: u32, gid: u32) -> io::Result<()> {
    // SAFETY: valid C string and borrowed descriptor.
    check(unsafe {
        libc::fchownat(
            dir.as_raw_fd(),
            name.as_ptr(),
            uid,
            gid,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })
}

pub fn fchown(fd: BorrowedFd<'_>, uid: u32, gid: u32) -> io::Result<()> {
    // SAFETY: borrowed descriptor, plain integers.
    check(unsafe { libc::fchown(fd.as_raw_fd(), uid, gid) })
}

pub fn fchmod(fd: BorrowedFd<'_>, mode: libc::mode_t) -> io::Result<()> {
    // SAFETY: borrowed descriptor, plain integer.
    check(unsafe { libc::fchmod(fd.as_raw_fd(), mode) })
}

/// `fchmodat` on a non-symlink entry (Linux cannot chmod symlinks).
pub fn fchmodat(dir: BorrowedFd<'_>, name: &CStr, mode: libc::mode_t) -> io::Result<()> {
    // SAFETY: valid C string and borrowed descriptor.
    check(unsafe { libc::fchmodat(dir.as_raw_fd(), name.as_ptr(), mode, 0) })
}

/// Set access and modification times of `dir/name` without following it.
pub fn set_times_nofollow(
    dir: BorrowedFd<'_>,
    name: &CStr,
    mtime_sec: i64,
    mtime_nsec: i64,
) -> io::Result<()> {
    let ts = libc::timespec {
        tv_sec: mtime_sec,
        tv_nsec: mtime_nsec,
    };
    let times = [ts, ts];
    // SAFETY: `times` has the two entries utimensat reads; valid C string.
    check(unsafe {
        libc::utimensat(
            dir.as_raw_fd(),
            name.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })
}

pub fn fsetxattr(fd: BorrowedFd<'_>, name: &CStr, value: &[u8]) -> io::Result<()> {
    // SAFETY: `value` is readable for its length; valid C string.
    check(unsafe {
        libc::fsetxattr(
            fd.as_raw_fd(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    })
}

/// Set an xattr on `dir/name` without following a final symlink, through the
/// `/proc/self/fd` path of the directory handle.
pub fn lsetxattr_at(dir: BorrowedFd<'_>, name: &CStr, attr: &CStr, value: &[u8]) -> io::Result<()> {
    let path = proc_path(dir, name)?;
    // SAFETY: valid C strings; `value` readable for its length.
    check(unsafe {
        libc::lsetxattr(
            path.as_ptr(),
            attr.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    })
}

fn proc_path(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<CString> {
    let mut p = format!("/proc/self/fd/{}/", dir.as_raw_fd()).into_bytes();
    p.extend_from_slice(name.to_bytes());
    CString::new(p)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

/// Names of the extended attributes of `path` (not following a symlink).
pub fn llistxattr(path: &Path) -> io::Result<Vec<CString>> {
    let c = cstr(path)?;
    let mut buf = vec![0u8; 1024];
    loop {
        // SAFETY: `buf` is writable for its length; valid C string.
        let n = unsafe { libc::llistxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if n >= 0 {
            buf.truncate(n as usize);
            return Ok(buf
                .split(|b| *b == 0)
                .filter(|s| !s.is_empty())
                .filter_map(|s| CString::new(s).ok())
                .collect());
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::ERANGE) => buf.resize(buf.len() * 4, 0),
            Some(libc::ENOTSUP) => return Ok(Vec::new()),
            _ => return Err(e),
        }
    }
}

/// The value of one extended attribute; `None` when it is not set.
pub fn lgetxattr(path: &Path, name: &CStr) -> io::Result<Option<Vec<u8>>> {
    let c = cstr(path)?;
    let mut buf = vec![0u8; 256];
    loop {
        // SAFETY: `buf` is writable for its length; valid C strings.
        let n = unsafe {
            libc::lgetxattr(
                c.as_ptr(),
                name.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        if n >= 0 {
            buf.truncate(n as usize);
            return Ok(Some(buf));
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::ERANGE) => buf.resize(buf.len() * 4, 0),
            Some(libc::ENODATA | libc::ENOTSUP) => return Ok(None),
            _ => return Err(e),
        }
    }
}

/// Flush every dirty inode and block of the filesystem holding `fd`.
pub fn syncfs(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: borrowed descriptor.
    check(unsafe { libc::syncfs(fd.as_raw_fd()) })
}

/// fsync a directory so renames and creations inside it are durable.
pub fn fsync_dir(path: &Path) -> io::Result<()> {
    std::fs::File::open(path)?.sync_all()
}

// The new mount API (Linux 5.2+; `lowerdir+` for overlayfs needs 6.8+).
const FSOPEN_CLOEXEC: libc::c_uint = 1;
const FSCONFIG_SET_STRING: libc::c_uint = 1;
const FSCONFIG_CMD_CREATE: libc::c_uint = 6;
const FSMOUNT_CLOEXEC: libc::c_uint = 1;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 4;

/// A filesystem context from `fsopen`.
pub struct FsContext(OwnedFd);

impl FsContext {
    pub fn open(fstype: &str) -> io::Result<FsContext> {
        let c = cstr(fstype)?;
        // SAFETY: valid C string.
        let fd = unsafe { libc::syscall(libc::SYS_fsopen, c.as_ptr(), FSOPEN_CLOEXEC) };
        check_fd(fd).map(FsContext)
    }

    pub fn set_string(&self, key: &str, value: &OsStr) -> io::Result<()> {
        let k = cstr(key)?;
        let v = cstr(value)?;
        // SAFETY: valid C strings; aux is unused for SET_STRING.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_fsconfig,
                self.0.as_raw_fd(),
                FSCONFIG_SET_STRING,
                k.as_ptr(),
                v.as_ptr(),
                0,
            )
        };
        check(rc as libc::c_int)
    }

    /// Create the superblock and attach it at `target`.
    pub fn mount_at(&self, target: &Path, attr_flags: libc::c_uint) -> io::Result<()> {
        // SAFETY: key and value must be null for CMD_CREATE.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_fsconfig,
                self.0.as_raw_fd(),
                FSCONFIG_CMD_CREATE,
                std::ptr::null::<libc::c_char>(),
                std::ptr::null::<libc::c_char>(),
                0,
            )
        };
        check(rc as libc::c_int)?;
        // SAFETY: plain integers; returns a new descriptor we take ownership of.
        let mfd = check_fd(unsafe {
            libc::syscall(
                libc::SYS_fsmount,
                self.0.as_raw_fd(),
                FSMOUNT_CLOEXEC,
                attr_flags,
            )
        })?;
        let t = cstr(target)?;
        let empty = c"";
        // SAFETY: valid C strings; `mfd` is the mount we just created.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_move_mount,
                mfd.as_raw_fd(),
                empty.as_ptr(),
                libc::AT_FDCWD,
                t.as_ptr(),
                MOVE_MOUNT_F_EMPTY_PATH,
            )
        };
        check(rc as libc::c_int)
    }
}

/// Classic `mount(2)`.
pub fn mount(
    source: &str,
    target: &Path,
    fstype: &str,
    flags: libc::c_ulong,
    data: Option<&[u8]>,
) -> io::Result<()> {
    let s = cstr(source)?;
    let t = cstr(target)?;
    let f = cstr(fstype)?;
    let d = data.map(CString::new).transpose().map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "mount data contains a NUL byte",
        )
    })?;
    // SAFETY: valid C strings (data optional) alive for the call.
    check(unsafe {
        libc::mount(
            s.as_ptr(),
            t.as_ptr(),
            f.as_ptr(),
            flags,
            d.as_ref().map_or(std::ptr::null(), |d| d.as_ptr().cast()),
        )
    })
}

pub fn umount(target: &Path, flags: libc::c_int) -> io::Result<()> {
    let t = cstr(target)?;
    // SAFETY: valid C string.
    check(unsafe { libc::umount2(t.as_ptr(), flags) })
}

/// `makedev` for device numbers in tar headers.
pub fn makedev(major: u32, minor: u32) -> libc::dev_t {
    libc::makedev(major, minor)
}

pub fn major_minor(dev: libc::dev_t) -> (u32, u32) {
    (libc::major(dev), libc::minor(dev))
}

/// The system page size (the limit on classic mount data).
pub fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if n > 0 { n as usize } else { 4096 }
}

/// Classic `mount(2)` of an overlay performed in a forked child whose
/// working directory is `dir`, so relative `lowerdir` entries resolve there
/// without changing the working directory of this (multithreaded) process.
pub fn mount_overlay_in_dir(
    dir: &Path,
    target: &Path,
    flags: libc::c_ulong,
    data: &[u8],
) -> io::Result<()> {
    let d = cstr(dir)?;
    let t = cstr(target)?;
    let data = CString::new(data).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "mount data contains a NUL byte",
        )
    })?;
    let fstype = c"overlay";
    // SAFETY: fork has no memory-safety preconditions; the child below only
    // makes async-signal-safe system calls on memory prepared before fork.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        // SAFETY: chdir, mount, __errno_location and _exit are
        // async-signal-safe; all pointers are valid C strings from above.
        unsafe {
            if libc::chdir(d.as_ptr()) != 0 {
                libc::_exit(*libc::__errno_location());
            }
            if libc::mount(
                fstype.as_ptr(),
                t.as_ptr(),
                fstype.as_ptr(),
                flags,
                data.as_ptr().cast(),
            ) != 0
            {
                libc::_exit(*libc::__errno_location());
            }
            libc::_exit(0);
        }
    }
    let mut status = 0;
    loop {
        // SAFETY: `status` is writable; `pid` is our child.
        let rc = unsafe { libc::waitpid(pid, &raw mut status, 0) };
        if rc == pid {
            break;
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    }
    if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
        Ok(())
    } else if libc::WIFEXITED(status) {
        Err(io::Error::from_raw_os_error(libc::WEXITSTATUS(status)))
    } else {
        Err(io::Error::other("mount helper process was killed"))
    }
}
