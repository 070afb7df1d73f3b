//! Container records: what the daemon knows about each container, kept in
//! `containers/<id>/container.json` (written to a temporary name, synced
//! and renamed, so a crash leaves the old or the new record), and the
//! daemon's on-disk layout.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::error::{Error, Result};
use super::types::{
    ContainerConfig, HealthView, HostConfig, MountPoint, NetworkingConfig, StateView,
};

/// Where the daemon keeps things.
#[derive(Debug, Clone)]
pub struct Paths {
    /// Persistent state (`--root`).
    pub root: PathBuf,
    /// Runtime state that does not survive a reboot (`--exec-root`).
    pub exec_root: PathBuf,
}

impl Paths {
    /// A container's persistent directory.
    pub fn container(&self, id: &str) -> PathBuf {
        self.root.join("containers").join(id)
    }
    /// A container's shim state directory.
    pub fn shim(&self, id: &str) -> PathBuf {
        self.exec_root.join("shims").join(id)
    }
    /// The OCI runtime's state root.
    pub fn runtime_root(&self) -> PathBuf {
        self.exec_root.join("runtime")
    }
    /// Named volumes.
    pub fn volumes(&self) -> PathBuf {
        self.root.join("volumes")
    }
    /// Read-only disk images of layers for microVMs, by diff ID.
    pub fn vm_layers(&self) -> PathBuf {
        self.root.join("vm").join("layers")
    }
    /// The image store.
    pub fn images(&self) -> PathBuf {
        self.root.join("images")
    }
    /// Where removed directories wait for their deletion: `trash` under
    /// the exec root for what lives there, under the root otherwise (so
    /// moving a directory there is a rename on the same file system).
    pub fn trash_for(&self, dir: &Path) -> PathBuf {
        if dir.starts_with(&self.exec_root) {
            self.exec_root.join("trash")
        } else {
            self.root.join("trash")
        }
    }
}

/// A container's lifecycle status, with Docker's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Created,
    Running,
    Paused,
    Restarting,
    Removing,
    Exited,
    Dead,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Restarting => "restarting",
            Status::Removing => "removing",
            Status::Exited => "exited",
            Status::Dead => "dead",
        }
    }

    /// Whether a process exists (running or paused).
    pub fn is_live(self) -> bool {
        matches!(self, Status::Running | Status::Paused)
    }
}

/// The mutable state of a container.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct State {
    pub status: Status,
    pub pid: i32,
    pub exit_code: i32,
    pub error: String,
    pub started_at: String,
    pub finished_at: String,
    pub oom_killed: bool,
    pub health: Option<HealthView>,
}

/// Docker's zero time, as inspect shows it for "never".
pub const ZERO_TIME: &str = "0001-01-01T00:00:00Z";

impl Default for State {
    fn default() -> Self {
        State {
            status: Status::Created,
            pid: 0,
            exit_code: 0,
            error: String::new(),
            started_at: ZERO_TIME.into(),
            finished_at: ZERO_TIME.into(),
            oom_killed: false,
            health: None,
        }
    }
}

impl State {
    /// The inspect view.
    pub fn view(&self) -> StateView {
        StateView {
            status: self.status.as_str().into(),
            running: self.status.is_live(),
            paused: self.status == Status::Paused,
            restarting: self.status == Status::Restarting,
            oom_killed: self.oom_killed,
            dead: self.status == Status::Dead,
            pid: if self.status.is_live() { self.pid } else { 0 },
            exit_code: self.exit_code,
            error: self.error.clone(),
            started_at: self.started_at.clone(),
            finished_at: self.finished_at.clone(),
            health: self.health.clone(),
        }
    }
}

