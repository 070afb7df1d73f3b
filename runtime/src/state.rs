//! Per-container state under the runtime's root directory.
//!
//! Each container has a directory `<root>/<id>/` holding `state.json` (what
//! `create` learned: the init PID and its start time, the bundle, the
//! configuration as created, the cgroup) and, between `create` and `start`,
//! the `exec.fifo` the init process blocks on. The status is never stored: it
//! is derived from the live process, the fifo and the freezer each time, so
//! it cannot go stale when a container exits behind our back.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use oci_spec::runtime::Spec;
use serde::{Deserialize, Serialize};

use crate::cgroups::Hierarchies;
use crate::error::{Error, Result};
use crate::sys;

/// Name of the fifo `start` opens to release the init process.
pub const EXEC_FIFO: &str = "exec.fifo";
const STATE_FILE: &str = "state.json";
const LOCK_FILE: &str = ".lock";

/// A container's lifecycle status, as the OCI runtime spec names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Being created.
    Creating,
    /// Created, waiting for `start`.
    Created,
    /// The user process runs.
    Running,
    /// Frozen by `pause`.
    Paused,
    /// The process exited.
    Stopped,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(match self {
            Status::Creating => "creating",
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Stopped => "stopped",
        })
    }
}

/// What the runtime records about a container.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerState {
    /// The container ID.
    pub id: String,
    /// PID of the container's init process in the runtime's PID namespace.
    pub pid: i32,
    /// Start time of that process, to detect PID reuse.
    pub pid_start: u64,
    /// The bundle directory.
    pub bundle: PathBuf,
    /// The root filesystem.
    pub rootfs: PathBuf,
    /// Creation time, RFC 3339 in UTC.
    pub created: String,
    /// The configuration the container was created with (resources updated
    /// by `update`).
    pub config: Spec,
    /// The cgroup path, relative to each hierarchy's root.
    pub cgroup_path: String,
    /// Whether the container runs without privileges on the host.
    pub rootless: bool,
    /// Whether the init process has a PID namespace of its own: then killing
    /// it kills every process of the container.
    pub own_pid_ns: bool,
}

/// The JSON `state` prints: the OCI state plus runc's extra fields, in
/// runc's shape so that tools parsing runc's output work unchanged.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StateReport {
    /// OCI spec version.
    pub oci_version: String,
    /// Container ID.
    pub id: String,
    /// Init PID (0 once stopped, as runc reports).
    pub pid: i32,
    /// Status.
    pub status: Status,
    /// Bundle path.
    pub bundle: PathBuf,
    /// Root filesystem path.
    pub rootfs: PathBuf,
    /// Creation time.
    pub created: String,
    /// Owner (empty for root, as runc reports).
    pub owner: String,
    /// Annotations from the configuration.
    #[serde(skip_serializing_if = "HashMap::is_empty", default)]
    pub annotations: HashMap<String, String>,
}

/// Check that an ID is safe to use as a directory name.
pub fn validate_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 1024
        && !id.starts_with('.')
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '+'));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidId(id.to_string()))
    }
}

/// The runtime's root directory (`--root`).
#[derive(Debug, Clone)]
pub struct Root {
    dir: PathBuf,
}

impl Root {
    /// Use `dir`, creating it (mode 0700) if needed.
    pub fn open(dir: &Path) -> Result<Root> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| Error::io("create runtime root", dir, e))?;
        Ok(Root {
            dir: dir.to_path_buf(),
        })
    }

    /// The directory of one container.
    pub fn container_dir(&self, id: &str) -> PathBuf {
        self.dir.join(id)
    }

    /// The root directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Reserve a directory for a new container; fails if the ID is taken.
    pub fn reserve(&self, id: &str) -> Result<PathBuf> {
        use std::os::unix::fs::DirBuilderExt;
        validate_id(id)?;
        let dir = self.container_dir(id);
        match std::fs::DirBuilder::new().mode(0o711).create(&dir) {
            Ok(()) => Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                Err(Error::Exists(id.to_string()))
            }
            Err(e) => Err(Error::io("create container directory", &dir, e)),
        }
    }

    /// Load a container's state.
    pub fn load(&self, id: &str) -> Result<ContainerState> {
        validate_id(id)?;
        let path = self.container_dir(id).join(STATE_FILE);
        let data = match std::fs::read(&path) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::NotExist(id.to_string()));
            }
            Err(e) => return Err(Error::io("read state", &path, e)),
        };
        serde_json::from_slice(&data).map_err(|e| Error::Json {
            context: format!("parse {}", path.display()),
            source: e,
        })
    }

    /// Save a container's state atomically (write, then rename).
    pub fn save(&self, state: &ContainerState) -> Result<()> {
        let dir = self.container_dir(&state.id);
        let tmp = dir.join(".state.json.tmp");
        let data = serde_json::to_vec(state).map_err(|e| Error::Json {
            context: "encode state".into(),
            source: e,
        })?;
        let mut f = File::create(&tmp).map_err(|e| Error::io("write state", &tmp, e))?;
        f.write_all(&data)
            .map_err(|e| Error::io("write state", &tmp, e))?;
        drop(f);
        let path = dir.join(STATE_FILE);
        std::fs::rename(&tmp, &path).map_err(|e| Error::io("publish state", &path, e))
    }

    /// Remove a container's directory and everything in it.
    pub fn remove(&self, id: &str) -> Result<()> {
        let dir = self.container_dir(id);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("remove container directory", &dir, e)),
        }
    }

    /// IDs of all containers under this root.
    pub fn list(&self) -> Result<Vec<String>> {
        let mut ids = Vec::new();
        let rd = match std::fs::read_dir(&self.dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ids),
            Err(e) => return Err(Error::io("list runtime root", &self.dir, e)),
        };
        for entry in rd.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if entry.path().join(STATE_FILE).exists() {
                ids.push(name.to_string());
            }
        }
        ids.sort();
        Ok(ids)
    }

    /// Take an exclusive lock on a container, held until the guard drops.
    /// Operations that change a container serialise on it.
    pub fn lock(&self, id: &str) -> Result<Flock<File>> {
        validate_id(id)?;
        let dir = self.container_dir(id);
        if !dir.is_dir() {
            return Err(Error::NotExist(id.to_string()));
        }
        let path = dir.join(LOCK_FILE);
        let f = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io("open lock", &path, e))?;
        Flock::lock(f, FlockArg::LockExclusive)
            .map_err(|(_, e)| Error::sys(format!("lock {}", path.display()), e))
    }
}

