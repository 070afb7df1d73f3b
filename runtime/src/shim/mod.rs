//! `vessel-shim`: the small supervisor that owns one container for the
//! daemon.
//!
//! The daemon writes a [`protocol::ShimConfig`] into a state directory and
//! runs `vessel-shim STATE_DIR`. That process forks the real shim (in a
//! session of its own, a child subreaper) and waits until it reports the
//! container created, so the daemon never becomes its parent and the shim
//! outlives a daemon restart.
//!
//! The shim creates the container through the runtime library (no extra
//! runtime process), holds its stdio or terminal, writes the json-file log,
//! serves attach, exec and wait over a unix socket, reaps the processes and
//! records the exit status (with OOM kills) in `exit.json`. It stays
//! single-threaded so the runtime library may fork from it.
//!
//! One shim stays resident per container, so its memory is kept to what the
//! event loop needs: the runtime library's create, start, exec and kill run
//! in a short-lived forked helper (parsing the bundle and the saved state
//! and seccomp never touch the shim's own heap and stack), the heap is trimmed
//! once the container runs, and the binary is linked at a fixed address
//! (see `build.rs`) so its relocated data is not a private copy per shim.
//!
//! When the bundle asks for a microVM (`crate::vm`), the shim boots the
//! monitor in its own process instead of creating namespaces (one monitor
//! per container), and multiplexes the agent's channel into the same event
//! loop: the agent's output frames feed the log and the attach clients,
//! exec becomes the agent's `Exec`, signals its `Signal`, and `SIGKILL`
//! (the end of a stop timeout) kills the VM.
//!
//! It does not decide restart policies, health checks or anything about
//! images: the daemon does.

pub mod client;
pub mod logfile;
pub mod protocol;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::{Duration, Instant};

use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use vessel_agent::host::MAIN_ID;
use vessel_agent::protocol::{Decoder, MAX_DATA, Message, StartRequest};

use crate::container::{self, CreateOptions, ExecOptions};
use crate::state::Root;
use crate::sys;
use protocol::{ExitStatus, Kind, Request, Response, ShimConfig};

/// Stop reading the container's output while an attached client has this
/// much unsent data (the container then blocks, as with Docker).
const BACKLOG_LIMIT: usize = 4 << 20;
/// After the init exits, how long to wait for its output to drain.
const DRAIN_LIMIT: Duration = Duration::from_secs(2);
/// Exec'd processes in a VM are named by agent process ids from here up
/// (above any PID, so they never collide with the init's key).
const VM_EXEC_BASE: u32 = 0x4000_0000;
/// How long the channel of a killed VM may stay open.
const KILL_GRACE: Duration = Duration::from_secs(3);
/// How long a VM may take to power off after the shim asked it to.
const VM_SHUTDOWN_LIMIT: Duration = Duration::from_secs(10);

/// What the launcher prints on success.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Launched {
    /// The container's init process.
    pub pid: i32,
    /// The shim process.
    pub shim_pid: i32,
}

/// Entry point of `vessel-shim STATE_DIR`: fork the shim, wait until it has
/// created the container, print [`Launched`] as JSON and return the exit
/// code for the launcher.
pub fn launch(state_dir: &Path) -> i32 {
    let cfg_path = state_dir.join(protocol::CONFIG_FILE);
    let cfg: ShimConfig = match std::fs::read(&cfg_path)
        .map_err(|e| e.to_string())
        .and_then(|d| serde_json::from_slice(&d).map_err(|e| e.to_string()))
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("vessel-shim: {}: {e}", cfg_path.display());
            return 1;
        }
    };
    let (ready_r, ready_w) = match nix::unistd::pipe2(OFlag::O_CLOEXEC) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("vessel-shim: pipe: {e}");
            return 1;
        }
    };
    match sys::fork() {
        Err(e) => {
            eprintln!("vessel-shim: fork: {e}");
            1
        }
        Ok(sys::Forked::Child) => {
            drop(ready_r);
            let code = match Shim::start(cfg, &ready_w) {
                Ok(mut shim) => {
                    drop(ready_w);
                    // What launching allocated and freed is not needed
                    // again while the container runs.
                    sys::trim_heap();
                    shim.run()
                }
                Err(e) => {
                    let _ = nix::unistd::write(
                        &ready_w,
                        format!("error {}\n", e.replace('\n', " ")).as_bytes(),
                    );
                    1
                }
            };
            sys::exit_now(code)
        }
        Ok(sys::Forked::Parent(child)) => {
            drop(ready_w);
            // Read one line: the container's init, forked but not yet
            // exec'd, still holds a copy of the write end, so there is no
            // end of file to wait for.
            let mut msg = String::new();
            let mut file = std::fs::File::from(ready_r);
            let mut byte = [0u8; 1];
            while let Ok(1) = file.read(&mut byte) {
                if byte[0] == b'\n' {
                    break;
                }
                msg.push(char::from(byte[0]));
            }
            if let Some(pid) = msg.strip_prefix("ok ") {
                let launched = Launched {
                    pid: pid.trim().parse().unwrap_or(0),
                    shim_pid: child.as_raw(),
                };
                println!("{}", serde_json::to_string(&launched).unwrap_or_default());
                0
            } else {
                let _ = waitpid(child, None);
                let err = msg
                    .strip_prefix("error ")
                    .unwrap_or("the shim exited before creating the container");
                eprintln!("vessel-shim: {err}");
                1
            }
        }
    }
}

/// One of the container's output streams.
struct Output {
    fd: OwnedFd,
    kind: Kind,
    eof: bool,
}

/// A process the shim supervises: the init or an exec'd one.
struct Proc {
    pid: i32,
    outputs: Vec<Output>,
    stdin: Option<OwnedFd>,
    stdin_buf: Vec<u8>,
    close_stdin_after_flush: bool,
    /// The terminal master, for resizing.
    master: Option<OwnedFd>,
    exit: Option<i32>,
    /// For exec'd processes: the connection that asked for it.
    conn: Option<u64>,
    /// Runs on a terminal (in a VM, where there is no master here).
    tty: bool,
}

