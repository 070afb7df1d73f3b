//! Control groups for containers: creation, limits, freezing, statistics and
//! removal, on cgroup v1, hybrid (v1 controllers plus a cgroup2 hierarchy at
//! `/sys/fs/cgroup/unified`) and pure v2 hosts.
//!
//! Most controllers go through `cgroups-rs`. This module adds what it lacks:
//! device rules with wildcards as the OCI spec writes them, the hybrid
//! layout's cgroup2 side (where this kind of host keeps `hugetlb`), the
//! `unified` key/value map, and cheap status probes that do not need a full
//! manager. It knows nothing about namespaces or processes beyond PIDs.
//!
//! The host's hierarchies are described once per operation by a
//! [`Hierarchies`] value (one read of `/proc/self/mountinfo`, shared by the
//! cgroup, its status and its PIDs). cgroups-rs's controllers do the file
//! work; its manager is not used, as it reads the mounts again whenever one
//! is made.

mod resources;

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use cgroups_rs::CgroupPid;
use cgroups_rs::fs::blkio::BlkIoController;
use cgroups_rs::fs::cpu::CpuController;
use cgroups_rs::fs::cpuacct::CpuAcctController;
use cgroups_rs::fs::freezer::FreezerController;
use cgroups_rs::fs::hugetlb::HugeTlbController;
use cgroups_rs::fs::memory::MemController;
use cgroups_rs::fs::pid::PidController;
use cgroups_rs::fs::{Controllers, Hierarchy, MaxValue, Subsystem};
use oci_spec::runtime::{LinuxDevice, LinuxDeviceCgroup, LinuxDeviceType, LinuxResources};
use serde::Serialize;

use crate::error::{Error, Result};

const CGROUP_ROOT: &str = "/sys/fs/cgroup";
const HYBRID_UNIFIED: &str = "/sys/fs/cgroup/unified";
const MOUNTINFO: &str = "/proc/self/mountinfo";

/// A failure inside cgroups-rs, worded as cgroups-rs's manager words it, so
/// that messages read the same whether or not the manager did the work.
#[derive(Debug)]
enum FsFailure {
    /// A controller file could not be read or written.
    Fs(cgroups_rs::fs::error::Error),
    /// The host has no hierarchy with the controller a setting needs.
    NoController,
    /// A resource value the kernel would refuse.
    Invalid,
}

impl std::fmt::Display for FsFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FsFailure::Fs(e) => write!(f, "cgroupfs error: {e}"),
            FsFailure::NoController => f.write_str("cgroupfs error: subsystems is empty"),
            FsFailure::Invalid => f.write_str("invalid linux resource"),
        }
    }
}

impl From<cgroups_rs::fs::error::Error> for FsFailure {
    fn from(e: cgroups_rs::fs::error::Error) -> FsFailure {
        FsFailure::Fs(e)
    }
}

/// How the host's cgroups are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    /// Only v1 hierarchies.
    V1,
    /// v1 hierarchies plus a cgroup2 hierarchy at /sys/fs/cgroup/unified.
    Hybrid,
    /// One cgroup2 hierarchy at /sys/fs/cgroup.
    V2,
}

/// Detect the host's layout.
pub fn layout() -> Layout {
    if is_cgroup2(Path::new(CGROUP_ROOT)) {
        Layout::V2
    } else if is_cgroup2(Path::new(HYBRID_UNIFIED)) {
        Layout::Hybrid
    } else {
        Layout::V1
    }
}

fn is_cgroup2(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
}

/// Where a container's cgroup goes, relative to each hierarchy's root.
///
/// An absolute `cgroupsPath` is used as is. A relative one is placed below
/// the runtime's own cgroup (as runc does). Without one, the container gets
/// `/vessel/<id>`. systemd-style `slice:prefix:name` paths are refused: this
/// runtime manages cgroupfs directly.
pub fn resolve_path(spec_path: Option<&Path>, id: &str) -> Result<String> {
    let Some(p) = spec_path.filter(|p| !p.as_os_str().is_empty()) else {
        return Ok(format!("/vessel/{id}"));
    };
    let s = p.to_string_lossy();
    if !s.starts_with('/') && s.split(':').count() == 3 {
        return Err(Error::Unsupported(format!(
            "cgroupsPath {s:?} is a systemd unit path; the systemd cgroup driver is not supported, use a cgroupfs path"
        )));
    }
    let joined = if p.is_absolute() {
        p.to_path_buf()
    } else {
        Path::new(&own_cgroup()).join(p)
    };
    // Normalise away "." and refuse ".." so the path cannot leave the tree.
    let mut out = PathBuf::from("/");
    for c in joined.components() {
        match c {
            std::path::Component::Normal(n) => out.push(n),
            std::path::Component::ParentDir => {
                return Err(Error::Config(format!(
                    "cgroupsPath {s:?} must not contain '..'"
                )));
            }
            _ => {}
        }
    }
    Ok(out.to_string_lossy().into_owned())
}

/// The runtime's own cgroup: the v2 path, or on v1 the memory controller's
/// path (used as the parent of relative cgroup paths).
fn own_cgroup() -> String {
    let data = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let mut v2 = None;
    for line in data.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, ctrls, path) = (parts.next(), parts.next(), parts.next());
        match (ctrls, path) {
            (Some(c), Some(p)) if c.split(',').any(|x| x == "memory") => return p.to_string(),
            (Some(""), Some(p)) => v2 = Some(p.to_string()),
            _ => {}
        }
    }
    v2.unwrap_or_else(|| "/".to_string())
}

