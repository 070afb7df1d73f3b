//! `run`/`create` flags and their mapping to the API's container create
//! body (`Config` with `HostConfig` and `NetworkingConfig`), following the
//! docker CLI's rules: units (`512m`), `--cpus` to `NanoCpus`, port specs,
//! `-v` and `--mount` specs, restart policies, ulimits, devices, health
//! checks, environment and label files.
//!
//! Only parsing and mapping live here: no requests and no terminal.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value, json};

use crate::units;

/// Flag errors, worded like the docker CLI's.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid argument {value:?} for \"{flag}\" flag: {reason}")]
    Invalid {
        flag: &'static str,
        value: String,
        reason: String,
    },
    #[error("{0}")]
    Conflict(String),
    #[error("{path}: {op}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

fn invalid(flag: &'static str, value: &str, reason: impl Into<String>) -> Error {
    Error::Invalid {
        flag,
        value: value.to_string(),
        reason: reason.into(),
    }
}

/// The flags `run` and `create` share.
#[derive(clap::Args, Debug, Default, Clone)]
pub struct ContainerOpts {
    /// Attach to STDIN, STDOUT or STDERR
    #[arg(short = 'a', long = "attach", value_name = "STREAM")]
    pub attach: Vec<String>,
    /// Add a custom host-to-IP mapping (host:ip)
    #[arg(long = "add-host", value_name = "HOST:IP")]
    pub add_host: Vec<String>,
    /// Block IO weight (10-1000, 0 to disable)
    #[arg(long = "blkio-weight", value_name = "UINT16")]
    pub blkio_weight: Option<u16>,
    /// Block IO weight per device (DEVICE:WEIGHT)
    #[arg(long = "blkio-weight-device")]
    pub blkio_weight_device: Vec<String>,
    /// Add Linux capabilities
    #[arg(long = "cap-add")]
    pub cap_add: Vec<String>,
    /// Drop Linux capabilities
    #[arg(long = "cap-drop")]
    pub cap_drop: Vec<String>,
    /// Optional parent cgroup for the container
    #[arg(long = "cgroup-parent")]
    pub cgroup_parent: Option<String>,
    /// Cgroup namespace to use (host|private)
    #[arg(long = "cgroupns")]
    pub cgroupns: Option<String>,
    /// Write the container ID to the file
    #[arg(long = "cidfile")]
    pub cidfile: Option<PathBuf>,
    /// Limit CPU CFS period
    #[arg(long = "cpu-period")]
    pub cpu_period: Option<i64>,
    /// Limit CPU CFS quota
    #[arg(long = "cpu-quota")]
    pub cpu_quota: Option<i64>,
    /// Limit CPU real-time period in microseconds
    #[arg(long = "cpu-rt-period")]
    pub cpu_rt_period: Option<i64>,
    /// Limit CPU real-time runtime in microseconds
    #[arg(long = "cpu-rt-runtime")]
    pub cpu_rt_runtime: Option<i64>,
    /// CPU shares (relative weight)
    #[arg(short = 'c', long = "cpu-shares")]
    pub cpu_shares: Option<i64>,
    /// Number of CPUs
    #[arg(long = "cpus", value_name = "DECIMAL")]
    pub cpus: Option<String>,
    /// CPUs in which to allow execution (0-3, 0,1)
    #[arg(long = "cpuset-cpus")]
    pub cpuset_cpus: Option<String>,
    /// MEMs in which to allow execution (0-3, 0,1)
    #[arg(long = "cpuset-mems")]
    pub cpuset_mems: Option<String>,
    /// Override the key sequence for detaching a container
    #[arg(long = "detach-keys")]
    pub detach_keys: Option<String>,
    /// Add a host device to the container
    #[arg(long = "device")]
    pub device: Vec<String>,
    /// Add a rule to the cgroup allowed devices list
    #[arg(long = "device-cgroup-rule")]
    pub device_cgroup_rule: Vec<String>,
    /// Limit read rate (bytes per second) from a device
    #[arg(long = "device-read-bps")]
    pub device_read_bps: Vec<String>,
    /// Limit read rate (IO per second) from a device
    #[arg(long = "device-read-iops")]
    pub device_read_iops: Vec<String>,
    /// Limit write rate (bytes per second) to a device
    #[arg(long = "device-write-bps")]
    pub device_write_bps: Vec<String>,
    /// Limit write rate (IO per second) to a device
    #[arg(long = "device-write-iops")]
    pub device_write_iops: Vec<String>,
    /// Skip image verification (accepted for compatibility)
    #[arg(long = "disable-content-trust", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub disable_content_trust: Option<bool>,
    /// Set custom DNS servers
    #[arg(long = "dns")]
    pub dns: Vec<String>,
    /// Set DNS options
    #[arg(long = "dns-option", alias = "dns-opt")]
    pub dns_option: Vec<String>,
    /// Set custom DNS search domains
    #[arg(long = "dns-search")]
    pub dns_search: Vec<String>,
    /// Container NIS domain name
    #[arg(long = "domainname")]
    pub domainname: Option<String>,
    /// Overwrite the default ENTRYPOINT of the image
    #[arg(long = "entrypoint")]
    pub entrypoint: Option<String>,
    /// Set environment variables
    #[arg(short = 'e', long = "env")]
    pub env: Vec<String>,
    /// Read in a file of environment variables
    #[arg(long = "env-file")]
    pub env_file: Vec<PathBuf>,
    /// Expose a port or a range of ports
    #[arg(long = "expose")]
    pub expose: Vec<String>,
    /// Add additional groups to join
    #[arg(long = "group-add")]
    pub group_add: Vec<String>,
    /// Command to run to check health
    #[arg(long = "health-cmd")]
    pub health_cmd: Option<String>,
    /// Time between running the check (ms|s|m|h)
    #[arg(long = "health-interval")]
    pub health_interval: Option<String>,
    /// Consecutive failures needed to report unhealthy
    #[arg(long = "health-retries")]
    pub health_retries: Option<i64>,
    /// Time between running the check during the start period (ms|s|m|h)
    #[arg(long = "health-start-interval")]
    pub health_start_interval: Option<String>,
    /// Start period for the container to initialize (ms|s|m|h)
    #[arg(long = "health-start-period")]
    pub health_start_period: Option<String>,
    /// Maximum time to allow one check to run (ms|s|m|h)
    #[arg(long = "health-timeout")]
    pub health_timeout: Option<String>,
    /// Print usage
    #[arg(long = "help", action = clap::ArgAction::Help)]
    pub help: Option<bool>,
    /// Container host name
    #[arg(short = 'h', long = "hostname")]
    pub hostname: Option<String>,
    /// Run an init inside the container that forwards signals and reaps processes
    #[arg(long = "init", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub init: Option<bool>,
    /// Keep STDIN open even if not attached
    #[arg(short = 'i', long = "interactive")]
    pub interactive: bool,
    /// IPv4 address (e.g., 172.30.100.104)
    #[arg(long = "ip")]
    pub ip: Option<String>,
    /// IPv6 address (e.g., 2001:db8::33)
    #[arg(long = "ip6")]
    pub ip6: Option<String>,
    /// IPC mode to use
    #[arg(long = "ipc")]
    pub ipc: Option<String>,
    /// Container isolation technology
    #[arg(long = "isolation")]
    pub isolation: Option<String>,
    /// Set meta data on a container
    #[arg(short = 'l', long = "label")]
    pub label: Vec<String>,
    /// Read in a line delimited file of labels
    #[arg(long = "label-file")]
    pub label_file: Vec<PathBuf>,
    /// Add link to another container
    #[arg(long = "link")]
    pub link: Vec<String>,
    /// Logging driver for the container
    #[arg(long = "log-driver")]
    pub log_driver: Option<String>,
    /// Log driver options
    #[arg(long = "log-opt")]
    pub log_opt: Vec<String>,
    /// Container MAC address (e.g., 92:d0:c6:0a:29:33)
    #[arg(long = "mac-address")]
    pub mac_address: Option<String>,
    /// Memory limit
    #[arg(short = 'm', long = "memory", value_name = "BYTES")]
    pub memory: Option<String>,
    /// Memory soft limit
    #[arg(long = "memory-reservation", value_name = "BYTES")]
    pub memory_reservation: Option<String>,
    /// Swap limit equal to memory plus swap: '-1' to enable unlimited swap
    #[arg(long = "memory-swap", value_name = "BYTES", allow_hyphen_values = true)]
    pub memory_swap: Option<String>,
    /// Tune container memory swappiness (0 to 100)
    #[arg(long = "memory-swappiness", allow_hyphen_values = true)]
    pub memory_swappiness: Option<i64>,
    /// Attach a filesystem mount to the container
    #[arg(long = "mount")]
    pub mount: Vec<String>,
    /// Assign a name to the container
    #[arg(long = "name")]
    pub name: Option<String>,
    /// Connect a container to a network
    #[arg(long = "network", alias = "net")]
    pub network: Vec<String>,
    /// Add network-scoped alias for the container
    #[arg(long = "network-alias", alias = "net-alias")]
    pub network_alias: Vec<String>,
    /// Disable any container-specified HEALTHCHECK
    #[arg(long = "no-healthcheck", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub no_healthcheck: Option<bool>,
    /// Disable OOM Killer
    #[arg(long = "oom-kill-disable", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub oom_kill_disable: Option<bool>,
    /// Tune host's OOM preferences (-1000 to 1000)
    #[arg(long = "oom-score-adj", allow_hyphen_values = true)]
    pub oom_score_adj: Option<i64>,
    /// PID namespace to use
    #[arg(long = "pid")]
    pub pid: Option<String>,
    /// Tune container pids limit (set -1 for unlimited)
    #[arg(long = "pids-limit", allow_hyphen_values = true)]
    pub pids_limit: Option<i64>,
    /// Set platform if server is multi-platform capable
    #[arg(long = "platform")]
    pub platform: Option<String>,
    /// Give extended privileges to this container
    #[arg(long = "privileged", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub privileged: Option<bool>,
    /// Publish a container's port(s) to the host
    #[arg(short = 'p', long = "publish")]
    pub publish: Vec<String>,
    /// Publish all exposed ports to random ports
    #[arg(short = 'P', long = "publish-all")]
    pub publish_all: bool,
    /// Pull image before running ("always", "missing", "never")
    #[arg(long = "pull", default_value = "missing")]
    pub pull: String,
    /// Suppress the pull output
    #[arg(short = 'q', long = "quiet")]
    pub quiet: bool,
    /// Mount the container's root filesystem as read only
    #[arg(long = "read-only", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub read_only: Option<bool>,
    /// Restart policy to apply when a container exits
    #[arg(long = "restart")]
    pub restart: Option<String>,
    /// Automatically remove the container and its anonymous volumes when it exits
    #[arg(long = "rm", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub rm: Option<bool>,
    /// Runtime to use for this container
    #[arg(long = "runtime")]
    pub runtime: Option<String>,
    /// Security Options
    #[arg(long = "security-opt")]
    pub security_opt: Vec<String>,
    /// Size of /dev/shm
    #[arg(long = "shm-size", value_name = "BYTES")]
    pub shm_size: Option<String>,
    /// Proxy received signals to the process
    #[arg(long = "sig-proxy", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub sig_proxy: Option<bool>,
    /// Signal to stop the container
    #[arg(long = "stop-signal")]
    pub stop_signal: Option<String>,
    /// Timeout (in seconds) to stop a container
    #[arg(long = "stop-timeout", allow_hyphen_values = true)]
    pub stop_timeout: Option<i64>,
    /// Storage driver options for the container
    #[arg(long = "storage-opt")]
    pub storage_opt: Vec<String>,
    /// Sysctl options
    #[arg(long = "sysctl")]
    pub sysctl: Vec<String>,
    /// Mount a tmpfs directory
    #[arg(long = "tmpfs")]
    pub tmpfs: Vec<String>,
    /// Allocate a pseudo-TTY
    #[arg(short = 't', long = "tty")]
    pub tty: bool,
    /// Ulimit options
    #[arg(long = "ulimit")]
    pub ulimit: Vec<String>,
    /// Username or UID (format: <name|uid>[:<group|gid>])
    #[arg(short = 'u', long = "user")]
    pub user: Option<String>,
    /// User namespace to use
    #[arg(long = "userns")]
    pub userns: Option<String>,
    /// UTS namespace to use
    #[arg(long = "uts")]
    pub uts: Option<String>,
    /// Bind mount a volume
    #[arg(short = 'v', long = "volume")]
    pub volume: Vec<String>,
    /// Optional volume driver for the container
    #[arg(long = "volume-driver")]
    pub volume_driver: Option<String>,
    /// Mount volumes from the specified container(s)
    #[arg(long = "volumes-from")]
    pub volumes_from: Vec<String>,
    /// Working directory inside the container
    #[arg(short = 'w', long = "workdir")]
    pub workdir: Option<String>,
}

