//! vessel-runtime as a drop-in for runc under real container engines:
//! podman (through conmon) and containerd (through its runc shim), both from
//! Debian, each on private temporary roots.

#![allow(clippy::unwrap_used)]

mod common;

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vessel_testkit::TempRoot;

/// Remove the parent cgroups an engine created (and their empty children,
/// such as podman's conmon cgroup), where no process uses them any more.
fn remove_empty_cgroup_parent(name: &str) {
    fn rmdir_tree(dir: &Path) {
        for sub in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if sub.file_type().is_ok_and(|t| t.is_dir()) {
                rmdir_tree(&sub.path());
            }
        }
        let _ = std::fs::remove_dir(dir);
    }
    for controller in std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
    {
        let dir = controller.path().join(name);
        if dir.is_dir() {
            rmdir_tree(&dir);
        }
    }
}

/// Make a busybox image archive for an engine: the offline root
/// filesystem, tarred.
fn busybox_tar(tmp: &TempRoot) -> PathBuf {
    let rootfs = tmp.join("busybox-rootfs");
    vessel_testkit::busybox_rootfs(&rootfs);
    let tar = tmp.join("busybox-rootfs.tar");
    let st = Command::new("tar")
        .arg("-C")
        .arg(&rootfs)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success());
    tar
}

struct Podman {
    tmp: TempRoot,
    conf: PathBuf,
}

impl Podman {
    fn new() -> Podman {
        use nix::sys::resource::{Resource, getrlimit};
        let tmp = TempRoot::new("podman");
        let conf = tmp.join("containers.conf");
        // Podman's default ulimits exceed some hosts' hard limits (this
        // kind's open-files limit is 20000): ask for what we have.
        let (_, nofile) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        // Podman itself caps its process limit at 32768.
        let (_, nproc) = getrlimit(Resource::RLIMIT_NPROC).unwrap();
        let nproc = nproc.min(32768);
        std::fs::write(
            &conf,
            format!(
                "[containers]\ndefault_ulimits = [\"nofile={nofile}:{nofile}\", \"nproc={nproc}:{nproc}\"]\n[engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n"
            ),
        )
        .unwrap();
        Podman { tmp, conf }
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new("podman");
        c.env("CONTAINERS_CONF", &self.conf)
            .arg("--root")
            .arg(self.tmp.join("root"))
            .arg("--runroot")
            .arg(self.tmp.join("run"))
            .args(["--storage-driver", "vfs", "--cgroup-manager", "cgroupfs"])
            .arg("--tmpdir")
            .arg(self.tmp.join("tmpdir"))
            .arg("--runtime")
            .arg(common::binary());
        c.stdin(Stdio::null());
        c
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.cmd().args(args).output().unwrap();
        assert!(
            out.status.success(),
            "podman {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self
            .cmd()
            .args(["rm", "--all", "--force", "--time", "0"])
            .output();
        let _ = self.cmd().args(["system", "reset", "--force"]).output();
        // conmon runs podman's cleanup after a container exits, on its own
        // time: wait for every process working on our root to finish.
        wait_for_processes(self.tmp.path());
        remove_empty_cgroup_parent("libpod_parent");
    }
}

/// Wait (up to 30 s each) until no process mentions `dir` on its command
/// line.
fn wait_for_processes(dir: &Path) {
    use std::os::fd::{AsFd, FromRawFd, OwnedFd};
    let me = std::process::id();
    for pid in vessel_testkit::processes_matching(dir.to_str().unwrap()) {
        if pid == me {
            continue;
        }
        // SAFETY: pidfd_open returns a new descriptor we own, or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if fd < 0 {
            continue;
        }
        // SAFETY: the kernel just returned this descriptor.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        let mut fds = [nix::poll::PollFd::new(
            fd.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        let _ = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(30_000u16));
    }
}