impl Proc {
    fn drained(&self) -> bool {
        self.outputs.iter().all(|o| o.eof)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Request,
    Attach {
        stdin: bool,
        stdout: bool,
        stderr: bool,
    },
    Exec {
        pid: i32,
    },
    Wait,
    Closing,
}

struct Conn {
    stream: UnixStream,
    inbuf: Vec<u8>,
    outbuf: Vec<u8>,
    mode: Mode,
}

#[derive(Debug, Clone, Copy)]
enum Token {
    Listener,
    Signals,
    Output { pid: i32, idx: usize },
    Stdin { pid: i32 },
    Conn(u64),
    Agent,
}

/// The microVM side of a shim: the monitor and the agent's channel.
struct VmSide {
    sandbox: Option<vessel_vmm::Sandbox>,
    stream: UnixStream,
    decoder: Decoder,
    outbuf: Vec<u8>,
    /// The start request, until the daemon says start.
    start: Option<StartRequest>,
    next_exec: u32,
    /// Agent process ids whose `Started` a connection waits for, and
    /// whether that process keeps its stdin.
    pending: HashMap<u32, (u64, bool)>,
    eof: bool,
    /// The shim killed the VM (SIGKILL, or the shim itself was told to stop).
    killed: bool,
    /// When; the channel should close right after.
    killed_at: Option<Instant>,
    /// Why the container ended without an exit status.
    error: Option<String>,
    own_image: Option<std::path::PathBuf>,
}

impl VmSide {
    fn send(&mut self, m: &Message) {
        self.outbuf.extend_from_slice(&m.encode());
    }

    fn kill(&mut self) {
        self.killed = true;
        self.killed_at.get_or_insert_with(Instant::now);
        if let Some(s) = &self.sandbox {
            s.vm().kill();
        }
    }
}

struct Shim {
    cfg: ShimConfig,
    root: Root,
    cgroup_path: String,
    listener: UnixListener,
    signals: SignalFd,
    init: Proc,
    execs: HashMap<i32, Proc>,
    conns: HashMap<u64, Conn>,
    next_conn: u64,
    log: Option<logfile::JsonLog>,
    init_exited_at: Option<Instant>,
    stdin_attached: bool,
    vm: Option<VmSide>,
    /// A request was handled: once its reply is out, release what it used.
    settle: bool,
}

fn nonblocking(fd: BorrowedFd<'_>) -> nix::Result<()> {
    let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL)?);
    fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK)).map(drop)
}

fn pipe() -> std::result::Result<(OwnedFd, OwnedFd), String> {
    nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))
}

fn dev_null() -> std::result::Result<OwnedFd, String> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map(OwnedFd::from)
        .map_err(|e| format!("/dev/null: {e}"))
}

/// Set up stdio for a process: pipes (or a terminal through a console
/// socket pair). Returns what the process gets and what the shim keeps.
struct Plumbing {
    stdio: Option<[OwnedFd; 3]>,
    console: Option<(OwnedFd, OwnedFd)>,
    stdin: Option<OwnedFd>,
    outputs: Vec<Output>,
}

impl Plumbing {
    /// A copy of the container's end of the terminal socket, if any.
    fn their_console(&self) -> std::result::Result<Option<OwnedFd>, String> {
        self.console
            .as_ref()
            .map(|(_, theirs)| theirs.try_clone())
            .transpose()
            .map_err(|e| e.to_string())
    }
}

fn plumbing(tty: bool, open_stdin: bool) -> std::result::Result<Plumbing, String> {
    if tty {
        let (a, b) = nix::sys::socket::socketpair(
            nix::sys::socket::AddressFamily::Unix,
            nix::sys::socket::SockType::Stream,
            None,
            nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        )
        .map_err(|e| format!("socketpair: {e}"))?;
        return Ok(Plumbing {
            stdio: None,
            console: Some((a, b)),
            stdin: None,
            outputs: Vec::new(),
        });
    }
    let (stdin_child, stdin_keep) = if open_stdin {
        let (r, w) = pipe()?;
        nonblocking(w.as_fd()).map_err(|e| format!("stdin: {e}"))?;
        (r, Some(w))
    } else {
        (dev_null()?, None)
    };
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    nonblocking(out_r.as_fd()).map_err(|e| format!("stdout: {e}"))?;
    nonblocking(err_r.as_fd()).map_err(|e| format!("stderr: {e}"))?;
    Ok(Plumbing {
        stdio: Some([stdin_child, out_w, err_w]),
        console: None,
        stdin: stdin_keep,
        outputs: vec![
            Output {
                fd: out_r,
                kind: Kind::Stdout,
                eof: false,
            },
            Output {
                fd: err_r,
                kind: Kind::Stderr,
                eof: false,
            },
        ],
    })
}

/// After the process was created: take the terminal master if there is one.
impl Proc {
    /// The process a helper reported (`pid` as it wrote it), holding the
    /// shim's ends of `plumbing`.
    fn spawned(
        pid: &str,
        mut plumbing: Plumbing,
        conn: Option<u64>,
        tty: bool,
    ) -> std::result::Result<Proc, String> {
        let pid = pid
            .parse()
            .map_err(|_| format!("the shim's helper reported PID {pid:?}"))?;
        let master = finish_plumbing(&mut plumbing)?;
        Ok(Proc {
            pid,
            outputs: plumbing.outputs,
            stdin: plumbing.stdin,
            stdin_buf: Vec::new(),
            close_stdin_after_flush: false,
            master,
            exit: None,
            conn,
            tty,
        })
    }
}

fn finish_plumbing(p: &mut Plumbing) -> std::result::Result<Option<OwnedFd>, String> {
    let Some((ours, _theirs)) = p.console.take() else {
        return Ok(None);
    };
    let master = crate::foreground::recv_fd(ours.as_fd()).map_err(|e| e.chain())?;
    nonblocking(master.as_fd()).map_err(|e| format!("terminal: {e}"))?;
    let reader = master.try_clone().map_err(|e| format!("terminal: {e}"))?;
    p.outputs.push(Output {
        fd: reader,
        kind: Kind::Stdout,
        eof: false,
    });
    p.stdin = Some(master.try_clone().map_err(|e| format!("terminal: {e}"))?);
    Ok(Some(master))
}

/// The bundle decides whether the process gets a terminal; a shim told
/// otherwise would wait for a terminal that never comes.
fn check_terminal(
    cfg: &ShimConfig,
    bundle: &crate::spec::Bundle,
) -> std::result::Result<(), String> {
    let terminal = bundle
        .spec
        .process()
        .as_ref()
        .and_then(oci_spec::runtime::Process::terminal)
        .unwrap_or(false);
    if terminal == cfg.tty {
        Ok(())
    } else {
        Err(format!(
            "shim config says tty={} but the bundle's process.terminal is {terminal}",
            cfg.tty
        ))
    }
}

/// Longest result line a helper sends (it must fit in the pipe, since the
/// shim reads it only once the helper has exited).
const HELPER_LINE_MAX: usize = 16 * 1024;

