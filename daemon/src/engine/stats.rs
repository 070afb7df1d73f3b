//! Container statistics in the Docker API's `stats` shape, from the
//! runtime's cgroup statistics.

use serde_json::{Value, json};

use super::Engine;
use super::error::{Error, Result};

/// Total CPU time of the host in nanoseconds (the `system_cpu_usage` the
/// docker CLI divides by), from /proc/stat.
fn system_cpu_ns() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: u64 = stat.lines().next().map_or(0, |l| {
        l.split_whitespace()
            .skip(1)
            .take(8)
            .filter_map(|v| v.parse::<u64>().ok())
            .sum()
    });
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    ticks.saturating_mul(1_000_000_000 / hz)
}

fn online_cpus() -> u64 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u64)
}

impl Engine {
    /// One statistics sample of a running container (`read` is now).
    pub async fn stats_sample(&self, reference: &str) -> Result<Value> {
        let entry = self.get(reference)?;
        let (id, name, live) = {
            let c = entry.rec.lock().await;
            (c.id.clone(), c.name.clone(), c.state.status.is_live())
        };
        let read = vessel_runtime::state::now_rfc3339();
        if !live {
            // Docker sends zeroed stats for a stopped container.
            return Ok(json!({
                "read": "0001-01-01T00:00:00Z", "preread": "0001-01-01T00:00:00Z",
                "name": format!("/{name}"), "id": id,
                "pids_stats": {}, "blkio_stats": {}, "num_procs": 0, "storage_stats": {},
                "cpu_stats": {"cpu_usage": {"total_usage": 0, "usage_in_kernelmode": 0, "usage_in_usermode": 0}, "throttling_data": {"periods": 0, "throttled_periods": 0, "throttled_time": 0}},
                "precpu_stats": {"cpu_usage": {"total_usage": 0, "usage_in_kernelmode": 0, "usage_in_usermode": 0}, "throttling_data": {"periods": 0, "throttled_periods": 0, "throttled_time": 0}},
                "memory_stats": {}
            }));
        }
        let root = self.paths.runtime_root();
        let cid = id.clone();
        let s = tokio::task::spawn_blocking(move || {
            let r = vessel_runtime::Root::open(&root)?;
            vessel_runtime::container::stats(&r, &cid)
        })
        .await
        .map_err(|e| Error::internal(e.to_string()))??;
        let blk = |v: &[vessel_runtime::cgroups::BlkioEntry]| -> Value {
            Value::Array(v.iter().map(|b| json!({"major": b.major, "minor": b.minor, "op": b.op, "value": b.value})).collect())
        };
        let mut mem_stats = serde_json::Map::new();
        for (k, v) in &s.memory.raw {
            mem_stats.insert(k.clone(), json!(v));
        }
        mem_stats.insert(
            "total_inactive_file".into(),
            json!(s.memory.raw.get("inactive_file").copied().unwrap_or(0)),
        );
        let limit = if s.memory.usage.limit == 0 || s.memory.usage.limit >= (1u64 << 62) {
            // Unlimited: Docker reports the host's memory.
            host_memory()
        } else {
            s.memory.usage.limit
        };
        // Interface counters from the host end of each veth: what the host
        // end sends the container receives.
        let mut networks = serde_json::Map::new();
        if let Ok(net) = self.network() {
            for (_, ep) in net.of_container(&id).await.0 {
                let dir = std::path::Path::new("/sys/class/net")
                    .join(&ep.host_veth)
                    .join("statistics");
                let n = |f: &str| -> u64 {
                    std::fs::read_to_string(dir.join(f))
                        .ok()
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0)
                };
                networks.insert(
                    ep.ifname.clone(),
                    json!({
                        "rx_bytes": n("tx_bytes"), "rx_packets": n("tx_packets"),
                        "rx_errors": n("tx_errors"), "rx_dropped": n("tx_dropped"),
                        "tx_bytes": n("rx_bytes"), "tx_packets": n("rx_packets"),
                        "tx_errors": n("rx_errors"), "tx_dropped": n("rx_dropped"),
                    }),
                );
            }
        }
        Ok(json!({
            "networks": networks,
            "read": read,
            "preread": "0001-01-01T00:00:00Z",
            "name": format!("/{name}"),
            "id": id,
            "pids_stats": {"current": s.pids.current, "limit": if s.pids.limit == 0 { Value::Null } else { json!(s.pids.limit) }},
            "blkio_stats": {
                "io_service_bytes_recursive": blk(&s.blkio.io_service_bytes_recursive),
                "io_serviced_recursive": blk(&s.blkio.io_serviced_recursive),
                "io_queue_recursive": null, "io_service_time_recursive": null, "io_wait_time_recursive": null,
                "io_merged_recursive": null, "io_time_recursive": null, "sectors_recursive": null
            },
            "num_procs": 0,
            "storage_stats": {},
            "cpu_stats": {
                "cpu_usage": {
                    "total_usage": s.cpu.usage.total,
                    "percpu_usage": s.cpu.usage.percpu,
                    "usage_in_kernelmode": s.cpu.usage.kernel,
                    "usage_in_usermode": s.cpu.usage.user
                },
                "system_cpu_usage": system_cpu_ns(),
                "online_cpus": online_cpus(),
                "throttling_data": {
                    "periods": s.cpu.throttling.periods,
                    "throttled_periods": s.cpu.throttling.throttled_periods,
                    "throttled_time": s.cpu.throttling.throttled_time
                }
            },
            "precpu_stats": {"cpu_usage": {"total_usage": 0, "usage_in_kernelmode": 0, "usage_in_usermode": 0}, "throttling_data": {"periods": 0, "throttled_periods": 0, "throttled_time": 0}},
            "memory_stats": {
                "usage": s.memory.usage.usage,
                "max_usage": s.memory.usage.max,
                "stats": Value::Object(mem_stats),
                "failcnt": s.memory.usage.failcnt,
                "limit": limit
            }
        }))
    }

    /// Whether a container is running (for the stats stream's end).
    pub fn is_running(&self, reference: &str) -> bool {
        self.get(reference)
            .is_ok_and(|e| e.view().state.status.is_live())
    }
}

/// Total memory of the host in bytes.
pub fn host_memory() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines().find_map(|l| {
                l.strip_prefix("MemTotal:")
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            })
        })
        .map_or(0, |kb| kb * 1024)
}