/// A container's cgroup.
pub struct Cgroup {
    path: String,
    hier: Hierarchies,
    cg: cgroups_rs::fs::Cgroup,
}

impl Cgroup {
    /// Refer to the cgroup at `path` (not created until [`Cgroup::create`]
    /// or [`Cgroup::apply`]), in the hierarchies `hier` describes.
    pub fn open(path: &str, hier: &Hierarchies) -> Result<Cgroup> {
        let rel = path.trim_start_matches('/');
        Ok(Cgroup {
            path: path.to_string(),
            hier: hier.clone(),
            cg: cgroups_rs::fs::Cgroup::load(hier.fs_hierarchy(), rel),
        })
    }

    /// The path relative to each hierarchy's root.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Create the cgroup in every hierarchy without moving anything into
    /// it, so that its limits can be set, and the container can bind its
    /// directories, before the first process joins.
    pub fn create(&mut self) -> Result<()> {
        self.cg
            .create()
            .map_err(|e| Error::Cgroup(format!("{}: create: {e}", self.path)))?;
        if self.layout() == Layout::Hybrid {
            create_v2_dir(Path::new(HYBRID_UNIFIED), &self.path)?;
        }
        Ok(())
    }

    /// Create the cgroup in every hierarchy (if [`Cgroup::create`] has not)
    /// and move `pid` into it.
    pub fn apply(&mut self, pid: i32) -> Result<()> {
        let added = if self.cg.exists() {
            Ok(())
        } else {
            self.cg.create()
        }
        .and_then(|()| self.cg.add_task_by_tgid(CgroupPid::from(pid as u64)));
        added.map_err(|e| {
            Error::Cgroup(format!(
                "{}: add process {pid}: {}",
                self.path,
                FsFailure::Fs(e)
            ))
        })?;
        if self.layout() == Layout::Hybrid {
            let dir = self.unified_dir();
            if !dir.is_dir() {
                create_v2_dir(Path::new(HYBRID_UNIFIED), &self.path)?;
            }
            write_file(&dir.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    /// Move an additional process (an exec'd one) into the cgroup.
    pub fn add(&mut self, pid: i32) -> Result<()> {
        self.apply(pid)
    }

    /// Apply resource limits. `devices` are the device nodes the container
    /// gets; they are allowed in the device controller after the spec's own
    /// rules, together with the nodes every container needs.
    pub fn set(&mut self, res: &LinuxResources, devices: &[LinuxDevice]) -> Result<()> {
        let mut generic = res.clone();
        generic.set_devices(None);
        generic.set_unified(None);
        if self.layout() == Layout::Hybrid {
            generic.set_hugepage_limits(None);
        }
        resources::apply(&self.cg, &generic)
            .map_err(|e| Error::Cgroup(format!("{}: set resources: {e}", self.path)))?;
        self.set_devices(res.devices().as_deref().unwrap_or_default(), devices)?;
        if self.layout() == Layout::Hybrid {
            if let Some(limits) = res.hugepage_limits() {
                let dir = self.unified_dir();
                for l in limits {
                    let file = dir.join(format!("hugetlb.{}.max", l.page_size()));
                    if file.exists() {
                        write_file(&file, &l.limit().to_string())?;
                    } else {
                        tracing::warn!(page_size = %l.page_size(), "hugetlb page size not supported here");
                    }
                }
            }
        }
        if let Some(unified) = res.unified() {
            let dir = match self.layout() {
                Layout::V2 => Path::new(CGROUP_ROOT).join(self.path.trim_start_matches('/')),
                Layout::Hybrid => self.unified_dir(),
                Layout::V1 => {
                    return Err(Error::Unsupported(
                        "linux.resources.unified needs a cgroup2 hierarchy".into(),
                    ));
                }
            };
            for (key, value) in unified {
                if key.contains('/') || key.starts_with('.') {
                    return Err(Error::Config(format!(
                        "unified key {key:?} is not a file name"
                    )));
                }
                write_file(&dir.join(key), value)?;
            }
        }
        Ok(())
    }

    fn set_devices(&self, rules: &[LinuxDeviceCgroup], devices: &[LinuxDevice]) -> Result<()> {
        if self.layout() == Layout::V2 {
            // No devices controller on cgroup2: the same rules become an
            // eBPF program attached to the cgroup.
            let mut all = rules.to_vec();
            all.extend(implicit_device_rules(devices));
            let dir = Path::new(CGROUP_ROOT).join(self.path.trim_start_matches('/'));
            return crate::devfilter::install(&all, &dir);
        }
        let Some(mount) = self.hier.v1_mount("devices") else {
            return Ok(());
        };
        let dir = mount.join(self.path.trim_start_matches('/'));
        let mut all = rules.to_vec();
        all.extend(implicit_device_rules(devices));
        for rule in &all {
            let file = if rule.allow() {
                "devices.allow"
            } else {
                "devices.deny"
            };
            write_file(&dir.join(file), &device_rule_line(rule))?;
        }
        Ok(())
    }

    fn unified_dir(&self) -> PathBuf {
        Path::new(HYBRID_UNIFIED).join(self.path.trim_start_matches('/'))
    }

    fn freezer(&self) -> std::result::Result<&FreezerController, FsFailure> {
        self.cg
            .controller_of::<FreezerController>()
            .ok_or(FsFailure::NoController)
    }

    /// Freeze every process in the cgroup.
    pub fn freeze(&self) -> Result<()> {
        self.freezer()
            .and_then(|f| f.freeze().map_err(FsFailure::Fs))
            .map_err(|e| Error::Cgroup(format!("{}: freeze: {e}", self.path)))
    }

    /// Thaw a frozen cgroup.
    pub fn thaw(&self) -> Result<()> {
        self.freezer()
            .and_then(|f| f.thaw().map_err(FsFailure::Fs))
            .map_err(|e| Error::Cgroup(format!("{}: thaw: {e}", self.path)))
    }

    /// PIDs of all processes in the cgroup.
    pub fn pids(&self) -> Vec<i32> {
        self.hier.pids_of(&self.path)
    }

    /// Remove the cgroup from every hierarchy. Processes must be gone.
    pub fn destroy(&mut self) -> Result<()> {
        let mut errors = Vec::new();
        if let Err(e) = self.remove_dirs() {
            errors.push(format!("{}", FsFailure::Fs(e)));
        }
        if self.layout() == Layout::Hybrid {
            let dir = self.unified_dir();
            if let Err(e) = std::fs::remove_dir(&dir) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    errors.push(format!("{}: {e}", dir.display()));
                }
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(Error::Cgroup(format!(
                "{}: remove: {}",
                self.path,
                errors.join("; ")
            )))
        }
    }

    /// The cgroups-rs part of [`Cgroup::destroy`]: move any process left
    /// to the root cgroup (a cgroup with members cannot be removed), then
    /// remove the directories.
    fn remove_dirs(&self) -> cgroups_rs::fs::error::Result<()> {
        if !self.cg.exists() {
            return Ok(());
        }
        // Errors are ignored: what matters is whether the removal works.
        if self.cg.v2() {
            for tgid in self.cg.procs() {
                let _ = self.cg.remove_task_by_tgid(tgid);
            }
        } else {
            for tid in self.cg.tasks() {
                let _ = self.cg.remove_task(tid);
            }
        }
        self.cg.delete()
    }

    /// Resource usage, in the shape `events --stats` prints. A controller
    /// the host lacks, or a file it cannot read, leaves its figures at 0.
    pub fn stats(&self) -> Stats {
        let mut out = Stats::default();
        if let Some(c) = self.cg.controller_of::<CpuAcctController>() {
            let acct = c.cpuacct();
            out.cpu.usage = CpuUsage {
                total: acct.usage,
                percpu: parse_percpu(&acct.usage_percpu),
                kernel: kv(&acct.stat, "system"),
                user: kv(&acct.stat, "user"),
            };
        }
        if let Some(c) = self.cg.controller_of::<CpuController>() {
            let stat = c.cpu().stat;
            out.cpu.throttling = Throttling {
                periods: kv(&stat, "nr_periods"),
                throttled_periods: kv(&stat, "nr_throttled"),
                throttled_time: kv(&stat, "throttled_time"),
            };
        }
        let mut raw = cgroups_rs::fs::memory::MemoryStat::default();
        if let Some(c) = self.cg.controller_of::<MemController>() {
            let m = c.memory_stat();
            let entry = |limit: i64, usage, max, failcnt| MemoryEntry {
                limit: limit.max(0) as u64,
                usage,
                max,
                failcnt,
            };
            out.memory.usage = entry(
                m.limit_in_bytes,
                m.usage_in_bytes,
                m.max_usage_in_bytes,
                m.fail_cnt,
            );
            let sw = c.memswap();
            out.memory.swap = entry(
                sw.limit_in_bytes,
                sw.usage_in_bytes,
                sw.max_usage_in_bytes,
                sw.fail_cnt,
            );
            let k = c.kmem_stat();
            out.memory.kernel = entry(
                k.limit_in_bytes,
                k.usage_in_bytes,
                k.max_usage_in_bytes,
                k.fail_cnt,
            );
            raw = m.stat;
        }
        out.memory.cache = raw.cache;
        for (name, value) in [
            ("rss", raw.rss),
            ("cache", raw.cache),
            ("shmem", raw.shmem),
            ("mapped_file", raw.mapped_file),
            ("active_anon", raw.active_anon),
            ("inactive_anon", raw.inactive_anon),
            ("active_file", raw.active_file),
            ("inactive_file", raw.inactive_file),
            ("pgfault", raw.pgfault),
            ("pgmajfault", raw.pgmajfault),
        ] {
            out.memory.raw.insert(name.into(), value);
        }
        if let Some(c) = self.cg.controller_of::<PidController>() {
            let limit = match c.get_pid_max() {
                Ok(MaxValue::Value(l)) => l.max(0) as u64,
                Ok(MaxValue::Max) | Err(_) => 0,
            };
            out.pids = PidsStats {
                current: c.get_pid_current().unwrap_or_default(),
                limit,
            };
        }
        if let Some(c) = self.cg.controller_of::<BlkIoController>() {
            let b = c.blkio();
            if self.cg.v2() {
                out.blkio.io_service_bytes_recursive = b
                    .io_stat
                    .iter()
                    .flat_map(|s| {
                        [
                            ("read", s.rbytes),
                            ("write", s.wbytes),
                            ("rios", s.rios),
                            ("wios", s.wios),
                            ("dbytes", s.dbytes),
                            ("dios", s.dios),
                        ]
                        .map(|(op, value)| BlkioEntry {
                            major: s.major as u64,
                            minor: s.minor as u64,
                            op: op.into(),
                            value,
                        })
                    })
                    .collect();
            } else if b.io_serviced_recursive.is_empty() {
                // No recursive figures from the scheduler (none runs on
                // this device): the throttling layer counts too.
                out.blkio.io_service_bytes_recursive = blkio_entries(&b.throttle.io_service_bytes);
                out.blkio.io_serviced_recursive = blkio_entries(&b.throttle.io_serviced);
            } else {
                out.blkio.io_service_bytes_recursive = blkio_entries(&b.io_service_bytes_recursive);
                out.blkio.io_serviced_recursive = blkio_entries(&b.io_serviced_recursive);
            }
        }
        if let Some(c) = self.cg.controller_of::<HugeTlbController>() {
            for size in c.get_sizes() {
                let stats = HugetlbStats {
                    usage: c.usage_in_bytes(&size).unwrap_or_default(),
                    max: c.max_usage_in_bytes(&size).unwrap_or_default(),
                    failcnt: c.failcnt(&size).unwrap_or_default(),
                };
                out.hugetlb.insert(size, stats);
            }
        }
        if self.layout() == Layout::Hybrid {
            let dir = self.unified_dir();
            for size in hugetlb_sizes(&dir) {
                let read = |f: &str| read_u64(&dir.join(format!("hugetlb.{size}.{f}")));
                out.hugetlb.insert(
                    size.clone(),
                    HugetlbStats {
                        usage: read("current"),
                        max: 0,
                        failcnt: read_kv(&dir.join(format!("hugetlb.{size}.events")), "max"),
                    },
                );
            }
        }
        out
    }

    /// A file of the memory controller (for OOM notification).
    pub fn memory_file(&self, name: &str) -> Option<PathBuf> {
        match self.layout() {
            Layout::V2 => Some(
                Path::new(CGROUP_ROOT)
                    .join(self.path.trim_start_matches('/'))
                    .join(name),
            ),
            _ => self
                .hier
                .v1_mount("memory")
                .map(|m| m.join(self.path.trim_start_matches('/')).join(name)),
        }
    }

    /// The host's layout as seen when this cgroup was opened.
    pub fn layout(&self) -> Layout {
        self.hier.layout()
    }
}

/// The device nodes every container may use (null, zero, full, random,
/// urandom, tty, console, ptmx and the pty slaves), creating any device node
/// (mknod, not use), and each device the configuration creates.
fn implicit_device_rules(devices: &[LinuxDevice]) -> Vec<LinuxDeviceCgroup> {
    let rule = |typ: LinuxDeviceType, major: Option<i64>, minor: Option<i64>, access: &str| {
        let mut r = LinuxDeviceCgroup::default();
        r.set_allow(true);
        r.set_typ(Some(typ));
        r.set_major(major);
        r.set_minor(minor);
        r.set_access(Some(access.to_string()));
        r
    };
    let c = LinuxDeviceType::C;
    let mut out = vec![
        rule(c, None, None, "m"),
        rule(LinuxDeviceType::B, None, None, "m"),
        rule(c, Some(1), Some(3), "rwm"),
        rule(c, Some(1), Some(5), "rwm"),
        rule(c, Some(1), Some(7), "rwm"),
        rule(c, Some(1), Some(8), "rwm"),
        rule(c, Some(1), Some(9), "rwm"),
        rule(c, Some(5), Some(0), "rwm"),
        rule(c, Some(5), Some(1), "rwm"),
        rule(c, Some(5), Some(2), "rwm"),
        rule(c, Some(136), None, "rwm"),
    ];
    for d in devices {
        let typ = match d.typ() {
            LinuxDeviceType::B => LinuxDeviceType::B,
            LinuxDeviceType::P => continue,
            _ => LinuxDeviceType::C,
        };
        out.push(rule(typ, Some(d.major()), Some(d.minor()), "rwm"));
    }
    out
}

/// One line for devices.allow / devices.deny: "c 1:3 rwm", "a *:* rwm".
fn device_rule_line(rule: &LinuxDeviceCgroup) -> String {
    let typ = match rule.typ() {
        Some(LinuxDeviceType::C | LinuxDeviceType::U) => 'c',
        Some(LinuxDeviceType::B) => 'b',
        _ => 'a',
    };
    let num = |n: Option<i64>| {
        n.filter(|n| *n >= 0)
            .map_or_else(|| "*".to_string(), |n| n.to_string())
    };
    let access = rule.access().clone().unwrap_or_else(|| "rwm".to_string());
    let mut line = String::new();
    let _ = write!(
        line,
        "{typ} {}:{} {access}",
        num(rule.major()),
        num(rule.minor())
    );
    line
}

/// Create `rel` below a cgroup2 root, enabling every available controller
/// in each ancestor so that the leaf gets them too.
fn create_v2_dir(root: &Path, rel: &str) -> Result<()> {
    let mut dir = root.to_path_buf();
    let parts: Vec<&str> = rel.split('/').filter(|p| !p.is_empty()).collect();
    for part in parts {
        let controllers =
            std::fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
        let enable = controllers
            .split_whitespace()
            .fold(String::new(), |mut acc, c| {
                let _ = write!(acc, "+{c} ");
                acc
            });
        if !enable.is_empty() {
            // Best effort: a controller that cannot be delegated here is simply
            // not available to the container.
            let _ = write_file(&dir.join("cgroup.subtree_control"), enable.trim_end());
        }
        dir.push(part);
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(Error::io("create cgroup", &dir, e)),
        }
    }
    Ok(())
}

fn write_file(path: &Path, value: &str) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| Error::io("open cgroup file", path, e))?;
    f.write_all(value.as_bytes())
        .map_err(|e| Error::io("write cgroup file", path, e))
}