/// Run `work` in a short-lived child of the shim and return the line it
/// produced.
///
/// The runtime library's operations (create, start, exec, kill) parse the
/// bundle or the container's saved state, compile or load seccomp filters
/// and run deep call chains. Done in the shim itself, every heap and stack
/// page that work touches would stay resident for the container's whole
/// life, in every shim. The helper does it and exits; the processes it
/// forked are then reparented to the shim (a child subreaper), which reaps
/// them as before. The shim reads the result before it reaps anything
/// else, so an early exit of a new process is never missed.
fn in_helper(
    work: impl FnOnce() -> std::result::Result<String, String>,
) -> std::result::Result<String, String> {
    let (r, w) = pipe()?;
    let child = match sys::fork() {
        Err(e) => return Err(format!("fork: {e}")),
        Ok(sys::Forked::Child) => {
            drop(r);
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work))
                .unwrap_or_else(|_| Err("the shim's helper panicked".into()));
            let mut line = match result {
                Ok(s) => format!("ok {s}"),
                Err(e) => format!("error {}", e.replace('\n', " ")),
            };
            if line.len() >= HELPER_LINE_MAX {
                let mut end = HELPER_LINE_MAX - 1;
                while !line.is_char_boundary(end) {
                    end -= 1;
                }
                line.truncate(end);
            }
            line.push('\n');
            let code = i32::from(nix::unistd::write(&w, line.as_bytes()).is_err());
            sys::exit_now(code)
        }
        Ok(sys::Forked::Parent(pid)) => pid,
    };
    drop(w);
    // Wait for the helper first: the processes it forked hold a copy of the
    // pipe's write end until they exec, so there is no end of file to wait
    // for; the helper's line is complete in the pipe once it has exited.
    let status = loop {
        match waitpid(child, Some(WaitPidFlag::__WALL)) {
            Err(nix::errno::Errno::EINTR) => {}
            other => break other,
        }
    };
    nonblocking(r.as_fd()).map_err(|e| format!("helper pipe: {e}"))?;
    let mut text = Vec::new();
    let mut chunk = [0u8; 1024];
    while text.len() < HELPER_LINE_MAX {
        match nix::unistd::read(r.as_fd(), &mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => text.extend_from_slice(&chunk[..n]),
        }
    }
    let text = String::from_utf8_lossy(&text);
    match text.split_once('\n').map(|(line, _)| line) {
        Some(line) => match line.strip_prefix("ok ") {
            Some(ok) => Ok(ok.to_string()),
            None => Err(line.strip_prefix("error ").unwrap_or(line).to_string()),
        },
        None => Err(format!(
            "the shim's helper ended without a result ({status:?})"
        )),
    }
}

impl Shim {
    /// In the forked shim: detach, create the container, listen, report.
    fn start(cfg: ShimConfig, ready: &OwnedFd) -> std::result::Result<Shim, String> {
        nix::unistd::setsid().map_err(|e| format!("setsid: {e}"))?;
        // Diagnostics go to a file: the shim has no terminal.
        let log_path = cfg.state_dir.join(protocol::LOG_FILE);
        let diag = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| format!("{}: {e}", log_path.display()))?;
        let null = dev_null()?;
        for (target, fd) in [
            (0, null.as_raw_fd()),
            (1, diag.as_raw_fd()),
            (2, diag.as_raw_fd()),
        ] {
            // SAFETY: dup2 onto the standard descriptors with open sources.
            unsafe {
                libc::dup2(fd, target);
            }
        }
        // SAFETY: PR_SET_CHILD_SUBREAPER takes an integer flag.
        unsafe {
            libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
        }
        let root = Root::open(&cfg.runtime_root).map_err(|e| e.chain())?;
        // Signals are read from a signalfd; block them before any child
        // exists (children reset their mask before exec).
        let mut set = SigSet::empty();
        for s in [
            Signal::SIGCHLD,
            Signal::SIGTERM,
            Signal::SIGINT,
            Signal::SIGHUP,
        ] {
            set.add(s);
        }
        set.thread_block()
            .map_err(|e| format!("block signals: {e}"))?;
        let signals = SignalFd::with_flags(&set, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
            .map_err(|e| format!("signalfd: {e}"))?;

        // The helper reads the bundle and, unless it asks for a microVM,
        // creates the container with the descriptors made here.
        let mut plumbing = plumbing(cfg.tty, cfg.open_stdin)?;
        let opts = CreateOptions {
            id: cfg.id.clone(),
            bundle: cfg.bundle.clone(),
            console_fd: plumbing.their_console()?,
            stdio: plumbing.stdio.take(),
            ..CreateOptions::default()
        };
        let created = in_helper(|| {
            let bundle = crate::spec::load_bundle(&cfg.bundle).map_err(|e| e.chain())?;
            check_terminal(&cfg, &bundle)?;
            if crate::vm::wants_vm(&bundle.spec) {
                return Ok(String::new());
            }
            let state = container::create_loaded(&root, &opts, bundle).map_err(|e| e.chain())?;
            Ok(format!("{} {}", state.pid, state.cgroup_path))
        })?;
        drop(opts);
        let (init, cgroup_path, vm) = if created.is_empty() {
            drop(plumbing);
            let bundle = crate::spec::load_bundle(&cfg.bundle).map_err(|e| e.chain())?;
            check_terminal(&cfg, &bundle)?;
            let (init, vm) = start_vm(&cfg, &bundle)?;
            (init, String::new(), Some(vm))
        } else {
            let (pid, cgroup_path) = created.split_once(' ').unwrap_or((created.as_str(), ""));
            let init = Proc::spawned(pid, plumbing, None, cfg.tty)?;
            (init, cgroup_path.to_string(), None)
        };

        let sock = cfg.state_dir.join(protocol::SOCKET);
        let _ = std::fs::remove_file(&sock);
        let listener = bind_in(&cfg.state_dir, protocol::SOCKET)
            .map_err(|e| format!("{}: {e}", sock.display()))?;
        listener.set_nonblocking(true).map_err(|e| e.to_string())?;
        std::fs::write(
            cfg.state_dir.join(protocol::PID_FILE),
            std::process::id().to_string(),
        )
        .map_err(|e| format!("pid file: {e}"))?;
        let log = match &cfg.log {
            Some(l) => {
                Some(logfile::JsonLog::open(l).map_err(|e| format!("{}: {e}", l.path.display()))?)
            }
            None => None,
        };
        nix::unistd::write(ready, format!("ok {}\n", init.pid).as_bytes())
            .map_err(|e| e.to_string())?;
        Ok(Shim {
            cgroup_path,
            init,
            vm,
            cfg,
            root,
            listener,
            signals,
            execs: HashMap::new(),
            conns: HashMap::new(),
            next_conn: 0,
            log,
            init_exited_at: None,
            stdin_attached: false,
            settle: false,
        })
    }

