//! The per-container supervisor (`vessel-shim`): launching, attach with
//! stdin, exec, terminals, logs, exit status and OOM reporting, driven
//! over its real socket as the daemon drives it.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::Env;
use serde_json::{Value, json};
use vessel_runtime::shim::protocol::{self, ExitStatus, Kind};

struct Shim {
    state: PathBuf,
    /// The shim process.
    pid: i32,
    /// The container's init.
    init: i32,
}

fn launch(env: &Env, bundle: &common::Bundle, id: &str, tty: bool, open_stdin: bool) -> Shim {
    bundle.save();
    let state = env.tmp.join(format!("shim-{id}"));
    std::fs::create_dir_all(&state).unwrap();
    let cfg = protocol::ShimConfig {
        id: id.to_string(),
        bundle: bundle.dir.clone(),
        runtime_root: env.root.clone(),
        state_dir: state.clone(),
        tty,
        open_stdin,
        stdin_once: true,
        log: Some(protocol::LogConfig {
            path: state.join("log.json"),
            max_size: 0,
            max_files: 1,
        }),
    };
    std::fs::write(
        state.join(protocol::CONFIG_FILE),
        serde_json::to_vec(&cfg).unwrap(),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_vessel-shim"))
        .arg(&state)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "shim launch: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let launched: vessel_runtime::shim::Launched = serde_json::from_slice(&out.stdout).unwrap();
    assert!(launched.pid > 0);
    Shim {
        state,
        pid: launched.shim_pid,
        init: launched.pid,
    }
}

impl Shim {
    fn connect(&self, req: &Value) -> (UnixStream, Value) {
        let mut s = UnixStream::connect(self.state.join(protocol::SOCKET)).unwrap();
        s.write_all(format!("{req}\n").as_bytes()).unwrap();
        let mut line = Vec::new();
        let mut b = [0u8; 1];
        while s.read(&mut b).unwrap() == 1 {
            if b[0] == b'\n' {
                break;
            }
            line.push(b[0]);
        }
        let resp: Value = serde_json::from_slice(&line).unwrap();
        (s, resp)
    }

    fn exit_file(&self) -> ExitStatus {
        serde_json::from_slice(&std::fs::read(self.state.join(protocol::EXIT_FILE)).unwrap())
            .unwrap()
    }

    fn log(&self) -> Vec<(String, String)> {
        std::fs::read_to_string(self.state.join("log.json"))
            .unwrap()
            .lines()
            .map(|l| {
                let v: Value = serde_json::from_str(l).unwrap();
                (
                    v["stream"].as_str().unwrap().to_string(),
                    v["log"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }
}

impl Drop for Shim {
    fn drop(&mut self) {
        // A shim asked to stop takes its container down with it.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
}

fn send(s: &mut UnixStream, kind: Kind, payload: &[u8]) {
    let mut buf = Vec::new();
    protocol::encode(&mut buf, kind, payload);
    s.write_all(&buf).unwrap();
}

/// Read frames until the stream ends; returns (stdout, stderr, exit).
fn collect(s: &mut UnixStream) -> (Vec<u8>, Vec<u8>, Option<ExitStatus>) {
    let mut all = Vec::new();
    s.read_to_end(&mut all).unwrap();
    let (mut out, mut err, mut exit) = (Vec::new(), Vec::new(), None);
    while let Some((kind, payload)) = protocol::decode(&mut all).unwrap() {
        match kind {
            Kind::Stdout => out.extend_from_slice(&payload),
            Kind::Stderr => err.extend_from_slice(&payload),
            Kind::Exit => exit = Some(serde_json::from_slice(&payload).unwrap()),
            _ => {}
        }
    }
    assert!(all.is_empty(), "trailing partial frame");
    (out, err, exit)
}

#[test]
fn attach_stdin_logs_wait_and_exit_file() {
    need_root!();
    let env = Env::new("shim-attach");
    let mut b = env.bundle(&[]);
    b.sh("echo out-line; echo err-line >&2; read x; echo got:$x; exit 5");
    let id = env.id("shim");
    let shim = launch(&env, &b, &id, false, true);
    let (mut attach, resp) =
        shim.connect(&json!({"op": "attach", "stdin": true, "stdout": true, "stderr": true}));
    assert!(resp["error"].is_null(), "{resp}");
    let mut wait = UnixStream::connect(shim.state.join(protocol::SOCKET)).unwrap();
    wait.write_all(b"{\"op\":\"wait\"}\n").unwrap();
    let (_, resp) = shim.connect(&json!({"op": "start"}));
    assert!(resp["error"].is_null(), "{resp}");
    send(&mut attach, Kind::Stdin, b"hello\n");
    send(&mut attach, Kind::CloseStdin, b"");
    let (out, err, exit) = collect(&mut attach);
    assert_eq!(String::from_utf8_lossy(&out), "out-line\ngot:hello\n");
    assert_eq!(String::from_utf8_lossy(&err), "err-line\n");
    assert_eq!(exit.unwrap().code, 5);
    let line = BufReader::new(wait).lines().next().unwrap().unwrap();
    let waited: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(waited["exit"]["code"], 5);
    assert_eq!(shim.exit_file().code, 5);
    // Order within a stream is kept; across the two pipes it is not
    // defined (as with Docker).
    let log = shim.log();
    let of = |stream: &str| -> Vec<String> {
        log.iter()
            .filter(|(s, _)| s == stream)
            .map(|(_, l)| l.clone())
            .collect()
    };
    assert_eq!(of("stdout"), ["out-line\n", "got:hello\n"]);
    assert_eq!(of("stderr"), ["err-line\n"]);
    // The runtime's container was deleted with its cgroup.
    assert!(!env.root.join(&id).exists());
}

#[test]
fn exec_through_the_shim_and_large_output_arrives_intact() {
    need_root!();
    let env = Env::new("shim-exec");
    let mut b = env.bundle(&["sleep", "1000"]);
    b.config["process"]["env"] = json!(["PATH=/bin:/usr/bin", "A=1"]);
    let id = env.id("shimx");
    let shim = launch(&env, &b, &id, false, false);
    let (_, resp) = shim.connect(&json!({"op": "start"}));
    assert!(resp["error"].is_null(), "{resp}");
    let process = json!({
        "terminal": false, "user": {"uid": 0, "gid": 0}, "cwd": "/", "env": ["PATH=/bin:/usr/bin"],
        // 10 MiB of a known pattern, then a marker on stderr and exit 3.
        "args": ["sh", "-c", "yes 0123456789abcde | head -c 10485760; echo done >&2; exit 3"]
    });
    let (mut s, resp) = shim.connect(&json!({"op": "exec", "process": process, "stdin": false}));
    assert!(resp["pid"].as_i64().unwrap() > 0, "{resp}");
    let (out, err, exit) = collect(&mut s);
    assert_eq!(out.len(), 10 << 20);
    assert!(
        out.chunks(16)
            .all(|c| c == &b"0123456789abcde\n"[..c.len()]),
        "output corrupted"
    );
    assert_eq!(err, b"done\n");
    assert_eq!(exit.unwrap().code, 3);
    // A missing program is an error reply, and the container keeps running.
    let process =
        json!({"terminal": false, "user": {"uid": 0, "gid": 0}, "cwd": "/", "args": ["nope"]});
    let (_, resp) = shim.connect(&json!({"op": "exec", "process": process, "stdin": false}));
    assert!(
        resp["error"]
            .as_str()
            .unwrap()
            .contains("executable file not found"),
        "{resp}"
    );
    // Processes that exit at once (before the shim's helper that made them
    // has itself exited) are reaped and reported all the same.
    for code in [0, 7, 42] {
        let process = json!({
            "terminal": false, "user": {"uid": 0, "gid": 0}, "cwd": "/",
            "args": ["sh", "-c", format!("exit {code}")]
        });
        let (mut s, resp) =
            shim.connect(&json!({"op": "exec", "process": process, "stdin": false}));
        assert!(resp["pid"].as_i64().unwrap() > 0, "{resp}");
        let (_, _, exit) = collect(&mut s);
        assert_eq!(exit.unwrap().code, code);
    }
    let (_, state) = shim.connect(&json!({"op": "state"}));
    assert_eq!(state["running"], true);
    // The container's init is the shim's child (the helper that created it
    // is gone), so the shim reaps it and no other process can.
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", shim.init)).unwrap();
    let after_comm = &stat[stat.rfind(')').unwrap() + 2..];
    let ppid: i32 = after_comm.split(' ').nth(1).unwrap().parse().unwrap();
    assert_eq!(ppid, shim.pid);
}

/// Linked at a fixed address, the shim's relocated data is not a private
/// copy in every running shim (see `runtime/build.rs`).
#[test]
fn shim_is_a_fixed_address_executable() {
    let bin = std::fs::read(env!("CARGO_BIN_EXE_vessel-shim")).unwrap();
    assert_eq!(&bin[..4], b"\x7fELF");
    let e_type = u16::from_le_bytes([bin[16], bin[17]]);
    assert_eq!(
        e_type, 2,
        "ET_EXEC expected, got e_type {e_type} (PIE is 3)"
    );
}

#[test]
fn terminal_with_resize() {
    need_root!();
    let env = Env::new("shim-tty");
    let mut b = env.bundle(&["sh"]);
    b.config["process"]["terminal"] = json!(true);
    let id = env.id("shimt");
    let shim = launch(&env, &b, &id, true, true);
    let (mut attach, _) =
        shim.connect(&json!({"op": "attach", "stdin": true, "stdout": true, "stderr": true}));
    send(&mut attach, Kind::Resize, &[0, 33, 0, 120]);
    let (_, resp) = shim.connect(&json!({"op": "start"}));
    assert!(resp["error"].is_null(), "{resp}");
    send(&mut attach, Kind::Stdin, b"stty size; tty; exit 9\n");
    let (out, _, exit) = collect(&mut attach);
    let text = String::from_utf8_lossy(&out);
    assert!(text.contains("33 120"), "{text}");
    assert!(text.contains("/dev/pts/0"), "{text}");
    assert_eq!(exit.unwrap().code, 9);
}

#[test]
fn oom_kill_is_reported() {
    need_root!();
    vessel_testkit::require!(
        Path::new("/sys/fs/cgroup/memory").exists()
            || Path::new("/sys/fs/cgroup/memory.stat").exists(),
        "needs a memory controller"
    );
    let env = Env::new("shim-oom");
    let mut b = env.bundle(&[]);
    b.sh("head -c 300m /dev/zero | tail");
    b.config["linux"]["resources"] = json!({"memory": {"limit": 32 << 20, "swap": 32 << 20}});
    let id = env.id("shimo");
    let shim = launch(&env, &b, &id, false, false);
    let mut wait = UnixStream::connect(shim.state.join(protocol::SOCKET)).unwrap();
    wait.write_all(b"{\"op\":\"wait\"}\n").unwrap();
    let (_, resp) = shim.connect(&json!({"op": "start"}));
    assert!(resp["error"].is_null(), "{resp}");
    let line = BufReader::new(wait).lines().next().unwrap().unwrap();
    let waited: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(waited["exit"]["oom_killed"], true, "{waited}");
    assert!(shim.exit_file().oom_killed);
}

/// `ctl wait` on a shim that already finished reads the status it left in
/// exit.json; with neither a shim nor a status it fails at once.
#[test]
fn ctl_wait_after_the_shim_finished() {
    let dir = tempfile::tempdir().unwrap();
    let wait = |d: &Path| {
        Command::new(env!("CARGO_BIN_EXE_vessel-shim"))
            .arg("ctl")
            .arg(d)
            .arg("wait")
            .output()
            .unwrap()
    };
    let out = wait(dir.path());
    assert_eq!(out.status.code(), Some(125), "{out:?}");
    let status = ExitStatus {
        code: 3,
        oom_killed: false,
        finished_at_ns: 1,
        error: None,
    };
    std::fs::write(
        dir.path().join(protocol::EXIT_FILE),
        serde_json::to_vec(&status).unwrap(),
    )
    .unwrap();
    let out = wait(dir.path());
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "3\n");
}
