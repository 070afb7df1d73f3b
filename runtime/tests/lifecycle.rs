//! The runc command-line contract: lifecycle commands, their output shapes
//! and their error messages, driven through the real binary.

#![allow(clippy::unwrap_used)]

mod common;

use common::{Env, stderr, stdout};
use serde_json::{Value, json};

#[test]
fn run_prints_and_exits_zero() {
    need_root!();
    let env = Env::new("rt-run");
    let b = env.bundle(&["echo", "hello from a container"]);
    assert_eq!(env.run_ok(&b), "hello from a container\n");
}

#[test]
fn run_returns_the_exit_code_and_signal_status() {
    need_root!();
    let env = Env::new("rt-exit");
    let mut b = env.bundle(&[]);
    b.sh("exit 7");
    assert_eq!(env.run(&b).status.code(), Some(7));
    // As PID 1 of its own namespace the shell would be immune to its own
    // SIGKILL; without a PID namespace it dies and the runtime reports
    // 128 + 9, as shells do.
    b.config["linux"]["namespaces"]
        .as_array_mut()
        .unwrap()
        .retain(|n| n["type"] != "pid");
    b.sh("kill -KILL $$");
    assert_eq!(env.run(&b).status.code(), Some(128 + 9));
}

#[test]
fn missing_executable_fails_create_with_the_engine_wording() {
    need_root!();
    let env = Env::new("rt-noexec");
    let b = env.bundle(&["no-such-program"]);
    let out = env.run(&b);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("executable file not found in $PATH"),
        "{}",
        stderr(&out)
    );
    // Nothing is left behind.
    assert!(env.ok(&["list", "-q"]).trim().is_empty());
}

#[test]
fn create_start_state_kill_delete() {
    need_root!();
    let env = Env::new("rt-life");
    let b = env.bundle(&["sleep", "1000"]);
    let id = env.id("life");
    let pid_file = env.tmp.join("pid");
    env.create(&b, &id, &["--pid-file", pid_file.to_str().unwrap()]);
    let st = env.state(&id);
    assert_eq!(st["status"], "created");
    assert_eq!(st["id"], id.as_str());
    assert_eq!(st["bundle"], b.dir.to_str().unwrap());
    let pid: i64 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(st["pid"], pid);
    for key in ["ociVersion", "rootfs", "created", "owner"] {
        assert!(st.get(key).is_some(), "state lacks {key}: {st}");
    }
    // The process is the init, waiting: not yet the user's program.
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    assert!(!String::from_utf8_lossy(&cmdline).contains("sleep"));

    env.ok(&["start", &id]);
    assert_eq!(env.state(&id)["status"], "running");
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    assert!(String::from_utf8_lossy(&cmdline).starts_with("sleep"));

    // A second start is refused.
    assert!(!env.rt(&["start", &id]).status.success());
    // Deleting a running container needs --force.
    let out = env.rt(&["delete", &id]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("not stopped"), "{}", stderr(&out));

    env.ok(&["kill", &id, "KILL"]);
    wait_for_status(&env, &id, "stopped");
    let st = env.state(&id);
    assert_eq!(st["pid"], 0);
    let out = env.rt(&["kill", &id, "TERM"]);
    assert!(
        stderr(&out).contains("container not running"),
        "{}",
        stderr(&out)
    );
    env.ok(&["delete", &id]);
    let out = env.rt(&["state", &id]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("does not exist"), "{}", stderr(&out));
}

/// Poll the state until it reaches `want` (the process exits
/// asynchronously after a signal; each poll is a real state query).
fn wait_for_status(env: &Env, id: &str, want: &str) {
    let pid = env.state(id)["pid"].as_i64().unwrap_or(0) as i32;
    if pid > 0 {
        if let Ok(fd) = pidfd(pid) {
            let mut fds = [nix::poll::PollFd::new(
                std::os::fd::AsFd::as_fd(&fd),
                nix::poll::PollFlags::POLLIN,
            )];
            let _ = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(10_000u16));
        }
    }
    assert_eq!(env.state(id)["status"], want);
}