/// A create request: the body and its query parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct CreateRequest {
    pub name: Option<String>,
    pub platform: Option<String>,
    pub body: Value,
}

/// Where environment variables named without a value come from.
pub trait EnvLookup {
    fn get(&self, key: &str) -> Option<String>;
}

/// The process environment.
pub struct ProcessEnv;

impl EnvLookup for ProcessEnv {
    fn get(&self, key: &str) -> Option<String> {
        std::env::var(key).ok()
    }
}

impl EnvLookup for BTreeMap<String, String> {
    fn get(&self, key: &str) -> Option<String> {
        BTreeMap::get(self, key).cloned()
    }
}

fn read_file(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| Error::Io {
        op: "read",
        path: path.to_path_buf(),
        source,
    })
}

/// Parse an env file as docker does: `KEY=value` lines, `#` comments, and
/// bare names taken from the environment (left out when unset).
pub fn parse_env_file(path: &Path, env: &dyn EnvLookup) -> Result<Vec<String>> {
    let text = read_file(path)?;
    let mut out = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (key, value) = match line.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (line, None),
        };
        let key_t = key.trim_start();
        if key_t.is_empty() {
            return Err(invalid(
                "env-file",
                raw,
                format!("{}:{}: variable name is empty", path.display(), n + 1),
            ));
        }
        if key_t.contains(char::is_whitespace) {
            return Err(invalid(
                "env-file",
                raw,
                format!("variable '{key_t}' contains whitespaces"),
            ));
        }
        match value {
            Some(v) => out.push(format!("{key_t}={v}")),
            None => {
                if let Some(v) = env.get(key_t) {
                    out.push(format!("{key_t}={v}"));
                }
            }
        }
    }
    Ok(out)
}

