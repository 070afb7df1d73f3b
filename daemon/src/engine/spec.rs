//! Turning a container record into an OCI runtime configuration: the same
//! defaults Docker applies (namespaces, mounts, the 14 default
//! capabilities, masked and read-only paths, the default seccomp profile,
//! device rules) plus everything the create request asked for.

use std::collections::{BTreeMap, HashSet};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use super::container::{Container, Paths};
use super::error::{Error, Result};
use super::types::{HostConfig, Ulimit};

/// Capabilities every container gets unless dropped (Docker's set).
pub const DEFAULT_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

const MASKED: &[&str] = &[
    "/proc/asound",
    "/proc/acpi",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

const READONLY: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// The environment a container's process starts with: the image's, then
/// the request's (same key replaces), plus PATH, HOSTNAME and TERM.
pub fn environment(
    image_env: &[String],
    request_env: &[String],
    hostname: &str,
    tty: bool,
) -> Vec<String> {
    let mut env: Vec<String> = Vec::new();
    let mut set = |kv: &str| {
        let key = kv.split('=').next().unwrap_or(kv);
        let pos = env.iter().position(|e| e.split('=').next() == Some(key));
        match (pos, kv.contains('=')) {
            // A later value replaces an earlier one in place, as Docker does.
            (Some(i), true) => kv.clone_into(&mut env[i]),
            // `KEY` without `=` (from `-e KEY` with KEY unset) unsets it.
            (Some(i), false) => {
                env.remove(i);
            }
            (None, true) => env.push(kv.to_string()),
            (None, false) => {}
        }
    };
    set(&format!("PATH={}", vessel_runtime::DEFAULT_PATH));
    set(&format!("HOSTNAME={hostname}"));
    for kv in image_env {
        set(kv);
    }
    for kv in request_env {
        set(kv);
    }
    if tty && !env.iter().any(|e| e.starts_with("TERM=")) {
        env.push("TERM=xterm".into());
    }
    env
}

/// The capabilities after `--cap-add`/`--cap-drop` (`ALL` allowed in both).
pub fn capabilities(hc: &HostConfig) -> Result<Vec<String>> {
    let all: Vec<String> = caps::all().iter().map(ToString::to_string).collect();
    if hc.privileged {
        return Ok(all);
    }
    let norm = |c: &str| -> Result<String> {
        let up = c.trim().to_ascii_uppercase();
        let full = if up.starts_with("CAP_") {
            up
        } else {
            format!("CAP_{up}")
        };
        if full == "CAP_ALL" || all.contains(&full) {
            Ok(full)
        } else {
            Err(Error::invalid(format!("unknown capability: {c:?}")))
        }
    };
    let add: Vec<String> = hc.cap_add.iter().map(|c| norm(c)).collect::<Result<_>>()?;
    let drop: Vec<String> = hc.cap_drop.iter().map(|c| norm(c)).collect::<Result<_>>()?;
    let mut set: Vec<String> = if drop.iter().any(|c| c == "CAP_ALL") {
        Vec::new()
    } else {
        DEFAULT_CAPS
            .iter()
            .map(ToString::to_string)
            .filter(|c| !drop.contains(c))
            .collect()
    };
    if add.iter().any(|c| c == "CAP_ALL") {
        set = all
            .into_iter()
            .filter(|c| !drop.contains(c) || add.contains(c))
            .collect();
    } else {
        for c in add {
            if !set.contains(&c) {
                set.push(c);
            }
        }
    }
    Ok(set)
}

/// Read a file of the container's root, resolved inside it (an image may
/// make /etc/passwd a symlink to anywhere).
pub fn read_in_root(rootfs: &Path, path: &str) -> Option<String> {
    use nix::fcntl::{OFlag, OpenHow, ResolveFlag, open, openat2};
    use nix::sys::stat::Mode;
    let root = open(
        rootfs,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .ok()?;
    let how = OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let fd = openat2(root.as_fd(), path.trim_start_matches('/'), how).ok()?;
    let mut s = String::new();
    std::io::Read::read_to_string(&mut std::fs::File::from(fd), &mut s).ok()?;
    Some(s)
}

/// A resolved process identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    pub home: String,
}

impl Identity {
    /// Add `HOME` (the user's home directory, or `/`) unless `env` sets it.
    pub fn default_home(&self, env: &mut Vec<String>) {
        if !env.iter().any(|e| e.starts_with("HOME=")) {
            let home = if self.home.is_empty() {
                "/"
            } else {
                &self.home
            };
            env.push(format!("HOME={home}"));
        }
    }
}

/// Resolve `user[:group]` (names or numbers) against the container's
/// /etc/passwd and /etc/group, as Docker does.
pub fn resolve_user(rootfs: &Path, user: &str, group_add: &[String]) -> Result<Identity> {
    let passwd = read_in_root(rootfs, "/etc/passwd").unwrap_or_default();
    let groups = read_in_root(rootfs, "/etc/group").unwrap_or_default();
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let u = if u.is_empty() { "0" } else { u };
    let entries: Vec<Vec<&str>> = passwd
        .lines()
        .map(|l| l.split(':').collect())
        .filter(|f: &Vec<&str>| f.len() >= 7)
        .collect();
    let (uid, mut gid, home, name) = if let Ok(n) = u.parse::<u32>() {
        match entries.iter().find(|f| f[2].parse() == Ok(n)) {
            Some(f) => (
                n,
                f[3].parse().unwrap_or(0),
                f[5].to_string(),
                Some(f[0].to_string()),
            ),
            None => (n, 0, "/".to_string(), None),
        }
    } else {
        let f = entries.iter().find(|f| f[0] == u).ok_or_else(|| {
            Error::invalid(format!(
                "unable to find user {u}: no matching entries in passwd file"
            ))
        })?;
        (
            f[2].parse().unwrap_or(0),
            f[3].parse().unwrap_or(0),
            f[5].to_string(),
            Some(f[0].to_string()),
        )
    };
    let group_entries: Vec<Vec<&str>> = groups
        .lines()
        .map(|l| l.split(':').collect())
        .filter(|f: &Vec<&str>| f.len() >= 3)
        .collect();
    let lookup_group = |g: &str| -> Result<u32> {
        if let Ok(n) = g.parse::<u32>() {
            return Ok(n);
        }
        group_entries
            .iter()
            .find(|f| f[0] == g)
            .and_then(|f| f[2].parse().ok())
            .ok_or_else(|| {
                Error::invalid(format!(
                    "unable to find group {g}: no matching entries in group file"
                ))
            })
    };
    if let Some(g) = g.filter(|g| !g.is_empty()) {
        gid = lookup_group(g)?;
    }
    let mut additional = Vec::new();
    if let Some(name) = &name {
        for f in &group_entries {
            if f.get(3)
                .is_some_and(|members| members.split(',').any(|m| m == name))
            {
                if let Ok(n) = f[2].parse::<u32>() {
                    if n != gid && !additional.contains(&n) {
                        additional.push(n);
                    }
                }
            }
        }
    }
    for g in group_add {
        let n = lookup_group(g)?;
        if !additional.contains(&n) {
            additional.push(n);
        }
    }
    Ok(Identity {
        uid,
        gid,
        additional_gids: additional,
        home,
    })
}

/// Parse a size such as `64m`, `1g`, `512k`, `100` (bytes).
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim().to_ascii_lowercase();
    let s = s.trim_end_matches('b');
    let (num, mult) = match s.chars().last()? {
        'k' => (&s[..s.len() - 1], 1u64 << 10),
        'm' => (&s[..s.len() - 1], 1 << 20),
        'g' => (&s[..s.len() - 1], 1 << 30),
        't' => (&s[..s.len() - 1], 1 << 40),
        _ => (s, 1),
    };
    let n: f64 = num.parse().ok()?;
    (n >= 0.0).then_some((n * mult as f64) as u64)
}