impl ContainerState {
    /// Whether the recorded init process still exists (and is not a zombie).
    pub fn init_alive(&self) -> bool {
        if self.pid <= 0 {
            return false;
        }
        match sys::process_start_time(self.pid) {
            Some(t) if t == self.pid_start => {
                !matches!(sys::process_state(self.pid), Some('Z' | 'X') | None)
            }
            _ => false,
        }
    }

    /// The current status, derived from the process, the fifo and the
    /// freezer.
    pub fn status(&self, root: &Root) -> Status {
        self.status_in(root, &Hierarchies::detect())
    }

    /// [`ContainerState::status`] with the cgroup hierarchies the calling
    /// operation already has.
    pub fn status_in(&self, root: &Root, hier: &Hierarchies) -> Status {
        if !self.init_alive() {
            return Status::Stopped;
        }
        if root.container_dir(&self.id).join(EXEC_FIFO).exists() {
            return Status::Created;
        }
        if hier.is_frozen(&self.cgroup_path) {
            return Status::Paused;
        }
        Status::Running
    }

    /// The report `state` and `list` print.
    pub fn report(&self, root: &Root) -> StateReport {
        self.report_in(root, &Hierarchies::detect())
    }

    /// [`ContainerState::report`] with the cgroup hierarchies the calling
    /// operation already has (`list` reports every container with one).
    pub fn report_in(&self, root: &Root, hier: &Hierarchies) -> StateReport {
        let status = self.status_in(root, hier);
        StateReport {
            oci_version: crate::spec::OCI_VERSION.to_string(),
            id: self.id.clone(),
            pid: if status == Status::Stopped {
                0
            } else {
                self.pid
            },
            status,
            bundle: self.bundle.clone(),
            rootfs: self.rootfs.clone(),
            created: self.created.clone(),
            owner: String::new(),
            annotations: crate::spec::annotations(&self.config),
        }
    }

    /// The OCI state document given to hooks on standard input.
    pub fn hook_state(&self, status: Status) -> serde_json::Value {
        serde_json::json!({
            "ociVersion": crate::spec::OCI_VERSION,
            "id": self.id,
            "status": status,
            "pid": self.pid,
            "bundle": self.bundle,
            "annotations": crate::spec::annotations(&self.config),
        })
    }
}

/// The current time as RFC 3339 with nanoseconds, in UTC.
pub fn now_rfc3339() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format_rfc3339(now.as_secs() as i64, now.subsec_nanos())
}

/// Format seconds since the epoch (UTC) as RFC 3339.
#[allow(clippy::many_single_char_names)]
pub fn format_rfc3339(secs: i64, nanos: u32) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (h, m, s) = (rem / 3600, (rem % 3600) / 60, rem % 60);
    // Days since the epoch to a civil date (proleptic Gregorian calendar).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(mo <= 2);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{m:02}:{s:02}.{nanos:09}Z")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        for ok in ["a", "abc-123_x.y+z", "0"] {
            validate_id(ok).unwrap();
        }
        for bad in ["", ".", "..", "a/b", ".hidden", "a b", "x\0"] {
            assert!(validate_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn rfc3339() {
        assert_eq!(format_rfc3339(0, 0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(
            format_rfc3339(1_700_000_000, 5),
            "2023-11-14T22:13:20.000000005Z"
        );
        assert_eq!(
            format_rfc3339(951_782_400, 0),
            "2000-02-29T00:00:00.000000000Z"
        );
    }
}