/// `-e KEY` takes the value from the environment when set, else stays bare.
pub fn env_value(s: &str, env: &dyn EnvLookup) -> String {
    if s.contains('=') {
        return s.to_string();
    }
    match env.get(s) {
        Some(v) => format!("{s}={v}"),
        None => s.to_string(),
    }
}

/// Labels from files and flags, as a map (`-l k` alone means an empty
/// value; a file line without `=` is left out, as docker does).
pub fn parse_labels(files: &[PathBuf], flags: &[String]) -> Result<Map<String, Value>> {
    let mut lines = Vec::new();
    for f in files {
        for l in read_file(f)?.lines() {
            let t = l.trim_start();
            // docker drops file lines without a value (flags keep them).
            if !t.is_empty() && !t.starts_with('#') && t.contains('=') {
                lines.push(t.to_string());
            }
        }
    }
    lines.extend(flags.iter().cloned());
    let mut m = Map::new();
    for l in lines {
        let (k, v) = l.split_once('=').unwrap_or((l.as_str(), ""));
        m.insert(k.to_string(), json!(v));
    }
    Ok(m)
}

/// `key=value` list to a map.
pub fn kv_map(flag: &'static str, items: &[String]) -> Result<Map<String, Value>> {
    let mut m = Map::new();
    for i in items {
        let (k, v) = i
            .split_once('=')
            .ok_or_else(|| invalid(flag, i, "must be in the form key=value"))?;
        m.insert(k.to_string(), json!(v));
    }
    Ok(m)
}

/// `--cpus 1.5` to nano CPUs, exactly (no float rounding).
pub fn parse_cpus(s: &str) -> Result<i64> {
    let bad = || invalid("cpus", s, "failed to parse as a rational number");
    let t = s.trim();
    let (int, frac) = t.split_once('.').unwrap_or((t, ""));
    if int.is_empty() && frac.is_empty()
        || !int.chars().all(|c| c.is_ascii_digit())
        || !frac.chars().all(|c| c.is_ascii_digit())
    {
        return Err(bad());
    }
    if frac.len() > 9 && frac[9..].chars().any(|c| c != '0') {
        return Err(invalid("cpus", s, "value is too precise"));
    }
    let int: i64 = if int.is_empty() {
        0
    } else {
        int.parse().map_err(|_| bad())?
    };
    let mut f = frac.chars().take(9).collect::<String>();
    while f.len() < 9 {
        f.push('0');
    }
    let frac: i64 = f.parse().map_err(|_| bad())?;
    int.checked_mul(1_000_000_000)
        .and_then(|v| v.checked_add(frac))
        .ok_or_else(bad)
}

/// `--restart` to a RestartPolicy.
pub fn parse_restart(s: &str) -> Result<Value> {
    let (name, count) = match s.split_once(':') {
        Some((n, c)) => (n, Some(c)),
        None => (s, None),
    };
    let count: i64 = match count {
        None => 0,
        Some(c) => c
            .parse()
            .map_err(|_| invalid("restart", s, "maximum retry count must be an integer"))?,
    };
    match name {
        "" | "no" | "always" | "unless-stopped" => {
            if count != 0 {
                return Err(invalid(
                    "restart",
                    s,
                    format!("maximum retry count cannot be used with restart policy '{name}'"),
                ));
            }
        }
        "on-failure" => {
            if count < 0 {
                return Err(invalid(
                    "restart",
                    s,
                    "maximum retry count cannot be negative",
                ));
            }
        }
        _ => {
            return Err(invalid(
                "restart",
                s,
                format!("invalid restart policy '{name}'"),
            ));
        }
    }
    Ok(json!({"Name": name, "MaximumRetryCount": count}))
}

/// `--ulimit nofile=1024:2048`.
pub fn parse_ulimit(s: &str) -> Result<Value> {
    const NAMES: &[&str] = &[
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
    ];
    let (name, vals) = s
        .split_once('=')
        .ok_or_else(|| invalid("ulimit", s, "invalid ulimit argument"))?;
    if !NAMES.contains(&name) {
        return Err(invalid("ulimit", s, format!("invalid ulimit type: {name}")));
    }
    let (soft, hard) = match vals.split_once(':') {
        Some((a, b)) => (a, b),
        None => (vals, vals),
    };
    let p = |v: &str| -> Result<i64> {
        v.parse()
            .map_err(|_| invalid("ulimit", s, format!("invalid ulimit value: {v}")))
    };
    let (soft, hard) = (p(soft)?, p(hard)?);
    if soft > hard && hard != -1 {
        return Err(invalid(
            "ulimit",
            s,
            format!("ulimit soft limit must be less than or equal to hard limit: {soft} > {hard}"),
        ));
    }
    Ok(json!({"Name": name, "Hard": hard, "Soft": soft}))
}

/// `--device /dev/x[:/dev/y][:rwm]`.
pub fn parse_device(s: &str) -> Result<Value> {
    let parts: Vec<&str> = s.split(':').collect();
    let valid_perms = |p: &str| !p.is_empty() && p.chars().all(|c| matches!(c, 'r' | 'w' | 'm'));
    let (src, dst, perms) = match parts.as_slice() {
        [src] => (*src, *src, "rwm"),
        [src, x] if valid_perms(x) => (*src, *src, *x),
        [src, dst] => (*src, *dst, "rwm"),
        [src, dst, p] => {
            if !valid_perms(p) {
                return Err(invalid("device", s, format!("invalid device mode: {p}")));
            }
            (*src, *dst, *p)
        }
        _ => return Err(invalid("device", s, "invalid device specification")),
    };
    if !dst.starts_with('/') {
        return Err(invalid(
            "device",
            s,
            format!("{dst} is not an absolute path"),
        ));
    }
    Ok(json!({"PathOnHost": src, "PathInContainer": dst, "CgroupPermissions": perms}))
}

fn parse_throttle(flag: &'static str, s: &str, iops: bool) -> Result<Value> {
    let (path, rate) = s
        .rsplit_once(':')
        .ok_or_else(|| invalid(flag, s, "bad format, expected DEVICE:RATE"))?;
    if !path.starts_with("/dev/") {
        return Err(invalid(
            flag,
            s,
            format!("bad format for device path: {path}"),
        ));
    }
    let rate: i64 = if iops {
        rate.parse()
            .map_err(|_| invalid(flag, s, format!("invalid rate for device: {rate}; the number of operations must be a positive integer")))?
    } else {
        units::ram_in_bytes(rate).map_err(|_| {
            invalid(flag, s, format!("invalid rate for device: {rate}; the format is <number><unit>, number must be a positive integer"))
        })?
    };
    if rate < 0 {
        return Err(invalid(flag, s, "rate must not be negative"));
    }
    Ok(json!({"Path": path, "Rate": rate}))
}

/// A port spec's pieces: bindings per `port/proto`.
pub type PortMap = BTreeMap<String, Vec<(String, String)>>;

fn parse_range(s: &str) -> Option<(u32, u32)> {
    let (a, b) = match s.split_once('-') {
        Some((a, b)) => (a, b),
        None => (s, s),
    };
    let a: u32 = a.parse().ok()?;
    let b: u32 = b.parse().ok()?;
    (a <= b && b <= 65535).then_some((a, b))
}