/// Major and minor numbers of a device node on the host.
fn device_numbers(path: &str) -> Result<(u64, u64, char)> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let meta = std::fs::metadata(path).map_err(|e| {
        Error::invalid(format!(
            "error gathering device information while adding custom device {path:?}: {e}"
        ))
    })?;
    let kind = if meta.file_type().is_char_device() {
        'c'
    } else if meta.file_type().is_block_device() {
        'b'
    } else {
        return Err(Error::invalid(format!("{path} is not a device node")));
    };
    let rdev = meta.rdev();
    Ok((
        nix::sys::stat::major(rdev),
        nix::sys::stat::minor(rdev),
        kind,
    ))
}

fn rlimit_name(name: &str) -> Result<String> {
    let known = [
        "core",
        "cpu",
        "data",
        "fsize",
        "locks",
        "memlock",
        "msgqueue",
        "nice",
        "nofile",
        "nproc",
        "rss",
        "rtprio",
        "rttime",
        "sigpending",
        "stack",
        "as",
    ];
    if known.contains(&name) {
        Ok(format!("RLIMIT_{}", name.to_ascii_uppercase()))
    } else {
        Err(Error::invalid(format!("invalid ulimit type: {name}")))
    }
}

/// OCI process rlimits for Docker ulimits.
pub fn rlimits(ulimits: &[Ulimit]) -> Result<Vec<Value>> {
    ulimits
        .iter()
        .map(|u| -> Result<Value> {
            if u.soft > u.hard {
                return Err(Error::invalid(format!(
                    "invalid ulimit {}: soft limit {} is above the hard limit {}",
                    u.name, u.soft, u.hard
                )));
            }
            Ok(json!({"type": rlimit_name(&u.name)?, "soft": u.soft, "hard": u.hard}))
        })
        .collect()
}

