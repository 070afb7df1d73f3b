//! Regression tests for known container escape techniques. Each test sets
//! up the attack for real and checks the runtime defeats it.

#![allow(clippy::unwrap_used)]

mod common;

use std::os::unix::process::CommandExt;
use std::process::Stdio;

use common::{Env, stderr, stdout};
use serde_json::json;
use sha2_free_hash::file_digest;

/// A cheap content fingerprint without extra crates: length plus a
/// position-weighted byte sum, enough to notice any append or overwrite.
mod sha2_free_hash {
    pub fn file_digest(path: &std::path::Path) -> (usize, u64) {
        let data = std::fs::read(path).unwrap();
        let sum = data.iter().enumerate().fold(0u64, |acc, (i, b)| {
            acc.wrapping_mul(31).wrapping_add(u64::from(*b) ^ i as u64)
        });
        (data.len(), sum)
    }
}

/// CVE-2019-5736 class: a process in the container opens the runtime's own
/// binary through /proc/PID/exe of a runtime process that has entered the
/// container, and writes to it. The runtime's processes are non-dumpable
/// until they exec, so /proc/PID/exe, fd, mem, root and cwd are closed to
/// the container, even to its root with every capability but CAP_SYS_PTRACE.
#[test]
fn runtime_binary_cannot_be_overwritten_through_proc_exe() {
    need_root!();
    let env = Env::with_copied_binary("esc-exe");
    let before = file_digest(env.bin());
    let b = env.bundle(&["true"]);
    let id = env.id("exe");
    // Created but not started: PID 1 of the container is still the runtime.
    env.create(&b, &id, &[]);
    let all_but_ptrace: Vec<String> = caps::all()
        .into_iter()
        .filter(|c| *c != caps::Capability::CAP_SYS_PTRACE)
        .map(|c| c.to_string())
        .collect();
    let process = json!({
        "terminal": false,
        "user": {"uid": 0, "gid": 0},
        "cwd": "/",
        "env": ["PATH=/bin:/usr/bin"],
        "capabilities": {"bounding": all_but_ptrace, "effective": all_but_ptrace, "permitted": all_but_ptrace},
        "args": ["sh", "-c", "readlink /proc/1/exe && echo readlink-ok; \
                 cat /proc/1/exe > /dev/null 2>&1 && echo read-ok; \
                 echo pwned >> /proc/1/exe 2>/dev/null && echo write-ok; \
                 readlink /proc/1/fd/0 && echo fd-link-ok; \
                 cat /proc/1/fd/3 > /dev/null 2>&1 && echo fd-open-ok; \
                 head -c1 /proc/1/mem > /dev/null 2>&1 && echo mem-ok; \
                 ls /proc/1/root/ > /dev/null 2>&1 && echo root-ok; \
                 ls /proc/1/cwd/ > /dev/null 2>&1 && echo cwd-ok; \
                 echo done"]
    });
    let pfile = env.tmp.join("attack.json");
    std::fs::write(&pfile, process.to_string()).unwrap();
    let out = env.rt(&["exec", "--process", pfile.to_str().unwrap(), &id]);
    let text = stdout(&out);
    assert!(
        text.ends_with("done\n"),
        "attack script ran: {text} {}",
        stderr(&out)
    );
    for leak in [
        "readlink-ok",
        "read-ok",
        "write-ok",
        "fd-link-ok",
        "fd-open-ok",
        "mem-ok",
        "root-ok",
        "cwd-ok",
    ] {
        assert!(
            !text.contains(leak),
            "{leak}: the runtime process was reachable: {text}"
        );
    }
    assert_eq!(file_digest(env.bin()), before, "the runtime binary changed");
}

/// No descriptor of the runtime (or inherited by it without close-on-exec)
/// reaches the container, except those passed on purpose with
/// --preserve-fds.
#[test]
fn host_descriptors_do_not_leak_into_the_container() {
    need_root!();
    let env = Env::new("esc-fds");
    let secret = env.tmp.join("secret");
    std::fs::write(&secret, "host secret").unwrap();
    let passed = env.tmp.join("passed");
    std::fs::write(&passed, "passed on purpose").unwrap();
    let mut b = env.bundle(&[]);
    b.sh("ls /proc/self/fd | tr '\\n' ' '; echo; cat <&3");
    b.save();
    let leak = std::fs::File::open(&secret).unwrap();
    let keep = std::fs::File::open(&passed).unwrap();
    let (leak_fd, keep_fd) = (
        std::os::fd::AsRawFd::as_raw_fd(&leak),
        std::os::fd::AsRawFd::as_raw_fd(&keep),
    );
    let id = env.id("fds");
    let mut cmd = env.cmd();
    cmd.args([
        "run",
        "--preserve-fds",
        "1",
        "--bundle",
        b.dir.to_str().unwrap(),
        &id,
    ]);
    cmd.stdin(Stdio::null());
    // SAFETY: between fork and exec we only call dup2, which is
    // async-signal-safe: fd 3 gets the file to pass on, fd 9 the "leaked"
    // one, both without close-on-exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(keep_fd, 3) < 0 || libc::dup2(leak_fd, 9) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let mut lines = text.lines();
    let fds: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    // 0-2, the passed 3, and ls's own directory descriptor.
    assert_eq!(fds, ["0", "1", "2", "3", "4"], "{text}");
    assert_eq!(lines.next(), Some("passed on purpose"));
}

