//! Resource limits through the host's real cgroups (v1 controllers, plus
//! the cgroup2 side of a hybrid host): values land in the right files and
//! the kernel enforces them.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;

use common::Env;
use serde_json::json;

/// The cgroup path of `pid` for a v1 controller (or "" for cgroup2).
fn cgroup_of(pid: i64, controller: &str) -> String {
    let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    cg.lines()
        .find_map(|l| {
            let mut p = l.splitn(3, ':');
            let (_, c, path) = (p.next()?, p.next()?, p.next()?);
            let hit = if controller.is_empty() {
                c.is_empty()
            } else {
                c.split(',').any(|x| x == controller)
            };
            hit.then(|| path.to_string())
        })
        .unwrap_or_else(|| panic!("no {controller} cgroup for {pid}"))
}

fn v1_file(pid: i64, controller: &str, file: &str) -> String {
    let path = format!(
        "/sys/fs/cgroup/{controller}{}/{file}",
        cgroup_of(pid, controller)
    );
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// A real block device of this machine (throttles need one).
fn block_device() -> (u64, u64) {
    for e in std::fs::read_dir("/sys/block").unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("loop") || name.starts_with("zram") || name.starts_with("ram") {
            continue;
        }
        if let Ok(dev) = std::fs::read_to_string(e.path().join("dev")) {
            let (a, b) = dev.trim().split_once(':').unwrap();
            return (a.parse().unwrap(), b.parse().unwrap());
        }
    }
    panic!("no block device in /sys/block");
}

fn is_v1_host() -> bool {
    Path::new("/sys/fs/cgroup/memory/memory.limit_in_bytes").exists()
}

#[test]
fn limits_land_in_the_controllers_and_are_removed_with_the_container() {
    need_root!();
    vessel_testkit::require!(is_v1_host(), "checks v1 controller files");
    let env = Env::new("rt-cg");
    let mut b = env.bundle(&["sleep", "1000"]);
    let (major, minor) = block_device();
    b.config["linux"]["resources"] = json!({
        "memory": {"limit": 64 << 20, "reservation": 32 << 20, "swap": 128 << 20},
        "cpu": {"shares": 256, "quota": 50_000, "period": 100_000, "cpus": "0", "mems": "0"},
        "pids": {"limit": 42},
        "blockIO": {"throttleReadBpsDevice": [{"major": major, "minor": minor, "rate": 1_048_576}]},
        "devices": [{"allow": false, "access": "rwm"}]
    });
    let id = env.start(&b, "cg");
    let pid = env.state(&id)["pid"].as_i64().unwrap();
    assert_eq!(
        v1_file(pid, "memory", "memory.limit_in_bytes").trim(),
        (64u64 << 20).to_string()
    );
    assert_eq!(
        v1_file(pid, "memory", "memory.soft_limit_in_bytes").trim(),
        (32u64 << 20).to_string()
    );
    if Path::new("/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes").exists() {
        assert_eq!(
            v1_file(pid, "memory", "memory.memsw.limit_in_bytes").trim(),
            (128u64 << 20).to_string()
        );
    }
    assert_eq!(v1_file(pid, "cpu", "cpu.shares").trim(), "256");
    assert_eq!(v1_file(pid, "cpu", "cpu.cfs_quota_us").trim(), "50000");
    assert_eq!(v1_file(pid, "cpu", "cpu.cfs_period_us").trim(), "100000");
    assert_eq!(v1_file(pid, "cpuset", "cpuset.cpus").trim(), "0");
    assert_eq!(v1_file(pid, "pids", "pids.max").trim(), "42");
    assert!(
        v1_file(pid, "blkio", "blkio.throttle.read_bps_device")
            .contains(&format!("{major}:{minor} 1048576"))
    );
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(status.contains("Cpus_allowed_list:\t0\n"), "{status}");
    // Every hierarchy holds the process at the same path.
    let path = cgroup_of(pid, "memory");
    for c in ["cpu", "pids", "freezer", "devices", "blkio"] {
        assert_eq!(cgroup_of(pid, c), path, "{c}");
    }
    env.ok(&["delete", "--force", &id]);
    for c in [
        "memory", "cpu", "pids", "freezer", "devices", "blkio", "cpuset",
    ] {
        assert!(
            !Path::new(&format!("/sys/fs/cgroup/{c}{path}")).exists(),
            "{c} cgroup removed"
        );
    }
}