fn read_u64(path: &Path) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

fn read_kv(path: &Path, key: &str) -> u64 {
    std::fs::read_to_string(path).map_or(0, |s| kv(&s, key))
}

/// The number after `key` in "key value" lines (0 if missing).
fn kv(text: &str, key: &str) -> u64 {
    text.lines()
        .find_map(|l| {
            let mut it = l.split_whitespace();
            (it.next() == Some(key)).then(|| it.next().and_then(|v| v.parse().ok()))?
        })
        .unwrap_or(0)
}

/// v1 blkio counters per device, one entry per operation.
fn blkio_entries(services: &[cgroups_rs::fs::blkio::IoService]) -> Vec<BlkioEntry> {
    services
        .iter()
        .flat_map(|s| {
            [
                ("read", s.read),
                ("write", s.write),
                ("sync", s.sync),
                ("async", s.r#async),
                ("total", s.total),
            ]
            .map(|(op, value)| BlkioEntry {
                major: s.major as u64,
                minor: s.minor as u64,
                op: op.into(),
                value,
            })
        })
        .collect()
}

fn hugetlb_sizes(dir: &Path) -> Vec<String> {
    let mut sizes: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let size = name.strip_prefix("hugetlb.")?.strip_suffix(".max")?;
            (!size.contains('.')).then(|| size.to_string())
        })
        .collect();
    sizes.sort();
    sizes
}

