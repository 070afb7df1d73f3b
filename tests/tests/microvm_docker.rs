//! End to end: `docker run --runtime vm` through vesseld, inside an L1
//! Linux under QEMU's TCG with a real (nested, AMD SVM) KVM.
//!
//! The L1 script starts vesseld (the test's own build, with its shared
//! libraries) next to the static shim and monitor, loads the busybox image
//! with the docker CLI, and drives VM containers with the docker CLI:
//! run, exit codes, logs, exec, stop, kill, `docker cp` into a created
//! container, resources, and the layer image cache (one disk image per
//! layer, shared, deleted with the last image that has the layer). One L1
//! boot serves every case. The fixtures are the monitor's nested-test
//! fixtures; the test skips with the reason when something is missing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../runtime/vmm/tests/support/mod.rs"]
mod support;

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

const SCRIPT: &str = r#"
insmod /modules/overlay.ko || echo "@@FATAL insmod overlay"
mount -t cgroup2 cgroup2 /sys/fs/cgroup || echo "@@FATAL mount cgroup2"
mkdir -p /var/lib/vessel /run/vessel
mount -t tmpfs tmpfs /var/lib/vessel
export HOME=/tmp DOCKER_HOST=unix:///run/vessel.sock PATH=/bin:/sbin:/usr/bin:/usr/sbin
vesseld -H unix:///run/vessel.sock --vm-kernel /vm/vmlinux --vm-initrd /vm/initrd > /tmp/vesseld.log 2>&1 &
i=0
until docker version > /dev/null 2>&1; do
  i=$((i+1))
  if [ $i -gt 1200 ]; then echo "@@FATAL vesseld did not answer"; cat /tmp/vesseld.log; poweroff -f; fi
  sleep 0.1
done
show() { echo @@OUT; cat /tmp/out; echo @@ERR; cat /tmp/err; echo @@END; }
# dk CASE ARGS...: one docker command as a case
dk() {
  echo "@@CASE $1"; shift; t0=$(now)
  timeout -s KILL 120 docker "$@" > /tmp/out 2> /tmp/err
  echo "@@EXIT $?"; echo "@@TIME $t0 $(now)"; show
}
vm="--runtime vm --network none"

dk load load -i /vm/busybox.tar
echo "@@DIFF $(docker image inspect -f '{{index .RootFS.Layers 0}}' busybox)"
dk echo run --rm $vm busybox echo hi
# Without --network none: runs, and the CLI prints the daemon's warning.
dk netwarn run --rm --runtime vm busybox true
dk exit7 run $vm --name e7 busybox sh -c 'echo out; echo err >&2; exit 7'
dk logs logs e7
echo "@@LAYERS $(ls /var/lib/vessel/vm/layers | tr '\n' ' ')"
dk memory run --rm $vm -m 128m --cpus 2 busybox sh -c 'grep MemTotal /proc/meminfo; grep -c ^processor /proc/cpuinfo'

# The container's own changes reach its VM.
docker create $vm --name up busybox cat /added > /dev/null
echo from-cp > /tmp/added
docker cp /tmp/added up:/added
dk upper start -a up

# A long-running container: exec, then stop.
docker run -d $vm --name long busybox sh -c 'trap "echo got-term; exit 3" TERM; echo up; while true; do sleep 1; done' > /dev/null
i=0; until docker logs long 2>&1 | grep -q up || [ $i -gt 600 ]; do i=$((i+1)); sleep 0.1; done
echo "@@HOSTNAME $(docker inspect -f '{{.Config.Hostname}}' long)"
dk exec exec long sh -c 'hostname; exit 4'
dk stop stop -t 60 long
echo "@@STOPPED $(docker inspect -f '{{.State.ExitCode}}' long)"
dk stoplogs logs long

docker run -d $vm --name k busybox sleep 1000 > /dev/null
dk kill kill k
dk killed wait k
echo "@@RUNNING $(docker ps -q | wc -l)"

docker rm -f e7 up long k > /dev/null
dk rmi rmi busybox
echo "@@LAYERSAFTER $(ls /var/lib/vessel/vm/layers | grep -c erofs)"
kill $(cat /run/vessel/vesseld.pid)
i=0; while [ -e /run/vessel/vesseld.pid ] && [ $i -lt 300 ]; do i=$((i+1)); sleep 0.1; done
echo "@@VESSELD $(cat /proc/[0-9]*/comm | grep -c vesseld)"
echo @@VESSELDLOG; tail -n 30 /tmp/vesseld.log; echo @@VESSELDLOGEND
"#;

