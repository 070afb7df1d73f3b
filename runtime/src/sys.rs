//! The few raw system calls the runtime needs that `nix` does not wrap, and
//! small safe helpers around them. Every `unsafe` block of the crate that is
//! not about seccomp or terminals lives here.

use std::ffi::CString;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::Mode;
use nix::unistd::Pid;

/// What a fork-like clone returned.
pub(crate) enum Forked {
    /// In the parent, with the child's PID.
    Parent(Pid),
    /// In the child.
    Child,
}

/// Fork, but make the new process a child of our parent (`CLONE_PARENT`),
/// as if our parent had forked it. Used so the container process is a direct
/// child of the runtime even though an intermediate process created it.
///
/// The caller must be single-threaded.
pub(crate) fn fork_as_sibling() -> nix::Result<Forked> {
    fork_with(libc::CLONE_PARENT)
}

/// Fork into new namespaces: `flags` are `CLONE_NEW*` flags, which the
/// child is created in (a new PID namespace makes it PID 1 there).
///
/// The caller must be single-threaded.
pub(crate) fn fork_into(flags: nix::sched::CloneFlags) -> nix::Result<Forked> {
    fork_with(flags.bits())
}

fn fork_with(flags: libc::c_int) -> nix::Result<Forked> {
    let flags = (flags | libc::SIGCHLD) as libc::c_ulong;
    // SAFETY: clone with a NULL stack behaves like fork: the child continues on
    // a copy of the caller's stack. The runtime is single-threaded when it
    // calls this, so no locks are held by other threads in the child. The
    // remaining arguments (parent_tid, child_tid, tls) are unused without the
    // corresponding flags.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone,
            flags,
            std::ptr::null_mut::<libc::c_void>(),
            std::ptr::null_mut::<libc::c_int>(),
            std::ptr::null_mut::<libc::c_int>(),
            0usize,
        )
    };
    match ret {
        -1 => Err(Errno::last()),
        0 => Ok(Forked::Child),
        pid => Ok(Forked::Parent(Pid::from_raw(pid as i32))),
    }
}

/// Plain fork. The caller must be single-threaded.
pub(crate) fn fork() -> nix::Result<Forked> {
    // SAFETY: the runtime calls this only while single-threaded, so the child
    // inherits no locks held by other threads.
    match unsafe { nix::unistd::fork() }? {
        nix::unistd::ForkResult::Parent { child } => Ok(Forked::Parent(child)),
        nix::unistd::ForkResult::Child => Ok(Forked::Child),
    }
}

/// Leave the process now, without running destructors or atexit handlers
/// (for forked children).
pub(crate) fn exit_now(code: i32) -> ! {
    // SAFETY: _exit has no preconditions and never returns.
    unsafe { libc::_exit(code) }
}

/// Give the heap's free pages back to the kernel (glibc keeps freed memory
/// for reuse): for a long-lived process after a burst of allocations.
pub(crate) fn trim_heap() {
    // SAFETY: malloc_trim takes no pointers and only releases memory the
    // allocator holds as free; it locks the arenas itself.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Drop this binary's code pages from the process's page tables, for a
/// long-lived process that has finished the work most of its code is for.
/// The pages stay in the page cache and are mapped again as they run;
/// until then they do not count in the process's resident set. Does
/// nothing if the code mapping has private (copy-on-write) pages, such as
/// a debugger's breakpoints.
pub(crate) fn release_code_pages() {
    let here = release_code_pages as fn() as usize;
    let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps") else {
        return;
    };
    let mut found: Option<(usize, usize)> = None;
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let (Some(first), Some(second)) = (fields.next(), fields.next()) else {
            continue;
        };
        if let Some((a, b)) = first.split_once('-') {
            if found.is_some() {
                // The next mapping's header: no anonymous pages were listed.
                break;
            }
            let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
            else {
                continue;
            };
            if second == "r-xp" && (a..b).contains(&here) {
                found = Some((a, b));
            }
        } else if found.is_some() && first == "Anonymous:" && second != "0" {
            return;
        }
    }
    drop(smaps);
    if let Some((start, end)) = found {
        // SAFETY: [start, end) is this binary's own code mapping: private,
        // read-only and without anonymous (copy-on-write) pages, so
        // MADV_DONTNEED only removes page-table entries; every page reads
        // back unchanged from the file on its next access.
        unsafe {
            libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED);
        }
    }
}

