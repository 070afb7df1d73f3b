//! Shared helpers for the end-to-end tests: a daemon to talk to, running
//! the `vessel` binary against it, the busybox image, and a recording
//! proxy in front of a daemon socket.
//!
//! Which daemon: by default a private vesseld (built in this workspace:
//! `cargo build --bins` first) per test on a temporary root, stopped and
//! removed after; `VESSEL_CLI_TEST_SOCK=/path/to.sock` uses a running
//! Docker-compatible daemon (vesseld or dockerd) and leaves it running;
//! `VESSEL_CLI_TEST_DOCKERD=1` starts a private dockerd per test instead
//! (no bridge, no iptables), to check the CLI against Docker itself.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};

use vessel_testkit::TempRoot;

/// A daemon for one test.
pub struct Daemon {
    pub sock: PathBuf,
    /// Client configuration directory (DOCKER_CONFIG) private to the test.
    pub config: TempRoot,
    dockerd: Option<Child>,
    /// A private vesseld; its shims are found by the root's path.
    vesseld: Option<Child>,
    root: Option<TempRoot>,
    /// The private dockerd's cgroup parent, removed after it stops.
    cgroup_parent: Option<String>,
    /// dockerd always makes /run/docker/plugins; remove it after if it
    /// was not there before.
    made_run_docker: bool,
    /// Addresses a private dockerd reported in "API listen on ADDR", one
    /// per `-H`: the bound address, so `tcp://127.0.0.1:0` works.
    pub listening: Vec<String>,
}

impl Daemon {
    /// `unix://` host string.
    pub fn host(&self) -> String {
        format!("unix://{}", self.sock.display())
    }

    /// Whether this is a dockerd the test started.
    pub fn is_private_dockerd(&self) -> bool {
        self.dockerd.is_some()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.vesseld.take() {
            // Containers first, through the daemon, then the daemon.
            let host = self.host();
            if let Ok(out) = Command::new("docker")
                .env("DOCKER_HOST", &host)
                .args(["ps", "-aq"])
                .output()
            {
                let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
                    .split_whitespace()
                    .map(String::from)
                    .collect();
                if !ids.is_empty() {
                    let _ = Command::new("docker")
                        .env("DOCKER_HOST", &host)
                        .arg("rm")
                        .arg("-f")
                        .args(&ids)
                        .output();
                }
            }
            // SAFETY: kill has no memory-safety preconditions; the pid is our
            // own child, not yet reaped.
            unsafe {
                libc::kill(child.id() as i32, libc::SIGTERM);
            }
            let _ = child.wait();
            if let Some(root) = &self.root {
                for pid in vessel_testkit::processes_matching(&root.path().display().to_string()) {
                    // SAFETY: as above; these are shims under our root.
                    unsafe {
                        libc::kill(pid as i32, libc::SIGKILL);
                    }
                }
            }
        }
        if let Some(mut child) = self.dockerd.take() {
            // SAFETY: kill has no memory-safety preconditions; the pid is our
            // own child, not yet reaped.
            unsafe {
                libc::kill(child.id() as i32, libc::SIGTERM);
            }
            let _ = child.wait();
        }
        // TempRoot unmounts what dockerd left below its root and removes it.
        self.root.take();
        if let Some(parent) = self.cgroup_parent.take() {
            remove_cgroups(&parent);
        }
        if self.made_run_docker {
            // Only empty directories go; a dockerd still using them keeps them.
            let _ = std::fs::remove_dir("/run/docker/plugins");
            let _ = std::fs::remove_dir("/run/docker");
        }
    }
}

/// The daemon for `test`, or `None` (with a message) when the end-to-end
/// tests were not asked for. A request for a private dockerd that cannot
/// be met is a skip through the harness (a failure under
/// `VESSEL_REQUIRE_PRIVILEGED=1`).
pub fn daemon(test: &str) -> Option<Daemon> {
    if let Some(sock) = std::env::var_os("VESSEL_CLI_TEST_SOCK").filter(|s| !s.is_empty()) {
        return Some(Daemon {
            sock: PathBuf::from(sock),
            config: TempRoot::new("cli-config"),
            dockerd: None,
            vesseld: None,
            root: None,
            cgroup_parent: None,
            made_run_docker: false,
            listening: Vec::new(),
        });
    }
    if std::env::var("VESSEL_CLI_TEST_DOCKERD").as_deref() != Ok("1") {
        // The default: a private vesseld built in this workspace.
        if !vessel_testkit::is_root() {
            vessel_testkit::skip(test, "a private vesseld needs root");
            return None;
        }
        return Some(start_vesseld());
    }
    if !vessel_testkit::is_root() {
        vessel_testkit::skip(test, "a private dockerd needs root");
        return None;
    }
    if !vessel_testkit::have_command("dockerd") {
        vessel_testkit::skip(test, "dockerd is not installed (apt-get install docker.io)");
        return None;
    }
    Some(start_dockerd(&[]))
}