/// The OCI `linux.resources` (memory, cpu, pids, block I/O) for a host
/// configuration, without device rules.
pub fn resources(hc: &HostConfig) -> Result<Value> {
    let mut resources = json!({});
    let mut memory = serde_json::Map::new();
    if hc.memory > 0 {
        memory.insert("limit".into(), json!(hc.memory));
        // Docker's default: swap limited to the same amount again.
        let swap = match hc.memory_swap {
            0 => hc.memory * 2,
            -1 => -1,
            s => s,
        };
        memory.insert("swap".into(), json!(swap));
    }
    if hc.memory_reservation > 0 {
        memory.insert("reservation".into(), json!(hc.memory_reservation));
    }
    if hc.oom_kill_disable == Some(true) {
        memory.insert("disableOOMKiller".into(), json!(true));
    }
    if let Some(s) = hc.memory_swappiness.filter(|s| *s >= 0) {
        memory.insert("swappiness".into(), json!(s));
    }
    if !memory.is_empty() {
        resources["memory"] = Value::Object(memory);
    }
    let mut cpu = serde_json::Map::new();
    if hc.cpu_shares > 0 {
        cpu.insert("shares".into(), json!(hc.cpu_shares));
    }
    if hc.nano_cpus > 0 {
        let period = 100_000i64;
        cpu.insert("period".into(), json!(period));
        cpu.insert("quota".into(), json!(hc.nano_cpus * period / 1_000_000_000));
    } else {
        if hc.cpu_period > 0 {
            cpu.insert("period".into(), json!(hc.cpu_period));
        }
        if hc.cpu_quota != 0 {
            cpu.insert("quota".into(), json!(hc.cpu_quota));
        }
    }
    if !hc.cpuset_cpus.is_empty() {
        cpu.insert("cpus".into(), json!(hc.cpuset_cpus));
    }
    if !hc.cpuset_mems.is_empty() {
        cpu.insert("mems".into(), json!(hc.cpuset_mems));
    }
    if !cpu.is_empty() {
        resources["cpu"] = Value::Object(cpu);
    }
    if let Some(p) = hc.pids_limit.filter(|p| *p != 0) {
        resources["pids"] = json!({"limit": if p < 0 { -1 } else { p }});
    }
    let mut blkio = serde_json::Map::new();
    if hc.blkio_weight > 0 {
        blkio.insert("weight".into(), json!(hc.blkio_weight));
    }
    for (key, list) in [
        ("throttleReadBpsDevice", &hc.blkio_device_read_bps),
        ("throttleWriteBpsDevice", &hc.blkio_device_write_bps),
        ("throttleReadIOPSDevice", &hc.blkio_device_read_iops),
        ("throttleWriteIOPSDevice", &hc.blkio_device_write_iops),
    ] {
        if list.is_empty() {
            continue;
        }
        let mut out = Vec::new();
        for t in list {
            let (major, minor, _) = device_numbers(&t.path)?;
            out.push(json!({"major": major, "minor": minor, "rate": t.rate}));
        }
        blkio.insert(key.into(), Value::Array(out));
    }
    if !blkio.is_empty() {
        resources["blockIO"] = Value::Object(blkio);
    }
    Ok(resources)
}

