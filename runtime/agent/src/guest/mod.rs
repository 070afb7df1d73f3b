//! The agent inside the microVM: serve the host over the channel, build
//! the container root, run and watch processes.
//!
//! Owns the agent's event loop (one thread, `poll` over the channel, the
//! processes' output and a signalfd for SIGCHLD), the process table, and
//! the order of events the protocol promises: all output of a process
//! before its `Exited`. `rootfs` assembles the root, `spawn` starts
//! processes, `system` is what only PID 1 does.
//!
//! The same loop runs outside a VM in *standalone* mode (a given directory
//! as the root, no mounts, no reset at the end), which is how the host-side
//! tests exercise it.

pub mod rootfs;
pub mod spawn;
pub mod system;

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::PathBuf;

use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use crate::protocol::{self, ExitInfo, Message, ProcessSpec, ReadyInfo, StartRequest};

/// Errors of the guest side.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Io(String, #[source] std::io::Error),
    #[error("{0}")]
    Sys(String, #[source] nix::Error),
    #[error("{0}")]
    Setup(String),
    #[error("{0}")]
    Exec(String),
    #[error("channel")]
    Protocol(#[from] protocol::Error),
}

/// Result alias of the guest side.
pub type Result<T> = std::result::Result<T, Error>;

/// Where the agent runs.
#[derive(Clone, Debug)]
pub enum Mode {
    /// PID 1 of a microVM: build the root from disks, set the host name.
    Vm,
    /// On a host, for tests: use this directory as the root as it is.
    Standalone {
        /// The container root.
        root: PathBuf,
    },
}

struct Proc {
    pid: Pid,
    stdin: Option<OwnedFd>,
    stdin_pending: Vec<u8>,
    stdin_close: bool,
    stdout: Option<OwnedFd>,
    stderr: Option<OwnedFd>,
    terminal: bool,
}

/// The agent's state.
pub struct Agent {
    channel: File,
    mode: Mode,
    root: Option<PathBuf>,
    procs: HashMap<u32, Proc>,
    main: Option<u32>,
    sigfd: SignalFd,
}

fn set_nonblocking(fd: &OwnedFd) -> Result<()> {
    let flags = fcntl(fd, FcntlArg::F_GETFL).map_err(|e| Error::Sys("F_GETFL".into(), e))?;
    fcntl(
        fd,
        FcntlArg::F_SETFL(OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK),
    )
    .map_err(|e| Error::Sys("F_SETFL".into(), e))?;
    Ok(())
}

enum Output {
    Data(Vec<u8>),
    Again,
    End,
}

fn read_some(fd: &OwnedFd) -> Output {
    let mut buf = vec![0u8; protocol::MAX_DATA];
    loop {
        match nix::unistd::read(fd, &mut buf) {
            Ok(0) => return Output::End,
            Ok(n) => {
                buf.truncate(n);
                return Output::Data(buf);
            }
            Err(nix::errno::Errno::EINTR) => {}
            Err(nix::errno::Errno::EAGAIN) => return Output::Again,
            // EIO: a pty whose last slave closed.
            Err(_) => return Output::End,
        }
    }
}

impl Agent {
    /// An agent serving `channel`. Blocks SIGCHLD for the signalfd.
    pub fn new(channel: File, mode: Mode) -> Result<Agent> {
        let mut mask = SigSet::empty();
        mask.add(Signal::SIGCHLD);
        mask.thread_block()
            .map_err(|e| Error::Sys("blocking SIGCHLD".into(), e))?;
        let sigfd = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
            .map_err(|e| Error::Sys("signalfd".into(), e))?;
        Ok(Agent {
            channel,
            mode,
            root: None,
            procs: HashMap::new(),
            main: None,
            sigfd,
        })
    }

    fn send(&mut self, m: &Message) -> Result<()> {
        m.write_to(&mut self.channel)?;
        Ok(())
    }

    /// Serve until the host says `Shutdown` or goes away.
    pub fn serve(&mut self) -> Result<()> {
        self.send(&Message::Ready(ReadyInfo {
            version: protocol::VERSION,
            kernel: system::kernel_release(),
        }))?;
        let mut decoder = protocol::Decoder::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            // What to wait for: (kind, process id).
            let mut watch: Vec<(u8, u32)> = vec![(0, 0), (1, 0)];
            let mut fds: Vec<PollFd<'_>> = vec![
                PollFd::new(self.channel.as_fd(), PollFlags::POLLIN),
                PollFd::new(self.sigfd.as_fd(), PollFlags::POLLIN),
            ];
            for (id, p) in &self.procs {
                if let Some(fd) = &p.stdout {
                    fds.push(PollFd::new(fd.as_fd(), PollFlags::POLLIN));
                    watch.push((2, *id));
                }
                if let Some(fd) = &p.stderr {
                    fds.push(PollFd::new(fd.as_fd(), PollFlags::POLLIN));
                    watch.push((3, *id));
                }
                if let (Some(fd), false) = (&p.stdin, p.stdin_pending.is_empty()) {
                    fds.push(PollFd::new(fd.as_fd(), PollFlags::POLLOUT));
                    watch.push((4, *id));
                }
            }
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(Error::Sys("poll".into(), e)),
            }
            let ready: Vec<(u8, u32)> = fds
                .iter()
                .zip(&watch)
                .filter(|(f, _)| f.revents().is_some_and(|r| !r.is_empty()))
                .map(|(_, w)| *w)
                .collect();
            drop(fds);
            for (kind, id) in ready {
                match kind {
                    0 => {
                        let n = loop {
                            match self.channel.read(&mut buf) {
                                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                                other => break other,
                            }
                        };
                        let n = n.map_err(|e| Error::Io("reading the channel".into(), e))?;
                        if n == 0 {
                            // The host went away: same as Shutdown.
                            return Ok(());
                        }
                        decoder.feed(&buf[..n]);
                        while let Some(m) = decoder.next_message()? {
                            if matches!(m, Message::Shutdown) {
                                return Ok(());
                            }
                            self.handle(m)?;
                        }
                    }
                    1 => self.reap()?,
                    2 | 3 => self.forward(id, kind == 3)?,
                    _ => self.feed_stdin(id),
                }
            }
        }
    }

    fn handle(&mut self, m: Message) -> Result<()> {
        match m {
            Message::Start { id, request } => {
                if self.root.is_some() {
                    return self.send(&Message::Error {
                        id,
                        message: "the container is already started".into(),
                    });
                }
                match self.setup(&request) {
                    Ok(root) => self.root = Some(root),
                    Err(e) => {
                        return self.send(&Message::Error {
                            id,
                            message: error_chain(&e),
                        });
                    }
                }
                self.main = Some(id);
                self.start(id, &request.process)
            }
            Message::Exec { id, process } => {
                if self.root.is_none() {
                    return self.send(&Message::Error {
                        id,
                        message: "exec before start".into(),
                    });
                }
                if self.procs.contains_key(&id) {
                    return self.send(&Message::Error {
                        id,
                        message: format!("process id {id} is in use"),
                    });
                }
                self.start(id, &process)
            }
            Message::Stdin { id, data } => {
                if let Some(p) = self.procs.get_mut(&id) {
                    p.stdin_pending.extend_from_slice(&data);
                }
                self.feed_stdin(id);
                Ok(())
            }
            Message::StdinClose { id } => {
                if let Some(p) = self.procs.get_mut(&id) {
                    p.stdin_close = true;
                }
                self.feed_stdin(id);
                Ok(())
            }
            Message::Signal { id, signal } => {
                if let Some(p) = self.procs.get(&id) {
                    // SAFETY: kill with a PID we started and a signal number
                    // the kernel validates.
                    unsafe {
                        libc::kill(p.pid.as_raw(), signal);
                    }
                }
                Ok(())
            }
            Message::Resize { id, rows, cols } => {
                if let Some(p) = self.procs.get(&id) {
                    if let (true, Some(fd)) = (p.terminal, &p.stdout) {
                        let ws = libc::winsize {
                            ws_row: rows,
                            ws_col: cols,
                            ws_xpixel: 0,
                            ws_ypixel: 0,
                        };
                        // SAFETY: TIOCSWINSZ on a pty master we own with a
                        // valid winsize.
                        unsafe {
                            libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &raw const ws);
                        }
                    }
                }
                Ok(())
            }
            other => {
                system::log(&format!("unexpected message from the host: {other:?}"));
                Ok(())
            }
        }
    }

    fn setup(&mut self, request: &StartRequest) -> Result<PathBuf> {
        match &self.mode {
            Mode::Standalone { root } => Ok(root.clone()),
            Mode::Vm => {
                let root = rootfs::prepare(&request.root)?;
                if !request.hostname.is_empty() {
                    nix::unistd::sethostname(&request.hostname).map_err(|e| {
                        Error::Sys(format!("setting the host name {:?}", request.hostname), e)
                    })?;
                }
                Ok(root)
            }
        }
    }

    fn start(&mut self, id: u32, spec: &ProcessSpec) -> Result<()> {
        let root = self.root.clone().expect("start runs after setup");
        match spawn::spawn(spec, &root, None) {
            Ok(s) => {
                for fd in [&s.stdout]
                    .into_iter()
                    .chain(s.stderr.as_ref())
                    .chain(s.stdin.as_ref())
                {
                    set_nonblocking(fd)?;
                }
                let pid = s.pid;
                self.procs.insert(
                    id,
                    Proc {
                        pid,
                        stdin: s.stdin,
                        stdin_pending: Vec::new(),
                        stdin_close: false,
                        stdout: Some(s.stdout),
                        stderr: s.stderr,
                        terminal: spec.terminal,
                    },
                );
                self.send(&Message::Started {
                    id,
                    pid: pid.as_raw(),
                })
            }
            Err(e) => self.send(&Message::Error {
                id,
                message: error_chain(&e),
            }),
        }
    }

    fn feed_stdin(&mut self, id: u32) {
        let Some(p) = self.procs.get_mut(&id) else {
            return;
        };
        let Some(fd) = &p.stdin else {
            p.stdin_pending.clear();
            return;
        };
        while !p.stdin_pending.is_empty() {
            match nix::unistd::write(fd, &p.stdin_pending) {
                Ok(n) => {
                    p.stdin_pending.drain(..n);
                }
                Err(nix::errno::Errno::EINTR) => {}
                Err(nix::errno::Errno::EAGAIN) => return,
                Err(_) => {
                    // The process closed its stdin: drop the input.
                    p.stdin_pending.clear();
                    p.stdin = None;
                    return;
                }
            }
        }
        // A terminal's master is also its output: keep it open.
        if p.stdin_close && !p.terminal {
            p.stdin = None;
        }
    }

    /// Forward what is readable on a process's stdout or stderr.
    fn forward(&mut self, id: u32, stderr: bool) -> Result<()> {
        let Some(p) = self.procs.get_mut(&id) else {
            return Ok(());
        };
        let slot = if stderr { &mut p.stderr } else { &mut p.stdout };
        let Some(fd) = slot.as_ref() else {
            return Ok(());
        };
        match read_some(fd) {
            Output::Data(data) => {
                let m = if stderr {
                    Message::Stderr { id, data }
                } else {
                    Message::Stdout { id, data }
                };
                self.send(&m)
            }
            Output::Again => Ok(()),
            Output::End => {
                *slot = None;
                // A pty master is both stdin and stdout.
                if p.terminal {
                    p.stdin = None;
                }
                Ok(())
            }
        }
    }

    /// Reap children; for ours, send the rest of their output, then `Exited`.
    fn reap(&mut self) -> Result<()> {
        while self.sigfd.read_signal().ok().flatten().is_some() {}
        loop {
            let status = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(nix::errno::Errno::ECHILD) => return Ok(()),
                Ok(s) => s,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(Error::Sys("waitpid".into(), e)),
            };
            let (pid, exit) = match status {
                WaitStatus::Exited(pid, code) => (pid, ExitInfo { code, signal: None }),
                WaitStatus::Signaled(pid, sig, _) => (
                    pid,
                    ExitInfo {
                        code: 128 + sig as i32,
                        signal: Some(sig as i32),
                    },
                ),
                _ => continue,
            };
            let Some(id) = self
                .procs
                .iter()
                .find(|(_, p)| p.pid == pid)
                .map(|(id, _)| *id)
            else {
                continue;
            };
            // Everything the process wrote is in its pipes now.
            for stderr in [false, true] {
                while let Some(p) = self.procs.get_mut(&id) {
                    let slot = if stderr { &mut p.stderr } else { &mut p.stdout };
                    let Some(fd) = slot.as_ref() else { break };
                    match read_some(fd) {
                        Output::Data(data) => {
                            let m = if stderr {
                                Message::Stderr { id, data }
                            } else {
                                Message::Stdout { id, data }
                            };
                            self.send(&m)?;
                        }
                        Output::Again | Output::End => break,
                    }
                }
            }
            self.procs.remove(&id);
            self.send(&Message::Exited { id, exit })?;
        }
    }

    /// Kill every process this agent started (standalone mode's cleanup).
    pub fn kill_all(&mut self) {
        for p in self.procs.values() {
            // SAFETY: kill with PIDs we started.
            unsafe {
                libc::kill(p.pid.as_raw(), libc::SIGKILL);
            }
        }
        for p in self.procs.values() {
            let _ = waitpid(p.pid, None);
        }
        self.procs.clear();
    }
}

/// An error and its causes on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Flush and ignore errors: used on the way out.
pub fn flush(f: &mut File) {
    let _ = f.flush();
}