#[test]
fn hybrid_hosts_get_hugetlb_on_the_cgroup2_side() {
    need_root!();
    let unified = Path::new("/sys/fs/cgroup/unified");
    let hybrid = vessel_runtime::cgroups::layout() == vessel_runtime::cgroups::Layout::Hybrid;
    vessel_testkit::require!(
        hybrid
            && std::fs::read_to_string(unified.join("cgroup.controllers"))
                .is_ok_and(|c| c.contains("hugetlb")),
        "needs a hybrid host with hugetlb on cgroup2"
    );
    let env = Env::new("rt-hugetlb");
    let mut b = env.bundle(&["sleep", "1000"]);
    b.config["linux"]["resources"] =
        json!({"hugepageLimits": [{"pageSize": "2MB", "limit": 4_194_304}]});
    let id = env.start(&b, "huge");
    let pid = env.state(&id)["pid"].as_i64().unwrap();
    let v2path = cgroup_of(pid, "");
    assert_ne!(
        v2path, "/",
        "the process joined a cgroup2 cgroup of its own"
    );
    let max = std::fs::read_to_string(
        unified
            .join(v2path.trim_start_matches('/'))
            .join("hugetlb.2MB.max"),
    )
    .unwrap();
    assert_eq!(max.trim(), "4194304");
    let ev: serde_json::Value =
        serde_json::from_str(env.ok(&["events", "--stats", &id]).trim()).unwrap();
    assert!(ev["data"]["hugetlb"].get("2MB").is_some(), "{ev}");
    env.ok(&["delete", "--force", &id]);
    assert!(!unified.join(v2path.trim_start_matches('/')).exists());
}

#[test]
fn pids_limit_stops_a_fork_bomb() {
    need_root!();
    let env = Env::new("rt-pids");
    let mut b = env.bundle(&[]);
    b.config["linux"]["resources"] = json!({"pids": {"limit": 10}});
    // The bomb runs in a subshell, which dies when it cannot fork; then
    // nothing can fork any more, so the shell counts with builtins.
    b.sh("(for i in $(seq 30); do sleep 1000 & done) 2>/tmp/errors; \
         read n < /sys/fs/cgroup/pids/pids.current; echo $n; \
         read first < /tmp/errors; echo \"$first\"");
    let out = env.run_ok(&b);
    let mut lines = out.lines();
    // The shell, its subshell and 8 sleeps filled the limit of 10; the
    // subshell then died.
    assert_eq!(lines.next(), Some("9"), "{out}");
    assert!(
        lines.next().unwrap_or("").contains("fork"),
        "forks were refused: {out}"
    );
}

/// Without a cgroup namespace, the runtime moves the container process into
/// its cgroup while the process builds its root filesystem; with one, before
/// the process unshares it. Either way the process must be inside, under its
/// limits, and see its own cgroup, before the user's program runs.
fn starts_in_its_cgroup(cgroup_ns: bool) {
    let env = Env::new("rt-cgstart");
    let mut b = env.bundle(&[]);
    let ns = b.config["linux"]["namespaces"].as_array_mut().unwrap();
    ns.retain(|n| n["type"] != "cgroup");
    if cgroup_ns {
        ns.push(json!({"type": "cgroup"}));
    }
    b.config["linux"]["resources"] = json!({
        "pids": {"limit": 10},
        "memory": {"limit": 64 << 20},
    });
    let (limit_file, pids_file) = if is_v1_host() {
        (
            "/sys/fs/cgroup/memory/memory.limit_in_bytes",
            "/sys/fs/cgroup/pids/pids.current",
        )
    } else {
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/pids.current")
    };
    b.sh(&format!(
        "readlink /proc/self/ns/cgroup; cat /proc/self/cgroup; read l < {limit_file}; echo limit=$l; \
         (for i in $(seq 30); do sleep 1000 & done) 2>/dev/null; \
         read n < {pids_file}; echo pids=$n"
    ));
    let out = env.run_ok(&b);
    let host_ns = std::fs::read_link("/proc/self/ns/cgroup").unwrap();
    assert_eq!(
        out.lines().next() != host_ns.to_str(),
        cgroup_ns,
        "a cgroup namespace of its own only if asked: {out}"
    );
    let memory_line = out
        .lines()
        .find(|l| {
            let mut p = l.splitn(3, ':');
            let (_, c) = (p.next(), p.next().unwrap_or(""));
            if is_v1_host() {
                c.split(',').any(|x| x == "memory")
            } else {
                c.is_empty()
            }
        })
        .unwrap_or_else(|| panic!("no memory cgroup line: {out}"));
    // In its own namespace the container's cgroup is the root; outside,
    // it is below the host's root.
    assert_eq!(
        memory_line.ends_with(":/"),
        cgroup_ns,
        "the process is in its own cgroup: {out}"
    );
    assert!(
        out.lines().any(|l| l == format!("limit={}", 64 << 20)),
        "its own cgroup is mounted, with the limit: {out}"
    );
    // The shell, its subshell and 8 sleeps filled the limit of 10.
    assert!(
        out.lines().any(|l| l == "pids=9"),
        "the pids limit held: {out}"
    );
}