    /// The event loop; returns the shim's exit code.
    fn run(&mut self) -> i32 {
        loop {
            if let Some(at) = self.init_exited_at {
                if self.init.drained() || at.elapsed() >= DRAIN_LIMIT {
                    self.finish();
                    return 0;
                }
            }
            if self.settle && self.conns.values().all(|c| c.outbuf.is_empty()) {
                // Requests are rare; between them the shim relays output or
                // waits. The code and memory a request used (parsing, the
                // helper) need not stay mapped until the next one.
                self.settle = false;
                sys::release_code_pages();
                sys::trim_heap();
            }
            let mut tokens = Vec::new();
            self.interest(&mut tokens);
            let mut fds: Vec<PollFd<'_>> = tokens
                .iter()
                // SAFETY: every descriptor listed by `interest` is owned by
                // `self` and stays open while `fds` lives (until the end of
                // this iteration's poll).
                .map(|(_, fd, ev)| PollFd::new(unsafe { BorrowedFd::borrow_raw(*fd) }, *ev))
                .collect();
            // A killed VM's channel closes as its threads end; should it
            // not, the container still ends after a grace period.
            let killed_at = self
                .vm
                .as_ref()
                .filter(|vm| !vm.eof)
                .and_then(|vm| vm.killed_at);
            if killed_at.is_some_and(|at| at.elapsed() >= KILL_GRACE) {
                self.agent_gone();
            }
            let timeout = if self.init_exited_at.is_some() || killed_at.is_some() {
                PollTimeout::from(100u16)
            } else {
                PollTimeout::NONE
            };
            match poll(&mut fds, timeout) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => {
                    tracing::error!(error = %e, "poll");
                    return 1;
                }
            }
            let ready: Vec<(Token, PollFlags)> = tokens
                .iter()
                .zip(fds.iter())
                .filter_map(|((t, _, _), f)| f.revents().filter(|r| !r.is_empty()).map(|r| (*t, r)))
                .collect();
            drop(fds);
            for (token, revents) in ready {
                match token {
                    Token::Listener => self.accept(),
                    Token::Signals => self.signals(),
                    Token::Output { pid, idx } => self.read_output(pid, idx),
                    Token::Stdin { pid } => self.flush_stdin(pid),
                    Token::Conn(id) => self.conn_event(id, revents),
                    Token::Agent => self.agent_event(revents),
                }
            }
            self.reap_execs();
        }
    }

    fn backlogged(&self) -> bool {
        self.conns.values().any(|c| c.outbuf.len() > BACKLOG_LIMIT)
    }

    fn interest(&self, out: &mut Vec<(Token, RawFd, PollFlags)>) {
        out.push((
            Token::Listener,
            self.listener.as_raw_fd(),
            PollFlags::POLLIN,
        ));
        out.push((
            Token::Signals,
            self.signals.as_fd().as_raw_fd(),
            PollFlags::POLLIN,
        ));
        let backlogged = self.backlogged();
        for p in std::iter::once(&self.init).chain(self.execs.values()) {
            if !backlogged {
                for (idx, o) in p.outputs.iter().enumerate() {
                    if !o.eof {
                        out.push((
                            Token::Output { pid: p.pid, idx },
                            o.fd.as_raw_fd(),
                            PollFlags::POLLIN,
                        ));
                    }
                }
            }
            if let (Some(fd), false) = (&p.stdin, p.stdin_buf.is_empty()) {
                out.push((
                    Token::Stdin { pid: p.pid },
                    fd.as_raw_fd(),
                    PollFlags::POLLOUT,
                ));
            }
        }
        if let Some(vm) = &self.vm {
            let mut ev = PollFlags::empty();
            if !vm.eof && !backlogged {
                ev |= PollFlags::POLLIN;
            }
            if !vm.eof && !vm.outbuf.is_empty() {
                ev |= PollFlags::POLLOUT;
            }
            if !ev.is_empty() {
                out.push((Token::Agent, vm.stream.as_raw_fd(), ev));
            }
        }
        for (id, c) in &self.conns {
            let mut ev = PollFlags::POLLIN;
            if !c.outbuf.is_empty() {
                ev |= PollFlags::POLLOUT;
            }
            out.push((Token::Conn(*id), c.stream.as_raw_fd(), ev));
        }
    }

    fn proc_mut(&mut self, pid: i32) -> Option<&mut Proc> {
        if pid == self.init.pid {
            Some(&mut self.init)
        } else {
            self.execs.get_mut(&pid)
        }
    }

    fn accept(&mut self) {
        while let Ok((stream, _)) = self.listener.accept() {
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            let id = self.next_conn;
            self.next_conn += 1;
            self.conns.insert(
                id,
                Conn {
                    stream,
                    inbuf: Vec::new(),
                    outbuf: Vec::new(),
                    mode: Mode::Request,
                },
            );
        }
    }

    fn signals(&mut self) {
        while let Ok(Some(info)) = self.signals.read_signal() {
            let signo = info.ssi_signo as i32;
            if signo == libc::SIGCHLD {
                self.reap();
            } else if self.init.exit.is_none() {
                // Asked to stop: take the container down with us.
                match &mut self.vm {
                    Some(vm) => vm.kill(),
                    None => {
                        let _ = sys::kill(self.init.pid, libc::SIGKILL);
                    }
                }
            }
        }
    }

    fn reap(&mut self) {
        loop {
            match waitpid(
                Pid::from_raw(-1),
                Some(WaitPidFlag::WNOHANG | WaitPidFlag::__WALL),
            ) {
                Ok(WaitStatus::Exited(pid, code)) => self.exited(pid.as_raw(), code),
                Ok(WaitStatus::Signaled(pid, sig, _)) => {
                    self.exited(pid.as_raw(), 128 + sig as i32);
                }
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(_) => {}
            }
        }
    }

    fn exited(&mut self, pid: i32, code: i32) {
        if pid == self.init.pid {
            self.init.exit = Some(code);
            self.init_exited_at = Some(Instant::now());
        } else if let Some(p) = self.execs.get_mut(&pid) {
            p.exit = Some(code);
        }
    }

    fn read_output(&mut self, pid: i32, idx: usize) {
        let mut buf = vec![0u8; 64 * 1024];
        let is_init = pid == self.init.pid;
        let Some(p) = self.proc_mut(pid) else { return };
        let Some(o) = p.outputs.get_mut(idx) else {
            return;
        };
        let kind = o.kind;
        let n = match nix::unistd::read(o.fd.as_fd(), &mut buf) {
            Ok(0) | Err(nix::errno::Errno::EIO) => {
                o.eof = true;
                return;
            }
            Ok(n) => n,
            Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => return,
            Err(e) => {
                tracing::warn!(error = %e, "read container output");
                o.eof = true;
                return;
            }
        };
        let conn = p.conn;
        self.deliver(is_init, conn, kind, &buf[..n]);
    }

    /// Output of a process: the init's goes to the log and the attach
    /// clients, an exec'd one's to the connection that asked for it.
    fn deliver(&mut self, is_init: bool, conn: Option<u64>, kind: Kind, data: &[u8]) {
        if is_init {
            if let Some(log) = &mut self.log {
                log.write(kind == Kind::Stderr, data);
            }
            for c in self.conns.values_mut() {
                if let Mode::Attach { stdout, stderr, .. } = c.mode {
                    if (kind == Kind::Stdout && stdout) || (kind == Kind::Stderr && stderr) {
                        protocol::encode(&mut c.outbuf, kind, data);
                    }
                }
            }
        } else if let Some(c) = conn.and_then(|id| self.conns.get_mut(&id)) {
            protocol::encode(&mut c.outbuf, kind, data);
        }
    }

    fn flush_stdin(&mut self, pid: i32) {
        let Some(p) = self.proc_mut(pid) else { return };
        let Some(fd) = &p.stdin else { return };
        match nix::unistd::write(fd, &p.stdin_buf) {
            Ok(n) => {
                p.stdin_buf.drain(..n);
            }
            Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => {}
            Err(_) => {
                p.stdin = None;
                p.stdin_buf.clear();
            }
        }
        if p.stdin_buf.is_empty() && p.close_stdin_after_flush && p.master.is_none() {
            p.stdin = None;
        }
    }

    fn conn_event(&mut self, id: u64, revents: PollFlags) {
        if revents.contains(PollFlags::POLLOUT) {
            self.write_conn(id);
        }
        if revents.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR) {
            self.read_conn(id);
        }
    }

    fn write_conn(&mut self, id: u64) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        match c.stream.write(&c.outbuf) {
            Ok(n) => {
                c.outbuf.drain(..n);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => {
                self.drop_conn(id);
                return;
            }
        }
        if c_closing(self.conns.get(&id)) {
            self.drop_conn(id);
        }
    }

    fn read_conn(&mut self, id: u64) {
        // On the stack: a heap buffer would leave its pages resident (and
        // be cleared on every call); requests are short and stdin frames
        // arrive in pieces anyway.
        let mut buf = [0u8; 16 * 1024];
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        match c.stream.read(&mut buf) {
            Ok(0) => {
                self.drop_conn(id);
                return;
            }
            Ok(n) => c.inbuf.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
            Err(_) => {
                self.drop_conn(id);
                return;
            }
        }
        loop {
            let Some(c) = self.conns.get_mut(&id) else {
                return;
            };
            match c.mode {
                Mode::Request => {
                    let Some(pos) = c.inbuf.iter().position(|b| *b == b'\n') else {
                        return;
                    };
                    let line: Vec<u8> = c.inbuf.drain(..=pos).collect();
                    let request = serde_json::from_slice::<Request>(&line);
                    match request {
                        Ok(r) => self.handle(id, r),
                        Err(e) => self.reply(
                            id,
                            &Response {
                                error: Some(format!("bad request: {e}")),
                                ..Response::default()
                            },
                            Mode::Closing,
                        ),
                    }
                }
                Mode::Attach { .. } | Mode::Exec { .. } => {
                    let frame = protocol::decode(&mut c.inbuf);
                    match frame {
                        Ok(Some((kind, payload))) => self.client_frame(id, kind, &payload),
                        Ok(None) => return,
                        Err(e) => {
                            tracing::warn!(error = %e, "bad frame from client");
                            self.drop_conn(id);
                            return;
                        }
                    }
                }
                Mode::Wait | Mode::Closing => {
                    c.inbuf.clear();
                    return;
                }
            }
        }
    }

    fn target_pid(&self, id: u64) -> Option<i32> {
        match self.conns.get(&id)?.mode {
            Mode::Attach { .. } => Some(self.init.pid),
            Mode::Exec { pid } => Some(pid),
            _ => None,
        }
    }

    fn client_frame(&mut self, id: u64, kind: Kind, payload: &[u8]) {
        let Some(pid) = self.target_pid(id) else {
            return;
        };
        let attach_stdin = matches!(
            self.conns.get(&id).map(|c| c.mode),
            Some(Mode::Attach { stdin: true, .. } | Mode::Exec { .. })
        );
        if self.vm.is_some() {
            self.vm_client_frame(pid, attach_stdin, kind, payload);
            return;
        }
        let Some(p) = self.proc_mut(pid) else { return };
        match kind {
            Kind::Stdin if attach_stdin && p.stdin.is_some() => {
                p.stdin_buf.extend_from_slice(payload);
            }
            Kind::CloseStdin if attach_stdin => {
                if p.master.is_some() {
                    // A terminal has no separate stdin to close; send EOF.
                    p.stdin_buf.push(4);
                } else if p.stdin_buf.is_empty() {
                    p.stdin = None;
                } else {
                    p.close_stdin_after_flush = true;
                }
            }
            Kind::Resize if payload.len() == 4 => {
                let rows = u16::from_be_bytes([payload[0], payload[1]]);
                let cols = u16::from_be_bytes([payload[2], payload[3]]);
                if let Some(m) = &p.master {
                    let _ = sys::set_winsize(m.as_raw_fd(), rows, cols);
                }
            }
            _ => {}
        }
    }

    fn reply(&mut self, id: u64, resp: &Response, mode: Mode) {
        if let Some(c) = self.conns.get_mut(&id) {
            if let Ok(mut line) = serde_json::to_vec(resp) {
                line.push(b'\n');
                c.outbuf.extend_from_slice(&line);
            }
            c.mode = mode;
        }
    }

    fn exit_status(&self) -> Option<ExitStatus> {
        let code = self.init.exit?;
        Some(ExitStatus {
            code,
            oom_killed: false,
            finished_at_ns: now_ns(),
            error: self.vm.as_ref().and_then(|v| v.error.clone()),
        })
    }

    fn handle(&mut self, id: u64, req: Request) {
        // A VM's shim has the monitor's threads running its code.
        self.settle = self.vm.is_none();
        if self.vm.is_some() {
            match req {
                Request::Start => return self.vm_start(id),
                Request::Exec { process, stdin } => return self.vm_exec(id, &process, stdin),
                Request::Resize { rows, cols } => {
                    self.vm_send(&Message::Resize {
                        id: MAIN_ID,
                        rows,
                        cols,
                    });
                    self.reply(id, &Response::default(), Mode::Closing);
                    return;
                }
                Request::Signal { signal } => {
                    self.vm_signal(signal);
                    self.reply(id, &Response::default(), Mode::Closing);
                    return;
                }
                _ => {}
            }
        }
        match req {
            Request::Signal { signal } => {
                let resp = if self.init.exit.is_some() {
                    Response {
                        error: Some("container not running".into()),
                        ..Response::default()
                    }
                } else {
                    let (root, cid) = (&self.root, &self.cfg.id);
                    match in_helper(|| {
                        container::kill(root, cid, signal, false)
                            .map(|()| String::new())
                            .map_err(|e| e.chain())
                    }) {
                        Ok(_) => Response::default(),
                        Err(e) => Response {
                            error: Some(e),
                            ..Response::default()
                        },
                    }
                };
                self.reply(id, &resp, Mode::Closing);
            }
            Request::Start => {
                let (root, cid) = (&self.root, &self.cfg.id);
                let started = in_helper(|| {
                    container::start(root, cid)
                        .map(|()| String::new())
                        .map_err(|e| e.chain())
                });
                let resp = match started {
                    Ok(_) => Response {
                        pid: Some(self.init.pid),
                        ..Response::default()
                    },
                    Err(e) => Response {
                        error: Some(e),
                        ..Response::default()
                    },
                };
                self.reply(id, &resp, Mode::Closing);
            }
            Request::Attach {
                stdin,
                stdout,
                stderr,
            } => {
                let stdin = stdin && self.cfg.open_stdin;
                if stdin {
                    self.stdin_attached = true;
                }
                self.reply(
                    id,
                    &Response {
                        pid: Some(self.init.pid),
                        ..Response::default()
                    },
                    Mode::Attach {
                        stdin,
                        stdout,
                        stderr,
                    },
                );
            }
            Request::Wait => {
                // Answered in `finish` once the container has exited.
                if let Some(c) = self.conns.get_mut(&id) {
                    c.mode = Mode::Wait;
                }
            }
            Request::State => {
                let resp = Response {
                    pid: Some(self.init.pid),
                    running: Some(self.init.exit.is_none()),
                    exit: self.exit_status(),
                    ..Response::default()
                };
                self.reply(id, &resp, Mode::Closing);
            }
            Request::Resize { rows, cols } => {
                if let Some(m) = &self.init.master {
                    let _ = sys::set_winsize(m.as_raw_fd(), rows, cols);
                }
                self.reply(id, &Response::default(), Mode::Closing);
            }
            Request::Exec { process, stdin } => match self.exec(id, process, stdin) {
                Ok(pid) => self.reply(
                    id,
                    &Response {
                        pid: Some(pid),
                        ..Response::default()
                    },
                    Mode::Exec { pid },
                ),
                Err(e) => self.reply(
                    id,
                    &Response {
                        error: Some(e),
                        ..Response::default()
                    },
                    Mode::Closing,
                ),
            },
        }
    }

    fn exec(
        &mut self,
        conn: u64,
        process: oci_spec::runtime::Process,
        stdin: bool,
    ) -> std::result::Result<i32, String> {
        if self.init.exit.is_some() {
            return Err("container not running".into());
        }
        let tty = process.terminal().unwrap_or(false);
        let mut plumbing = plumbing(tty, stdin)?;
        let opts = ExecOptions {
            id: self.cfg.id.clone(),
            process,
            pid_file: None,
            console_socket: None,
            console_fd: plumbing.their_console()?,
            stdio: plumbing.stdio.take(),
            preserve_fds: 0,
        };
        let root = &self.root;
        let pid = in_helper(|| {
            container::exec(root, &opts)
                .map(|pid| pid.to_string())
                .map_err(|e| e.chain())
        })?;
        drop(opts);
        let p = Proc::spawned(&pid, plumbing, Some(conn), tty)?;
        let pid = p.pid;
        self.execs.insert(pid, p);
        Ok(pid)
    }

    /// Finish exec'd processes that exited and whose output is drained.
    fn reap_execs(&mut self) {
        let done: Vec<i32> = self
            .execs
            .values()
            .filter(|p| p.exit.is_some() && p.drained())
            .map(|p| p.pid)
            .collect();
        for pid in done {
            let Some(p) = self.execs.remove(&pid) else {
                continue;
            };
            let status = ExitStatus {
                code: p.exit.unwrap_or(-1),
                oom_killed: false,
                finished_at_ns: now_ns(),
                error: None,
            };
            if let Some(c) = p.conn.and_then(|id| self.conns.get_mut(&id)) {
                if let Ok(json) = serde_json::to_vec(&status) {
                    protocol::encode(&mut c.outbuf, Kind::Exit, &json);
                }
                c.mode = Mode::Closing;
            }
        }
    }

    fn drop_conn(&mut self, id: u64) {
        if let Some(c) = self.conns.remove(&id) {
            if let Mode::Attach { stdin: true, .. } = c.mode {
                if self.cfg.stdin_once && !self.init.tty {
                    self.init.stdin = None;
                    self.vm_send(&Message::StdinClose { id: MAIN_ID });
                }
            }
        }
    }

    /// The init exited: record, clean up, tell everyone, exit.
    fn finish(&mut self) {
        // Read what is left without waiting.
        for idx in 0..self.init.outputs.len() {
            for _ in 0..64 {
                if self.init.outputs[idx].eof {
                    break;
                }
                self.read_output(self.init.pid, idx);
                if !self.output_readable(idx) {
                    break;
                }
            }
        }
        if let Some(log) = &mut self.log {
            log.flush();
        }
        let mut error = None;
        let oom_killed = if let Some(vm) = self.vm.take() {
            error.clone_from(&vm.error);
            stop_vm(vm);
            false
        } else {
            let hier = crate::cgroups::Hierarchies::detect();
            let oom = hier.oom_kills(&self.cgroup_path) > 0;
            if let Err(e) = container::delete_in(&self.root, &self.cfg.id, true, &hier) {
                tracing::warn!(error = %e.chain(), "delete container");
            }
            oom
        };
        let status = ExitStatus {
            code: self.init.exit.unwrap_or(-1),
            oom_killed,
            finished_at_ns: now_ns(),
            error,
        };
        let path = self.cfg.state_dir.join(protocol::EXIT_FILE);
        let tmp = self.cfg.state_dir.join(".exit.json.tmp");
        if let Ok(json) = serde_json::to_vec(&status) {
            if std::fs::write(&tmp, &json).is_ok() {
                let _ = std::fs::rename(&tmp, &path);
            }
        }
        let _ = std::fs::remove_file(self.cfg.state_dir.join(protocol::SOCKET));
        let json = serde_json::to_vec(&status).unwrap_or_default();
        let mut wait_line = serde_json::to_vec(&Response {
            exit: Some(status),
            ..Response::default()
        })
        .unwrap_or_default();
        wait_line.push(b'\n');
        for c in self.conns.values_mut() {
            match c.mode {
                Mode::Attach { .. } | Mode::Exec { .. } => {
                    protocol::encode(&mut c.outbuf, Kind::Exit, &json);
                }
                Mode::Wait => c.outbuf.extend_from_slice(&wait_line),
                _ => {}
            }
        }
        // Deliver what is queued, giving slow clients a bounded time.
        let deadline = Instant::now() + Duration::from_secs(5);
        for c in self.conns.values_mut() {
            let _ = c.stream.set_nonblocking(false);
            let left = deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1));
            let _ = c.stream.set_write_timeout(Some(left));
            let _ = c.stream.write_all(&c.outbuf);
            let _ = c.stream.shutdown(std::net::Shutdown::Write);
        }
    }

    fn output_readable(&self, idx: usize) -> bool {
        let Some(o) = self.init.outputs.get(idx) else {
            return false;
        };
        let mut fds = [PollFd::new(o.fd.as_fd(), PollFlags::POLLIN)];
        matches!(poll(&mut fds, PollTimeout::ZERO), Ok(n) if n > 0)
    }
}