/// A private dockerd with extra flags (for tests that must configure the
/// daemon, such as TLS), or `None` when that mode was not asked for.
pub fn private_dockerd(test: &str, extra: &[String]) -> Option<Daemon> {
    if std::env::var("VESSEL_CLI_TEST_DOCKERD").as_deref() != Ok("1") {
        eprintln!("SKIP {test}: needs a daemon it can configure: set VESSEL_CLI_TEST_DOCKERD=1");
        return None;
    }
    if !vessel_testkit::is_root() {
        vessel_testkit::skip(test, "a private dockerd needs root");
        return None;
    }
    if !vessel_testkit::have_command("dockerd") {
        vessel_testkit::skip(test, "dockerd is not installed (apt-get install docker.io)");
        return None;
    }
    Some(start_dockerd(extra))
}

/// Remove a cgroup (and any empty children) from every hierarchy mounted
/// under /sys/fs/cgroup. Only empty groups can go; busy ones stay.
fn remove_cgroups(name: &str) {
    let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") else {
        return;
    };
    for h in hierarchies.flatten() {
        let dir = h.path().join(name);
        if dir.is_dir() {
            remove_cgroup_dir(&dir);
        }
    }
}

fn remove_cgroup_dir(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_dir(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

fn start_dockerd(extra: &[String]) -> Daemon {
    let root = TempRoot::new("cli-dockerd");
    let sock = root.join("docker.sock");
    // Its own cgroup parent, so it leaves no "docker" group behind and
    // parallel daemons do not share one.
    let cgroup_parent = root.path().file_name().map_or_else(
        || "vessel-test-cli-dockerd".to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let made_run_docker = !Path::new("/run/docker").exists();
    // Keep its identity key under the root instead of /etc/docker.
    std::fs::write(
        root.join("daemon.json"),
        format!(
            "{{\"deprecated-key-path\": \"{}\"}}",
            root.join("key.json").display()
        ),
    )
    .expect("write daemon.json");
    let mut child = Command::new("dockerd")
        .arg("--config-file")
        .arg(root.join("daemon.json"))
        .arg("--data-root")
        .arg(root.join("data"))
        .arg("--exec-root")
        .arg(root.join("exec"))
        .arg("--pidfile")
        .arg(root.join("dockerd.pid"))
        .arg("-H")
        .arg(format!("unix://{}", sock.display()))
        .args([
            "--storage-driver=overlay2",
            "--iptables=false",
            "--ip6tables=false",
            "--bridge=none",
        ])
        .arg(format!("--cgroup-parent=/{cgroup_parent}"))
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start dockerd");
    // Wait for "API listen on" in its log rather than polling the socket.
    let stderr = child.stderr.take().expect("piped stderr");
    let mut lines = BufReader::new(stderr);
    let mut log = std::fs::File::create(root.join("dockerd.log")).expect("create dockerd.log");
    let mut line = String::new();
    // One "API listen on" per -H (ours plus the caller's).
    let hosts = 1 + extra.iter().filter(|a| a.as_str() == "-H").count();
    let mut listening = Vec::new();
    loop {
        line.clear();
        let n = lines.read_line(&mut line).expect("read dockerd log");
        if n == 0 {
            let _ = child.wait();
            panic!(
                "dockerd exited before listening; log: {}",
                std::fs::read_to_string(root.join("dockerd.log")).unwrap_or_default()
            );
        }
        let _ = log.write_all(line.as_bytes());
        if let Some(rest) = line.split("API listen on ").nth(1) {
            let addr = rest.trim_end().trim_end_matches('"');
            listening.push(addr.to_string());
            if listening.len() == hosts {
                break;
            }
        }
    }
    // Keep draining the log so dockerd never blocks on a full pipe.
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        while let Ok(n) = lines.read(&mut buf) {
            if n == 0 || log.write_all(&buf[..n]).is_err() {
                break;
            }
        }
    });
    Daemon {
        sock,
        config: TempRoot::new("cli-config"),
        dockerd: Some(child),
        vesseld: None,
        root: Some(root),
        cgroup_parent: Some(cgroup_parent),
        made_run_docker,
        listening,
    }
}

/// The `vessel` binary built for these tests.
pub fn vessel_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_vessel"))
}