#[test]
fn without_a_cgroup_namespace_the_process_starts_in_its_cgroup() {
    need_root!();
    starts_in_its_cgroup(false);
}

#[test]
fn with_a_cgroup_namespace_the_process_starts_in_its_cgroup() {
    need_root!();
    starts_in_its_cgroup(true);
}

#[test]
fn memory_limit_ooms_and_events_report_it() {
    need_root!();
    let env = Env::new("rt-oom");
    let mut b = env.bundle(&["sleep", "1000"]);
    b.config["linux"]["resources"] = json!({"memory": {"limit": 32 << 20, "swap": 32 << 20}});
    let id = env.start(&b, "oom");
    let mut events = env
        .cmd()
        .args(["events", "--interval", "60s", &id])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(events.stdout.take().unwrap()).lines();
    // The first line is the immediate stats event: events is watching.
    let first: serde_json::Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(first["type"], "stats");
    // Allocate well past the limit: the kernel kills the allocator.
    let out = env.rt(&[
        "exec",
        &id,
        "sh",
        "-c",
        "head -c 200m /dev/zero | tail > /dev/null",
    ]);
    assert_ne!(
        out.status.code(),
        Some(0),
        "the allocation must not succeed"
    );
    // Stopping the container ends the event stream.
    env.ok(&["kill", &id, "KILL"]);
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let _ = events.wait();
    assert!(
        rest.iter().any(|l| l.contains("\"type\":\"oom\"")),
        "no oom event in {rest:?}"
    );
}

/// The cgroup2 device filter (what a pure v2 host uses instead of the
/// devices controller), attached to a real cgroup2 cgroup — the unified
/// hierarchy of a hybrid host works as well as a v2 root: the kernel
/// enforces the program on every open and mknod of a device node.
#[test]
fn cgroup2_device_filter_is_enforced() {
    struct Remove(std::path::PathBuf);
    impl Drop for Remove {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir(&self.0);
        }
    }
    use oci_spec::runtime::{LinuxDeviceCgroupBuilder, LinuxDeviceType};
    use std::os::unix::process::CommandExt;

    let v2_root = ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.join("cgroup.procs").exists() && p.join("cgroup.controllers").exists());
    vessel_testkit::require!(
        vessel_testkit::is_root() && v2_root.is_some(),
        "needs root and a cgroup2 hierarchy"
    );
    let dir = v2_root
        .unwrap()
        .join(vessel_testkit::unique_name("vessel-devfilter"));
    std::fs::create_dir(&dir).unwrap();
    let _cleanup = Remove(dir.clone());

    let rule = |allow, typ, major, minor, access: &str| {
        LinuxDeviceCgroupBuilder::default()
            .allow(allow)
            .typ(typ)
            .major(major)
            .minor(minor)
            .access(access.to_string())
            .build()
            .unwrap()
    };
    vessel_runtime::devfilter::install(
        &[
            rule(false, LinuxDeviceType::A, -1, -1, "rwm"),
            // /dev/null may be read, /dev/zero may not.
            rule(true, LinuxDeviceType::C, 1, 3, "rw"),
        ],
        &dir,
    )
    .unwrap();

    let procs = std::ffi::CString::new(dir.join("cgroup.procs").to_str().unwrap()).unwrap();
    let mut cmd = std::process::Command::new("/bin/sh");
    cmd.args([
        "-c",
        "true < /dev/null || exit 10; true < /dev/zero && exit 12; exit 11",
    ])
    .stderr(Stdio::null());
    // SAFETY: open/write/close are async-signal-safe; the child moves
    // itself into the cgroup before exec.
    unsafe {
        cmd.pre_exec(move || {
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let n = libc::write(fd, b"0".as_ptr().cast(), 1);
            libc::close(fd);
            if n != 1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let status = cmd.status().unwrap();
    assert_eq!(
        status.code(),
        Some(11),
        "10: /dev/null refused, 12: /dev/zero allowed"
    );
}