/// In the forked shim: boot the container's VM and wait for its agent.
/// The init's key is the shim's own PID (the process that holds the VM).
fn start_vm(
    cfg: &ShimConfig,
    bundle: &crate::spec::Bundle,
) -> std::result::Result<(Proc, VmSide), String> {
    let chain = |e: &dyn std::error::Error| {
        let mut s = e.to_string();
        let mut cur = e.source();
        while let Some(c) = cur {
            s.push_str(": ");
            s.push_str(&c.to_string());
            cur = c.source();
        }
        s
    };
    let plan = crate::vm::plan(bundle, &cfg.id).map_err(|e| chain(&e))?;
    let booted = crate::vm::boot(&plan, &cfg.state_dir).map_err(|e| chain(&e))?;
    tracing::info!(kernel = %booted.ready.kernel, mem_mib = plan.mem_mib, vcpus = plan.vcpus, "vm ready");
    booted
        .channel
        .set_nonblocking(true)
        .map_err(|e| format!("agent channel: {e}"))?;
    let init = Proc {
        pid: std::process::id() as i32,
        outputs: Vec::new(),
        stdin: None,
        stdin_buf: Vec::new(),
        close_stdin_after_flush: false,
        master: None,
        exit: None,
        conn: None,
        tty: plan.start.process.terminal,
    };
    let vm = VmSide {
        sandbox: Some(booted.sandbox),
        stream: booted.channel,
        decoder: Decoder::new(),
        outbuf: Vec::new(),
        start: Some(booted.start),
        next_exec: VM_EXEC_BASE,
        pending: HashMap::new(),
        eof: false,
        killed: false,
        killed_at: None,
        error: None,
        own_image: booted.own_image,
    };
    Ok((init, vm))
}