/// `-p [ip:][hostPort:]containerPort[/proto]`, with ranges and `[v6]`.
pub fn parse_publish(spec: &str, out: &mut PortMap) -> Result<()> {
    let bad = |why: &str| invalid("publish", spec, why.to_string());
    let (rest, proto) = match spec.rsplit_once('/') {
        Some((r, p)) => (r, p.to_ascii_lowercase()),
        None => (spec, "tcp".to_string()),
    };
    if !matches!(proto.as_str(), "tcp" | "udp" | "sctp") {
        return Err(bad(&format!("invalid proto: {proto}")));
    }
    let parts: Vec<&str> = rest.split(':').collect();
    let n = parts.len();
    let container = parts[n - 1];
    let (ip, host) = match n {
        1 => (String::new(), ""),
        2 => (String::new(), parts[0]),
        3 => (parts[0].to_string(), parts[1]),
        _ => (parts[..n - 2].join(":"), parts[n - 2]),
    };
    let ip = ip
        .strip_prefix('[')
        .and_then(|x| x.strip_suffix(']'))
        .map_or(ip.clone(), str::to_string);
    if !ip.is_empty() && ip.parse::<std::net::IpAddr>().is_err() {
        return Err(bad(&format!("invalid IP address: {ip}")));
    }
    if container.is_empty() {
        return Err(bad("no port specified"));
    }
    let (cs, ce) = parse_range(container)
        .ok_or_else(|| bad(&format!("invalid containerPort: {container}")))?;
    let (hs, he) = if host.is_empty() {
        (0, 0)
    } else {
        parse_range(host).ok_or_else(|| bad(&format!("invalid hostPort: {host}")))?
    };
    if !host.is_empty() && ce - cs != he - hs && (he - hs != 0 || ce != cs) {
        // A single container port may take a host range; otherwise the
        // lengths must match.
        if ce != cs {
            return Err(bad(&format!(
                "invalid ranges specified for container and host Ports: {container} and {host}"
            )));
        }
    }
    for i in 0..=(ce - cs) {
        let port = format!("{}/{proto}", cs + i);
        let host_port = if host.is_empty() {
            String::new()
        } else if ce == cs && he != hs {
            format!("{hs}-{he}")
        } else {
            (hs + i).to_string()
        };
        out.entry(port).or_default().push((ip.clone(), host_port));
    }
    Ok(())
}

/// `--expose 80`, `--expose 8000-8010/udp`.
pub fn parse_expose(spec: &str) -> Result<Vec<String>> {
    let (rest, proto) = spec.rsplit_once('/').unwrap_or((spec, "tcp"));
    let (s, e) = parse_range(rest)
        .ok_or_else(|| invalid("expose", spec, "invalid range format for --expose"))?;
    Ok((s..=e).map(|p| format!("{p}/{proto}")).collect())
}

fn abs_host_path(p: &str) -> String {
    if p.starts_with("./") || p.starts_with("../") || p == "." || p == ".." {
        if let Ok(cwd) = std::env::current_dir() {
            return clean_path(&cwd.join(p));
        }
    }
    p.to_string()
}

fn clean_path(p: &Path) -> String {
    let mut parts: Vec<String> = Vec::new();
    for c in p.components() {
        match c {
            std::path::Component::ParentDir => {
                parts.pop();
            }
            std::path::Component::Normal(s) => parts.push(s.to_string_lossy().into_owned()),
            _ => {}
        }
    }
    format!("/{}", parts.join("/"))
}

/// `--mount type=bind,source=/a,target=/b,readonly,...` to a Mount.
pub fn parse_mount(spec: &str) -> Result<Value> {
    let mut m = Map::new();
    let mut ty = "volume".to_string();
    let mut bind = Map::new();
    let mut volume = Map::new();
    let mut vol_labels = Map::new();
    let mut vol_opts = Map::new();
    let mut vol_driver: Option<String> = None;
    let mut tmpfs = Map::new();
    let fields = split_csv(spec);
    for f in &fields {
        let (k, v) = match f.split_once('=') {
            Some((k, v)) => (k.trim().to_ascii_lowercase(), Some(v.to_string())),
            None => (f.trim().to_ascii_lowercase(), None),
        };
        let boolean = |v: &Option<String>| -> Result<bool> {
            match v.as_deref() {
                None | Some("1" | "true" | "True" | "TRUE") => Ok(true),
                Some("0" | "false" | "False" | "FALSE") => Ok(false),
                Some(o) => Err(invalid(
                    "mount",
                    spec,
                    format!("invalid value for {k}: {o}"),
                )),
            }
        };
        let need = |v: &Option<String>| -> Result<String> {
            v.clone().ok_or_else(|| {
                invalid(
                    "mount",
                    spec,
                    format!("invalid field '{f}' must be a key=value pair"),
                )
            })
        };
        match k.as_str() {
            "type" => ty = need(&v)?.to_ascii_lowercase(),
            "source" | "src" => {
                m.insert("Source".into(), json!(need(&v)?));
            }
            "target" | "dst" | "destination" => {
                m.insert("Target".into(), json!(need(&v)?));
            }
            "readonly" | "ro" => {
                m.insert("ReadOnly".into(), json!(boolean(&v)?));
            }
            "consistency" => {
                m.insert("Consistency".into(), json!(need(&v)?));
            }
            "bind-propagation" => {
                bind.insert("Propagation".into(), json!(need(&v)?));
            }
            "bind-nonrecursive" => {
                bind.insert("NonRecursive".into(), json!(boolean(&v)?));
            }
            "bind-create-src" => {
                bind.insert("CreateMountpoint".into(), json!(boolean(&v)?));
            }
            "volume-nocopy" => {
                volume.insert("NoCopy".into(), json!(boolean(&v)?));
            }
            "volume-subpath" => {
                volume.insert("Subpath".into(), json!(need(&v)?));
            }
            "volume-label" => {
                let kv = need(&v)?;
                let (a, b) = kv.split_once('=').unwrap_or((kv.as_str(), ""));
                vol_labels.insert(a.to_string(), json!(b));
            }
            "volume-driver" => vol_driver = Some(need(&v)?),
            "volume-opt" => {
                let kv = need(&v)?;
                let (a, b) = kv
                    .split_once('=')
                    .ok_or_else(|| invalid("mount", spec, format!("invalid volume-opt '{kv}'")))?;
                vol_opts.insert(a.to_string(), json!(b));
            }
            "tmpfs-size" => {
                let s = need(&v)?;
                let n = units::ram_in_bytes(&s)
                    .map_err(|_| invalid("mount", spec, format!("invalid value for {k}: {s}")))?;
                tmpfs.insert("SizeBytes".into(), json!(n));
            }
            "tmpfs-mode" => {
                let s = need(&v)?;
                let n = u32::from_str_radix(&s, 8)
                    .map_err(|_| invalid("mount", spec, format!("invalid value for {k}: {s}")))?;
                tmpfs.insert("Mode".into(), json!(n));
            }
            _ => {
                return Err(invalid(
                    "mount",
                    spec,
                    format!("unexpected key '{k}' in '{f}'"),
                ));
            }
        }
    }
    if !matches!(
        ty.as_str(),
        "bind" | "volume" | "tmpfs" | "npipe" | "cluster" | "image"
    ) {
        return Err(invalid("mount", spec, format!("invalid mount type {ty:?}")));
    }
    if !m.contains_key("Target") {
        return Err(invalid("mount", spec, "target is required"));
    }
    if ty == "bind" {
        if let Some(Value::String(src)) = m.get("Source") {
            let abs = abs_host_path(src);
            m.insert("Source".into(), json!(abs));
        }
    }
    let mut out = Map::new();
    out.insert("Type".into(), json!(ty));
    out.extend(m);
    if !bind.is_empty() {
        if ty != "bind" {
            return Err(invalid(
                "mount",
                spec,
                format!("cannot mix 'bind-*' options with mount type '{ty}'"),
            ));
        }
        out.insert("BindOptions".into(), Value::Object(bind));
    }
    if !vol_labels.is_empty() {
        volume.insert("Labels".into(), Value::Object(vol_labels));
    }
    if vol_driver.is_some() || !vol_opts.is_empty() {
        let mut dc = Map::new();
        dc.insert("Name".into(), json!(vol_driver.unwrap_or_default()));
        if !vol_opts.is_empty() {
            dc.insert("Options".into(), Value::Object(vol_opts));
        }
        volume.insert("DriverConfig".into(), Value::Object(dc));
    }
    if !volume.is_empty() {
        if ty != "volume" {
            return Err(invalid(
                "mount",
                spec,
                format!("cannot mix 'volume-*' options with mount type '{ty}'"),
            ));
        }
        out.insert("VolumeOptions".into(), Value::Object(volume));
    }
    if !tmpfs.is_empty() {
        if ty != "tmpfs" {
            return Err(invalid(
                "mount",
                spec,
                format!("cannot mix 'tmpfs-*' options with mount type '{ty}'"),
            ));
        }
        out.insert("TmpfsOptions".into(), Value::Object(tmpfs));
    }
    Ok(Value::Object(out))
}