/// Open `path` resolved strictly inside `root`: `..` cannot climb above it,
/// absolute symlinks are relative to it, magic links are refused.
pub(crate) fn open_in_root(
    root: BorrowedFd<'_>,
    path: &Path,
    flags: OFlag,
    mode: Mode,
) -> nix::Result<OwnedFd> {
    let how = OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC)
        .mode(mode)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let rel = path.strip_prefix("/").unwrap_or(path);
    let rel = if rel.as_os_str().is_empty() {
        Path::new(".")
    } else {
        rel
    };
    loop {
        match nix::fcntl::openat2(root, rel, how) {
            Err(Errno::EAGAIN | Errno::EINTR) => {}
            other => return other,
        }
    }
}

/// Mark every descriptor from `first` upwards close-on-exec.
pub(crate) fn cloexec_from(first: u32) -> nix::Result<()> {
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only changes descriptor
    // flags; it cannot invalidate memory.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    // Kernels before 5.11 lack CLOSE_RANGE_CLOEXEC: walk /proc/self/fd.
    let fds: Vec<RawFd> = std::fs::read_dir("/proc/self/fd")
        .map_err(|_| Errno::last())?
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok()))
        .filter(|fd: &RawFd| *fd >= first as RawFd)
        .collect();
    for fd in fds {
        // SAFETY: setting FD_CLOEXEC on a descriptor number is harmless even if
        // it was closed meanwhile (the call then fails with EBADF).
        unsafe {
            libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
        }
    }
    Ok(())
}

/// Set the NIS domain name of the current UTS namespace.
pub(crate) fn set_domainname(name: &str) -> nix::Result<()> {
    // SAFETY: the pointer and length describe `name`'s bytes, valid for the call.
    let rc = unsafe { libc::setdomainname(name.as_ptr().cast(), name.len()) };
    Errno::result(rc).map(drop)
}

/// Make the calling process the controlling terminal's owner for `fd`.
pub(crate) fn set_controlling_tty(fd: RawFd) -> nix::Result<()> {
    // SAFETY: TIOCSCTTY takes an integer argument; `fd` is an open terminal.
    let rc = unsafe { libc::ioctl(fd, libc::TIOCSCTTY, 0) };
    Errno::result(rc).map(drop)
}

/// Set a terminal's window size.
pub(crate) fn set_winsize(fd: RawFd, rows: u16, cols: u16) -> nix::Result<()> {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a `winsize` from the pointer, which is valid.
    let rc = unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &raw const ws) };
    Errno::result(rc).map(drop)
}

/// Read a terminal's window size.
pub(crate) fn get_winsize(fd: RawFd) -> nix::Result<(u16, u16)> {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes a `winsize` to the pointer, which is valid.
    let rc = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &raw mut ws) };
    Errno::result(rc).map(|_| (ws.ws_row, ws.ws_col))
}

/// Open a new pseudo-terminal master through `ptmx` and return it with the
/// path of its slave.
pub(crate) fn open_pty(ptmx: &Path) -> nix::Result<(OwnedFd, String)> {
    let fd = nix::fcntl::open(
        ptmx,
        OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    let raw = fd.as_raw_fd();
    let mut unlock: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK reads an int from the pointer, which is valid.
    Errno::result(unsafe { libc::ioctl(raw, libc::TIOCSPTLCK, &raw mut unlock) })?;
    let mut n: libc::c_uint = 0;
    // SAFETY: TIOCGPTN writes an unsigned int to the pointer, which is valid.
    Errno::result(unsafe { libc::ioctl(raw, libc::TIOCGPTN, &raw mut n) })?;
    let dir = ptmx.parent().unwrap_or(Path::new("/dev"));
    // /dev/ptmx is usually a symlink to pts/ptmx; the slave lives in pts/.
    let pts_dir = if dir.ends_with("pts") {
        dir.to_path_buf()
    } else {
        dir.join("pts")
    };
    Ok((fd, format!("{}/{n}", pts_dir.display())))
}

/// A `CString` from a string known to be a valid C string (no NUL).
pub(crate) fn cstring(s: &str) -> Result<CString, crate::Error> {
    CString::new(s).map_err(|_| crate::Error::Config(format!("string contains a NUL byte: {s:?}")))
}

/// The start time of a process (field 22 of /proc/PID/stat, in clock
/// ticks since boot), used to tell a live process from a reused PID.
pub(crate) fn process_start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may contain spaces.
    let after = &stat[stat.rfind(')')? + 2..];
    after.split(' ').nth(19)?.parse().ok()
}

