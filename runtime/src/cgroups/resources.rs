//! Writing an OCI `linux.resources` block into a cgroup through cgroups-rs's
//! controllers: cpuset, cpu, memory, pids, blkio, hugetlb, net_cls and
//! net_prio, in that order, on v1 and v2.
//!
//! This is the part of cgroups-rs's `FsManager::set` the runtime uses,
//! applied to a cgroup made from the operation's shared
//! [`Hierarchies`](super::Hierarchies) instead of a manager, which reads
//! the host's mounts again each time one is made. It behaves as that
//! manager does: the same writes in the same order, the same checks, the
//! same conversions for cgroup2. Device rules, the hybrid layout's
//! cgroup2 side and `unified` are the caller's business.

use cgroups_rs::fs::blkio::BlkIoController;
use cgroups_rs::fs::cpu::CpuController;
use cgroups_rs::fs::cpuset::CpuSetController;
use cgroups_rs::fs::hugetlb::HugeTlbController;
use cgroups_rs::fs::memory::MemController;
use cgroups_rs::fs::net_cls::NetClsController;
use cgroups_rs::fs::net_prio::NetPrioController;
use cgroups_rs::fs::pid::PidController;
use cgroups_rs::fs::{ControllIdentifier, Controller, MaxValue, Subsystem};
use oci_spec::runtime::{LinuxBlockIo, LinuxCpu, LinuxMemory, LinuxPids, LinuxResources};

use super::FsFailure;

type Result<T> = std::result::Result<T, FsFailure>;

/// Apply `res` to `cg`. Fields that are absent are left alone; a present
/// field whose controller the host lacks is an error.
pub(super) fn apply(cg: &cgroups_rs::fs::Cgroup, res: &LinuxResources) -> Result<()> {
    let v2 = cg.v2();
    if let Some(cpu) = res.cpu() {
        set_cpuset(cg, cpu)?;
        set_cpu(cg, cpu, v2)?;
    }
    if let Some(memory) = res.memory() {
        if v2 {
            set_memory_v2(cg, memory)?;
        } else {
            set_memory_v1(cg, memory)?;
        }
    }
    if let Some(pids) = res.pids() {
        set_pids(cg, *pids)?;
    }
    if let Some(blkio) = res.block_io() {
        set_blkio(cg, blkio)?;
    }
    if let Some(limits) = res.hugepage_limits() {
        let c: &HugeTlbController = controller(cg)?;
        // Page sizes this machine does not have are skipped.
        for l in limits.iter().filter(|l| c.size_supported(l.page_size())) {
            c.set_limit_in_bytes(l.page_size(), l.limit() as u64)?;
        }
    }
    if let Some(net) = res.network() {
        if let Some(class) = net.class_id() {
            let c: &NetClsController = controller(cg)?;
            c.set_class(u64::from(class))?;
        }
        if let Some(prios) = net.priorities() {
            let c: &NetPrioController = controller(cg)?;
            for p in prios {
                c.set_if_prio(p.name(), u64::from(p.priority()))?;
            }
        }
    }
    Ok(())
}

fn controller<'a, T>(cg: &'a cgroups_rs::fs::Cgroup) -> Result<&'a T>
where
    &'a T: From<&'a Subsystem>,
    T: Controller + ControllIdentifier,
{
    cg.controller_of().ok_or(FsFailure::NoController)
}

fn set_cpuset(cg: &cgroups_rs::fs::Cgroup, cpu: &LinuxCpu) -> Result<()> {
    let c: &CpuSetController = controller(cg)?;
    if let Some(cpus) = cpu.cpus() {
        c.set_cpus(cpus)?;
    }
    if let Some(mems) = cpu.mems() {
        c.set_mems(mems)?;
    }
    Ok(())
}

fn set_cpu(cg: &cgroups_rs::fs::Cgroup, cpu: &LinuxCpu, v2: bool) -> Result<()> {
    let c: &CpuController = controller(cg)?;
    if let Some(shares) = cpu.shares() {
        let shares = if v2 { shares_to_weight(shares) } else { shares };
        if shares != 0 {
            c.set_shares(shares)?;
        }
    }
    if let Some(quota) = cpu.quota() {
        c.set_cfs_quota(quota)?;
    }
    if let Some(period) = cpu.period() {
        c.set_cfs_period(period)?;
    }
    if let Some(runtime) = cpu.realtime_runtime() {
        c.set_rt_runtime(runtime)?;
    }
    if let Some(period) = cpu.realtime_period() {
        c.set_rt_period_us(period)?;
    }
    Ok(())
}

fn set_memory_v1(cg: &cgroups_rs::fs::Cgroup, mem: &LinuxMemory) -> Result<()> {
    let c: &MemController = controller(cg)?;
    let limit = mem.limit().unwrap_or(0);
    let mut swap = mem.swap().unwrap_or(0);
    // An unlimited memory limit with no swap setting makes both unlimited.
    if limit == -1 && swap == 0 {
        swap = -1;
    }
    // The kernel refuses a memory limit above memory+swap and a
    // memory+swap limit below memory: when both change, write them in
    // the order that keeps the pair valid at every step.
    let swap_first =
        limit != 0 && swap != 0 && (swap == -1 || c.memory_stat().limit_in_bytes < swap);
    if swap_first {
        c.set_memswap_limit(swap)?;
        c.set_limit(limit)?;
    } else {
        if limit != 0 {
            c.set_limit(limit)?;
        }
        if swap != 0 {
            c.set_memswap_limit(swap)?;
        }
    }
    if let Some(reservation) = mem.reservation() {
        c.set_soft_limit(reservation)?;
    }
    if mem.disable_oom_killer().unwrap_or_default() {
        c.disable_oom_killer()?;
    }
    if let Some(swappiness) = mem.swappiness() {
        if swappiness > 100 {
            return Err(FsFailure::Invalid);
        }
        c.set_swappiness(swappiness)?;
    }
    Ok(())
}