/// `binary` and the shared libraries it loads, as (path in L1, host path)
/// pairs at the same paths, so a dynamically linked program runs in L1.
fn with_libraries(name: &str, binary: &Path) -> Vec<(String, PathBuf)> {
    let mut out = vec![(format!("bin/{name}"), binary.to_path_buf())];
    let ldd = Command::new("ldd").arg(binary).output().expect("run ldd");
    for line in String::from_utf8_lossy(&ldd.stdout).lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or
        // "/lib64/ld-linux-x86-64.so.2 (0x...)".
        let path = line
            .split("=>")
            .last()
            .and_then(|r| r.split_whitespace().next())
            .filter(|p| p.starts_with('/'));
        if let Some(p) = path {
            // The real file, under the name the loader asks for.
            let real = std::fs::canonicalize(p).expect("library path");
            out.push((p.trim_start_matches('/').to_string(), real));
        }
    }
    out
}

/// Where `program` is on PATH.
fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join(program))
            .find(|p| p.is_file())
    })
}

#[test]
fn docker_runs_containers_in_microvms_through_vesseld() {
    let Some(fx) = support::fixtures_or_skip() else {
        return;
    };
    vessel_testkit::require!(
        vessel_testkit::have_command("docker"),
        "needs the docker CLI"
    );
    let tmp = vessel_testkit::TempRoot::new("microvm-docker");
    // The debug build's symbols would make L1's initramfs 130 MB bigger.
    let vesseld = tmp.join("vesseld");
    let st = Command::new("objcopy")
        .arg("--strip-debug")
        .arg(vessel_testkit::cargo_bin("vesseld"))
        .arg(&vesseld)
        .status()
        .expect("run objcopy");
    assert!(st.success(), "objcopy --strip-debug vesseld");
    let docker = which("docker").expect("docker is on PATH");
    let mut extra = with_libraries("vesseld", &vesseld);
    extra.extend(with_libraries("docker", &docker));
    // The daemon images each layer with mkfs.erofs the first time a VM
    // uses it.
    extra.extend(with_libraries(
        "mkfs.erofs",
        &which("mkfs.erofs").expect("mkfs.erofs (apt-get install erofs-utils)"),
    ));
    extra.push(("vm/busybox.tar".into(), common::busybox_archive()));
    extra.sort();
    extra.dedup();

    let run = support::run_l1(&fx, "microvm-docker-l1", SCRIPT, &extra);
    let case = |n: &str| run.case(n);
    let value = |k: &str| run.value(k);

    let c = case("load");
    assert_eq!(c.exit, Some(0), "{c:?}");

    let c = case("echo");
    assert_eq!((c.exit, c.out.as_str()), (Some(0), "hi\n"), "{c:?}");

    let c = case("netwarn");
    assert_eq!(c.exit, Some(0), "{c:?}");
    assert!(
        c.err
            .contains("WARNING: the vm runtime gives the container no network interface"),
        "{c:?}"
    );

    let c = case("exit7");
    assert_eq!(
        (c.exit, c.out.as_str(), c.err.as_str()),
        (Some(7), "out\n", "err\n"),
        "{c:?}"
    );
    let c = case("logs");
    assert_eq!(
        (c.exit, c.out.as_str(), c.err.as_str()),
        (Some(0), "out\n", "err\n"),
        "{c:?}"
    );

    // One disk image for the image's one layer, named by its diff ID and
    // shared by the containers so far.
    let diff = value("DIFF");
    let diff_hex = diff.strip_prefix("sha256:").expect("a sha256 diff ID");
    assert_eq!(value("LAYERS"), format!("sha256-{diff_hex}.erofs"));

    // --memory and --cpus size the VM.
    let c = case("memory");
    assert_eq!(c.exit, Some(0), "{c:?}");
    let kb: u64 = c
        .out
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{c:?}"));
    assert!(
        kb <= 128 * 1024 && kb > 96 * 1024,
        "MemTotal {kb} kB for a 128 MiB VM: {c:?}"
    );
    assert_eq!(c.out.lines().nth(1), Some("2"), "{c:?}");

    let c = case("upper");
    assert_eq!((c.exit, c.out.as_str()), (Some(0), "from-cp\n"), "{c:?}");

    let c = case("exec");
    assert_eq!(
        (c.exit, c.out.as_str()),
        (Some(4), format!("{}\n", value("HOSTNAME")).as_str()),
        "{c:?}"
    );

    // Stop: the signal reaches the process, which exits its own way.
    let c = case("stop");
    assert_eq!(c.exit, Some(0), "{c:?}");
    assert_eq!(value("STOPPED"), "3");
    let c = case("stoplogs");
    assert_eq!(c.out, "up\ngot-term\n", "{c:?}");

    let c = case("kill");
    assert_eq!(c.exit, Some(0), "{c:?}");
    let c = case("killed");
    assert_eq!((c.exit, c.out.trim()), (Some(0), "137"), "{c:?}");
    assert_eq!(value("RUNNING"), "0");

    // The layer's disk image goes with the last image that has the layer.
    let c = case("rmi");
    assert_eq!(c.exit, Some(0), "{c:?}");
    assert_eq!(value("LAYERSAFTER"), "0");
    assert_eq!(value("VESSELD"), "0", "vesseld exited on SIGTERM");
}
