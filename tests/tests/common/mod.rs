//! A private vesseld for end-to-end tests: temporary root, exec root and
//! socket; everything it started is removed when dropped.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use vessel_testkit::TempRoot;

/// Whether end-to-end daemon tests can run here.
pub fn can_run() -> bool {
    vessel_testkit::is_root() && vessel_testkit::have_command("docker")
}

/// A running vesseld.
pub struct Daemon {
    pub tmp: TempRoot,
    pub sock: PathBuf,
    child: Option<Child>,
    /// Extra vesseld flags.
    args: Vec<String>,
    /// Extra environment variables for vesseld.
    env: Vec<(String, String)>,
}

impl Daemon {
    pub fn start(name: &str) -> Daemon {
        Daemon::start_with(name, &[])
    }

    /// Start with extra vesseld flags.
    pub fn start_with(name: &str, args: &[&str]) -> Daemon {
        Daemon::start_with_env(name, args, &[])
    }

    /// Start with extra vesseld flags and environment variables.
    pub fn start_with_env(name: &str, args: &[&str], env: &[(&str, &str)]) -> Daemon {
        let tmp = TempRoot::new(name);
        let sock = tmp.join("vessel.sock");
        let mut d = Daemon {
            tmp,
            sock,
            child: None,
            args: args.iter().map(|a| (*a).to_string()).collect(),
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
                .collect(),
        };
        d.spawn();
        d
    }

    /// Start (again) on the same directories.
    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.tmp.join("vesseld.log"))
            .unwrap();
        let child = Command::new(vessel_testkit::cargo_bin("vesseld"))
            .arg("--root")
            .arg(self.tmp.join("root"))
            .arg("--exec-root")
            .arg(self.tmp.join("run"))
            .arg("-H")
            .arg(format!("unix://{}", self.sock.display()))
            .arg("--shim-binary")
            .arg(vessel_testkit::cargo_bin("vessel-shim"))
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start vesseld");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if UnixStream::connect(&self.sock).is_ok() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "vesseld did not come up: {}",
                self.log()
            );
            if let Some(Ok(Some(st))) = self.child.as_mut().map(Child::try_wait) {
                panic!("vesseld exited ({st}): {}", self.log());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Kill the daemon (not its containers), as a crash would.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stop the daemon gracefully.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = c.wait();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.tmp.join("vesseld.log")).unwrap_or_default()
    }

    /// The daemon's PID.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// A docker CLI command against this daemon.
    pub fn docker(&self) -> Command {
        let mut c = Command::new("docker");
        c.env("DOCKER_HOST", format!("unix://{}", self.sock.display()))
            .env("DOCKER_CONFIG", self.tmp.join("docker-config"))
            .stdin(Stdio::null());
        c
    }

    /// Run docker and return its output.
    pub fn run(&self, args: &[&str]) -> Output {
        self.docker().args(args).output().expect("run docker")
    }

    /// Run docker and require success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "docker {args:?} failed ({}): {}{}\ndaemon log:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            tail(&self.log(), 30)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Load the offline busybox image.
    pub fn load_busybox(&self) {
        let archive = busybox_archive();
        let out = self.ok(&["load", "-i", archive.to_str().unwrap()]);
        assert!(out.contains("Loaded image: busybox:latest"), "{out}");
    }
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The busybox image archive, built once per workspace by
/// scripts/busybox-image.sh.
pub fn busybox_archive() -> PathBuf {
    let path = vessel_testkit::fixtures_dir().join("busybox-image.tar");
    vessel_testkit::with_lock(
        &vessel_testkit::fixtures_dir().join("busybox-image.lock"),
        || {
            if !path.exists() {
                let tmp = path.with_extension("tmp");
                let st =
                    Command::new(vessel_testkit::workspace_root().join("scripts/busybox-image.sh"))
                        .arg(&tmp)
                        .stdout(Stdio::null())
                        .status()
                        .unwrap();
                assert!(st.success(), "scripts/busybox-image.sh failed");
                std::fs::rename(&tmp, &path).unwrap();
            }
        },
    );
    path
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.is_none() && UnixStream::connect(&self.sock).is_err() {
            self.spawn_quietly();
        }
        if self.child.is_some() {
            if let Ok(out) = self.docker().args(["ps", "-aq"]).output() {
                let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
                    .split_whitespace()
                    .map(String::from)
                    .collect();
                if !ids.is_empty() {
                    let _ = self.docker().arg("rm").arg("-f").args(&ids).output();
                }
            }
        }
        self.stop();
        // Shims of containers that outlived everything.
        let marker = self.tmp.path().to_string_lossy().into_owned();
        for pid in vessel_testkit::processes_matching(&marker) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

impl Daemon {
    fn spawn_quietly(&mut self) {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.spawn()));
        if r.is_err() {
            self.child = None;
        }
    }
}

/// Parse JSON output.
pub fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

pub fn path_exists(p: &Path) -> bool {
    p.exists()
}