/// The host's cgroup hierarchies as one operation sees them: the layout and,
/// on v1 and hybrid hosts, the mount points of the v1 hierarchies and of
/// the cgroup2 one.
///
/// The layout (from `statfs`) and the mounts (from `/proc/self/mountinfo`)
/// are looked up the first time something needs them, and then shared by
/// everything the operation does with this value or its clones (the
/// container's [`Cgroup`], its status, its PIDs, the container process's
/// view of its cgroups), so one operation parses the mounts once. A pure v2
/// host never reads them.
/// Controllers can be moved between hierarchies while containers run, so a
/// value is meant to live for one operation, not for a process's lifetime.
#[derive(Debug, Clone)]
pub struct Hierarchies {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    layout: OnceLock<Layout>,
    mounts: OnceLock<Vec<Mounted>>,
}

/// One mounted hierarchy, v1 or cgroup2.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Mounted {
    /// Whether it is a cgroup2 hierarchy (a hybrid host's `unified`).
    v2: bool,
    /// Where it is mounted, as mountinfo writes it.
    point: PathBuf,
    /// The cgroup at the mount point, relative to the hierarchy's root
    /// (`/` unless a sub-tree is mounted).
    root: PathBuf,
    /// Superblock options: the controllers bound to it (and `rw`, `name=...`).
    options: Vec<String>,
}