/// A `vessel` command aimed at `d`, with a private config directory.
pub fn vessel_cmd(d: &Daemon, args: &[&str]) -> Command {
    let mut c = Command::new(vessel_bin());
    c.env("DOCKER_HOST", d.host())
        .env_remove("VESSEL_HOST")
        .env_remove("DOCKER_CONTEXT")
        .env_remove("DOCKER_TLS_VERIFY")
        .env_remove("DOCKER_API_VERSION")
        .env("DOCKER_CONFIG", d.config.path())
        .args(args)
        .stdin(Stdio::null());
    c
}

/// Run `vessel ARGS`; returns the output.
pub fn vessel(d: &Daemon, args: &[&str]) -> Output {
    vessel_cmd(d, args).output().expect("run vessel")
}

/// Run `vessel ARGS` and require success; returns stdout.
#[track_caller]
pub fn ok(d: &Daemon, args: &[&str]) -> String {
    let o = vessel(d, args);
    assert!(
        o.status.success(),
        "vessel {args:?} failed ({:?}):\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// stdout of an output, as text.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// stderr of an output, as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The offline busybox image archive (built once per target directory).
pub fn busybox_tar() -> PathBuf {
    let dir = vessel_testkit::fixtures_dir();
    let tar = dir.join("busybox-image.tar");
    vessel_testkit::with_lock(&dir.join("busybox-image.lock"), || {
        if !tar.exists() {
            let tmp = dir.join(format!("busybox-image.tar.{}", std::process::id()));
            let st =
                Command::new(vessel_testkit::workspace_root().join("scripts/busybox-image.sh"))
                    .arg(&tmp)
                    .stdout(Stdio::null())
                    .status()
                    .expect("run scripts/busybox-image.sh");
            assert!(st.success(), "scripts/busybox-image.sh failed");
            std::fs::rename(&tmp, &tar).expect("publish busybox image fixture");
        }
    });
    tar
}

/// Make sure `busybox:latest` is in the daemon's store.
pub fn load_busybox(d: &Daemon) {
    let tar = busybox_tar();
    ok(d, &["load", "-q", "-i", tar.to_str().expect("utf-8 path")]);
}

/// Removes containers (by name) when dropped, so a failing test does not
/// leave them on a shared daemon.
pub struct Cleanup<'a> {
    pub d: &'a Daemon,
    pub containers: Vec<String>,
    pub images: Vec<String>,
    pub volumes: Vec<String>,
}

impl<'a> Cleanup<'a> {
    pub fn new(d: &'a Daemon) -> Cleanup<'a> {
        Cleanup {
            d,
            containers: Vec::new(),
            images: Vec::new(),
            volumes: Vec::new(),
        }
    }

    /// A unique container name, removed at the end.
    pub fn name(&mut self, prefix: &str) -> String {
        let n = vessel_testkit::unique_name(prefix);
        self.containers.push(n.clone());
        n
    }
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        for c in &self.containers {
            let _ = vessel(self.d, &["rm", "-f", "-v", c]);
        }
        for i in &self.images {
            let _ = vessel(self.d, &["rmi", "-f", i]);
        }
        for v in &self.volumes {
            let _ = vessel(self.d, &["volume", "rm", "-f", v]);
        }
    }
}

/// Bytes one client connection sent.
type Connection = Arc<Mutex<Vec<u8>>>;

/// A unix-socket proxy that forwards to `upstream` and records every byte
/// clients send, to see exactly what a client put on the wire.
pub struct RecordingProxy {
    pub sock: PathBuf,
    /// One buffer per connection, appended to before forwarding, so a
    /// request is recorded before the daemon can answer it.
    recorded: Arc<Mutex<Vec<Connection>>>,
}

impl RecordingProxy {
    /// Listen on `sock` and forward each connection to `upstream`.
    pub fn start(sock: &Path, upstream: &Path) -> RecordingProxy {
        let listener = UnixListener::bind(sock).expect("bind proxy socket");
        let recorded = Arc::new(Mutex::new(Vec::new()));
        let rec = recorded.clone();
        let upstream = upstream.to_path_buf();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(client) = conn else { break };
                let Ok(server) = UnixStream::connect(&upstream) else {
                    continue;
                };
                let mine = Arc::new(Mutex::new(Vec::new()));
                rec.lock().expect("record lock").push(mine.clone());
                let (mut c_read, mut s_write) = (
                    client.try_clone().expect("clone"),
                    server.try_clone().expect("clone"),
                );
                let (mut s_read, mut c_write) = (server, client);
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 65536];
                    loop {
                        match c_read.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                mine.lock()
                                    .expect("record lock")
                                    .extend_from_slice(&buf[..n]);
                                if s_write.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                            }
                        }
                    }
                    let _ = s_write.shutdown(std::net::Shutdown::Write);
                });
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut s_read, &mut c_write);
                    let _ = c_write.shutdown(std::net::Shutdown::Write);
                });
            }
        });
        RecordingProxy {
            sock: sock.to_path_buf(),
            recorded,
        }
    }

    /// Forget what was recorded.
    pub fn clear(&self) {
        self.recorded.lock().expect("record lock").clear();
    }

    /// Bodies of recorded requests whose request line contains `needle`.
    pub fn bodies(&self, needle: &str) -> Vec<(String, Vec<u8>)> {
        let conns: Vec<Vec<u8>> = self
            .recorded
            .lock()
            .expect("record lock")
            .iter()
            .map(|c| c.lock().expect("record lock").clone())
            .collect();
        let mut out = Vec::new();
        for data in &conns {
            parse_requests(data, needle, &mut out);
        }
        out
    }
}

