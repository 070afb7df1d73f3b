//! Starting a container process: fork, then in the child a new session,
//! the terminal or pipes as stdio, chroot into the container root, the
//! working directory, rlimits, groups and user, and exec. A failure in the
//! child travels back over a close-on-exec pipe, so the parent knows
//! whether the exec happened.

use std::ffi::CString;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use nix::fcntl::OFlag;
use nix::pty::{OpenptyResult, Winsize, openpty};
use nix::unistd::{ForkResult, Pid, fork};

use super::{Error, Result};
use crate::protocol::ProcessSpec;

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A started process and the host ends of its stdio.
pub struct Spawned {
    /// Its PID.
    pub pid: Pid,
    /// Write end of its standard input (the terminal master with a pty).
    pub stdin: Option<OwnedFd>,
    /// Read end of its standard output (the terminal master with a pty).
    pub stdout: OwnedFd,
    /// Read end of its standard error (none with a pty).
    pub stderr: Option<OwnedFd>,
}

fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| Error::Sys("creating a pipe".into(), e))
}

fn rlimit_resource(name: &str) -> Option<libc::__rlimit_resource_t> {
    Some(match name {
        "RLIMIT_CPU" => libc::RLIMIT_CPU,
        "RLIMIT_FSIZE" => libc::RLIMIT_FSIZE,
        "RLIMIT_DATA" => libc::RLIMIT_DATA,
        "RLIMIT_STACK" => libc::RLIMIT_STACK,
        "RLIMIT_CORE" => libc::RLIMIT_CORE,
        "RLIMIT_RSS" => libc::RLIMIT_RSS,
        "RLIMIT_NPROC" => libc::RLIMIT_NPROC,
        "RLIMIT_NOFILE" => libc::RLIMIT_NOFILE,
        "RLIMIT_MEMLOCK" => libc::RLIMIT_MEMLOCK,
        "RLIMIT_AS" => libc::RLIMIT_AS,
        "RLIMIT_LOCKS" => libc::RLIMIT_LOCKS,
        "RLIMIT_SIGPENDING" => libc::RLIMIT_SIGPENDING,
        "RLIMIT_MSGQUEUE" => libc::RLIMIT_MSGQUEUE,
        "RLIMIT_NICE" => libc::RLIMIT_NICE,
        "RLIMIT_RTPRIO" => libc::RLIMIT_RTPRIO,
        "RLIMIT_RTTIME" => libc::RLIMIT_RTTIME,
        _ => return None,
    })
}

fn cstring(s: &str, what: &str) -> Result<CString> {
    CString::new(s).map_err(|_| Error::Setup(format!("{what} {s:?} contains a NUL byte")))
}

/// Everything the child needs, prepared before fork so the child does not
/// allocate.
struct Prepared {
    argv: Vec<CString>,
    envp: Vec<CString>,
    candidates: Vec<CString>,
    root: CString,
    cwd: CString,
    rlimits: Vec<(libc::__rlimit_resource_t, libc::rlimit)>,
    groups: Vec<libc::gid_t>,
    uid: libc::uid_t,
    gid: libc::gid_t,
}

fn prepare(spec: &ProcessSpec, root: &Path) -> Result<Prepared> {
    let Some(program) = spec.args.first() else {
        return Err(Error::Setup("the process has no arguments".into()));
    };
    let argv = spec
        .args
        .iter()
        .map(|a| cstring(a, "argument"))
        .collect::<Result<Vec<_>>>()?;
    let envp = spec
        .env
        .iter()
        .map(|e| cstring(e, "environment entry"))
        .collect::<Result<Vec<_>>>()?;
    let path = spec
        .env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH);
    let candidates = if program.contains('/') {
        vec![cstring(program, "program")?]
    } else {
        path.split(':')
            .filter(|d| !d.is_empty())
            .map(|d| cstring(&format!("{}/{program}", d.trim_end_matches('/')), "program"))
            .collect::<Result<Vec<_>>>()?
    };
    let mut rlimits = Vec::new();
    for r in &spec.rlimits {
        let res = rlimit_resource(&r.kind)
            .ok_or_else(|| Error::Setup(format!("unknown rlimit {:?}", r.kind)))?;
        rlimits.push((
            res,
            libc::rlimit {
                rlim_cur: r.soft,
                rlim_max: r.hard,
            },
        ));
    }
    let cwd = if spec.cwd.starts_with('/') {
        spec.cwd.clone()
    } else {
        format!("/{}", spec.cwd)
    };
    Ok(Prepared {
        argv,
        envp,
        candidates,
        root: cstring(&root.to_string_lossy(), "root")?,
        cwd: cstring(&cwd, "working directory")?,
        rlimits,
        groups: spec.additional_gids.clone(),
        uid: spec.uid,
        gid: spec.gid,
    })
}

