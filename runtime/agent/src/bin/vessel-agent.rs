//! `vessel-agent`: PID 1 of a Vessel microVM, plus two helper modes.
//!
//! - As PID 1: serve the host on the virtio-console channel, then reset.
//! - `vessel-agent standalone ROOT`: serve the protocol on file descriptor 3
//!   with ROOT as the container root (tests on a host; no mounts).
//! - `vessel-agent run --socket PATH [options] -- CMD [ARGS...]`: the host
//!   side, connected to a monitor's channel socket; runs CMD in the VM with
//!   this process's stdio and exits with its status. With `--listen PATH
//!   --spawn MONITOR` it listens on PATH, starts MONITOR (a shell command
//!   that connects to PATH) and serves the one connection it makes.

use std::fs::File;
use std::io::Read;
use std::os::fd::FromRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::process::{Command, ExitCode};

use vessel_agent::guest::{self, Agent, Mode, system};
use vessel_agent::host::Client;
use vessel_agent::protocol::{ProcessSpec, RootSpec, Scratch, StartRequest};

fn main() -> ExitCode {
    if std::process::id() == 1 {
        pid1();
    }
    let args: Vec<String> = std::env::args().collect();
    let result = match args.get(1).map(String::as_str) {
        Some("standalone") => standalone(&args[2..]),
        Some("run") => run(&args[2..]),
        _ => Err("usage: vessel-agent standalone ROOT | vessel-agent run (--socket PATH | --listen PATH \
                  --spawn MONITOR) [--layer SERIAL]... \
                  [--scratch tmpfs|tmpfs:MIB|disk:SERIAL] [--readonly] [--hostname NAME] [--env K=V]... \
                  [--cwd DIR] [--user UID:GID] [-t] [-i] -- CMD [ARGS...]"
            .to_string()),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("vessel-agent: {e}");
            ExitCode::from(125)
        }
    }
}

/// Make sure descriptors 0-2 exist, so pipes never land on them.
fn ensure_stdio() {
    for fd in 0..3 {
        // SAFETY: F_GETFD on any integer is harmless.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
            // SAFETY: opening /dev/null with a constant NUL-terminated path;
            // the lowest free descriptor is the missing one.
            unsafe {
                libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
            }
        }
    }
}