impl Hierarchies {
    /// The host's hierarchies. Nothing is looked at until it is needed:
    /// the layout, then the mounts.
    pub fn detect() -> Hierarchies {
        Hierarchies {
            shared: Arc::new(Shared {
                layout: OnceLock::new(),
                mounts: OnceLock::new(),
            }),
        }
    }

    /// The hierarchies described by a `mountinfo` text, on a host of the
    /// given layout.
    pub fn from_mountinfo(layout: Layout, mountinfo: &str) -> Hierarchies {
        Hierarchies {
            shared: Arc::new(Shared {
                layout: OnceLock::from(layout),
                mounts: OnceLock::from(parse_cgroup_mounts(mountinfo)),
            }),
        }
    }

    /// The host's layout.
    pub fn layout(&self) -> Layout {
        *self.shared.layout.get_or_init(layout)
    }

    /// Every mounted hierarchy, in mountinfo's order (none on a pure v2
    /// host, whose one hierarchy is at /sys/fs/cgroup).
    fn mounts(&self) -> &[Mounted] {
        if self.layout() == Layout::V2 {
            return &[];
        }
        self.shared.mounts.get_or_init(|| {
            let text = std::fs::read_to_string(MOUNTINFO).unwrap_or_else(|e| {
                tracing::warn!(error = %e, "read {MOUNTINFO}");
                String::new()
            });
            parse_cgroup_mounts(&text)
        })
    }

    fn v1_mounts(&self) -> impl Iterator<Item = &Mounted> {
        self.mounts().iter().filter(|m| !m.v2)
    }

    /// The mount points of the host's hierarchies, v1 and cgroup2, as
    /// mountinfo writes them, each with whether it is cgroup2; nothing on
    /// a pure v2 host.
    pub(crate) fn mount_points(&self) -> impl Iterator<Item = (&Path, bool)> {
        self.mounts().iter().map(|m| (m.point.as_path(), m.v2))
    }

    fn v1_hierarchy(&self, controller: &str) -> Option<&Mounted> {
        self.v1_mounts()
            .find(|m| m.options.iter().any(|o| o == controller))
    }

    /// The mount point of a v1 controller (`None` on a pure v2 host).
    pub fn v1_mount(&self, controller: &str) -> Option<&Path> {
        self.v1_hierarchy(controller).map(|m| m.point.as_path())
    }

    /// The hierarchy in the shape cgroups-rs takes, built from this
    /// description without reading the mounts again.
    fn fs_hierarchy(&self) -> Box<dyn Hierarchy> {
        match self.layout() {
            Layout::V2 => Box::new(cgroups_rs::fs::hierarchies::V2::new()),
            Layout::V1 | Layout::Hybrid => Box::new(SharedV1(self.clone())),
        }
    }