/// Everything `build` needs besides the container record.
pub struct SpecInputs<'a> {
    pub paths: &'a Paths,
    pub rootfs: &'a Path,
    /// The image's environment.
    pub image_env: &'a [String],
    /// Mounts the engine prepared (binds, volumes, tmpfs), in OCI form.
    pub mounts: Vec<Value>,
    /// Namespace paths to join, by OCI type ("network" -> /proc/PID/ns/net).
    pub join: BTreeMap<&'static str, PathBuf>,
}

/// Build the OCI configuration for a container.
pub fn build(c: &Container, inp: &SpecInputs<'_>) -> Result<Value> {
    let hc = &c.host_config;
    let cfg = &c.config;
    let hostname = if cfg.hostname.is_empty() {
        c.id[..12].to_string()
    } else {
        cfg.hostname.clone()
    };
    let ident = resolve_user(inp.rootfs, &cfg.user, &hc.group_add)?;
    let mut env = environment(inp.image_env, &cfg.env, &hostname, cfg.tty);
    ident.default_home(&mut env);
    let caps = capabilities(hc)?;
    let mut args = vec![c.path.clone()];
    args.extend(c.args.iter().cloned());
    if args.first().is_some_and(String::is_empty) {
        return Err(Error::invalid("no command specified"));
    }
    let cwd = if cfg.working_dir.is_empty() {
        "/".to_string()
    } else {
        cfg.working_dir.clone()
    };
    if !cwd.starts_with('/') {
        return Err(Error::invalid(format!(
            "the working directory '{cwd}' is invalid, it needs to be an absolute path"
        )));
    }
    let mut no_new_privs = false;
    let mut seccomp: Option<Value> = None;
    let mut seccomp_default = !hc.privileged;
    for opt in &hc.security_opt {
        let (k, v) = opt.split_once(['=', ':']).unwrap_or((opt.as_str(), ""));
        match k {
            "no-new-privileges" => no_new_privs = v.is_empty() || v == "true",
            "seccomp" if v == "unconfined" => seccomp_default = false,
            "seccomp" => {
                let profile: Value = serde_json::from_str(v)
                    .map_err(|e| Error::invalid(format!("decoding seccomp profile failed: {e}")))?;
                seccomp = Some(vessel_seccomp_from_docker(&profile, &caps));
                seccomp_default = false;
            }
            "apparmor" | "label" => {}
            _ => return Err(Error::invalid(format!("invalid --security-opt: {opt:?}"))),
        }
    }
    if seccomp_default {
        let set: Vec<caps::Capability> = caps.iter().filter_map(|c| c.parse().ok()).collect();
        let profile =
            vessel_runtime::seccomp::default_profile(set, vessel_runtime::seccomp::native_arch())
                .map_err(|e| Error::from_err("default seccomp profile", &e))?;
        seccomp = Some(serde_json::to_value(profile).map_err(|e| Error::internal(e.to_string()))?);
    }
    let rlimits = rlimits(&hc.ulimits)?;

    // Namespaces.
    let mut namespaces = vec![json!({"type": "mount"})];
    let ns = |kind: &str, mode: &str, namespaces: &mut Vec<Value>| {
        if mode == "host" {
            return;
        }
        match inp.join.get(kind) {
            Some(p) => namespaces.push(json!({"type": kind, "path": p})),
            None => namespaces.push(json!({"type": kind})),
        }
    };
    ns("pid", &hc.pid_mode, &mut namespaces);
    ns("ipc", &hc.ipc_mode, &mut namespaces);
    ns("uts", &hc.uts_mode, &mut namespaces);
    ns("network", &hc.network_mode, &mut namespaces);
    if hc.cgroupns_mode != "host" {
        namespaces.push(json!({"type": "cgroup"}));
    }

    // Mounts: Docker's defaults, then the container's files and the user's.
    let dir = c.dir(inp.paths);
    let shm_size = if hc.shm_size > 0 {
        hc.shm_size
    } else {
        64 << 20
    };
    let sys_opts = if hc.privileged {
        vec!["nosuid", "noexec", "nodev"]
    } else {
        vec!["nosuid", "noexec", "nodev", "ro"]
    };
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": sys_opts}),
        json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["ro", "nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", format!("size={shm_size}")]}),
    ];
    let user_dests: HashSet<String> = inp
        .mounts
        .iter()
        .filter_map(|m| m["destination"].as_str().map(String::from))
        .collect();
    for (file, dest) in [
        ("hostname", "/etc/hostname"),
        ("hosts", "/etc/hosts"),
        ("resolv.conf", "/etc/resolv.conf"),
    ] {
        if !user_dests.contains(dest) {
            mounts.push(json!({"destination": dest, "type": "bind", "source": dir.join(file), "options": ["rbind", "rprivate"]}));
        }
    }
    mounts.extend(inp.mounts.iter().cloned());

    // Devices and the device cgroup.
    let mut devices = Vec::new();
    let mut device_rules = vec![json!({"allow": false, "access": "rwm"})];
    if hc.privileged {
        device_rules = vec![json!({"allow": true, "access": "rwm"})];
    }
    for d in &hc.devices {
        let (major, minor, kind) = device_numbers(&d.path_on_host)?;
        let dest = if d.path_in_container.is_empty() {
            d.path_on_host.clone()
        } else {
            d.path_in_container.clone()
        };
        let perms = if d.cgroup_permissions.is_empty() {
            "rwm".to_string()
        } else {
            d.cgroup_permissions.clone()
        };
        devices.push(json!({"path": dest, "type": kind.to_string(), "major": major, "minor": minor, "fileMode": 0o666, "uid": 0, "gid": 0}));
        device_rules.push(json!({"allow": true, "type": kind.to_string(), "major": major, "minor": minor, "access": perms}));
    }

    // Resources.
    let mut resources = resources(hc)?;
    resources["devices"] = Value::Array(device_rules);

    let mut linux = json!({
        "namespaces": namespaces,
        "resources": resources,
        "cgroupsPath": format!("/vessel/{}", c.id),
        "devices": devices,
        "sysctl": hc.sysctls,
    });
    if !hc.privileged {
        linux["maskedPaths"] = json!(
            hc.masked_paths
                .clone()
                .unwrap_or_else(|| MASKED.iter().map(ToString::to_string).collect())
        );
        linux["readonlyPaths"] = json!(
            hc.readonly_paths
                .clone()
                .unwrap_or_else(|| READONLY.iter().map(ToString::to_string).collect())
        );
    }
    if let Some(s) = seccomp {
        linux["seccomp"] = s;
    }
    let mut process = json!({
        "terminal": cfg.tty,
        "user": {"uid": ident.uid, "gid": ident.gid, "additionalGids": ident.additional_gids},
        "args": args,
        "env": env,
        "cwd": cwd,
        "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
        "rlimits": rlimits,
        "noNewPrivileges": no_new_privs,
    });
    if hc.oom_score_adj != 0 {
        process["oomScoreAdj"] = json!(hc.oom_score_adj);
    }
    let mut spec = json!({
        "ociVersion": vessel_runtime::spec::OCI_VERSION,
        "root": {"path": inp.rootfs, "readonly": hc.readonly_rootfs},
        "process": process,
        "mounts": mounts,
        "linux": linux,
        "annotations": {
            "io.vessel.container.name": c.name,
            "io.vessel.image": c.image,
        },
    });
    if hc.init == Some(true) {
        // `--init`: the runtime keeps a reaper as PID 1 (see
        // vessel_runtime::reaper); nothing is mounted into the container.
        spec["annotations"][vessel_runtime::reaper::INIT_ANNOTATION] = json!("true");
    }
    if hc.uts_mode != "host" {
        spec["hostname"] = json!(hostname);
        if !cfg.domainname.is_empty() {
            spec["domainname"] = json!(cfg.domainname);
        }
    }
    Ok(spec)
}