/// CVE-2024-21626 class: process.cwd names a descriptor that might still be
/// open on a host directory. Either the runtime refuses, or the working
/// directory is inside the container.
#[test]
fn cwd_through_proc_self_fd_stays_inside() {
    need_root!();
    let env = Env::new("esc-cwd");
    let mut b = env.bundle(&[]);
    b.sh("pwd; ls");
    for n in 3..16 {
        b.config["process"]["cwd"] = json!(format!("/proc/self/fd/{n}"));
        let out = env.run(&b);
        if out.status.success() {
            let text = stdout(&out);
            assert!(!text.contains("unreachable"), "fd {n}: cwd escaped: {text}");
            assert!(text.starts_with('/'), "fd {n}: {text}");
        }
    }
}

/// Mount destinations go through symlinks in the image (absolute,
/// relative, "..") but always land inside the root filesystem.
#[test]
fn mount_destinations_cannot_leave_the_root() {
    need_root!();
    let env = Env::new("esc-mnt");
    let victim = env.tmp.join("victim");
    std::fs::create_dir_all(&victim).unwrap();
    std::fs::write(victim.join("keep"), "untouched").unwrap();
    let mut b = env.bundle(&[]);
    std::os::unix::fs::symlink(&victim, b.rootfs().join("abs-link")).unwrap();
    std::os::unix::fs::symlink(
        "../../../../../../../../..".to_string() + victim.to_str().unwrap(),
        b.rootfs().join("rel-link"),
    )
    .unwrap();
    for (i, dest) in [
        "/abs-link",
        "/rel-link/sub",
        &format!("/../../../..{}", victim.display()),
    ]
    .iter()
    .enumerate()
    {
        b.mount(json!({"destination": dest, "type": "tmpfs", "source": "tmpfs", "options": [format!("size={}k", i + 1)]}));
    }
    b.sh("grep -c tmpfs /proc/mounts");
    let out = env.run_ok(&b);
    assert!(out.trim().parse::<u32>().unwrap() >= 3, "{out}");
    // The host directory saw nothing: no mount, no new files.
    assert!(
        vessel_testkit::mounts_below(&victim).is_empty(),
        "a mount escaped onto the host"
    );
    let entries: Vec<_> = std::fs::read_dir(&victim)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(entries, vec![std::ffi::OsString::from("keep")]);
    // The mounts were made at the same path inside the root instead.
    assert!(b.rootfs().join(victim.strip_prefix("/").unwrap()).is_dir());
}

/// /proc and /sys must be real directories: a symlink there could point
/// the procfs mount somewhere else.
#[test]
fn proc_destination_that_is_a_symlink_is_refused() {
    need_root!();
    let env = Env::new("esc-proc");
    let b = env.bundle(&["true"]);
    std::fs::remove_dir(b.rootfs().join("proc")).unwrap();
    std::os::unix::fs::symlink("/tmp", b.rootfs().join("proc")).unwrap();
    let out = env.run(&b);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("symlink"), "{}", stderr(&out));
}

/// CVE-2022-0492 class: the cgroup release_agent runs as host root. The
/// container sees only its own cgroup directories (no release_agent), read
/// only, and cannot mount a cgroup hierarchy, not even as root of a user
/// namespace holding every capability there.
#[test]
fn cgroup_release_agent_is_unreachable() {
    need_root!();
    let env = Env::new("esc-cg");
    let mut b = env.bundle(&[]);
    let script = "ls /sys/fs/cgroup/*/release_agent 2>/dev/null | wc -l; \
        for f in /sys/fs/cgroup/*/notify_on_release; do echo 1 > $f 2>/dev/null && echo writable $f; done; \
        mkdir -p /mnt/cg; mount -t cgroup -o memory cgroup /mnt/cg 2>/dev/null && echo mounted; \
        echo end";
    b.sh(script);
    assert_eq!(env.run_ok(&b), "0\nend\n");

    let base = 300_000u32;
    let st = std::process::Command::new("chown")
        .args([
            "-R",
            &format!("{base}:{base}"),
            b.rootfs().to_str().unwrap(),
        ])
        .status()
        .unwrap();
    assert!(st.success());
    b.config["linux"]["namespaces"]
        .as_array_mut()
        .unwrap()
        .push(json!({"type": "user"}));
    b.config["linux"]["uidMappings"] = json!([{"containerID": 0, "hostID": base, "size": 65536}]);
    b.config["linux"]["gidMappings"] = json!([{"containerID": 0, "hostID": base, "size": 65536}]);
    let all: Vec<String> = caps::all().into_iter().map(|c| c.to_string()).collect();
    b.config["process"]["capabilities"] =
        json!({"bounding": all, "effective": all, "permitted": all});
    // Mounting a v1 hierarchy inside a cgroup namespace shows the
    // container's own cgroup as the root, which has no release_agent; and
    // the kernel refuses release_agent writes from a user namespace anyway.
    b.sh(
        "mkdir -p /mnt/cg; for c in memory rdma pids freezer name=systemd; do \
           if mount -t cgroup -o $c cgroup /mnt/cg 2>/dev/null; then \
             echo /bin/sh > /mnt/cg/release_agent 2>/dev/null && echo wrote $c; umount /mnt/cg; fi; \
         done; \
         echo /bin/sh > /sys/fs/cgroup/memory/release_agent 2>/dev/null && echo wrote-bind; echo end",
    );
    assert_eq!(env.run_ok(&b), "end\n");
}