    /// PIDs in the cgroup at `path`, from the pids (or freezer, memory,
    /// cpu) controller.
    pub fn pids_of(&self, path: &str) -> Vec<i32> {
        let rel = path.trim_start_matches('/');
        let dirs: Vec<PathBuf> = if self.layout() == Layout::V2 {
            vec![Path::new(CGROUP_ROOT).join(rel)]
        } else {
            ["pids", "freezer", "memory", "cpu"]
                .iter()
                .filter_map(|c| self.v1_mount(c))
                .map(|m| m.join(rel))
                .collect()
        };
        for dir in dirs {
            if let Ok(s) = std::fs::read_to_string(dir.join("cgroup.procs")) {
                return s.lines().filter_map(|l| l.trim().parse().ok()).collect();
            }
        }
        Vec::new()
    }

    /// Whether the cgroup at `path` is frozen, without building a manager.
    pub fn is_frozen(&self, path: &str) -> bool {
        let rel = path.trim_start_matches('/');
        if self.layout() == Layout::V2 {
            return std::fs::read_to_string(Path::new(CGROUP_ROOT).join(rel).join("cgroup.freeze"))
                .is_ok_and(|s| s.trim() == "1");
        }
        let base = self.v1_mount("freezer").map_or_else(
            || PathBuf::from("/sys/fs/cgroup/freezer"),
            Path::to_path_buf,
        );
        std::fs::read_to_string(base.join(rel).join("freezer.state"))
            .is_ok_and(|s| matches!(s.trim(), "FROZEN" | "FREEZING"))
    }

    /// How many processes the kernel's OOM killer has killed in the cgroup
    /// at `path` (from memory.oom_control on v1, memory.events on v2).
    pub fn oom_kills(&self, path: &str) -> u64 {
        let rel = path.trim_start_matches('/');
        let file = if self.layout() == Layout::V2 {
            Path::new(CGROUP_ROOT).join(rel).join("memory.events")
        } else {
            let Some(base) = self.v1_mount("memory") else {
                return 0;
            };
            base.join(rel).join("memory.oom_control")
        };
        read_kv(&file, "oom_kill")
    }
}

/// The cgroup hierarchies (types `cgroup` and `cgroup2`) of a mountinfo
/// text, in its order.
fn parse_cgroup_mounts(mountinfo: &str) -> Vec<Mounted> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let (pre, post) = line.split_once(" - ")?;
            let mut post = post.split(' ');
            let v2 = match post.next()? {
                "cgroup" => false,
                "cgroup2" => true,
                _ => return None,
            };
            let options = post.nth(1)?.split(',').map(str::to_string).collect();
            let mut pre = pre.split(' ').skip(3);
            let root = PathBuf::from(pre.next()?);
            let point = PathBuf::from(pre.next()?);
            Some(Mounted {
                v2,
                point,
                root,
                options,
            })
        })
        .collect()
}

/// cgroups-rs's v1 hierarchy over a [`Hierarchies`] parse: the same
/// controllers, in the same order, as its own (which reads mountinfo each
/// time one is made, and cgroups-rs makes one for every root or parent
/// cgroup it looks at).
#[derive(Debug)]
struct SharedV1(Hierarchies);

impl Hierarchy for SharedV1 {
    fn subsystems(&self) -> Vec<Subsystem> {
        use cgroups_rs::fs::{
            blkio::BlkIoController, cpu::CpuController, cpuacct::CpuAcctController,
            cpuset::CpuSetController, devices::DevicesController, freezer::FreezerController,
            hugetlb::HugeTlbController, memory::MemController, net_cls::NetClsController,
            net_prio::NetPrioController, perf_event::PerfEventController, pid::PidController,
            rdma::RdmaController, systemd::SystemdController,
        };
        let at = |c: Controllers| {
            self.0
                .v1_hierarchy(&c.to_string())
                .map(|m| (m.point.clone(), m.root.clone()))
        };
        let mut subs = Vec::new();
        // blkio before memory: cgroup writeback needs a process in its blkio
        // cgroup before its memory cgroup (cgroups-rs keeps this order).
        if let Some((p, r)) = at(Controllers::BlkIo) {
            subs.push(Subsystem::BlkIo(BlkIoController::new(p, r, false)));
        }
        if let Some((p, r)) = at(Controllers::Mem) {
            subs.push(Subsystem::Mem(MemController::new(p, r, false)));
        }
        if let Some((p, r)) = at(Controllers::Pids) {
            subs.push(Subsystem::Pid(PidController::new(p, r, false)));
        }
        if let Some((p, r)) = at(Controllers::CpuSet) {
            subs.push(Subsystem::CpuSet(CpuSetController::new(p, r, false)));
        }
        if let Some((p, r)) = at(Controllers::CpuAcct) {
            subs.push(Subsystem::CpuAcct(CpuAcctController::new(p, r)));
        }
        if let Some((p, r)) = at(Controllers::Cpu) {
            subs.push(Subsystem::Cpu(CpuController::new(p, r, false)));
        }
        if let Some((p, r)) = at(Controllers::Devices) {
            subs.push(Subsystem::Devices(DevicesController::new(p, r)));
        }
        if let Some((p, r)) = at(Controllers::Freezer) {
            subs.push(Subsystem::Freezer(FreezerController::new(p, r, false)));
        }
        if let Some((p, r)) = at(Controllers::NetCls) {
            subs.push(Subsystem::NetCls(NetClsController::new(p, r)));
        }
        if let Some((p, r)) = at(Controllers::PerfEvent) {
            subs.push(Subsystem::PerfEvent(PerfEventController::new(p, r)));
        }
        if let Some((p, r)) = at(Controllers::NetPrio) {
            subs.push(Subsystem::NetPrio(NetPrioController::new(p, r)));
        }
        if let Some((p, r)) = at(Controllers::HugeTlb) {
            subs.push(Subsystem::HugeTlb(HugeTlbController::new(p, r, false)));
        }
        if let Some((p, r)) = at(Controllers::Rdma) {
            subs.push(Subsystem::Rdma(RdmaController::new(p, r)));
        }
        if let Some((p, r)) = at(Controllers::Systemd) {
            subs.push(Subsystem::Systemd(SystemdController::new(p, r, false)));
        }
        subs
    }