/// Everything the daemon records about a container.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Container {
    pub id: String,
    /// Without the leading slash.
    pub name: String,
    pub created: String,
    /// The image as the user named it.
    pub image: String,
    /// The image ID it was created from.
    pub image_id: String,
    pub config: ContainerConfig,
    pub host_config: HostConfig,
    #[serde(default)]
    pub networking: NetworkingConfig,
    /// The program and its arguments, resolved from the image and the
    /// request at create time.
    pub path: String,
    pub args: Vec<String>,
    pub state: State,
    pub restart_count: u32,
    pub has_been_started: bool,
    /// Stopped by a user (restart policies `always`/`unless-stopped` honour it).
    pub manually_stopped: bool,
    pub mounts: Vec<MountPoint>,
    /// Warnings given at create time.
    #[serde(default)]
    pub warnings: Vec<String>,
}

impl Container {
    /// The container's persistent directory.
    pub fn dir(&self, paths: &Paths) -> PathBuf {
        paths.container(&self.id)
    }

    /// The json-file log.
    pub fn log_path(&self, paths: &Paths) -> PathBuf {
        self.dir(paths).join(format!("{}-json.log", self.id))
    }

    /// Save atomically.
    pub fn save(&self, paths: &Paths) -> Result<()> {
        let dir = self.dir(paths);
        std::fs::create_dir_all(&dir)?;
        let data = serde_json::to_vec_pretty(self).map_err(|e| Error::internal(e.to_string()))?;
        write_atomic(&dir.join("container.json"), &data)
    }

    /// Docker's human status for `ps`: "Up 3 minutes", "Exited (0) 2 seconds ago".
    pub fn human_status(&self, now_secs: i64) -> String {
        let since = |t: &str| now_secs - parse_rfc3339(t).unwrap_or(now_secs);
        match self.state.status {
            Status::Running => format!(
                "Up {}{}",
                human_duration(since(&self.state.started_at)),
                self.health_suffix()
            ),
            Status::Paused => format!(
                "Up {} (Paused)",
                human_duration(since(&self.state.started_at))
            ),
            Status::Restarting => format!(
                "Restarting ({}) {} ago",
                self.state.exit_code,
                human_duration(since(&self.state.finished_at))
            ),
            Status::Exited => {
                if self.has_been_started {
                    format!(
                        "Exited ({}) {} ago",
                        self.state.exit_code,
                        human_duration(since(&self.state.finished_at))
                    )
                } else {
                    "Created".into()
                }
            }
            Status::Created => "Created".into(),
            Status::Removing => "Removal In Progress".into(),
            Status::Dead => "Dead".into(),
        }
    }

    fn health_suffix(&self) -> String {
        match &self.state.health {
            Some(h) if h.status == "starting" => " (health: starting)".into(),
            Some(h) if !h.status.is_empty() && h.status != "none" => format!(" ({})", h.status),
            _ => String::new(),
        }
    }
}

/// Load every container record under the root.
pub fn load_all(paths: &Paths) -> Vec<Container> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(paths.root.join("containers")) else {
        return out;
    };
    for e in rd.flatten() {
        let file = e.path().join("container.json");
        match std::fs::read(&file).map(|d| serde_json::from_slice::<Container>(&d)) {
            Ok(Ok(c)) => out.push(c),
            Ok(Err(err)) => {
                tracing::warn!(file = %file.display(), error = %err, "skipping corrupt container record");
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                // A create that died before writing its record.
                let _ = std::fs::remove_dir_all(e.path());
            }
            Err(err) => {
                tracing::warn!(file = %file.display(), error = %err, "cannot read container record");
            }
        }
    }
    out
}

/// Write a file so that a crash leaves either the old or the new content.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// Like [`write_atomic`] without the fsync: a crash of the daemon leaves
/// the old or the new content, a crash of the machine may leave neither.
/// For files written anew before each use.
pub fn write_replace(path: &Path, data: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, data)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// A new 64-hex-digit container ID.
pub fn new_id() -> String {
    let bytes: [u8; 32] = rand::random();
    hex::encode(bytes)
}