#[test]
fn podman_runs_containers_with_vessel_runtime() {
    need_root!();
    vessel_testkit::require!(
        vessel_testkit::have_command("podman"),
        "podman is not installed (apt-get install podman)"
    );
    let p = Podman::new();
    let tar = busybox_tar(&p.tmp);
    p.ok(&[
        "import",
        tar.to_str().unwrap(),
        "localhost/busybox-image:latest",
    ]);

    assert_eq!(
        p.ok(&[
            "run",
            "--rm",
            "--network",
            "none",
            "busybox-image",
            "echo",
            "hi"
        ]),
        "hi\n"
    );

    let out = p.ok(&[
        "run", "--rm", "--network", "none", "--memory", "64m", "--pids-limit", "33",
        "--cap-drop", "ALL", "--cap-add", "CHOWN", "busybox-image", "sh", "-c",
        "cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/pids/pids.max; grep CapEff /proc/self/status",
    ]);
    let lines: Vec<&str> = out.lines().collect();
    if Path::new("/sys/fs/cgroup/memory/memory.limit_in_bytes").exists() {
        assert_eq!(lines[0], (64u64 << 20).to_string());
        assert_eq!(lines[1], "33");
    }
    assert_eq!(lines.last().unwrap(), &"CapEff:\t0000000000000001");

    // -it through conmon's console socket.
    let mut cmd = p.cmd();
    cmd.args([
        "run",
        "--rm",
        "-it",
        "--network",
        "none",
        "busybox-image",
        "sh",
    ]);
    let (text, code) =
        vessel_testkit::run_on_pty(cmd, b"# ", b"tty; echo answer-$((6*7)); exit 3\r");
    assert!(text.contains("/dev/pts/0"), "{text}");
    assert!(text.contains("answer-42"), "{text}");
    assert_eq!(code, 3, "{text}");

    // A detached container: exec, pause/unpause, stop.
    p.ok(&[
        "run",
        "-d",
        "--name",
        "c1",
        "--network",
        "none",
        "busybox-image",
        "sh",
        "-c",
        "trap 'exit 0' TERM; while true; do sleep 0.1; done",
    ]);
    assert_eq!(
        p.ok(&["exec", "c1", "sh", "-c", "echo exec-ok"]),
        "exec-ok\n"
    );
    p.ok(&["pause", "c1"]);
    assert!(
        p.ok(&["inspect", "--format", "{{.State.Status}}", "c1"])
            .contains("paused")
    );
    p.ok(&["unpause", "c1"]);
    assert!(
        p.ok(&["inspect", "--format", "{{.State.Status}}", "c1"])
            .contains("running")
    );
    p.ok(&["stop", "--time", "10", "c1"]);
    let state = p.ok(&[
        "inspect",
        "--format",
        "{{.State.Status}} {{.State.ExitCode}}",
        "c1",
    ]);
    assert_eq!(state.trim(), "exited 0", "the TERM trap ran: {state}");
    p.ok(&["rm", "c1"]);
}

struct Containerd {
    tmp: TempRoot,
    child: Child,
    sock: PathBuf,
}

impl Containerd {
    fn start() -> Containerd {
        let tmp = TempRoot::new("containerd");
        let sock = tmp.join("containerd.sock");
        let config = tmp.join("config.toml");
        std::fs::write(
            &config,
            format!(
                "version = 2\nroot = \"{}\"\nstate = \"{}\"\n[grpc]\n  address = \"{}\"\n[ttrpc]\n  address = \"{}\"\n[plugins.\"io.containerd.grpc.v1.cri\"]\n  disable_cgroup = true\n",
                tmp.join("root").display(),
                tmp.join("state").display(),
                sock.display(),
                tmp.join("ttrpc.sock").display(),
            ),
        )
        .unwrap();
        let log = std::fs::File::create(tmp.join("containerd.log")).unwrap();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&config)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        // Wait until it accepts connections on its socket.
        let deadline = Instant::now() + Duration::from_secs(30);
        while UnixStream::connect(&sock).is_err() {
            assert!(
                Instant::now() < deadline,
                "containerd did not start: {}",
                std::fs::read_to_string(tmp.join("containerd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Containerd { tmp, child, sock }
    }

    fn ctr(&self, args: &[&str]) -> std::process::Output {
        Command::new("ctr")
            .arg("--address")
            .arg(&self.sock)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Shims exit with their last task; make sure none outlives us.
        for pid in vessel_testkit::processes_matching(self.tmp.path().to_str().unwrap()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        remove_empty_cgroup_parent("default");
    }
}

#[test]
fn containerd_runs_a_container_with_vessel_runtime() {
    need_root!();
    vessel_testkit::require!(
        vessel_testkit::have_command("containerd") && vessel_testkit::have_command("ctr"),
        "containerd is not installed (apt-get install containerd)"
    );
    vessel_testkit::require!(
        vessel_testkit::have_command("podman"),
        "podman makes the image archive (apt-get install podman)"
    );
    let c = Containerd::start();
    // An image archive in docker format, made by podman from the offline root.
    let p = Podman::new();
    let tar = busybox_tar(&p.tmp);
    p.ok(&["import", tar.to_str().unwrap(), "localhost/busybox:latest"]);
    let archive = c.tmp.join("busybox-image.tar");
    p.ok(&[
        "save",
        "--format",
        "docker-archive",
        "-o",
        archive.to_str().unwrap(),
        "localhost/busybox:latest",
    ]);
    let out = c.ctr(&["images", "import", archive.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bin = common::binary();
    let out = c.ctr(&[
        "run",
        "--rm",
        "--runc-binary",
        bin.to_str().unwrap(),
        "localhost/busybox:latest",
        "ctr-test",
        "sh",
        "-c",
        "echo hello-from-containerd; exit 4",
    ]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello-from-containerd\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        out.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