/// A Docker-format seccomp profile (as `--security-opt seccomp=FILE` sends
/// it) in OCI form: Docker's profile has `names`/`action`/`args` rules plus
/// `includes`/`excludes` by capability and architecture, which apply here.
fn vessel_seccomp_from_docker(profile: &Value, caps: &[String]) -> Value {
    let arch = serde_json::to_value(vessel_runtime::seccomp::native_arch())
        .ok()
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_default();
    let allowed = |cond: &Value| -> bool {
        let caps_ok = cond["caps"].as_array().is_none_or(|l| {
            l.iter()
                .all(|c| c.as_str().is_some_and(|c| caps.iter().any(|x| x == c)))
        });
        let arch_ok = cond["arches"]
            .as_array()
            .is_none_or(|l| l.iter().any(|a| a.as_str() == Some(arch.as_str())));
        caps_ok && arch_ok
    };
    let excluded = |cond: &Value| -> bool {
        cond["caps"].as_array().is_some_and(|l| {
            l.iter()
                .any(|c| c.as_str().is_some_and(|c| caps.iter().any(|x| x == c)))
        }) || cond["arches"]
            .as_array()
            .is_some_and(|l| l.iter().any(|a| a.as_str() == Some(arch.as_str())))
    };
    let mut syscalls = Vec::new();
    for rule in profile["syscalls"].as_array().into_iter().flatten() {
        if !rule["includes"].is_null() && !allowed(&rule["includes"]) {
            continue;
        }
        if !rule["excludes"].is_null() && excluded(&rule["excludes"]) {
            continue;
        }
        let mut names: Vec<Value> = rule["names"].as_array().cloned().unwrap_or_default();
        if let Some(n) = rule["name"].as_str() {
            names.push(json!(n));
        }
        let mut r = json!({"names": names, "action": rule["action"]});
        for k in ["args", "errnoRet"] {
            if !rule[k].is_null() {
                r[k] = rule[k].clone();
            }
        }
        syscalls.push(r);
    }
    let mut out = json!({"defaultAction": profile["defaultAction"], "syscalls": syscalls});
    for k in ["defaultErrnoRet", "architectures", "flags", "listenerPath"] {
        if !profile[k].is_null() {
            out[k] = profile[k].clone();
        }
    }
    if out["architectures"].is_null() {
        if let Some(map) = profile["archMap"].as_array() {
            let mut archs = Vec::new();
            for m in map {
                if m["architecture"].as_str() == Some(arch.as_str()) {
                    archs.push(m["architecture"].clone());
                    archs.extend(
                        m["subArchitectures"]
                            .as_array()
                            .cloned()
                            .unwrap_or_default(),
                    );
                }
            }
            out["architectures"] = Value::Array(archs);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_merges_like_docker() {
        let env = environment(
            &["PATH=/img".into(), "A=1".into()],
            &["A=2".into(), "B".into(), "C=3".into()],
            "h",
            true,
        );
        assert_eq!(env, ["PATH=/img", "HOSTNAME=h", "A=2", "C=3", "TERM=xterm"]);
    }

    #[test]
    fn cap_add_and_drop() {
        let mut hc = HostConfig {
            cap_drop: vec!["NET_RAW".into(), "chown".into()],
            cap_add: vec!["SYS_ADMIN".into()],
            ..HostConfig::default()
        };
        let c = capabilities(&hc).unwrap();
        assert!(!c.contains(&"CAP_NET_RAW".to_string()) && !c.contains(&"CAP_CHOWN".to_string()));
        assert!(c.contains(&"CAP_SYS_ADMIN".to_string()));
        hc.cap_drop = vec!["ALL".into()];
        hc.cap_add = vec!["CAP_KILL".into()];
        assert_eq!(capabilities(&hc).unwrap(), ["CAP_KILL"]);
        hc.cap_add = vec!["NOPE".into()];
        assert!(capabilities(&hc).is_err());
    }

    #[test]
    fn users_resolve_from_the_rootfs_and_never_outside_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("etc")).unwrap();
        std::fs::write(
            dir.path().join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\nweb:x:1000:1001::/srv:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("etc/group"),
            "root:x:0:\nweb:x:1001:\nextra:x:2000:web\nother:x:3000:\n",
        )
        .unwrap();
        let id = resolve_user(dir.path(), "web", &["other".into()]).unwrap();
        assert_eq!(
            (id.uid, id.gid, id.additional_gids.clone(), id.home.as_str()),
            (1000, 1001, vec![2000, 3000], "/srv")
        );
        let id = resolve_user(dir.path(), "1000:0", &[]).unwrap();
        assert_eq!((id.uid, id.gid), (1000, 0));
        assert!(resolve_user(dir.path(), "nobody-here", &[]).is_err());
        // A passwd symlink out of the root resolves inside it instead.
        std::fs::remove_file(dir.path().join("etc/passwd")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("etc/passwd")).unwrap();
        assert!(
            resolve_user(dir.path(), "root", &[]).is_err(),
            "host passwd must not be read"
        );
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64m"), Some(64 << 20));
        assert_eq!(parse_size("1g"), Some(1 << 30));
        assert_eq!(parse_size("512"), Some(512));
        assert_eq!(parse_size("x"), None);
    }
}