/// With `VESSEL_BOOTMARK` in the environment (a kernel command line word
/// `VESSEL_BOOTMARK=1`), write the debug exit port first thing: benchmarks
/// measure boot-to-init as the time until the monitor sees this write
/// (QEMU's `isa-debug-exit` and `vessel-vmm --debug-exit` both stop there).
fn bootmark() {
    if std::env::var_os("VESSEL_BOOTMARK").is_none() {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    // SAFETY: ioperm grants this process access to one I/O port; the out
    // instruction then only touches that port. PID 1 runs as root.
    unsafe {
        if libc::ioperm(0xf4, 1, 1) == 0 {
            std::arch::asm!("out dx, al", in("dx") 0xf4u16, in("al") 0u8, options(nomem, nostack));
        }
    }
}

fn pid1() -> ! {
    bootmark();
    ensure_stdio();
    if let Err(e) = system::mount_kernel_filesystems() {
        system::log(&guest::error_chain(&e));
    }
    match system::open_channel() {
        Ok(channel) => match Agent::new(channel, Mode::Vm) {
            Ok(mut agent) => {
                if let Err(e) = agent.serve() {
                    system::log(&guest::error_chain(&e));
                }
            }
            Err(e) => system::log(&guest::error_chain(&e)),
        },
        Err(e) => system::log(&guest::error_chain(&e)),
    }
    // SAFETY: kill(-1) from PID 1 signals every other process in the guest.
    unsafe {
        libc::kill(-1, libc::SIGKILL);
    }
    system::reset_machine()
}

fn standalone(args: &[String]) -> Result<ExitCode, String> {
    let [root] = args else {
        return Err("usage: vessel-agent standalone ROOT (channel on fd 3)".into());
    };
    ensure_stdio();
    // SAFETY: the caller hands us descriptor 3 as the channel; we own it.
    let channel = unsafe { File::from_raw_fd(3) };
    let mut agent = Agent::new(
        channel,
        Mode::Standalone {
            root: PathBuf::from(root),
        },
    )
    .map_err(|e| guest::error_chain(&e))?;
    let served = agent.serve();
    agent.kill_all();
    served.map_err(|e| guest::error_chain(&e))?;
    Ok(ExitCode::SUCCESS)
}

/// Accept one connection on `listener`, or give up when `child` exits
/// first (it would never connect): poll the listener and a pidfd.
fn accept_unless_exited(
    listener: &UnixListener,
    child: &std::process::Child,
) -> Result<UnixStream, String> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    // SAFETY: pidfd_open takes a PID and flags and returns a new descriptor
    // or -1; the PID is our own unreaped child, so it cannot be recycled.
    let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, child.id() as libc::pid_t, 0) };
    if raw < 0 {
        return Err(format!("pidfd_open: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: the descriptor was just returned to us and is owned here.
    let pidfd = unsafe { OwnedFd::from_raw_fd(raw as i32) };
    let mut fds = [
        libc::pollfd {
            fd: listener.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: pidfd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    loop {
        // SAFETY: fds is a valid array of two pollfd structures.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(format!("poll: {e}"));
        }
        if fds[0].revents != 0 {
            return listener
                .accept()
                .map(|(s, _)| s)
                .map_err(|e| format!("accepting: {e}"));
        }
        if fds[1].revents != 0 {
            return Err("the monitor did not connect to the channel".into());
        }
    }
}

fn run(args: &[String]) -> Result<ExitCode, String> {
    let mut socket = None;
    let mut listen = None;
    let mut spawn = None;
    let mut root = RootSpec::default();
    let mut hostname = String::new();
    let mut process = ProcessSpec {
        env: vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()],
        cwd: "/".into(),
        ..Default::default()
    };
    let mut interactive = false;
    let mut it = args.iter();
    let value = |it: &mut std::slice::Iter<'_, String>, flag: &str| {
        it.next()
            .cloned()
            .ok_or_else(|| format!("{flag} needs a value"))
    };
    while let Some(a) = it.next() {
        match a.as_str() {
            "--socket" => socket = Some(value(&mut it, a)?),
            "--listen" => listen = Some(value(&mut it, a)?),
            "--spawn" => spawn = Some(value(&mut it, a)?),
            "--layer" => root.layers.push(value(&mut it, a)?),
            "--scratch" => {
                let v = value(&mut it, a)?;
                root.scratch = match v.split_once(':') {
                    None if v == "tmpfs" => Scratch::Tmpfs,
                    Some(("tmpfs", mib)) => {
                        Scratch::TmpfsLimited(mib.parse().map_err(|_| format!("--scratch {v}"))?)
                    }
                    Some(("disk", serial)) => Scratch::Disk(serial.to_string()),
                    _ => {
                        return Err(format!(
                            "--scratch {v}: expected tmpfs, tmpfs:MIB or disk:SERIAL"
                        ));
                    }
                };
            }
            "--readonly" => root.readonly = true,
            "--hostname" => hostname = value(&mut it, a)?,
            "--env" => process.env.push(value(&mut it, a)?),
            "--cwd" => process.cwd = value(&mut it, a)?,
            "--user" => {
                let v = value(&mut it, a)?;
                let (u, g) = v.split_once(':').unwrap_or((&v, "0"));
                process.uid = u.parse().map_err(|_| format!("--user {v}"))?;
                process.gid = g.parse().map_err(|_| format!("--user {v}"))?;
            }
            "-t" => process.terminal = true,
            "-i" => interactive = true,
            "--" => {
                process.args = it.by_ref().cloned().collect();
            }
            other => return Err(format!("unknown option {other}")),
        }
    }
    if process.args.is_empty() {
        return Err("no command given after --".into());
    }
    let mut monitor = None;
    let stream = match (socket, listen, spawn) {
        (Some(path), None, None) => {
            UnixStream::connect(&path).map_err(|e| format!("connecting to {path}: {e}"))?
        }
        (None, Some(path), Some(cmd)) => {
            let _ = std::fs::remove_file(&path);
            let listener =
                UnixListener::bind(&path).map_err(|e| format!("listening on {path}: {e}"))?;
            let child = Command::new("/bin/sh")
                .arg("-c")
                .arg(&cmd)
                .spawn()
                .map_err(|e| format!("starting {cmd:?}: {e}"))?;
            let stream = accept_unless_exited(&listener, &child);
            let _ = std::fs::remove_file(&path);
            match stream {
                Ok(s) => {
                    monitor = Some(child);
                    s
                }
                Err(e) => {
                    let mut child = child;
                    let status = child
                        .wait()
                        .map_err(|e| format!("waiting for the monitor: {e}"))?;
                    return Err(format!("{e} (the monitor exited with {status})"));
                }
            }
        }
        _ => return Err("give either --socket PATH, or --listen PATH with --spawn MONITOR".into()),
    };
    let mut client = Client::new(stream).map_err(|e| guest::error_chain(&e))?;
    let stdin: Option<Box<dyn Read + Send>> = if interactive {
        Some(Box::new(std::io::stdin()))
    } else {
        None
    };
    let result = client.run(
        StartRequest {
            root,
            hostname,
            process,
        },
        stdin,
        &mut std::io::stdout().lock(),
        &mut std::io::stderr().lock(),
    );
    drop(client);
    if let Some(mut m) = monitor {
        let status = m
            .wait()
            .map_err(|e| format!("waiting for the monitor: {e}"))?;
        if !status.success() && result.is_err() {
            eprintln!("vessel-agent: the monitor exited with {status}");
        }
    }
    let exit = result.map_err(|e| guest::error_chain(&e))?;
    Ok(ExitCode::from(exit.code.clamp(0, 255) as u8))
}