    fn root(&self) -> PathBuf {
        self.0
            .v1_mounts()
            .next()
            .and_then(|m| m.point.parent())
            .map_or_else(|| PathBuf::from(CGROUP_ROOT), Path::to_path_buf)
    }

    fn root_control_group(&self) -> cgroups_rs::fs::Cgroup {
        cgroups_rs::fs::Cgroup::load(self.0.fs_hierarchy(), "")
    }

    fn parent_control_group(&self, path: &str) -> cgroups_rs::fs::Cgroup {
        let parent = Path::new(path).parent().unwrap_or(Path::new(""));
        cgroups_rs::fs::Cgroup::load(self.0.fs_hierarchy(), parent)
    }

    fn v2(&self) -> bool {
        false
    }
}

/// Resource statistics in runc's `events --stats` shape.
#[derive(Debug, Default, Serialize)]
pub struct Stats {
    /// CPU time and throttling.
    pub cpu: CpuStats,
    /// Memory usage.
    pub memory: MemoryStats,
    /// Process count.
    pub pids: PidsStats,
    /// Block I/O.
    pub blkio: BlkioStats,
    /// Huge pages by size.
    pub hugetlb: std::collections::BTreeMap<String, HugetlbStats>,
}

/// CPU statistics.
#[derive(Debug, Default, Serialize)]
pub struct CpuStats {
    /// Usage in nanoseconds.
    pub usage: CpuUsage,
    /// CFS throttling.
    pub throttling: Throttling,
}

/// `cpuacct.usage_percpu`: one line of nanosecond counts, one per CPU,
/// separated by spaces.
fn parse_percpu(text: &str) -> Vec<u64> {
    text.split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect()
}

/// CPU time in nanoseconds.
#[derive(Debug, Default, Serialize)]
pub struct CpuUsage {
    /// Total.
    pub total: u64,
    /// Per CPU.
    pub percpu: Vec<u64>,
    /// In the kernel.
    pub kernel: u64,
    /// In user space.
    pub user: u64,
}

/// CFS throttling counters.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Throttling {
    /// Periods elapsed.
    pub periods: u64,
    /// Periods throttled.
    pub throttled_periods: u64,
    /// Time throttled (ns).
    pub throttled_time: u64,
}

/// Memory statistics.
#[derive(Debug, Default, Serialize)]
pub struct MemoryStats {
    /// Page cache.
    pub cache: u64,
    /// Memory.
    pub usage: MemoryEntry,
    /// Memory plus swap.
    pub swap: MemoryEntry,
    /// Kernel memory.
    pub kernel: MemoryEntry,
    /// Selected raw counters from memory.stat.
    pub raw: std::collections::BTreeMap<String, u64>,
}

/// One memory counter with its limit.
#[derive(Debug, Default, Serialize)]
pub struct MemoryEntry {
    /// Limit (bytes).
    pub limit: u64,
    /// Usage (bytes).
    pub usage: u64,
    /// Peak usage (bytes).
    pub max: u64,
    /// Times the limit was hit.
    pub failcnt: u64,
}

/// Process count.
#[derive(Debug, Default, Serialize)]
pub struct PidsStats {
    /// Current.
    pub current: u64,
    /// Limit (0: none).
    pub limit: u64,
}

/// Block I/O statistics.
#[derive(Debug, Default, Serialize)]
pub struct BlkioStats {
    /// Bytes by device and operation.
    #[serde(rename = "ioServiceBytesRecursive")]
    pub io_service_bytes_recursive: Vec<BlkioEntry>,
    /// Operations by device and operation.
    #[serde(rename = "ioServicedRecursive")]
    pub io_serviced_recursive: Vec<BlkioEntry>,
}

/// One block I/O counter.
#[derive(Debug, Default, Serialize)]
pub struct BlkioEntry {
    /// Device major.
    pub major: u64,
    /// Device minor.
    pub minor: u64,
    /// Read, Write, Sync, Async, Total.
    pub op: String,
    /// Value.
    pub value: u64,
}

/// Huge page usage for one page size.
#[derive(Debug, Default, Serialize)]
pub struct HugetlbStats {
    /// Usage (bytes).
    pub usage: u64,
    /// Peak (bytes).
    pub max: u64,
    /// Times the limit was hit.
    pub failcnt: u64,
}

#[cfg(test)]
mod tests {
    #[test]
    fn per_cpu_usage_is_one_line_of_counts() {
        assert_eq!(
            super::parse_percpu("5066302 8123450 0 17\n"),
            [5_066_302, 8_123_450, 0, 17]
        );
        assert!(super::parse_percpu("").is_empty());
    }

    use super::*;

    #[test]
    fn device_lines() {
        let mut r = LinuxDeviceCgroup::default();
        r.set_allow(false);
        r.set_access(Some("rwm".into()));
        r.set_typ(None);
        assert_eq!(device_rule_line(&r), "a *:* rwm");
        r.set_typ(Some(LinuxDeviceType::C));
        r.set_major(Some(136));
        assert_eq!(device_rule_line(&r), "c 136:* rwm");
        r.set_minor(Some(4));
        r.set_access(Some("rw".into()));
        assert_eq!(device_rule_line(&r), "c 136:4 rw");
    }