/// Start `spec` inside `root` (a directory to chroot into).
pub fn spawn(spec: &ProcessSpec, root: &Path, winsize: Option<(u16, u16)>) -> Result<Spawned> {
    let p = prepare(spec, root)?;
    let (err_r, err_w) = pipe()?;
    // Child ends and parent ends of stdio.
    let (child_fds, parent): ([OwnedFd; 3], Spawned) = if spec.terminal {
        let ws = winsize.map(|(rows, cols)| Winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        });
        let OpenptyResult { master, slave } =
            openpty(ws.as_ref(), None).map_err(|e| Error::Sys("opening a pty".into(), e))?;
        for fd in [&master, &slave] {
            nix::fcntl::fcntl(
                fd,
                nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
            )
            .map_err(|e| Error::Sys("marking the pty close-on-exec".into(), e))?;
        }
        let dup = |fd: &OwnedFd| {
            fd.try_clone()
                .map_err(|e| Error::Io("duplicating the pty".into(), e))
        };
        let master_in = dup(&master)?;
        (
            [dup(&slave)?, dup(&slave)?, slave],
            Spawned {
                pid: Pid::from_raw(0),
                stdin: Some(master_in),
                stdout: master,
                stderr: None,
            },
        )
    } else {
        let (in_r, in_w) = pipe()?;
        let (out_r, out_w) = pipe()?;
        let (errp_r, errp_w) = pipe()?;
        (
            [in_r, out_w, errp_w],
            Spawned {
                pid: Pid::from_raw(0),
                stdin: Some(in_w),
                stdout: out_r,
                stderr: Some(errp_r),
            },
        )
    };
    let terminal = spec.terminal;
    let raw: [RawFd; 3] = [
        child_fds[0].as_raw_fd(),
        child_fds[1].as_raw_fd(),
        child_fds[2].as_raw_fd(),
    ];
    // SAFETY: the agent is single-threaded, so the child may run arbitrary
    // code; it only makes system calls and then execs or exits.
    match unsafe { fork() }.map_err(|e| Error::Sys("fork".into(), e))? {
        ForkResult::Child => {
            drop(err_r);
            let code = child(&p, raw, terminal, err_w.as_raw_fd());
            // SAFETY: _exit is always safe; we must not run destructors or
            // atexit handlers of the parent's state in the child.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child: pid } => {
            drop(err_w);
            drop(child_fds);
            let mut report = Vec::new();
            let mut f = std::fs::File::from(err_r);
            let _ = f.read_to_end(&mut report);
            if !report.is_empty() {
                // The child exits right after reporting; reap it here so
                // nobody reports an exit for a process that never started.
                let _ = nix::sys::wait::waitpid(pid, None);
                return Err(Error::Exec(String::from_utf8_lossy(&report).into_owned()));
            }
            Ok(Spawned { pid, ..parent })
        }
    }
}

/// Report `what` and errno to the parent.
fn fail(err_fd: RawFd, what: &str) -> i32 {
    let e = std::io::Error::last_os_error();
    let msg = format!("{what}: {e}");
    // SAFETY: writing a buffer we own to a descriptor we own.
    unsafe {
        libc::write(err_fd, msg.as_ptr().cast(), msg.len());
    }
    127
}