fn pidfd(pid: i32) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: pidfd_open returns a new descriptor we own, or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) })
}

#[test]
fn delete_of_unknown_containers() {
    need_root!();
    let env = Env::new("rt-del");
    let out = env.rt(&["delete", "nope"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("does not exist"));
    env.ok(&["delete", "--force", "nope"]);
    let out = env.rt(&["state", "../etc"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("invalid container id"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn errors_go_to_the_log_as_json_lines() {
    need_root!();
    let env = Env::new("rt-log");
    let log = env.tmp.join("log.json");
    let out = env
        .cmd()
        .args([
            "--log",
            log.to_str().unwrap(),
            "--log-format",
            "json",
            "kill",
            "ghost",
            "KILL",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text = std::fs::read_to_string(&log).unwrap();
    let line: Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(line["level"], "error");
    assert!(
        line["msg"].as_str().unwrap().contains("does not exist"),
        "{line}"
    );
    assert!(line["time"].is_string());
}

#[test]
fn list_ps_events_pause_resume_update() {
    need_root!();
    let env = Env::new("rt-ops");
    let b = env.bundle(&["sh", "-c", "sleep 1000 & sleep 1000"]);
    let id = env.start(&b, "ops");
    let pid = env.state(&id)["pid"].as_i64().unwrap();

    let list: Value = serde_json::from_str(&env.ok(&["list", "--format", "json"])).unwrap();
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .any(|c| c["id"] == id.as_str() && c["status"] == "running")
    );
    assert!(env.ok(&["list"]).contains(&id));

    let pids: Vec<i64> = serde_json::from_str(&env.ok(&["ps", "--format", "json", &id])).unwrap();
    assert!(pids.contains(&pid), "{pids:?} lacks {pid}");
    assert_eq!(pids.len(), 2, "sh and its background sleep: {pids:?}");

    let ev: Value = serde_json::from_str(env.ok(&["events", "--stats", &id]).trim()).unwrap();
    assert_eq!(ev["type"], "stats");
    assert_eq!(ev["id"], id.as_str());
    assert!(
        ev["data"]["memory"]["usage"]["usage"].as_u64().unwrap() > 0,
        "{ev}"
    );
    assert_eq!(ev["data"]["pids"]["current"], 2);

    env.ok(&["pause", &id]);
    assert_eq!(env.state(&id)["status"], "paused");
    let freezer = cgroup_file(pid, "freezer", "freezer.state");
    assert_eq!(freezer.trim(), "FROZEN");
    let out = env.rt(&["exec", &id, "true"]);
    assert!(
        !out.status.success(),
        "exec into a paused container must fail"
    );
    env.ok(&["resume", &id]);
    assert_eq!(env.state(&id)["status"], "running");
    assert!(!env.rt(&["resume", &id]).status.success());

    env.ok(&["update", "--memory", "64m", "--pids-limit", "50", &id]);
    assert_eq!(
        cgroup_file(pid, "memory", "memory.limit_in_bytes").trim(),
        (64u64 << 20).to_string()
    );
    assert_eq!(cgroup_file(pid, "pids", "pids.max").trim(), "50");
    let res = json!({"cpu": {"shares": 512}});
    let mut child = env
        .cmd()
        .args(["update", "--resources", "-", &id])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), res.to_string().as_bytes()).unwrap();
    drop(child.stdin.take());
    assert!(child.wait().unwrap().success());
    assert_eq!(cgroup_file(pid, "cpu", "cpu.shares").trim(), "512");

    env.ok(&["kill", "--all", &id, "KILL"]);
    env.ok(&["delete", "--force", &id]);
}

/// A cgroup v1 controller file of the cgroup `pid` is in.
pub fn cgroup_file(pid: i64, controller: &str, file: &str) -> String {
    let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let path = cg
        .lines()
        .find_map(|l| {
            let mut p = l.splitn(3, ':');
            let (_, c, path) = (p.next()?, p.next()?, p.next()?);
            c.split(',')
                .any(|x| x == controller)
                .then(|| path.to_string())
        })
        .unwrap_or_else(|| panic!("no {controller} cgroup for {pid}"));
    std::fs::read_to_string(format!("/sys/fs/cgroup/{controller}{path}/{file}")).unwrap()
}

#[test]
fn exec_runs_in_the_container() {
    need_root!();
    let env = Env::new("rt-exec");
    let mut b = env.bundle(&["sleep", "1000"]);
    b.config["hostname"] = json!("exec-host");
    b.config["process"]["env"] = json!(["PATH=/bin:/usr/bin", "FROM_CONFIG=1"]);
    let id = env.start(&b, "exec");
    // Command-line form, with env, cwd and user.
    let out = env.ok(&[
        "exec",
        "--env",
        "EXTRA=2",
        "--cwd",
        "/tmp",
        "--user",
        "65534:65534",
        &id,
        "sh",
        "-c",
        "hostname; echo $FROM_CONFIG$EXTRA; pwd; id -u; id -g",
    ]);
    assert_eq!(out, "exec-host\n12\n/tmp\n65534\n65534\n");
    // Exit code of the exec'd process.
    let out = env.rt(&["exec", &id, "sh", "-c", "exit 3"]);
    assert_eq!(out.status.code(), Some(3));
    // The exec'd process sees the container's PID namespace and processes.
    let out = env.ok(&[
        "exec",
        &id,
        "sh",
        "-c",
        "cat /proc/1/cmdline | tr '\\0' ' '",
    ]);
    assert_eq!(out.trim(), "sleep 1000");
    // --process with a process.json, detached, with a pid file.
    let process = json!({
        "terminal": false,
        "user": {"uid": 0, "gid": 0},
        "args": ["sh", "-c", "echo detached > /tmp/marker; sleep 1000"],
        "env": ["PATH=/bin"],
        "cwd": "/"
    });
    let pfile = env.tmp.join("process.json");
    std::fs::write(&pfile, process.to_string()).unwrap();
    let pid_file = env.tmp.join("exec.pid");
    env.ok_detached(&[
        "exec",
        "--process",
        pfile.to_str().unwrap(),
        "--detach",
        "--pid-file",
        pid_file.to_str().unwrap(),
        &id,
    ]);
    let exec_pid: i32 = std::fs::read_to_string(&pid_file).unwrap().parse().unwrap();
    let pids: Vec<i32> = serde_json::from_str(&env.ok(&["ps", "--format", "json", &id])).unwrap();
    assert!(
        pids.contains(&exec_pid),
        "exec'd process is in the container's cgroup"
    );
    let out = env.ok(&[
        "exec",
        &id,
        "sh",
        "-c",
        "until [ -f /tmp/marker ]; do sleep 0.01; done; cat /tmp/marker",
    ]);
    assert_eq!(out, "detached\n");
    // A missing program is reported with the engine's wording.
    let out = env.rt(&["exec", &id, "nonexistent-binary"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("executable file not found"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn features_and_version_and_spec() {
    let out = std::process::Command::new(common::binary())
        .arg("features")
        .output()
        .unwrap();
    assert!(out.status.success());
    let f: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        f["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n == "user")
    );
    assert_eq!(f["linux"]["seccomp"]["enabled"], true);
    assert!(
        f["linux"]["capabilities"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c == "CAP_SYS_ADMIN")
    );
    assert!(
        f["mountOptions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|o| o == "rbind")
    );
    let out = std::process::Command::new(common::binary())
        .arg("--version")
        .output()
        .unwrap();
    assert!(stdout(&out).starts_with("vessel-runtime version "));
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(common::binary())
        .args(["spec", "--bundle", dir.path().to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success());
    let spec: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("config.json")).unwrap()).unwrap();
    assert_eq!(spec["process"]["terminal"], true);
    assert_eq!(spec["root"]["path"], "rootfs");
    // A second spec refuses to overwrite.
    let out = std::process::Command::new(common::binary())
        .args(["spec", "--bundle", dir.path().to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[test]
fn systemd_cgroup_flag_is_refused_clearly() {
    let out = std::process::Command::new(common::binary())
        .args(["--systemd-cgroup", "list"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("systemd cgroup driver is not supported"));
}