fn parse_requests(data: &[u8], needle: &str, out: &mut Vec<(String, Vec<u8>)>) {
    {
        let mut rest = data;
        while let Some(end) = find(rest, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&rest[..end]).into_owned();
            let len = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            let body_start = end + 4;
            let body_end = (body_start + len).min(rest.len());
            let line = head.lines().next().unwrap_or("").to_string();
            if line.contains(needle) {
                out.push((line, rest[body_start..body_end].to_vec()));
            }
            rest = &rest[body_end..];
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A private vesseld on a temporary root, with busybox loaded.
fn start_vesseld() -> Daemon {
    let root = TempRoot::new("cli-vesseld");
    let sock = root.join("vessel.sock");
    let log = std::fs::File::create(root.join("vesseld.log")).expect("create vesseld.log");
    let child = Command::new(vessel_testkit::cargo_bin("vesseld"))
        .arg("--root")
        .arg(root.join("root"))
        .arg("--exec-root")
        .arg(root.join("run"))
        .arg("-H")
        .arg(format!("unix://{}", sock.display()))
        .arg("--shim-binary")
        .arg(vessel_testkit::cargo_bin("vessel-shim"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("clone log"))
        .stderr(log)
        .spawn()
        .expect("start vesseld");
    let mut d = Daemon {
        sock,
        config: TempRoot::new("cli-config"),
        dockerd: None,
        vesseld: Some(child),
        root: Some(root),
        cgroup_parent: None,
        made_run_docker: false,
        listening: Vec::new(),
    };
    // The socket answers once the daemon is ready.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while UnixStream::connect(&d.sock).is_err() {
        if let Some(Ok(Some(st))) = d.vesseld.as_mut().map(Child::try_wait) {
            panic!("vesseld exited ({st})");
        }
        assert!(
            std::time::Instant::now() < deadline,
            "vesseld did not come up"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let st = Command::new("docker")
        .env("DOCKER_HOST", d.host())
        .arg("load")
        .arg("-q")
        .arg("-i")
        .arg(busybox_tar())
        .stdout(Stdio::null())
        .status()
        .expect("docker load");
    assert!(
        st.success(),
        "loading busybox into the private vesseld failed"
    );
    d
}
