//! The built-in init (`docker run --init`): when a container's spec carries
//! the annotation [`INIT_ANNOTATION`] = `true`, the container's first
//! process stays behind as PID 1 of the container and runs the user's
//! program as its child. PID 1 then only reaps orphaned processes (which the
//! kernel re-parents to it) and forwards the signals it receives to the
//! program, and it exits with the program's status.
//!
//! Nothing is copied into the container: PID 1 is the runtime's own
//! process, already inside every namespace, under the container's seccomp
//! filter, capabilities and user. This module owns only the split into the
//! two processes and PID 1's loop; everything before `execve` is done once,
//! by `init`, for both.

use std::os::fd::OwnedFd;
use std::path::Path;

use nix::sys::signal::{SigSet, SigmaskHow, Signal, kill, sigprocmask};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, fork};

use crate::error::Result;
use crate::process;

/// The annotation that asks for the built-in init.
pub const INIT_ANNOTATION: &str = "io.vessel.init";

/// Whether the spec asks for the built-in init.
pub fn requested(spec: &oci_spec::runtime::Spec) -> bool {
    spec.annotations()
        .as_ref()
        .and_then(|a| a.get(INIT_ANNOTATION))
        .is_some_and(|v| v == "true" || v == "1")
}

/// Fork the program off and become its reaper. `started` is the exec fifo's
/// write end: the runtime's `start` returns when every copy is closed, so
/// PID 1 closes its copy at once and the program's copy closes at `execve`.
pub(crate) fn run(
    exe: &Path,
    args: &[String],
    env: &[String],
    started: Option<OwnedFd>,
) -> Result<std::convert::Infallible> {
    // Every signal stays blocked from here in PID 1, so none is lost between
    // the fork and the wait loop; the program unblocks them before exec.
    let mut old = SigSet::empty();
    let _ = sigprocmask(
        SigmaskHow::SIG_SETMASK,
        Some(&SigSet::all()),
        Some(&mut old),
    );

    // SAFETY: the runtime's init stage is single-threaded, so the child may
    // run arbitrary code between fork and exec.
    match unsafe { fork() } {
        Ok(ForkResult::Child) => {
            drop(started);
            // Own process group; in the foreground of the terminal if there
            // is one, so keyboard signals reach the program once, not also
            // through PID 1's forwarding. SIGTTOU is still blocked here, as
            // tcsetpgrp from a background group needs.
            let _ = nix::unistd::setpgid(Pid::from_raw(0), Pid::from_raw(0));
            let stdin = std::io::stdin();
            if nix::unistd::isatty(&stdin).unwrap_or(false) {
                let _ = nix::unistd::tcsetpgrp(&stdin, nix::unistd::getpgrp());
            }
            crate::sys::reset_signals();
            let err = match process::exec(exe, args, env) {
                Err(e) => e,
                Ok(never) => match never {},
            };
            eprintln!("vessel-init: {err}");
            // SAFETY: _exit is always safe; it skips the parent's atexit
            // handlers and buffers, which the child must not run.
            unsafe { libc::_exit(127) }
        }
        Ok(ForkResult::Parent { child }) => {
            drop(started);
            let _ = nix::sys::prctl::set_name(c"vessel-init");
            let code = reap(child);
            // SAFETY: _exit ends PID 1 (and so the container) with the
            // program's status; nothing of ours needs flushing.
            unsafe { libc::_exit(code) }
        }
        Err(e) => Err(crate::error::Error::sys(
            "fork the container's program off the init",
            e,
        )),
    }
}

/// PID 1's loop: wait for signals; reap on SIGCHLD, forward the rest.
/// Returns the exit status for PID 1 once the program has ended.
fn reap(program: Pid) -> i32 {
    let all = SigSet::all();
    loop {
        let Ok(sig) = all.wait() else {
            continue;
        };
        if sig != Signal::SIGCHLD {
            // Signals PID 1 is sent (`docker stop`, `docker kill`) are meant
            // for the program.
            let _ = kill(program, sig);
            continue;
        }
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) if pid == program => return code,
                Ok(WaitStatus::Signaled(pid, sig, _)) if pid == program => {
                    return 128 + sig as i32;
                }
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(_) => {}
            }
        }
    }
}
