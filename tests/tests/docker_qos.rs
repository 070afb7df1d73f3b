//! Resource limits end to end with the real docker CLI against vesseld:
//! memory (OOM kill reported by inspect), pids against a fork bomb, CPU
//! quota by cgroup accounting, `update` on a running container, block
//! device read throttling and the network rate limit between two of our
//! own containers.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Daemon, json};

macro_rules! need {
    () => {
        vessel_testkit::require!(
            common::can_run() && vessel_testkit::have_command("losetup"),
            "needs root, the docker CLI and losetup"
        );
    };
}

/// The v1 cgroup directory of `controller` for a process.
fn cgroup_dir(pid: &str, controller: &str) -> PathBuf {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    for l in text.lines() {
        let mut parts = l.splitn(3, ':');
        let (_, ctrls, path) = (parts.next(), parts.next().unwrap(), parts.next().unwrap());
        if ctrls.split(',').any(|c| c == controller) {
            for mount in [ctrls.to_string(), controller.to_string()] {
                let d = PathBuf::from(format!("/sys/fs/cgroup/{mount}{path}"));
                if d.exists() {
                    return d;
                }
            }
        }
    }
    panic!("no {controller} cgroup for {pid}: {text}");
}

fn read_u64(p: &Path) -> u64 {
    std::fs::read_to_string(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .trim()
        .parse()
        .unwrap()
}

/// A loop device over a file; detached on drop.
struct Loop(String);

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}

#[test]
fn memory_pids_cpu_and_update() {
    need!();
    let d = Daemon::start("qos-cpu");
    d.load_busybox();

    // Over its memory limit the container is OOM-killed, and says so.
    let out = d.run(&[
        "run",
        "--name",
        "oom",
        "--memory",
        "64m",
        "busybox",
        "sh",
        "-c",
        "tail /dev/zero",
    ]);
    assert_eq!(out.status.code(), Some(137));
    let st = json(&d.ok(&["inspect", "oom"]));
    assert_eq!(st[0]["State"]["OOMKilled"], true);
    assert_eq!(st[0]["HostConfig"]["Memory"], 64 << 20);

    // The pids limit stops a fork bomb.
    let out = d.run(&[
        "run",
        "--rm",
        "--pids-limit",
        "10",
        "busybox",
        "sh",
        "-c",
        "for i in $(seq 30); do sleep 1 & done; wait",
    ]);
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("can't fork"), "{text}");

    // --cpus 0.5: the quota is set, the busy loop is throttled, and the
    // CPU time it gets over a window stays near half of it.
    let id = d
        .ok(&[
            "run",
            "-d",
            "--cpus",
            "0.5",
            "--memory",
            "32m",
            "--memory-reservation",
            "16m",
            "--cpu-shares",
            "512",
            "busybox",
            "sh",
            "-c",
            "while :; do :; done",
        ])
        .trim()
        .to_string();
    let pid = d
        .ok(&["inspect", "-f", "{{.State.Pid}}", &id])
        .trim()
        .to_string();
    let cpu = cgroup_dir(&pid, "cpu");
    let acct = cgroup_dir(&pid, "cpuacct");
    assert_eq!(read_u64(&cpu.join("cpu.cfs_period_us")), 100_000);
    assert_eq!(read_u64(&cpu.join("cpu.cfs_quota_us")), 50_000);
    assert_eq!(read_u64(&cpu.join("cpu.shares")), 512);
    let mem = cgroup_dir(&pid, "memory");
    assert_eq!(read_u64(&mem.join("memory.limit_in_bytes")), 32 << 20);
    assert_eq!(read_u64(&mem.join("memory.soft_limit_in_bytes")), 16 << 20);
    let (t0, u0) = (Instant::now(), read_u64(&acct.join("cpuacct.usage")));
    std::thread::sleep(Duration::from_millis(1500));
    let (t1, u1) = (Instant::now(), read_u64(&acct.join("cpuacct.usage")));
    let share = (u1 - u0) as f64 / (t1 - t0).as_nanos() as f64;
    assert!(share < 0.6, "a half-core quota gave {share:.2} of a core");
    // (Whether it was throttled depends on what else the host runs: on a
    // busy host the loop may never reach its quota.)
    assert!(
        std::fs::read_to_string(cpu.join("cpu.stat"))
            .unwrap()
            .contains("nr_throttled")
    );

    // update changes the limits of the running container.
    d.ok(&[
        "update",
        "--cpus",
        "0.25",
        "--memory",
        "48m",
        "--memory-swap",
        "96m",
        "--pids-limit",
        "50",
        &id,
    ]);
    assert_eq!(read_u64(&cpu.join("cpu.cfs_quota_us")), 25_000);
    assert_eq!(read_u64(&mem.join("memory.limit_in_bytes")), 48 << 20);
    assert_eq!(read_u64(&cgroup_dir(&pid, "pids").join("pids.max")), 50);
    // stats reports usage against the limit.
    let s = d.ok(&["stats", "--no-stream", "--format", "{{.MemUsage}}", &id]);
    assert!(s.contains("/ 48MiB"), "{s}");
    // The raw figures carry one CPU usage count per CPU, as Docker's do
    // (cgroup v1's cpuacct has them; v2 has none).
    let has_cpuacct = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .unwrap()
        .lines()
        .any(|l| {
            l.split(':')
                .nth(1)
                .is_some_and(|c| c.split(',').any(|c| c == "cpuacct"))
        });
    let want = if has_cpuacct {
        let f = cgroup_dir(&pid, "cpuacct").join("cpuacct.usage_percpu");
        std::fs::read_to_string(&f)
            .unwrap_or_else(|e| panic!("{}: {e}", f.display()))
            .split_whitespace()
            .count()
    } else {
        0
    };
    let raw = Command::new("curl")
        .args(["-sS", "--unix-socket"])
        .arg(&d.sock)
        .arg(format!("http://v/containers/{id}/stats?stream=false"))
        .output()
        .unwrap();
    let raw = json(&String::from_utf8_lossy(&raw.stdout));
    let percpu = raw["cpu_stats"]["cpu_usage"]["percpu_usage"]
        .as_array()
        .map_or(0, Vec::len);
    assert_eq!(percpu, want, "{raw}");
    d.ok(&["rm", "-f", &id, "oom"]);
}

