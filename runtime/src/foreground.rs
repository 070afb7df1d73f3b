//! Running a container process in the foreground, as `run` and `exec`
//! without `--detach` do: forward signals to it, relay its terminal if it
//! has one, and return its exit code.

use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::termios;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use crate::error::{Error, Result, SysContext};
use crate::sys;

/// Signals relayed to the container process.
const FORWARDED: &[Signal] = &[
    Signal::SIGHUP,
    Signal::SIGINT,
    Signal::SIGQUIT,
    Signal::SIGTERM,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGCONT,
    Signal::SIGALRM,
];

/// A unix socket the runtime listens on to receive the terminal of a
/// container it runs in the foreground.
pub struct ConsoleListener {
    dir: PathBuf,
    listener: UnixListener,
}

impl ConsoleListener {
    /// Listen on a fresh socket in a private temporary directory.
    pub fn new() -> Result<ConsoleListener> {
        use std::os::unix::fs::DirBuilderExt;
        let dir = std::env::temp_dir().join(format!(
            "vessel-console-{}-{}",
            std::process::id(),
            crate::state::now_rfc3339().replace([':', '.'], "")
        ));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|e| Error::io("create console socket directory", &dir, e))?;
        let path = dir.join("console.sock");
        let listener =
            UnixListener::bind(&path).map_err(|e| Error::io("bind console socket", &path, e))?;
        Ok(ConsoleListener { dir, listener })
    }

    /// The socket's path, to pass as the console socket.
    pub fn path(&self) -> PathBuf {
        self.dir.join("console.sock")
    }

    /// Accept the runtime's connection and receive the terminal master.
    pub fn receive(&self) -> Result<OwnedFd> {
        let (conn, _) = self
            .listener
            .accept()
            .map_err(|e| Error::io("accept on console socket", self.path(), e))?;
        recv_fd(conn.as_fd())
    }
}

impl Drop for ConsoleListener {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Receive one descriptor sent with `SCM_RIGHTS`.
pub fn recv_fd(sock: BorrowedFd<'_>) -> Result<OwnedFd> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    let mut buf = [0u8; 4096];
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let msg = recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .sys(|| "receive the terminal".into())?;
    for c in msg.cmsgs().sys(|| "read control message".into())? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            if let Some(fd) = fds.first() {
                // SAFETY: the kernel just installed this descriptor for us.
                return Ok(unsafe { OwnedFd::from_raw_fd(*fd) });
            }
        }
    }
    Err(Error::Container(
        "console socket: no descriptor received".into(),
    ))
}

/// Block the signals we relay and open a signalfd for them (plus SIGCHLD
/// and SIGWINCH). Call before starting the process.
pub fn signal_fd() -> Result<SignalFd> {
    let mut set = SigSet::empty();
    for s in FORWARDED {
        set.add(*s);
    }
    set.add(Signal::SIGCHLD);
    set.add(Signal::SIGWINCH);
    set.thread_block().sys(|| "block signals".into())?;
    SignalFd::with_flags(&set, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
        .sys(|| "signalfd".into())
}

/// Puts standard input in raw mode while alive.
struct RawMode {
    saved: Option<termios::Termios>,
}

impl RawMode {
    fn enter() -> RawMode {
        let stdin = std::io::stdin();
        let Ok(saved) = termios::tcgetattr(stdin.as_fd()) else {
            return RawMode { saved: None };
        };
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        let _ = termios::tcsetattr(stdin.as_fd(), termios::SetArg::TCSANOW, &raw);
        RawMode { saved: Some(saved) }
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(t) = &self.saved {
            let _ = termios::tcsetattr(std::io::stdin().as_fd(), termios::SetArg::TCSANOW, t);
        }
    }
}

fn copy_winsize(master: &OwnedFd) {
    if let Ok((rows, cols)) = sys::get_winsize(0) {
        let _ = sys::set_winsize(master.as_raw_fd(), rows, cols);
    }
}

/// Wait for `pid` (a child of ours), relaying signals and, with `master`,
/// the terminal. Returns the exit code (128 + signal when killed).
pub fn wait(pid: i32, sigfd: &SignalFd, master: Option<&OwnedFd>) -> Result<i32> {
    let _raw = master.map(|_| RawMode::enter());
    if let Some(m) = master {
        copy_winsize(m);
    }
    let mut stdin_open = master.is_some();
    let mut master_open = master.is_some();
    let mut exit: Option<i32> = None;
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        if let Some(code) = exit {
            if !master_open {
                return Ok(code);
            }
        }
        let stdin = std::io::stdin();
        let mut fds = vec![PollFd::new(sigfd.as_fd(), PollFlags::POLLIN)];
        if let (Some(m), true) = (master, master_open) {
            fds.push(PollFd::new(m.as_fd(), PollFlags::POLLIN));
        }
        if stdin_open {
            fds.push(PollFd::new(stdin.as_fd(), PollFlags::POLLIN));
        }
        // Once the process is gone, drain what is left of its output
        // without waiting for more.
        let timeout = if exit.is_some() {
            PollTimeout::ZERO
        } else {
            PollTimeout::NONE
        };
        match poll(&mut fds, timeout) {
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(Error::sys("poll", e)),
            Ok(0) => {
                master_open = false;
                continue;
            }
            Ok(_) => {}
        }
        let ready: Vec<bool> = fds
            .iter()
            .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
            .collect();
        drop(fds);
        if ready[0] {
            while let Ok(Some(info)) = sigfd.read_signal() {
                let signo = info.ssi_signo as i32;
                if signo == libc::SIGCHLD {
                    loop {
                        match waitpid(
                            Pid::from_raw(-1),
                            Some(WaitPidFlag::WNOHANG | WaitPidFlag::__WALL),
                        ) {
                            Ok(WaitStatus::Exited(p, code)) if p.as_raw() == pid => {
                                exit = Some(code);
                            }
                            Ok(WaitStatus::Signaled(p, sig, _)) if p.as_raw() == pid => {
                                exit = Some(128 + sig as i32);
                            }
                            Ok(WaitStatus::StillAlive) | Err(_) => break,
                            Ok(_) => {}
                        }
                    }
                } else if signo == libc::SIGWINCH {
                    if let Some(m) = master {
                        copy_winsize(m);
                    }
                } else {
                    let _ = sys::kill(pid, signo);
                }
            }
        }
        let mut idx = 1;
        if let (Some(m), true) = (master, master_open) {
            if ready[idx] {
                match nix::unistd::read(m.as_fd(), &mut buf) {
                    Ok(0) | Err(nix::errno::Errno::EIO) => master_open = false,
                    Ok(n) => {
                        let mut out = std::io::stdout();
                        let _ = out.write_all(&buf[..n]);
                        let _ = out.flush();
                    }
                    Err(nix::errno::Errno::EINTR | nix::errno::Errno::EAGAIN) => {}
                    Err(_) => master_open = false,
                }
            }
            idx += 1;
        }
        if stdin_open && ready.get(idx).copied().unwrap_or(false) {
            match nix::unistd::read(std::io::stdin().as_fd(), &mut buf) {
                Ok(0) | Err(_) => stdin_open = false,
                Ok(n) => {
                    if let Some(m) = master {
                        let _ = nix::unistd::write(m, &buf[..n]);
                    }
                }
            }
        }
    }
}
