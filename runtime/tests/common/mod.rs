//! Shared set-up for the runtime's integration tests: a private runtime
//! root, bundles made from the offline busybox root filesystem, and the
//! `vessel-runtime` binary driven as containerd or podman would drive it.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::{Value, json};
use vessel_testkit::TempRoot;

/// Whether privileged runtime tests can run here (root, cgroups, busybox).
pub fn can_run() -> bool {
    vessel_testkit::is_root() && Path::new("/sys/fs/cgroup").exists()
}

/// Skip the test unless it can run here.
#[macro_export]
macro_rules! need_root {
    () => {
        vessel_testkit::require!(common::can_run(), "needs root and cgroups");
    };
}

/// A private runtime root with bundles below it. Deletes every container it
/// created when dropped.
pub struct Env {
    pub tmp: TempRoot,
    pub root: PathBuf,
    ids: std::cell::RefCell<Vec<String>>,
    bin: PathBuf,
}

/// The binary under test.
pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_vessel-runtime"))
}

impl Env {
    pub fn new(name: &str) -> Env {
        let tmp = TempRoot::new(name);
        let root = tmp.join("state");
        Env {
            tmp,
            root,
            ids: std::cell::RefCell::new(Vec::new()),
            bin: binary(),
        }
    }

    /// Like `new`, but drive a private copy of the runtime binary (for tests
    /// that check the binary cannot be modified from a container).
    pub fn with_copied_binary(name: &str) -> Env {
        let mut env = Env::new(name);
        let copy = env.tmp.join("vessel-runtime-copy");
        std::fs::copy(binary(), &copy).unwrap();
        env.bin = copy;
        env
    }

    /// The binary this environment drives.
    pub fn bin(&self) -> &Path {
        &self.bin
    }

    /// A new unique container ID, remembered for cleanup.
    pub fn id(&self, prefix: &str) -> String {
        let id = vessel_testkit::unique_name(prefix);
        self.ids.borrow_mut().push(id.clone());
        id
    }

    /// `vessel-runtime --root <root> <args>`.
    pub fn cmd(&self) -> Command {
        let mut c = Command::new(&self.bin);
        c.arg("--root").arg(&self.root);
        c
    }

    /// Run the runtime and return its output (stdin closed).
    pub fn rt(&self, args: &[&str]) -> Output {
        self.cmd()
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run vessel-runtime")
    }

    /// Run the runtime and require success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.rt(args);
        assert!(
            out.status.success(),
            "vessel-runtime {args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A bundle with a fresh busybox root and a default configuration that
    /// runs `args` without a terminal.
    pub fn bundle(&self, args: &[&str]) -> Bundle {
        let dir = self.tmp.join(vessel_testkit::unique_name("bundle"));
        std::fs::create_dir_all(&dir).unwrap();
        vessel_testkit::busybox_rootfs(&dir.join("rootfs"));
        let out = Command::new(binary())
            .arg("spec")
            .arg("--bundle")
            .arg(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "spec: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut config: Value =
            serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
        config["process"]["terminal"] = json!(false);
        config["process"]["args"] = json!(args);
        config["root"]["readonly"] = json!(false);
        let b = Bundle { dir, config };
        b.save();
        b
    }

    /// `create` a container. Its process inherits the runtime's standard
    /// streams (as with runc), so they go to files here rather than pipes
    /// that would stay open. Returns the exit status and stderr text.
    pub fn create_with(
        &self,
        bundle: &Bundle,
        id: &str,
        extra: &[&str],
    ) -> (std::process::ExitStatus, String) {
        bundle.save();
        let out_path = self.tmp.join(format!("{id}.stdout"));
        let err_path = self.tmp.join(format!("{id}.stderr"));
        let status = self
            .cmd()
            .arg("create")
            .args(extra)
            .args(["--bundle", bundle.dir.to_str().unwrap(), id])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out_path).unwrap())
            .stderr(std::fs::File::create(&err_path).unwrap())
            .status()
            .expect("run vessel-runtime create");
        (
            status,
            std::fs::read_to_string(&err_path).unwrap_or_default(),
        )
    }

    /// `create` and require success.
    pub fn create(&self, bundle: &Bundle, id: &str, extra: &[&str]) {
        let (status, err) = self.create_with(bundle, id, extra);
        assert!(status.success(), "create {id} failed ({status}): {err}");
    }

    /// Run a command whose children may keep the standard streams open
    /// (detached exec, detached run): streams go to files; require success.
    pub fn ok_detached(&self, args: &[&str]) {
        let err_path = self.tmp.join(vessel_testkit::unique_name("stderr"));
        let status = self
            .cmd()
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&err_path).unwrap())
            .status()
            .expect("run vessel-runtime");
        assert!(
            status.success(),
            "vessel-runtime {args:?} failed ({status}): {}",
            std::fs::read_to_string(&err_path).unwrap_or_default()
        );
    }

    /// What the container wrote to its standard output so far.
    pub fn container_stdout(&self, id: &str) -> String {
        std::fs::read_to_string(self.tmp.join(format!("{id}.stdout"))).unwrap_or_default()
    }

    /// Create and start in one go (detached), returning the ID.
    pub fn start(&self, bundle: &Bundle, prefix: &str) -> String {
        let id = self.id(prefix);
        self.create(bundle, &id, &[]);
        self.ok(&["start", &id]);
        id
    }

    /// `run` a bundle in the foreground and return its output.
    pub fn run(&self, bundle: &Bundle) -> Output {
        bundle.save();
        let id = self.id("run");
        self.cmd()
            .args(["run", "--bundle", bundle.dir.to_str().unwrap(), &id])
            .stdin(Stdio::null())
            .output()
            .expect("run vessel-runtime run")
    }

    /// `run` and require exit 0; returns stdout.
    pub fn run_ok(&self, bundle: &Bundle) -> String {
        let out = self.run(bundle);
        assert!(
            out.status.success(),
            "container failed ({}): stdout {} stderr {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The parsed `state` of a container.
    pub fn state(&self, id: &str) -> Value {
        serde_json::from_str(&self.ok(&["state", id])).expect("state is JSON")
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        for id in self.ids.borrow().iter() {
            let _ = self
                .cmd()
                .args(["delete", "--force", id])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// A bundle directory with its configuration (edit `config`, then
/// `save`).
pub struct Bundle {
    pub dir: PathBuf,
    pub config: Value,
}

impl Bundle {
    pub fn save(&self) {
        std::fs::write(
            self.dir.join("config.json"),
            serde_json::to_vec_pretty(&self.config).unwrap(),
        )
        .unwrap();
    }

    pub fn rootfs(&self) -> PathBuf {
        self.dir.join("rootfs")
    }

    /// Add a mount to the configuration.
    pub fn mount(&mut self, m: Value) {
        self.config["mounts"].as_array_mut().unwrap().push(m);
    }

    /// The `sh -c` script form of args.
    pub fn sh(&mut self, script: &str) {
        self.config["process"]["args"] = json!(["sh", "-c", script]);
    }
}

/// stdout as a string.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// stderr as a string.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}
