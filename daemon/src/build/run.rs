//! Running one RUN step as a real container: an OCI bundle over a rootfs
//! the executor has already mounted (the parent's layers plus a fresh
//! upper directory), run to completion by the `vessel-runtime` binary with
//! its output streamed line by line.
//!
//! The container gets Docker's default capabilities, seccomp profile,
//! device rules and mounts, its own
//! pid, ipc, uts, cgroup and mount namespaces, and a network namespace with
//! only loopback unless the step asked for the host network, and the
//! build's resource limits (cgroup memory and cpu, rlimits, /dev/shm size)
//! through the same runtime as every container. This module does
//! not mount the rootfs or turn it into a layer.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{Value, json};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {op}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("starting the runtime {0}")]
    Spawn(PathBuf, #[source] std::io::Error),
    #[error("the default seccomp profile")]
    Seccomp(#[source] vessel_runtime::seccomp::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A mount for the container, in OCI terms.
#[derive(Debug, Clone)]
pub struct ExtraMount {
    pub destination: String,
    pub kind: &'static str,
    pub source: PathBuf,
    pub options: Vec<String>,
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Spec {
    pub id: String,
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    pub host_network: bool,
    pub mounts: Vec<ExtraMount>,
    pub limits: Limits,
}

/// Resource limits every RUN container of a build gets (`docker build
/// --memory`, `--cpu-shares`, `--shm-size`, `--ulimit`, ...), already in
/// OCI form.
#[derive(Debug, Clone, Default)]
pub struct Limits {
    /// `linux.resources` without device rules: memory, cpu, pids.
    pub resources: Option<Value>,
    /// `process.rlimits`.
    pub rlimits: Vec<Value>,
    /// Size of /dev/shm in bytes; 0 is Docker's default of 64 MiB.
    pub shm_size: u64,
}

/// Find the `vessel-runtime` binary: next to the running daemon, else on
/// PATH.
pub fn find_runtime() -> PathBuf {
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
    {
        for candidate in [dir.join("vessel-runtime"), dir.join("../vessel-runtime")] {
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    PathBuf::from("vessel-runtime")
}

fn config(spec: &Spec, rootfs: &Path) -> Result<Value> {
    let caps: Vec<&str> = crate::engine::spec::DEFAULT_CAPS.to_vec();
    let cap_set: Vec<caps::Capability> = caps.iter().filter_map(|c| c.parse().ok()).collect();
    let profile =
        vessel_runtime::seccomp::default_profile(cap_set, vessel_runtime::seccomp::native_arch())
            .map_err(Error::Seccomp)?;
    let seccomp = serde_json::to_value(profile).expect("a seccomp profile serialises");
    let mut namespaces = vec![
        json!({"type": "mount"}),
        json!({"type": "pid"}),
        json!({"type": "ipc"}),
        json!({"type": "uts"}),
        json!({"type": "cgroup"}),
    ];
    if !spec.host_network {
        namespaces.push(json!({"type": "network"}));
    }
    let shm_size = if spec.limits.shm_size > 0 {
        spec.limits.shm_size
    } else {
        64 << 20
    };
    let mut resources = spec.limits.resources.clone().unwrap_or_else(|| json!({}));
    resources["devices"] = json!([{"allow": false, "access": "rwm"}]);
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]}),
        json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["ro", "nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", format!("size={shm_size}")]}),
    ];
    for m in &spec.mounts {
        mounts.push(json!({
            "destination": m.destination,
            "type": m.kind,
            "source": m.source,
            "options": m.options,
        }));
    }
    Ok(json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": spec.uid, "gid": spec.gid, "additionalGids": spec.additional_gids},
            "args": spec.args,
            "env": spec.env,
            "cwd": spec.cwd,
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "noNewPrivileges": false,
            "rlimits": spec.limits.rlimits,
        },
        "root": {"path": rootfs, "readonly": false},
        "hostname": "buildkitsandbox",
        "mounts": mounts,
        "linux": {
            "namespaces": namespaces,
            // A Dockerfile is untrusted input: RUN gets the same defences
            // as a container (no device access but the runtime's defaults,
            // Docker's seccomp profile for these capabilities).
            "resources": resources,
            "seccomp": seccomp,
            "maskedPaths": ["/proc/asound", "/proc/acpi", "/proc/kcore", "/proc/keys",
                "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats",
                "/proc/sched_debug", "/proc/scsi", "/sys/firmware"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys",
                "/proc/sysrq-trigger"],
        },
    }))
}

/// Run the container to completion; `output` gets each line it writes to
/// stdout or stderr. Returns the exit code.
pub fn run(
    runtime: &Path,
    state_root: &Path,
    bundle: &Path,
    rootfs: &Path,
    spec: &Spec,
    output: &(dyn Fn(String) + Sync),
) -> Result<i32> {
    std::fs::create_dir_all(bundle).map_err(|source| Error::Io {
        op: "create bundle",
        path: bundle.to_path_buf(),
        source,
    })?;
    let cfg = serde_json::to_vec(&config(spec, rootfs)?).expect("a JSON value serialises");
    let cfg_path = bundle.join("config.json");
    std::fs::write(&cfg_path, cfg).map_err(|source| Error::Io {
        op: "write",
        path: cfg_path.clone(),
        source,
    })?;
    let mut child = Command::new(runtime)
        .arg("--root")
        .arg(state_root)
        .arg("run")
        .arg("--bundle")
        .arg(bundle)
        .arg(&spec.id)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::Spawn(runtime.to_path_buf(), e))?;
    let stdout = child.stdout.take().expect("stdout is piped");
    let stderr = child.stderr.take().expect("stderr is piped");
    std::thread::scope(|s| {
        s.spawn(|| pump(stdout, output));
        pump(stderr, output);
    });
    let status = child
        .wait()
        .map_err(|e| Error::Spawn(runtime.to_path_buf(), e))?;
    Ok(status.code().unwrap_or(128))
}

fn pump(r: impl std::io::Read, output: &(dyn Fn(String) + Sync)) {
    let mut r = BufReader::new(r);
    let mut line = Vec::new();
    loop {
        line.clear();
        match r.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => output(String::from_utf8_lossy(&line).into_owned()),
        }
    }
}