/// Power the VM off: ask the agent (it kills what still runs, syncs and
/// resets), and kill the VM if it has not ended within the limit.
fn stop_vm(mut vm: VmSide) {
    if !vm.eof {
        vm.send(&Message::Shutdown);
        let _ = vm.stream.set_nonblocking(false);
        let _ = vm.stream.set_write_timeout(Some(Duration::from_secs(1)));
        let _ = vm.stream.write_all(&vm.outbuf);
    }
    if let Some(sandbox) = vm.sandbox.take() {
        let stopper = sandbox.vm().stopper();
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        std::thread::spawn(move || {
            if rx.recv_timeout(VM_SHUTDOWN_LIMIT).is_err() {
                stopper.kill();
            }
        });
        let outcome = sandbox.wait();
        let _ = tx.send(());
        tracing::info!(exit = ?outcome.exit, elapsed = ?outcome.elapsed, "vm ended");
    }
    if let Some(image) = &vm.own_image {
        let _ = std::fs::remove_file(image);
    }
}

impl Shim {
    fn vm_send(&mut self, m: &Message) {
        if let Some(vm) = &mut self.vm {
            vm.send(m);
        }
    }

    /// The agent's process id for a shim process key.
    fn agent_id(&self, key: i32) -> u32 {
        if key == self.init.pid {
            MAIN_ID
        } else {
            key as u32
        }
    }