/// Split a CSV record (double quotes group, `""` is a quote).
pub fn split_csv(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            '"' => quoted = !quoted,
            ',' if !quoted => out.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    out.push(cur);
    out.into_iter().filter(|f| !f.is_empty()).collect()
}

/// `-v` to either a bind (`src:dst[:mode]`) or an anonymous volume.
pub enum VolumeSpec {
    Bind(String),
    Anonymous(String),
}

/// Classify and normalise a `-v` value.
pub fn parse_volume(spec: &str) -> Result<VolumeSpec> {
    let parts: Vec<&str> = spec.split(':').collect();
    match parts.as_slice() {
        [""] => Err(invalid("volume", spec, "invalid empty volume spec")),
        [one] => Ok(VolumeSpec::Anonymous((*one).to_string())),
        [src, rest @ ..] if rest.len() <= 2 => {
            if src.is_empty() {
                return Err(invalid(
                    "volume",
                    spec,
                    "invalid spec: empty section between colons",
                ));
            }
            if rest[0].is_empty() || !rest[0].starts_with('/') {
                return Err(invalid(
                    "volume",
                    spec,
                    format!(
                        "invalid volume specification: '{spec}': invalid mount config for type \"volume\": invalid mount path: '{}' mount path must be absolute",
                        rest[0]
                    ),
                ));
            }
            let src = abs_host_path(src);
            let mut v = vec![src];
            v.extend(rest.iter().map(|s| (*s).to_string()));
            Ok(VolumeSpec::Bind(v.join(":")))
        }
        _ => Err(invalid(
            "volume",
            spec,
            format!("invalid volume specification: '{spec}'"),
        )),
    }
}

/// Capabilities as docker sends them: upper case with a `CAP_` prefix
/// (`ALL` stays as it is), duplicates dropped.
pub fn normalize_caps(caps: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for c in caps {
        let up = c.trim().to_uppercase();
        let n = if up == "ALL" || up.starts_with("CAP_") {
            up
        } else {
            format!("CAP_{up}")
        };
        if !out.contains(&n) {
            out.push(n);
        }
    }
    out
}

/// `--add-host host:ip` (also `host=ip`), checked.
pub fn parse_add_host(s: &str) -> Result<String> {
    let (host, ip) = match s.split_once('=') {
        Some(p) => p,
        None => s
            .split_once(':')
            .ok_or_else(|| invalid("add-host", s, format!("bad format for add-host: {s:?}")))?,
    };
    let ip_t = ip.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || (ip_t != "host-gateway" && ip_t.parse::<std::net::IpAddr>().is_err()) {
        return Err(invalid(
            "add-host",
            s,
            format!("invalid IP address in add-host: {ip:?}"),
        ));
    }
    Ok(format!("{host}:{ip_t}"))
}

fn health_duration(flag: &'static str, s: Option<&String>) -> Result<Option<i64>> {
    match s {
        None => Ok(None),
        Some(v) => {
            let ns = units::parse_go_duration(v).map_err(|e| invalid(flag, v, e.to_string()))?;
            if ns < 0 {
                return Err(Error::Conflict(format!("--{flag} cannot be negative")));
            }
            Ok(Some(ns))
        }
    }
}

/// Parse `--security-opt`, reading seccomp profiles from files as docker
/// does (the daemon receives the profile's JSON, not the path).
pub fn parse_security_opts(opts: &[String]) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for o in opts {
        if o == "no-new-privileges" {
            out.push(o.clone());
            continue;
        }
        let (k, v) = o
            .split_once('=')
            .or_else(|| o.split_once(':'))
            .ok_or_else(|| invalid("security-opt", o, "Invalid --security-opt"))?;
        if k == "seccomp" && v != "unconfined" && v != "builtin" {
            let text = read_file(Path::new(v))?;
            let compact: Value = serde_json::from_str(&text).map_err(|e| {
                invalid(
                    "security-opt",
                    o,
                    format!("compacting json for seccomp profile ({v}) failed: {e}"),
                )
            })?;
            out.push(format!("seccomp={compact}"));
        } else {
            out.push(format!("{k}={v}"));
        }
    }
    Ok(out)
}

fn set(m: &mut Map<String, Value>, k: &str, v: Value) {
    m.insert(k.to_string(), v);
}

fn strings(v: &[String]) -> Value {
    json!(v)
}

