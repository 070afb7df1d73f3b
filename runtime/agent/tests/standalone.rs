//! The agent's event loop and process handling, run on the host in
//! standalone mode (a busybox root directory, no VM) and driven through the
//! real protocol client over a socket pair.

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};

use vessel_agent::host::{Client, MAIN_ID};
use vessel_agent::protocol::{ExitInfo, Message, ProcessSpec, RootSpec, StartRequest};
use vessel_testkit::TempRoot;

struct Agent {
    child: Child,
    client: Client,
    _root: TempRoot,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn agent() -> Agent {
    let root = TempRoot::new("agent");
    vessel_testkit::busybox_rootfs(&root.join("rootfs"));
    let (host, guest) = UnixStream::pair().expect("socket pair");
    let fd = guest.as_raw_fd();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vessel-agent"));
    cmd.arg("standalone").arg(root.join("rootfs"));
    // SAFETY: dup2 is async-signal-safe; it puts the channel on fd 3 in the
    // child before exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().expect("start the agent");
    drop(guest);
    Agent {
        child,
        client: Client::new(host).expect("client"),
        _root: root,
    }
}

fn spec(args: &[&str]) -> ProcessSpec {
    ProcessSpec {
        args: args.iter().map(ToString::to_string).collect(),
        env: vec!["PATH=/bin:/sbin:/usr/bin:/usr/sbin".into()],
        cwd: "/".into(),
        ..Default::default()
    }
}

fn start(args: &[&str]) -> StartRequest {
    StartRequest {
        root: RootSpec::default(),
        hostname: String::new(),
        process: spec(args),
    }
}

fn run(args: &[&str], stdin: Option<&'static [u8]>) -> (ExitInfo, Vec<u8>, Vec<u8>) {
    let mut a = agent();
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let input = stdin.map(|s| Box::new(s) as Box<dyn std::io::Read + Send>);
    let exit = a
        .client
        .run(start(args), input, &mut out, &mut err)
        .expect("run");
    assert!(
        a.child.wait().expect("agent exit").success(),
        "agent ends after Shutdown"
    );
    (exit, out, err)
}

macro_rules! need_root {
    () => {
        vessel_testkit::require!(vessel_testkit::is_root(), "needs root to chroot");
    };
}

#[test]
fn echo_prints_and_exits_zero() {
    need_root!();
    let (exit, out, err) = run(&["echo", "hi"], None);
    assert_eq!(
        exit,
        ExitInfo {
            code: 0,
            signal: None
        }
    );
    assert_eq!(out, b"hi\n");
    assert!(err.is_empty());
}

#[test]
fn exit_codes_and_stderr() {
    need_root!();
    let (exit, out, err) = run(&["sh", "-c", "echo oops >&2; exit 7"], None);
    assert_eq!(exit.code, 7);
    assert!(out.is_empty());
    assert_eq!(err, b"oops\n");
}

#[test]
fn ten_megabytes_of_stdout_arrive_intact() {
    need_root!();
    let (exit, out, _) = run(&["sh", "-c", "yes abcdefg | head -c 10485760"], None);
    assert_eq!(exit.code, 0);
    assert_eq!(out.len(), 10 << 20);
    assert!(out.chunks(8).all(|c| c == &b"abcdefg\n"[..c.len()]));
}

#[test]
fn stdin_reaches_the_process() {
    need_root!();
    let (exit, out, _) = run(&["cat"], Some(b"through stdin\n"));
    assert_eq!(exit.code, 0);
    assert_eq!(out, b"through stdin\n");
}

#[test]
fn missing_program_is_an_error() {
    need_root!();
    let mut a = agent();
    let err = a
        .client
        .run(
            start(&["no-such-program"]),
            None,
            &mut Vec::new(),
            &mut Vec::new(),
        )
        .unwrap_err();
    assert!(err.to_string().contains("no-such-program"), "{err}");
}

/// Read messages until `f` accepts one; panics if the agent goes away.
fn until(c: &mut Client, mut f: impl FnMut(&Message) -> bool) -> Message {
    loop {
        let m = c.recv().expect("recv").expect("agent still there");
        if f(&m) {
            return m;
        }
    }
}

#[test]
fn exec_signals_and_terminal() {
    need_root!();
    let mut a = agent();
    let c = &mut a.client;
    c.wait_ready().unwrap();
    // The main process waits on its stdin.
    c.send(&Message::Start {
        id: MAIN_ID,
        request: start(&["cat"]),
    })
    .unwrap();
    until(c, |m| matches!(m, Message::Started { id: MAIN_ID, .. }));

    // An extra process in the same root.
    c.send(&Message::Exec {
        id: 2,
        process: spec(&["sh", "-c", "echo exec-ok; exit 3"]),
    })
    .unwrap();
    let mut out = Vec::new();
    let exit = loop {
        match until(c, |m| {
            matches!(
                m,
                Message::Stdout { id: 2, .. }
                    | Message::Exited { id: 2, .. }
                    | Message::Error { .. }
            )
        }) {
            Message::Stdout { data, .. } => out.extend(data),
            Message::Exited { exit, .. } => break exit,
            other => panic!("{other:?}"),
        }
    };
    assert_eq!((exit.code, out.as_slice()), (3, &b"exec-ok\n"[..]));

    // A signal kills an exec'd process.
    c.send(&Message::Exec {
        id: 3,
        process: spec(&["sleep", "1000"]),
    })
    .unwrap();
    until(c, |m| matches!(m, Message::Started { id: 3, .. }));
    c.send(&Message::Signal { id: 3, signal: 9 }).unwrap();
    let Message::Exited { exit, .. } = until(c, |m| matches!(m, Message::Exited { id: 3, .. }))
    else {
        unreachable!()
    };
    assert_eq!(
        exit,
        ExitInfo {
            code: 137,
            signal: Some(9)
        }
    );

    // A process on a terminal sees a tty, and output comes back through it.
    let mut tty = spec(&["sh", "-c", "test -t 0 && test -t 1 && echo on-a-tty"]);
    tty.terminal = true;
    c.send(&Message::Exec {
        id: 4,
        process: tty,
    })
    .unwrap();
    let mut out = Vec::new();
    loop {
        match until(c, |m| {
            matches!(
                m,
                Message::Stdout { id: 4, .. } | Message::Exited { id: 4, .. }
            )
        }) {
            Message::Stdout { data, .. } => out.extend(data),
            Message::Exited { exit, .. } => {
                assert_eq!(exit.code, 0);
                break;
            }
            _ => unreachable!(),
        }
    }
    assert_eq!(out, b"on-a-tty\r\n");

    // Closing the main process's stdin ends it.
    c.send(&Message::Stdin {
        id: MAIN_ID,
        data: b"last words\n".to_vec(),
    })
    .unwrap();
    c.send(&Message::StdinClose { id: MAIN_ID }).unwrap();
    let Message::Stdout { data, .. } =
        until(c, |m| matches!(m, Message::Stdout { id: MAIN_ID, .. }))
    else {
        unreachable!()
    };
    assert_eq!(data, b"last words\n");
    let Message::Exited { exit, .. } =
        until(c, |m| matches!(m, Message::Exited { id: MAIN_ID, .. }))
    else {
        unreachable!()
    };
    assert_eq!(exit.code, 0);
    c.send(&Message::Shutdown).unwrap();
    assert!(a.child.wait().unwrap().success());
}