    /// The shim process key for an agent process id.
    fn proc_key(&self, id: u32) -> i32 {
        if id == MAIN_ID {
            self.init.pid
        } else {
            id as i32
        }
    }

    fn agent_event(&mut self, revents: PollFlags) {
        if revents.contains(PollFlags::POLLOUT) {
            if let Some(vm) = &mut self.vm {
                match vm.stream.write(&vm.outbuf) {
                    Ok(n) => {
                        vm.outbuf.drain(..n);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(_) => vm.outbuf.clear(),
                }
            }
        }
        if revents.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR) {
            self.agent_read();
        }
    }

    fn agent_read(&mut self) {
        let mut buf = vec![0u8; 64 * 1024];
        let Some(vm) = &mut self.vm else { return };
        match vm.stream.read(&mut buf) {
            Ok(0) => return self.agent_gone(),
            Ok(n) => vm.decoder.feed(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => return,
            Err(e) => {
                tracing::warn!(error = %e, "agent channel");
                return self.agent_gone();
            }
        }
        loop {
            let Some(vm) = &mut self.vm else { return };
            match vm.decoder.next_message() {
                Ok(Some(m)) => self.agent_message(m),
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "bad frame from the agent");
                    if let Some(vm) = &mut self.vm {
                        vm.error = Some(format!("the agent sent a bad frame: {e}"));
                        vm.kill();
                    }
                    return;
                }
            }
        }
    }

    fn agent_message(&mut self, m: Message) {
        match m {
            Message::Started { id, .. } => {
                let key = self.proc_key(id);
                let Some((conn, stdin)) = self.vm.as_mut().and_then(|vm| vm.pending.remove(&id))
                else {
                    return;
                };
                if !stdin && !self.proc_mut(key).is_some_and(|p| p.tty) {
                    self.vm_send(&Message::StdinClose { id });
                }
                let mode = if id == MAIN_ID {
                    Mode::Closing
                } else {
                    Mode::Exec { pid: key }
                };
                self.reply(
                    conn,
                    &Response {
                        pid: Some(key),
                        ..Response::default()
                    },
                    mode,
                );
            }
            Message::Stdout { id, data } => self.vm_output(id, Kind::Stdout, &data),
            Message::Stderr { id, data } => self.vm_output(id, Kind::Stderr, &data),
            Message::Exited { id, exit } => {
                let key = self.proc_key(id);
                self.exited(key, exit.code);
            }
            Message::Error { id, message } => {
                tracing::warn!(id, message, "agent error");
                let pending = self.vm.as_mut().and_then(|vm| vm.pending.remove(&id));
                if let Some((conn, _)) = pending {
                    self.reply(
                        conn,
                        &Response {
                            error: Some(message.clone()),
                            ..Response::default()
                        },
                        Mode::Closing,
                    );
                }
                if id == MAIN_ID || id == 0 {
                    // The main process never ran (or the root could not be
                    // built): the container is over.
                    if self.init.exit.is_none() {
                        if let Some(vm) = &mut self.vm {
                            vm.error = Some(message.clone());
                        }
                        let code =
                            if message.contains("not found") || message.contains("No such file") {
                                127
                            } else {
                                126
                            };
                        self.exited(self.init.pid, code);
                    }
                } else {
                    self.execs.remove(&self.proc_key(id));
                }
            }
            Message::Ready(_) => {}
            other => tracing::warn!(message = ?other, "unexpected message from the agent"),
        }
    }

    fn vm_output(&mut self, id: u32, kind: Kind, data: &[u8]) {
        if id == MAIN_ID {
            self.deliver(true, None, kind, data);
        } else if let Some(p) = self.execs.get(&self.proc_key(id)) {
            let conn = p.conn;
            self.deliver(false, conn, kind, data);
        }
    }

    /// The channel closed: the VM is gone (killed, or the guest died).
    fn agent_gone(&mut self) {
        let Some(vm) = &mut self.vm else { return };
        vm.eof = true;
        let killed = vm.killed;
        let pending: Vec<u64> = vm.pending.drain().map(|(_, (c, _))| c).collect();
        if self.init.exit.is_none() {
            let code = if killed {
                128 + libc::SIGKILL
            } else {
                vm.error.get_or_insert_with(|| {
                    "the VM stopped before the container process exited (did the guest kernel panic?)"
                        .to_string()
                });
                255
            };
            tracing::warn!(
                code,
                killed,
                "agent channel closed before the container exited"
            );
            self.exited(self.init.pid, code);
        }
        for p in self.execs.values_mut() {
            if p.exit.is_none() {
                p.exit = Some(128 + libc::SIGKILL);
            }
        }
        for conn in pending {
            self.reply(
                conn,
                &Response {
                    error: Some("container not running".into()),
                    ..Response::default()
                },
                Mode::Closing,
            );
        }
    }

    fn vm_start(&mut self, conn: u64) {
        let open_stdin = self.cfg.open_stdin;
        let Some(vm) = &mut self.vm else { return };
        let Some(request) = vm.start.take() else {
            return self.reply(
                conn,
                &Response {
                    error: Some("container already started".into()),
                    ..Response::default()
                },
                Mode::Closing,
            );
        };
        vm.send(&Message::Start {
            id: MAIN_ID,
            request,
        });
        vm.pending.insert(MAIN_ID, (conn, open_stdin));
    }

    fn vm_exec(&mut self, conn: u64, process: &oci_spec::runtime::Process, stdin: bool) {
        let spec = match crate::vm::process_spec(process) {
            Ok(s) => s,
            Err(e) => {
                return self.reply(
                    conn,
                    &Response {
                        error: Some(e.to_string()),
                        ..Response::default()
                    },
                    Mode::Closing,
                );
            }
        };
        let running = self.init.exit.is_none()
            && self
                .vm
                .as_ref()
                .is_some_and(|vm| vm.start.is_none() && !vm.eof);
        let Some(vm) = self.vm.as_mut().filter(|_| running) else {
            return self.reply(
                conn,
                &Response {
                    error: Some("container not running".into()),
                    ..Response::default()
                },
                Mode::Closing,
            );
        };
        let id = vm.next_exec;
        vm.next_exec += 1;
        let tty = spec.terminal;
        vm.send(&Message::Exec { id, process: spec });
        vm.pending.insert(id, (conn, stdin));
        self.execs.insert(
            id as i32,
            Proc {
                pid: id as i32,
                outputs: Vec::new(),
                stdin: None,
                stdin_buf: Vec::new(),
                close_stdin_after_flush: false,
                master: None,
                exit: None,
                conn: Some(conn),
                tty,
            },
        );
    }

    fn vm_signal(&mut self, signal: i32) {
        if self.init.exit.is_some() {
            return;
        }
        let Some(vm) = &mut self.vm else { return };
        if signal == libc::SIGKILL {
            // Nothing in the guest can refuse this, and a hung guest must
            // end too: the VM goes, with the container.
            vm.kill();
        } else {
            vm.send(&Message::Signal {
                id: MAIN_ID,
                signal,
            });
        }
    }

    fn vm_client_frame(&mut self, key: i32, attach_stdin: bool, kind: Kind, payload: &[u8]) {
        let id = self.agent_id(key);
        let tty = self.proc_mut(key).is_some_and(|p| p.tty);
        match kind {
            Kind::Stdin if attach_stdin => {
                for chunk in payload.chunks(MAX_DATA) {
                    self.vm_send(&Message::Stdin {
                        id,
                        data: chunk.to_vec(),
                    });
                }
            }
            Kind::CloseStdin if attach_stdin => {
                if tty {
                    // A terminal has no separate stdin to close; send EOF.
                    self.vm_send(&Message::Stdin { id, data: vec![4] });
                } else {
                    self.vm_send(&Message::StdinClose { id });
                }
            }
            Kind::Resize if payload.len() == 4 => {
                let rows = u16::from_be_bytes([payload[0], payload[1]]);
                let cols = u16::from_be_bytes([payload[2], payload[3]]);
                self.vm_send(&Message::Resize { id, rows, cols });
            }
            _ => {}
        }
    }
}

/// The path of `name` inside `dir` through a descriptor of `dir`: unix
/// socket paths are limited to 108 bytes, state directories can be longer.
pub fn short_path(dir: &std::fs::File, name: &str) -> std::path::PathBuf {
    std::path::PathBuf::from(format!("/proc/self/fd/{}/{name}", dir.as_raw_fd()))
}

fn bind_in(dir: &Path, name: &str) -> std::io::Result<UnixListener> {
    let d = std::fs::File::open(dir)?;
    UnixListener::bind(short_path(&d, name))
}

fn c_closing(c: Option<&Conn>) -> bool {
    c.is_some_and(|c| c.mode == Mode::Closing && c.outbuf.is_empty())
}

fn now_ns() -> i128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128)
}