fn set_memory_v2(cg: &cgroups_rs::fs::Cgroup, mem: &LinuxMemory) -> Result<()> {
    let c: &MemController = controller(cg)?;
    if mem.reservation().is_none() && mem.limit().is_none() && mem.swap().is_none() {
        return Ok(());
    }
    let limit = mem.limit().unwrap_or(0);
    let memswap = mem.swap().unwrap_or(0);
    if limit <= 0 && memswap <= 0 {
        return Ok(());
    }
    // A limit at or below what the cgroup already uses is refused.
    let usage = c.memory_stat().usage_in_bytes;
    if (memswap > 0 && memswap as u64 <= usage) || (limit > 0 && limit as u64 <= usage) {
        return Err(FsFailure::Invalid);
    }
    c.set_memswap_limit(swap_for_v2(memswap, limit)?)?;
    if limit != 0 {
        c.set_limit(limit)?;
    }
    if let Some(reservation) = mem.reservation() {
        c.set_soft_limit(reservation)?;
    }
    Ok(())
}

fn set_pids(cg: &cgroups_rs::fs::Cgroup, pids: LinuxPids) -> Result<()> {
    let c: &PidController = controller(cg)?;
    let max = if pids.limit() > 0 {
        MaxValue::Value(pids.limit())
    } else {
        MaxValue::Max
    };
    c.set_pid_max(max)?;
    Ok(())
}

fn set_blkio(cg: &cgroups_rs::fs::Cgroup, blkio: &LinuxBlockIo) -> Result<()> {
    type Throttle = fn(&BlkIoController, u64, u64, u64) -> cgroups_rs::fs::error::Result<()>;
    let c: &BlkIoController = controller(cg)?;
    if let Some(w) = blkio.weight() {
        c.set_weight(u64::from(w))?;
    }
    if let Some(w) = blkio.leaf_weight() {
        c.set_leaf_weight(u64::from(w))?;
    }
    for d in blkio.weight_device().iter().flatten() {
        let (major, minor) = (d.major() as u64, d.minor() as u64);
        if let Some(w) = d.weight() {
            c.set_weight_for_device(major, minor, u64::from(w))?;
        }
        if let Some(w) = d.leaf_weight() {
            c.set_leaf_weight_for_device(major, minor, u64::from(w))?;
        }
    }
    let throttles: [(_, Throttle); 4] = [
        (
            blkio.throttle_read_bps_device(),
            BlkIoController::throttle_read_bps_for_device,
        ),
        (
            blkio.throttle_write_bps_device(),
            BlkIoController::throttle_write_bps_for_device,
        ),
        (
            blkio.throttle_read_iops_device(),
            BlkIoController::throttle_read_iops_for_device,
        ),
        (
            blkio.throttle_write_iops_device(),
            BlkIoController::throttle_write_iops_for_device,
        ),
    ];
    for (devices, write) in throttles {
        for d in devices.iter().flatten() {
            write(c, d.major() as u64, d.minor() as u64, d.rate())?;
        }
    }
    Ok(())
}

/// cgroup v1 CPU shares (2..=262144, default 1024) as a cgroup2 weight
/// (1..=10000, default 100), mapped linearly as the OCI runtime spec's
/// cgroup v2 conversion does; 0 stays 0 (unset).
fn shares_to_weight(shares: u64) -> u64 {
    match shares {
        0 => 0,
        1..=2 => 1,
        262_144.. => 10_000,
        s => (s - 2) * 9_999 / 262_142 + 1,
    }
}

/// The OCI `memory.swap` (memory plus swap) as cgroup2's `memory.swap.max`
/// (swap alone), given the memory limit; -1 is unlimited, 0 unset.
fn swap_for_v2(memswap: i64, limit: i64) -> Result<i64> {
    Ok(match (memswap, limit) {
        // Unlimited memory and no swap setting: both unlimited.
        (0, -1) => -1,
        (-1 | 0, _) | (_, -1) => memswap,
        // A combined limit needs a memory limit to subtract, and cannot
        // be below it.
        (_, ..=0) => return Err(FsFailure::Invalid),
        (m, l) if m < l => return Err(FsFailure::Invalid),
        (m, l) => m - l,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_become_weights() {
        assert_eq!(shares_to_weight(0), 0);
        assert_eq!(shares_to_weight(1), 1);
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(1024), 39);
        assert_eq!(shares_to_weight(262_143), 9_999);
        assert_eq!(shares_to_weight(262_144), 10_000);
        assert_eq!(shares_to_weight(1 << 20), 10_000);
    }

    #[test]
    fn swap_becomes_swap_alone() {
        assert_eq!(swap_for_v2(0, -1).unwrap(), -1);
        assert_eq!(swap_for_v2(0, 100).unwrap(), 0);
        assert_eq!(swap_for_v2(-1, 100).unwrap(), -1);
        assert_eq!(swap_for_v2(300, -1).unwrap(), 300);
        assert_eq!(swap_for_v2(300, 100).unwrap(), 200);
        assert_eq!(swap_for_v2(100, 100).unwrap(), 0);
        assert!(swap_for_v2(300, 0).is_err());
        assert!(swap_for_v2(300, -5).is_err());
        assert!(swap_for_v2(50, 100).is_err());
    }
}