#[test]
fn device_read_bps_and_network_rate() {
    need!();
    let d = Daemon::start("qos-io");
    d.load_busybox();

    // A loop device over a file of our own, read with O_DIRECT at 2 MB/s.
    let img = d.tmp.join("disk.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(32 << 20)
        .unwrap();
    let out = Command::new("losetup")
        .args(["-f", "--show"])
        .arg(&img)
        .output()
        .unwrap();
    assert!(out.status.success());
    let dev = Loop(String::from_utf8_lossy(&out.stdout).trim().to_string());
    let limit = format!("{}:2mb", dev.0);
    let read = |mb: u32| {
        let t = Instant::now();
        d.ok(&[
            "run",
            "--rm",
            "--device",
            &dev.0,
            "--device-read-bps",
            &limit,
            "busybox",
            "dd",
            &format!("if={}", dev.0),
            "of=/dev/null",
            "bs=1M",
            &format!("count={mb}"),
            "iflag=direct",
        ]);
        t.elapsed().as_secs_f64()
    };
    // The difference between two reads cancels the container's start-up.
    let (short, long) = (read(1), read(7));
    let rate = 6.0 / (long - short);
    assert!(
        (1.6..=2.4).contains(&rate),
        "read {rate:.2} MB/s against a 2 MB/s limit"
    );

    // The network rate limit, between two of our containers: 4 MiB into
    // a container limited to 16 Mbit/s (2 MB/s).
    let net = vessel_testkit::unique_name("q");
    d.ok(&["network", "create", &net]);
    d.ok(&[
        "run",
        "-d",
        "--name",
        "srv",
        "--network",
        &net,
        "busybox",
        "sleep",
        "600",
    ]);
    // httpd binds before it goes to the background, so it answers once
    // exec returns.
    d.ok(&[
        "exec",
        "srv",
        "sh",
        "-c",
        "mkdir /w && dd if=/dev/zero of=/w/big bs=1M count=4 && httpd -p 80 -h /w",
    ]);
    d.ok(&[
        "run",
        "-d",
        "--name",
        "slow",
        "--network",
        &net,
        "--label",
        "vessel.network.rate=16mbit",
        "busybox",
        "sleep",
        "600",
    ]);
    d.ok(&[
        "run",
        "-d",
        "--name",
        "fast",
        "--network",
        &net,
        "busybox",
        "sleep",
        "600",
    ]);
    let fetch = |who: &str, path: &str| {
        let t = Instant::now();
        d.ok(&[
            "exec",
            who,
            "wget",
            "-q",
            "-O",
            "/dev/null",
            &format!("http://srv/{path}"),
        ]);
        t.elapsed().as_secs_f64()
    };
    let base = fetch("fast", "big");
    let limited = fetch("slow", "big");
    let rate = 4.0 * 1.048_576 / (limited - base);
    assert!(
        (1.6..=2.4).contains(&rate),
        "{rate:.2} MB/s against a 2 MB/s limit"
    );
    // stats counts the container's traffic (from its veth).
    let io = d.ok(&["stats", "--no-stream", "--format", "{{.NetIO}}", "slow"]);
    assert!(io.contains("MB /"), "{io}");
    d.ok(&["rm", "-f", "srv", "slow", "fast"]);
    d.ok(&["network", "rm", &net]);
}