/// Map flags to a create request. `detach` is `run -d` (or `create`,
/// which still records the attach flags the docker CLI records).
pub fn build_create(
    o: &ContainerOpts,
    image: &str,
    args: &[String],
    detach: bool,
    env: &dyn EnvLookup,
) -> Result<CreateRequest> {
    let mut cfg = Map::new();
    let mut hc = Map::new();

    // Attach and stdio.
    let mut attach_in = o.attach.iter().any(|a| a.eq_ignore_ascii_case("stdin"));
    let mut attach_out = o.attach.iter().any(|a| a.eq_ignore_ascii_case("stdout"));
    let mut attach_err = o.attach.iter().any(|a| a.eq_ignore_ascii_case("stderr"));
    for a in &o.attach {
        if !matches!(
            a.to_ascii_lowercase().as_str(),
            "stdin" | "stdout" | "stderr"
        ) {
            return Err(invalid(
                "attach",
                a,
                "valid streams are STDIN, STDOUT and STDERR",
            ));
        }
    }
    if o.interactive {
        attach_in = true;
    }
    if o.attach.is_empty() {
        attach_out = true;
        attach_err = true;
    }
    if detach {
        if !o.attach.is_empty() {
            return Err(Error::Conflict(
                "Conflicting options: -a and -d".to_string(),
            ));
        }
        attach_in = false;
        attach_out = false;
        attach_err = false;
    }
    if o.rm == Some(true)
        && o.restart
            .as_deref()
            .is_some_and(|r| r != "no" && !r.is_empty())
    {
        return Err(Error::Conflict(
            "Conflicting options: --restart and --rm".to_string(),
        ));
    }
    set(&mut cfg, "AttachStdin", json!(attach_in));
    set(&mut cfg, "AttachStdout", json!(attach_out));
    set(&mut cfg, "AttachStderr", json!(attach_err));
    set(&mut cfg, "Tty", json!(o.tty));
    set(&mut cfg, "OpenStdin", json!(o.interactive));
    set(
        &mut cfg,
        "StdinOnce",
        json!(o.interactive && attach_in && !detach),
    );
    if let Some(h) = &o.hostname {
        set(&mut cfg, "Hostname", json!(h));
    }
    if let Some(d) = &o.domainname {
        set(&mut cfg, "Domainname", json!(d));
    }
    if let Some(u) = &o.user {
        set(&mut cfg, "User", json!(u));
    }
    if let Some(w) = &o.workdir {
        if !w.starts_with('/') {
            return Err(invalid(
                "workdir",
                w,
                "the working directory is invalid, it needs to be an absolute path",
            ));
        }
        set(&mut cfg, "WorkingDir", json!(w));
    }
    if let Some(mac) = &o.mac_address {
        set(&mut cfg, "MacAddress", json!(mac));
    }

    // Environment: files first, then flags.
    let mut envs = Vec::new();
    for f in &o.env_file {
        envs.extend(parse_env_file(f, env)?);
    }
    envs.extend(o.env.iter().map(|e| env_value(e, env)));
    if !envs.is_empty() {
        set(&mut cfg, "Env", strings(&envs));
    }
    set(&mut cfg, "Image", json!(image));
    if !args.is_empty() {
        set(&mut cfg, "Cmd", strings(args));
    }
    if let Some(ep) = &o.entrypoint {
        set(&mut cfg, "Entrypoint", json!([ep]));
    }
    let labels = parse_labels(&o.label_file, &o.label)?;
    if !labels.is_empty() {
        set(&mut cfg, "Labels", Value::Object(labels));
    }
    if let Some(s) = &o.stop_signal {
        set(&mut cfg, "StopSignal", json!(s));
    }
    if let Some(t) = o.stop_timeout {
        set(&mut cfg, "StopTimeout", json!(t));
    }

    // Ports.
    let mut ports = PortMap::new();
    for p in &o.publish {
        parse_publish(p, &mut ports)?;
    }
    let mut exposed = Map::new();
    for p in ports.keys() {
        exposed.insert(p.clone(), json!({}));
    }
    for e in &o.expose {
        for p in parse_expose(e)? {
            exposed.insert(p, json!({}));
        }
    }
    if !exposed.is_empty() {
        set(&mut cfg, "ExposedPorts", Value::Object(exposed));
    }
    if !ports.is_empty() {
        let mut pb = Map::new();
        for (k, binds) in &ports {
            let list: Vec<Value> = binds
                .iter()
                .map(|(ip, hp)| json!({"HostIp": ip, "HostPort": hp}))
                .collect();
            pb.insert(k.clone(), Value::Array(list));
        }
        set(&mut hc, "PortBindings", Value::Object(pb));
    }
    if o.publish_all {
        set(&mut hc, "PublishAllPorts", json!(true));
    }

    // Volumes and mounts.
    let mut binds = Vec::new();
    let mut anon = Map::new();
    for v in &o.volume {
        match parse_volume(v)? {
            VolumeSpec::Bind(b) => binds.push(b),
            VolumeSpec::Anonymous(p) => {
                anon.insert(p, json!({}));
            }
        }
    }
    if !anon.is_empty() {
        set(&mut cfg, "Volumes", Value::Object(anon));
    }
    if !binds.is_empty() {
        set(&mut hc, "Binds", strings(&binds));
    }
    if !o.mount.is_empty() {
        let mounts: Result<Vec<Value>> = o.mount.iter().map(|m| parse_mount(m)).collect();
        set(&mut hc, "Mounts", Value::Array(mounts?));
    }
    if !o.tmpfs.is_empty() {
        let mut t = Map::new();
        for s in &o.tmpfs {
            let (p, opts) = s.split_once(':').unwrap_or((s.as_str(), ""));
            t.insert(p.to_string(), json!(opts));
        }
        set(&mut hc, "Tmpfs", Value::Object(t));
    }
    if !o.volumes_from.is_empty() {
        set(&mut hc, "VolumesFrom", strings(&o.volumes_from));
    }
    if let Some(d) = &o.volume_driver {
        set(&mut hc, "VolumeDriver", json!(d));
    }

    // Health check.
    let interval = health_duration("health-interval", o.health_interval.as_ref())?;
    let timeout = health_duration("health-timeout", o.health_timeout.as_ref())?;
    let start_period = health_duration("health-start-period", o.health_start_period.as_ref())?;
    let start_interval =
        health_duration("health-start-interval", o.health_start_interval.as_ref())?;
    if o.no_healthcheck == Some(true) {
        if o.health_cmd.is_some()
            || interval.is_some()
            || timeout.is_some()
            || o.health_retries.is_some()
            || start_period.is_some()
        {
            return Err(Error::Conflict(
                "--no-healthcheck conflicts with --health-* options".to_string(),
            ));
        }
        set(&mut cfg, "Healthcheck", json!({"Test": ["NONE"]}));
    } else if o.health_cmd.is_some()
        || interval.is_some()
        || timeout.is_some()
        || o.health_retries.is_some()
        || start_period.is_some()
        || start_interval.is_some()
    {
        let mut h = Map::new();
        if let Some(c) = &o.health_cmd {
            set(&mut h, "Test", json!(["CMD-SHELL", c]));
        }
        if let Some(r) = o.health_retries {
            if r < 0 {
                return Err(Error::Conflict(
                    "--health-retries cannot be negative".to_string(),
                ));
            }
        }
        set(&mut h, "Interval", json!(interval.unwrap_or(0)));
        set(&mut h, "Timeout", json!(timeout.unwrap_or(0)));
        set(&mut h, "StartPeriod", json!(start_period.unwrap_or(0)));
        set(&mut h, "StartInterval", json!(start_interval.unwrap_or(0)));
        set(&mut h, "Retries", json!(o.health_retries.unwrap_or(0)));
        set(&mut cfg, "Healthcheck", Value::Object(h));
    }

    // Resources.
    let mem = |flag: &'static str, v: &Option<String>| -> Result<Option<i64>> {
        v.as_ref()
            .map(|s| units::ram_in_bytes(s).map_err(|e| invalid(flag, s, e.to_string())))
            .transpose()
    };
    if let Some(m) = mem("memory", &o.memory)? {
        set(&mut hc, "Memory", json!(m));
    }
    if let Some(m) = mem("memory-reservation", &o.memory_reservation)? {
        set(&mut hc, "MemoryReservation", json!(m));
    }
    if let Some(s) = &o.memory_swap {
        let v = if s == "-1" {
            -1
        } else {
            units::ram_in_bytes(s).map_err(|e| invalid("memory-swap", s, e.to_string()))?
        };
        set(&mut hc, "MemorySwap", json!(v));
    }
    // -1 means "not set"; docker always sends it.
    let swappiness = o.memory_swappiness.unwrap_or(-1);
    if swappiness != -1 && !(0..=100).contains(&swappiness) {
        return Err(invalid(
            "memory-swappiness",
            &swappiness.to_string(),
            "valid memory swappiness range is 0-100",
        ));
    }
    set(&mut hc, "MemorySwappiness", json!(swappiness));
    if let Some(m) = mem("shm-size", &o.shm_size)? {
        set(&mut hc, "ShmSize", json!(m));
    }
    if let Some(c) = &o.cpus {
        set(&mut hc, "NanoCpus", json!(parse_cpus(c)?));
    }
    if o.cpus.is_some()
        && (o.cpu_period.is_some_and(|v| v != 0) || o.cpu_quota.is_some_and(|v| v != 0))
    {
        return Err(Error::Conflict(
            "Conflicting options: Nano CPUs and CPU Period cannot both be set".to_string(),
        ));
    }
    for (k, v) in [
        ("CpuShares", o.cpu_shares),
        ("CpuPeriod", o.cpu_period),
        ("CpuQuota", o.cpu_quota),
        ("CpuRealtimePeriod", o.cpu_rt_period),
        ("CpuRealtimeRuntime", o.cpu_rt_runtime),
        ("OomScoreAdj", o.oom_score_adj),
        ("PidsLimit", o.pids_limit),
    ] {
        if let Some(v) = v {
            set(&mut hc, k, json!(v));
        }
    }
    if let Some(v) = &o.cpuset_cpus {
        set(&mut hc, "CpusetCpus", json!(v));
    }
    if let Some(v) = &o.cpuset_mems {
        set(&mut hc, "CpusetMems", json!(v));
    }
    if let Some(w) = o.blkio_weight {
        if w != 0 && !(10..=1000).contains(&w) {
            return Err(invalid(
                "blkio-weight",
                &w.to_string(),
                "range of blkio weight is from 10 to 1000",
            ));
        }
        set(&mut hc, "BlkioWeight", json!(w));
    }
    if !o.blkio_weight_device.is_empty() {
        let mut list = Vec::new();
        for s in &o.blkio_weight_device {
            let (p, w) = s.rsplit_once(':').ok_or_else(|| {
                invalid(
                    "blkio-weight-device",
                    s,
                    "bad format, expected DEVICE:WEIGHT",
                )
            })?;
            let w: u16 = w.parse().map_err(|_| {
                invalid(
                    "blkio-weight-device",
                    s,
                    format!("invalid weight for device: {w}"),
                )
            })?;
            list.push(json!({"Path": p, "Weight": w}));
        }
        set(&mut hc, "BlkioWeightDevice", Value::Array(list));
    }
    for (k, flag, items, iops) in [
        (
            "BlkioDeviceReadBps",
            "device-read-bps",
            &o.device_read_bps,
            false,
        ),
        (
            "BlkioDeviceWriteBps",
            "device-write-bps",
            &o.device_write_bps,
            false,
        ),
        (
            "BlkioDeviceReadIOps",
            "device-read-iops",
            &o.device_read_iops,
            true,
        ),
        (
            "BlkioDeviceWriteIOps",
            "device-write-iops",
            &o.device_write_iops,
            true,
        ),
    ] {
        if !items.is_empty() {
            let list: Result<Vec<Value>> = items
                .iter()
                .map(|s| parse_throttle(flag, s, iops))
                .collect();
            set(&mut hc, k, Value::Array(list?));
        }
    }
    if !o.ulimit.is_empty() {
        let list: Result<Vec<Value>> = o.ulimit.iter().map(|u| parse_ulimit(u)).collect();
        set(&mut hc, "Ulimits", Value::Array(list?));
    }
    if !o.device.is_empty() {
        let list: Result<Vec<Value>> = o.device.iter().map(|d| parse_device(d)).collect();
        set(&mut hc, "Devices", Value::Array(list?));
    }
    if !o.device_cgroup_rule.is_empty() {
        set(&mut hc, "DeviceCgroupRules", strings(&o.device_cgroup_rule));
    }
    if let Some(b) = o.oom_kill_disable {
        set(&mut hc, "OomKillDisable", json!(b));
    }
    if let Some(p) = &o.cgroup_parent {
        set(&mut hc, "CgroupParent", json!(p));
    }

    // Security, namespaces, misc.
    if o.privileged == Some(true) {
        set(&mut hc, "Privileged", json!(true));
    }
    if o.read_only == Some(true) {
        set(&mut hc, "ReadonlyRootfs", json!(true));
    }
    if o.rm == Some(true) {
        set(&mut hc, "AutoRemove", json!(true));
    }
    if let Some(i) = o.init {
        set(&mut hc, "Init", json!(i));
    }
    if !o.cap_add.is_empty() {
        set(&mut hc, "CapAdd", strings(&normalize_caps(&o.cap_add)));
    }
    if !o.cap_drop.is_empty() {
        set(&mut hc, "CapDrop", strings(&normalize_caps(&o.cap_drop)));
    }
    if !o.security_opt.is_empty() {
        set(
            &mut hc,
            "SecurityOpt",
            strings(&parse_security_opts(&o.security_opt)?),
        );
    }
    if !o.group_add.is_empty() {
        set(&mut hc, "GroupAdd", strings(&o.group_add));
    }
    if !o.sysctl.is_empty() {
        set(
            &mut hc,
            "Sysctls",
            Value::Object(kv_map("sysctl", &o.sysctl)?),
        );
    }
    if !o.storage_opt.is_empty() {
        set(
            &mut hc,
            "StorageOpt",
            Value::Object(kv_map("storage-opt", &o.storage_opt)?),
        );
    }
    for (k, v) in [
        ("IpcMode", &o.ipc),
        ("PidMode", &o.pid),
        ("UTSMode", &o.uts),
        ("UsernsMode", &o.userns),
        ("CgroupnsMode", &o.cgroupns),
        ("Runtime", &o.runtime),
        ("Isolation", &o.isolation),
    ] {
        if let Some(v) = v {
            set(&mut hc, k, json!(v));
        }
    }
    if let Some(c) = &o.cidfile {
        set(&mut hc, "ContainerIDFile", json!(c.to_string_lossy()));
    }
    if !o.dns.is_empty() {
        for d in &o.dns {
            if d.parse::<std::net::IpAddr>().is_err() {
                return Err(invalid("dns", d, format!("{d} is not an ip address")));
            }
        }
        set(&mut hc, "Dns", strings(&o.dns));
    }
    if !o.dns_option.is_empty() {
        set(&mut hc, "DnsOptions", strings(&o.dns_option));
    }
    if !o.dns_search.is_empty() {
        set(&mut hc, "DnsSearch", strings(&o.dns_search));
    }
    if !o.add_host.is_empty() {
        let hosts: Result<Vec<String>> = o.add_host.iter().map(|h| parse_add_host(h)).collect();
        set(&mut hc, "ExtraHosts", strings(&hosts?));
    }
    if !o.link.is_empty() {
        let links: Vec<String> = o
            .link
            .iter()
            .map(|l| {
                let (name, alias) = l.split_once(':').unwrap_or((l.as_str(), l.as_str()));
                format!("/{}:/{alias}", name.trim_start_matches('/'))
            })
            .collect();
        set(&mut hc, "Links", strings(&links));
    }
    // docker always sends a policy ("no" by default).
    set(
        &mut hc,
        "RestartPolicy",
        parse_restart(o.restart.as_deref().unwrap_or("no"))?,
    );
    if o.log_driver.is_some() || !o.log_opt.is_empty() {
        set(
            &mut hc,
            "LogConfig",
            json!({"Type": o.log_driver.clone().unwrap_or_default(), "Config": kv_map("log-opt", &o.log_opt)?}),
        );
    }

    // Networking.
    let network = o
        .network
        .first()
        .cloned()
        .unwrap_or_else(|| "default".to_string());
    set(&mut hc, "NetworkMode", json!(network));
    let mut endpoints = Map::new();
    let user_net = !matches!(network.as_str(), "default" | "bridge" | "host" | "none")
        && !network.starts_with("container:");
    // docker sends an endpoint for every network, the default one included.
    let networks = if o.network.is_empty() {
        vec![network.clone()]
    } else {
        o.network.clone()
    };
    for (i, n) in networks.iter().enumerate() {
        let mut ep = Map::new();
        if i == 0 {
            if !o.network_alias.is_empty() {
                if !user_net {
                    return Err(Error::Conflict(
                        "network-scoped aliases are only supported for user-defined networks"
                            .to_string(),
                    ));
                }
                set(&mut ep, "Aliases", strings(&o.network_alias));
            }
            let mut ipam = Map::new();
            if let Some(ip) = &o.ip {
                set(&mut ipam, "IPv4Address", json!(ip));
            }
            if let Some(ip) = &o.ip6 {
                set(&mut ipam, "IPv6Address", json!(ip));
            }
            if !ipam.is_empty() {
                set(&mut ep, "IPAMConfig", Value::Object(ipam));
            }
        }
        endpoints.insert(n.clone(), Value::Object(ep));
    }
    if o.network.is_empty() && !o.network_alias.is_empty() {
        return Err(Error::Conflict(
            "network-scoped aliases are only supported for user-defined networks".to_string(),
        ));
    }
    let mut body = cfg;
    body.insert("HostConfig".into(), Value::Object(hc));
    body.insert(
        "NetworkingConfig".into(),
        json!({"EndpointsConfig": Value::Object(endpoints)}),
    );
    Ok(CreateRequest {
        name: o.name.clone(),
        platform: o.platform.clone(),
        body: Value::Object(body),
    })
}