const LEFT: &[&str] = &[
    "amber", "bold", "brave", "calm", "clever", "cosy", "crisp", "eager", "fair", "fond", "gentle",
    "glad", "golden", "happy", "jolly", "keen", "kind", "lively", "lucid", "merry", "mellow",
    "nimble", "noble", "proud", "quick", "quiet", "rapid", "serene", "sharp", "shy", "silent",
    "steady", "sunny", "swift", "tidy", "vivid", "warm", "wise", "witty", "young",
];
const RIGHT: &[&str] = &[
    "anchor", "barge", "beacon", "brig", "buoy", "canoe", "cargo", "clipper", "compass", "cutter",
    "dinghy", "dock", "ferry", "galley", "harbor", "helm", "hull", "keel", "ketch", "lagoon",
    "lantern", "mast", "oar", "pier", "pilot", "port", "raft", "reef", "rudder", "sail",
    "schooner", "sloop", "skiff", "tide", "tugboat", "voyage", "wake", "wharf", "yacht", "yawl",
];

/// A random readable name like `swift_schooner`.
pub fn random_name() -> String {
    let l = LEFT[rand::random_range(0..LEFT.len())];
    let r = RIGHT[rand::random_range(0..RIGHT.len())];
    format!("{l}_{r}")
}

/// Check a user-given container name (Docker's rule).
pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// Days from 1970-01-01 to a date of the proleptic Gregorian calendar.
pub fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Seconds since the epoch of an RFC 3339 UTC time ("...Z").
pub fn parse_rfc3339(t: &str) -> Option<i64> {
    let b = t.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[10] != b'T' {
        return None;
    }
    let num = |s: &str| s.parse::<i64>().ok();
    let (year, month, day) = (num(&t[0..4])?, num(&t[5..7])?, num(&t[8..10])?);
    let (hour, minute, second) = (num(&t[11..13])?, num(&t[14..16])?, num(&t[17..19])?);
    Some(days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second)
}

/// Docker's wording for a duration ("Less than a second", "3 minutes", "About an hour").
pub fn human_duration(secs: i64) -> String {
    let s = secs.max(0);
    if s < 1 {
        return "Less than a second".into();
    }
    if s == 1 {
        return "1 second".into();
    }
    if s < 60 {
        return format!("{s} seconds");
    }
    let m = s / 60;
    if m == 1 {
        return "About a minute".into();
    }
    if m < 60 {
        return format!("{m} minutes");
    }
    let h = (m as f64 / 60.0).round() as i64;
    if h == 1 {
        return "About an hour".into();
    }
    if h < 48 {
        return format!("{h} hours");
    }
    if h < 24 * 7 * 2 {
        return format!("{} days", h / 24);
    }
    if h < 24 * 30 * 2 {
        return format!("{} weeks", h / 24 / 7);
    }
    if h < 24 * 365 * 2 {
        return format!("{} months", h / 24 / 30);
    }
    format!("{} years", h / 24 / 365)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_ids() {
        assert_eq!(new_id().len(), 64);
        assert!(valid_name(&random_name()));
        assert!(valid_name("web-1.a_b"));
        assert!(!valid_name("-x") && !valid_name("") && !valid_name("a b") && !valid_name("a/b"));
    }

    #[test]
    fn rfc3339_round_trip() {
        let t = vessel_runtime::state::format_rfc3339(1_700_000_123, 5);
        assert_eq!(parse_rfc3339(&t), Some(1_700_000_123));
        assert_eq!(parse_rfc3339(ZERO_TIME).map(|s| s < 0), Some(true));
    }

    #[test]
    fn durations_read_like_docker() {
        assert_eq!(human_duration(0), "Less than a second");
        assert_eq!(human_duration(5), "5 seconds");
        assert_eq!(human_duration(90), "About a minute");
        assert_eq!(human_duration(600), "10 minutes");
        assert_eq!(human_duration(3600), "About an hour");
        assert_eq!(human_duration(3 * 86_400), "3 days");
    }
}