    #[test]
    fn paths() {
        assert_eq!(resolve_path(None, "abc").unwrap(), "/vessel/abc");
        assert_eq!(resolve_path(Some(Path::new("/a/b")), "x").unwrap(), "/a/b");
        assert!(resolve_path(Some(Path::new("/a/../b")), "x").is_err());
        assert!(resolve_path(Some(Path::new("system.slice:vessel:abc")), "x").is_err());
        let rel = resolve_path(Some(Path::new("sub/c")), "x").unwrap();
        assert!(rel.ends_with("/sub/c") && rel.starts_with('/'), "{rel}");
    }

    /// A v1 host with combined controllers, a sub-tree mount and a named
    /// hierarchy, then the same with a hybrid cgroup2 hierarchy, then a pure
    /// v2 host: one parse answers every controller, cgroups-rs's view is
    /// built from it, and clones share it.
    #[test]
    fn shared_parse_of_the_hierarchies() {
        use cgroups_rs::fs::Controller as _;
        const V1: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
25 22 0:22 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
26 25 0:23 / /sys/fs/cgroup/systemd rw,nosuid shared:9 - cgroup cgroup rw,xattr,name=systemd
29 25 0:26 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid shared:10 - cgroup cgroup rw,cpu,cpuacct
30 25 0:27 / /sys/fs/cgroup/memory rw,nosuid shared:11 - cgroup cgroup rw,memory
31 25 0:28 /lxc/c1 /sys/fs/cgroup/pids rw,nosuid shared:12 - cgroup cgroup rw,pids
32 25 0:29 / /sys/fs/cgroup/freezer rw,nosuid shared:13 - cgroup cgroup rw,freezer
33 25 0:30 / /sys/fs/cgroup/devices rw,nosuid shared:14 - cgroup cgroup rw,devices
";
        let unified =
            "34 25 0:31 / /sys/fs/cgroup/unified rw,nosuid shared:15 - cgroup2 cgroup2 rw\n";
        for (layout, text) in [
            (Layout::V1, V1.to_string()),
            (Layout::Hybrid, format!("{V1}{unified}")),
        ] {
            let h = Hierarchies::from_mountinfo(layout, &text);
            assert_eq!(h.layout(), layout);
            let at = |c| h.v1_mount(c).map(Path::to_path_buf);
            assert_eq!(at("memory"), Some(PathBuf::from("/sys/fs/cgroup/memory")));
            assert_eq!(at("cpu"), Some(PathBuf::from("/sys/fs/cgroup/cpu,cpuacct")));
            assert_eq!(at("cpuacct"), at("cpu"));
            assert_eq!(
                at("name=systemd"),
                Some(PathBuf::from("/sys/fs/cgroup/systemd"))
            );
            assert_eq!(
                at("hugetlb"),
                None,
                "{layout:?}: cgroup2 is not a v1 hierarchy"
            );
            assert_eq!(h.v1_mounts().count(), 6);
            let points: Vec<(&Path, bool)> = h.mount_points().collect();
            assert_eq!(points.len(), if layout == Layout::Hybrid { 7 } else { 6 });
            assert_eq!(
                points.last().copied(),
                Some(if layout == Layout::Hybrid {
                    (Path::new("/sys/fs/cgroup/unified"), true)
                } else {
                    (Path::new("/sys/fs/cgroup/devices"), false)
                })
            );
            assert_eq!(
                h.v1_hierarchy("pids").unwrap().root,
                PathBuf::from("/lxc/c1")
            );

            // cgroups-rs's view: one controller per hierarchy it knows, each
            // below its mount point, with no further read of the mounts.
            let cg = cgroups_rs::fs::Cgroup::load(h.fs_hierarchy(), "vessel/x");
            assert!(!cg.v2());
            let mem: &cgroups_rs::fs::memory::MemController = cg.controller_of().unwrap();
            assert_eq!(mem.path(), Path::new("/sys/fs/cgroup/memory/vessel/x"));
            let cpu: &cgroups_rs::fs::cpu::CpuController = cg.controller_of().unwrap();
            assert_eq!(cpu.path(), Path::new("/sys/fs/cgroup/cpu,cpuacct/vessel/x"));
            assert!(cg.controller_of::<FreezerController>().is_some());
            assert!(
                cg.controller_of::<cgroups_rs::fs::blkio::BlkIoController>()
                    .is_none()
            );
            assert_eq!(
                cg.subsystems().len(),
                7,
                "systemd, cpu, cpuacct, memory, pids, freezer, devices"
            );
            assert_eq!(SharedV1(h.clone()).root(), PathBuf::from("/sys/fs/cgroup"));

            // Clones share the one parse.
            let clone = h.clone();
            assert!(std::ptr::eq(clone.mounts(), h.mounts()));
        }

        // Pure v2: no v1 hierarchy even if a stray v1 mount is listed, and
        // cgroups-rs gets its own v2 hierarchy.
        let v2 = Hierarchies::from_mountinfo(
            Layout::V2,
            "25 22 0:22 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate\n\
             26 22 0:23 / /mnt/old rw - cgroup cgroup rw,memory\n",
        );
        assert_eq!(v2.v1_mount("memory"), None);
        assert!(v2.fs_hierarchy().v2());
        assert_eq!(v2.mount_points().count(), 0);
        assert!(parse_cgroup_mounts("garbage\n\n - cgroup\n").is_empty());
    }
}