/// The child side of `spawn`. Returns an exit code only on failure.
fn child(p: &Prepared, stdio: [RawFd; 3], terminal: bool, err_fd: RawFd) -> i32 {
    // SAFETY: plain system calls on descriptors and NUL-terminated strings
    // prepared before fork; the pointers passed to execve come from
    // CStrings that live until the call.
    unsafe {
        let empty: libc::sigset_t = std::mem::zeroed();
        libc::sigprocmask(libc::SIG_SETMASK, &raw const empty, std::ptr::null_mut());
        for sig in [
            libc::SIGPIPE,
            libc::SIGCHLD,
            libc::SIGINT,
            libc::SIGTERM,
            libc::SIGHUP,
        ] {
            libc::signal(sig, libc::SIG_DFL);
        }
        if libc::setsid() < 0 {
            return fail(err_fd, "setsid");
        }
        for (target, fd) in stdio.iter().enumerate() {
            if libc::dup2(*fd, target as RawFd) < 0 {
                return fail(err_fd, "setting up stdio");
            }
        }
        if terminal && libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
            return fail(err_fd, "setting the controlling terminal");
        }
        if libc::chroot(p.root.as_ptr()) < 0 {
            return fail(err_fd, "chroot");
        }
        if libc::chdir(p.cwd.as_ptr()) < 0 {
            // Create a missing working directory, like runc does.
            let _ = std::fs::create_dir_all(p.cwd.to_string_lossy().as_ref());
            if libc::chdir(p.cwd.as_ptr()) < 0 {
                return fail(
                    err_fd,
                    &format!("working directory {}", p.cwd.to_string_lossy()),
                );
            }
        }
        for (res, lim) in &p.rlimits {
            if libc::setrlimit(*res, lim) < 0 {
                return fail(err_fd, "setrlimit");
            }
        }
        if libc::setgroups(p.groups.len(), p.groups.as_ptr()) < 0 {
            return fail(err_fd, "setgroups");
        }
        if libc::setgid(p.gid) < 0 {
            return fail(err_fd, "setgid");
        }
        if libc::setuid(p.uid) < 0 {
            return fail(err_fd, "setuid");
        }
        let mut argv: Vec<*const libc::c_char> = p.argv.iter().map(|a| a.as_ptr()).collect();
        argv.push(std::ptr::null());
        let mut envp: Vec<*const libc::c_char> = p.envp.iter().map(|a| a.as_ptr()).collect();
        envp.push(std::ptr::null());
        let mut last = libc::ENOENT;
        for c in &p.candidates {
            libc::execve(c.as_ptr(), argv.as_ptr(), envp.as_ptr());
            let e = *libc::__errno_location();
            // Keep a more telling error than "not found" from a later entry.
            if e != libc::ENOENT || last == libc::ENOENT {
                last = e;
            }
        }
        *libc::__errno_location() = last;
        fail(err_fd, &format!("exec {}", p.argv[0].to_string_lossy()))
    }
}

/// Wrap a raw descriptor we own.
pub fn owned(fd: RawFd) -> OwnedFd {
    // SAFETY: callers pass descriptors they own and do not close elsewhere.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn program_lookup_and_limits_are_prepared() {
        let spec = ProcessSpec {
            args: vec!["sh".into(), "-c".into(), "true".into()],
            env: vec!["PATH=/usr/bin:/bin".into(), "A=b".into()],
            cwd: "work".into(),
            rlimits: vec![crate::protocol::Rlimit {
                kind: "RLIMIT_NOFILE".into(),
                soft: 10,
                hard: 20,
            }],
            ..Default::default()
        };
        let p = prepare(&spec, Path::new("/r")).unwrap();
        assert_eq!(
            p.candidates,
            vec![
                CString::new("/usr/bin/sh").unwrap(),
                CString::new("/bin/sh").unwrap()
            ]
        );
        assert_eq!(p.cwd.to_str().unwrap(), "/work");
        assert_eq!(p.rlimits[0].1.rlim_max, 20);
        let mut bad = spec.clone();
        bad.rlimits[0].kind = "RLIMIT_BOGUS".into();
        assert!(prepare(&bad, Path::new("/r")).is_err());
        let mut bad = spec;
        bad.args.clear();
        assert!(prepare(&bad, Path::new("/r")).is_err());
    }
}