/// The one-letter state of a process (R, S, D, Z, T, ...).
pub(crate) fn process_state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 2..].chars().next()
}

/// Open a pidfd for a process (Linux 5.3+).
pub(crate) fn pidfd_open(pid: i32) -> nix::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor,
    // which we take ownership of immediately.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(Errno::last());
    }
    // SAFETY: the kernel just returned this descriptor to us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Wait until the process behind `pidfd` exits or `timeout` passes. Returns
/// whether it exited.
pub(crate) fn pidfd_wait(
    pidfd: &OwnedFd,
    timeout: Option<std::time::Duration>,
) -> nix::Result<bool> {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    use std::os::fd::AsFd;

    let deadline = timeout.map(|t| std::time::Instant::now() + t);
    loop {
        let remaining = match deadline {
            None => PollTimeout::NONE,
            Some(d) => {
                let left = d.saturating_duration_since(std::time::Instant::now());
                PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX)
            }
        };
        let mut fds = [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, remaining) {
            Ok(0) => return Ok(false),
            Ok(_) => return Ok(true),
            Err(Errno::EINTR) => {}
            Err(e) => return Err(e),
        }
    }
}

/// Send signal number `sig` (including real-time signals) to `pid`.
pub(crate) fn kill(pid: i32, sig: i32) -> nix::Result<()> {
    // SAFETY: kill takes plain integers and has no memory effects.
    Errno::result(unsafe { libc::kill(pid, sig) }).map(drop)
}

/// Restore every signal's default disposition and unblock all signals, so
/// the container's program starts as a freshly exec'd process should (the
/// Rust runtime ignores SIGPIPE, and execve keeps ignored signals).
pub(crate) fn reset_signals() {
    for sig in 1..=libc::SIGRTMAX() {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        // SAFETY: installing SIG_DFL for a valid signal number has no memory
        // effects; invalid numbers only make the call fail.
        unsafe {
            libc::signal(sig, libc::SIG_DFL);
        }
    }
    let _ = nix::sys::signal::sigprocmask(
        nix::sys::signal::SigmaskHow::SIG_SETMASK,
        Some(&nix::sys::signal::SigSet::empty()),
        None,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_start_time_and_state() {
        let me = std::process::id() as i32;
        assert!(process_start_time(me).is_some());
        // The main thread may be sleeping while test threads run; it is alive.
        assert!(matches!(process_state(me), Some('R' | 'S')));
    }

    #[test]
    fn open_in_root_cannot_climb_out() {
        use std::os::fd::AsFd;
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::os::unix::fs::symlink("/etc", dir.path().join("sub/escape")).unwrap();
        let root = nix::fcntl::open(
            dir.path(),
            OFlag::O_PATH | OFlag::O_DIRECTORY,
            Mode::empty(),
        )
        .unwrap();
        // "/etc" seen through the symlink resolves to <root>/etc, which does
        // not exist, instead of the host's /etc.
        let err = open_in_root(
            root.as_fd(),
            Path::new("sub/escape/passwd"),
            OFlag::O_RDONLY,
            Mode::empty(),
        );
        assert_eq!(err.err(), Some(Errno::ENOENT));
        let err = open_in_root(
            root.as_fd(),
            Path::new("../../../../etc/passwd"),
            OFlag::O_RDONLY,
            Mode::empty(),
        );
        assert_eq!(err.err(), Some(Errno::ENOENT));
    }
}