/// Drop nulls, empty strings, `false`, zeros, and empty lists and maps,
/// recursively: the form in which two create bodies are compared, since
/// the daemon treats an absent field and its zero value alike.
pub fn normalize(v: &Value) -> Value {
    normalize_in(v, false)
}

/// Maps whose keys carry meaning even when their values are empty
/// (`"Volumes": {"/data": {}}`, `"Tmpfs": {"/run": ""}`).
const KEYED_MAPS: &[&str] = &[
    "Volumes",
    "ExposedPorts",
    "Tmpfs",
    "Labels",
    "Sysctls",
    "StorageOpt",
    "DriverOpts",
    "Options",
    "Config",
];

fn normalize_in(v: &Value, keep_all: bool) -> Value {
    match v {
        Value::Object(m) => {
            let mut out = Map::new();
            for (k, x) in m {
                let n = normalize_in(x, KEYED_MAPS.contains(&k.as_str()));
                if keep_all || !is_zero(&n) {
                    out.insert(k.clone(), n);
                }
            }
            Value::Object(out)
        }
        Value::Array(a) => Value::Array(a.iter().map(|x| normalize_in(x, false)).collect()),
        other => other.clone(),
    }
}

fn is_zero(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(m) => m.is_empty(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpus_are_exact() {
        assert_eq!(parse_cpus("1.5").unwrap(), 1_500_000_000);
        assert_eq!(parse_cpus("0.000000001").unwrap(), 1);
        assert_eq!(parse_cpus(".5").unwrap(), 500_000_000);
        assert!(parse_cpus("abc").is_err());
        assert!(parse_cpus("0.0000000001").is_err());
    }

    #[test]
    fn publish_specs() {
        let mut m = PortMap::new();
        parse_publish("8080:80", &mut m).unwrap();
        parse_publish("127.0.0.1::53/udp", &mut m).unwrap();
        parse_publish("[::1]:9000-9001:90-91", &mut m).unwrap();
        parse_publish("7000", &mut m).unwrap();
        assert_eq!(m["80/tcp"], vec![(String::new(), "8080".to_string())]);
        assert_eq!(m["53/udp"], vec![("127.0.0.1".to_string(), String::new())]);
        assert_eq!(m["91/tcp"], vec![("::1".to_string(), "9001".to_string())]);
        assert_eq!(m["7000/tcp"], vec![(String::new(), String::new())]);
        assert!(parse_publish("1.2.3:80:80", &mut m).is_err());
        assert!(parse_publish("80/foo", &mut m).is_err());
        assert!(parse_publish("9000-9002:90-91", &mut m).is_err());
    }

    #[test]
    fn restart_policies() {
        assert_eq!(
            parse_restart("on-failure:3").unwrap()["MaximumRetryCount"],
            3
        );
        assert!(parse_restart("always:3").is_err());
        assert!(parse_restart("sometimes").is_err());
    }

    #[test]
    fn devices_ulimits_mounts() {
        assert_eq!(
            parse_device("/dev/sda:/dev/xvda:r").unwrap(),
            json!({"PathOnHost": "/dev/sda", "PathInContainer": "/dev/xvda", "CgroupPermissions": "r"})
        );
        assert_eq!(
            parse_device("/dev/fuse:rw").unwrap()["PathInContainer"],
            "/dev/fuse"
        );
        assert_eq!(
            parse_ulimit("nofile=1024:2048").unwrap(),
            json!({"Name": "nofile", "Hard": 2048, "Soft": 1024})
        );
        assert!(parse_ulimit("nofile=10:5").is_err());
        assert!(parse_ulimit("bogus=1").is_err());
        assert_eq!(
            parse_mount("type=bind,src=/a,dst=/b,readonly,bind-propagation=rslave").unwrap(),
            json!({"Type": "bind", "Source": "/a", "Target": "/b", "ReadOnly": true, "BindOptions": {"Propagation": "rslave"}})
        );
        assert_eq!(
            parse_mount("type=tmpfs,target=/t,tmpfs-size=64m,tmpfs-mode=1770").unwrap(),
            json!({"Type": "tmpfs", "Target": "/t", "TmpfsOptions": {"SizeBytes": 67_108_864, "Mode": 1016}})
        );
        assert!(parse_mount("type=tmpfs,target=/t,bind-propagation=shared").is_err());
        assert!(parse_mount("src=/a").is_err());
    }

    #[test]
    fn env_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("env");
        std::fs::write(&p, "# c\nA=1\n  B=x y\nFROMENV\nUNSET\n\nC=a=b\n").unwrap();
        let env = BTreeMap::from([("FROMENV".to_string(), "v".to_string())]);
        assert_eq!(
            parse_env_file(&p, &env).unwrap(),
            vec!["A=1", "B=x y", "FROMENV=v", "C=a=b"]
        );
        std::fs::write(&p, "A B=1\n").unwrap();
        assert!(parse_env_file(&p, &env).is_err());
    }
}
