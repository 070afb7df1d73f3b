//! vCPUs: their initial state for a Linux guest and the run loop.
//!
//! Owns CPUID (KVM's supported set with the topology, APIC IDs, hypervisor
//! bit and PMU removal a microVM wants, for Intel and AMD), the boot MSRs,
//! the registers and segments for each [`EntryPoint`], the local APIC's
//! LINT0/LINT1 wiring, and the loop that runs `KVM_RUN` and dispatches exits
//! to the buses. A vCPU stops when the VM's [`Stopper`] fires; a real-time
//! signal with `immediate_exit` gets it out of `KVM_RUN` without a race.

use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use kvm_bindings::{CpuId, Msrs, kvm_fpu, kvm_msr_entry, kvm_regs, kvm_run, kvm_segment};
use kvm_ioctls::{VcpuExit, VcpuFd};

use crate::boot::{self, EntryPoint};
use crate::bus::Bus;
use crate::control::{Stopper, VmExit};
use crate::layout;

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("vCPU {id}: {what}")]
    Kvm {
        id: u8,
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("vCPU {id}: KVM accepted {set} of {wanted} boot MSRs")]
    Msrs { id: u8, set: usize, wanted: usize },
    #[error("installing the vCPU kick signal handler")]
    Signal(#[source] vmm_sys_util::errno::Error),
}

/// Result alias of this module.
pub type Result<T> = std::result::Result<T, Error>;

/// Exit counters of a VM, shared by its vCPUs.
#[derive(Debug, Default)]
pub struct ExitStats {
    /// Port I/O exits.
    pub pio: AtomicU64,
    /// MMIO exits.
    pub mmio: AtomicU64,
    /// All exits to user space.
    pub total: AtomicU64,
}

impl ExitStats {
    /// `(total, pio, mmio)` so far.
    pub fn snapshot(&self) -> (u64, u64, u64) {
        (
            self.total.load(Ordering::Relaxed),
            self.pio.load(Ordering::Relaxed),
            self.mmio.load(Ordering::Relaxed),
        )
    }
}

const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
/// Fast string operations enabled.
const MISC_ENABLE_FAST_STRING: u64 = 1;
/// MTRRs enabled, default memory type write-back.
const MTRR_ENABLE_WB: u64 = (1 << 11) | 6;

const X86_CR0_PE: u64 = 0x1;
const X86_CR0_ET: u64 = 0x10;
const X86_CR0_PG: u64 = 0x8000_0000;
const X86_CR4_PAE: u64 = 0x20;
const EFER_LME: u64 = 0x100;
const EFER_LMA: u64 = 0x400;

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

/// CPU vendors we tune CPUID for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Vendor {
    /// GenuineIntel.
    Intel,
    /// AuthenticAMD (or Hygon).
    Amd,
    /// Anything else: leave vendor-specific leaves alone.
    Other,
}

/// The vendor KVM reports in leaf 0.
pub fn vendor(cpuid: &CpuId) -> Vendor {
    let Some(l0) = cpuid.as_slice().iter().find(|e| e.function == 0) else {
        return Vendor::Other;
    };
    let mut v = [0u8; 12];
    v[0..4].copy_from_slice(&l0.ebx.to_le_bytes());
    v[4..8].copy_from_slice(&l0.edx.to_le_bytes());
    v[8..12].copy_from_slice(&l0.ecx.to_le_bytes());
    match &v {
        b"GenuineIntel" => Vendor::Intel,
        b"AuthenticAMD" | b"HygonGenuine" => Vendor::Amd,
        _ => Vendor::Other,
    }
}

/// Adjust KVM's supported CPUID for vCPU `id` of `count`: APIC IDs,
/// topology (one socket, one thread per core), the hypervisor bit, and no
/// PMU (its MSRs would cost exits for nothing).
pub fn filter_cpuid(cpuid: &mut CpuId, id: u8, count: u8) {
    let vendor = vendor(cpuid);
    let count32 = u32::from(count);
    let id32 = u32::from(id);
    let core_bits = 32 - (count32.max(1) - 1).leading_zeros();
    for e in cpuid.as_mut_slice() {
        match e.function {
            1 => {
                e.ebx = (e.ebx & 0x0000_ffff) | (id32 << 24) | (count32 << 16);
                e.ecx |= 1 << 31;
                if count > 1 {
                    e.edx |= 1 << 28;
                } else {
                    e.edx &= !(1 << 28);
                }
            }
            4 if vendor == Vendor::Intel => {
                let level = (e.eax >> 5) & 0x7;
                let sharing = if level >= 3 { count32 - 1 } else { 0 };
                e.eax = (e.eax & 0x3fff) | (sharing << 14) | ((count32 - 1) << 26);
            }
            0xa => {
                e.eax = 0;
                e.ebx = 0;
                e.ecx = 0;
                e.edx = 0;
            }
            0xb | 0x1f if vendor == Vendor::Intel => {
                e.edx = id32;
                match e.index {
                    0 => {
                        e.eax = 0;
                        e.ebx = 1;
                        e.ecx = 1 << 8;
                    }
                    1 => {
                        e.eax = core_bits;
                        e.ebx = count32;
                        e.ecx = (2 << 8) | 1;
                    }
                    i => {
                        e.eax = 0;
                        e.ebx = 0;
                        e.ecx = i;
                    }
                }
            }
            0x8000_0001 if vendor == Vendor::Amd => {
                // PerfCtrExtCore, PerfCtrExtNB, PerfCtrExtLLC.
                e.ecx &= !((1 << 23) | (1 << 24) | (1 << 28));
            }
            0x8000_0008 if vendor == Vendor::Amd => {
                e.ecx = (e.ecx & !0xf0ff) | (count32 - 1);
            }
            0x8000_001e if vendor == Vendor::Amd => {
                e.eax = id32;
                e.ebx = id32 & 0xff;
                e.ecx = 0;
            }
            _ => {}
        }
    }
}

/// CPUID.1:ECX bit 24: the local APIC's TSC-deadline timer mode.
pub const CPUID_TSC_DEADLINE: u32 = 1 << 24;

/// Advertise the TSC-deadline timer (KVM emulates it whenever it has
/// `KVM_CAP_TSC_DEADLINE_TIMER`, but does not report it as supported).
pub fn add_tsc_deadline(cpuid: &mut CpuId) {
    for e in cpuid.as_mut_slice() {
        if e.function == 1 {
            e.ecx |= CPUID_TSC_DEADLINE;
        }
    }
}

fn msr(index: u32, data: u64) -> kvm_msr_entry {
    kvm_msr_entry {
        index,
        data,
        ..Default::default()
    }
}

/// The MSRs every vCPU starts with.
pub fn boot_msrs() -> Vec<kvm_msr_entry> {
    vec![
        msr(MSR_IA32_SYSENTER_CS, 0),
        msr(MSR_IA32_SYSENTER_ESP, 0),
        msr(MSR_IA32_SYSENTER_EIP, 0),
        msr(MSR_STAR, 0),
        msr(MSR_CSTAR, 0),
        msr(MSR_KERNEL_GS_BASE, 0),
        msr(MSR_SYSCALL_MASK, 0),
        msr(MSR_LSTAR, 0),
        msr(MSR_IA32_TSC, 0),
        msr(MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        msr(MSR_MTRR_DEF_TYPE, MTRR_ENABLE_WB),
    ]
}

/// Decode a GDT entry into the segment KVM wants.
pub fn segment(entry: u64, selector: u16) -> kvm_segment {
    let g = ((entry >> 55) & 1) as u8;
    let raw_limit = ((entry & 0xffff) | (((entry >> 48) & 0xf) << 16)) as u32;
    let present = ((entry >> 47) & 1) as u8;
    kvm_segment {
        base: ((entry >> 16) & 0xff_ffff) | (((entry >> 56) & 0xff) << 24),
        limit: if g == 1 {
            (raw_limit << 12) | 0xfff
        } else {
            raw_limit
        },
        selector,
        type_: ((entry >> 40) & 0xf) as u8,
        present,
        dpl: ((entry >> 45) & 0x3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g,
        avl: ((entry >> 52) & 1) as u8,
        unusable: u8::from(present == 0),
        padding: 0,
    }
}

/// Set up vCPU `id` of `count`: CPUID, MSRs, the local APIC, and for the
/// boot CPU the registers for `entry`. Application processors start
/// halted and are woken by the guest with INIT/SIPI (KVM's local APIC).
pub fn configure(
    vcpu: &VcpuFd,
    id: u8,
    count: u8,
    supported: &CpuId,
    entry: EntryPoint,
) -> Result<()> {
    let kvm = |what| move |source| Error::Kvm { id, what, source };
    let mut cpuid = supported.clone();
    filter_cpuid(&mut cpuid, id, count);
    vcpu.set_cpuid2(&cpuid).map_err(kvm("setting CPUID"))?;

    let entries = boot_msrs();
    let msrs = Msrs::from_entries(&entries).expect("a handful of MSRs fits the FAM wrapper");
    let set = vcpu.set_msrs(&msrs).map_err(kvm("setting MSRs"))?;
    if set != entries.len() {
        return Err(Error::Msrs {
            id,
            set,
            wanted: entries.len(),
        });
    }

    let mut lapic = vcpu.get_lapic().map_err(kvm("reading the local APIC"))?;
    set_lvt(&mut lapic.regs, APIC_LVT0, APIC_MODE_EXTINT);
    set_lvt(&mut lapic.regs, APIC_LVT1, APIC_MODE_NMI);
    vcpu.set_lapic(&lapic)
        .map_err(kvm("writing the local APIC"))?;

    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(kvm("setting the FPU"))?;

    if id == 0 {
        set_entry_state(vcpu, entry).map_err(kvm("setting boot registers"))?;
    }
    Ok(())
}

fn set_lvt(regs: &mut [libc::c_char; 1024], offset: usize, mode: u32) {
    let mut b = [0u8; 4];
    for (i, x) in b.iter_mut().enumerate() {
        *x = regs[offset + i] as u8;
    }
    let v = (u32::from_le_bytes(b) & !0x700) | (mode << 8);
    for (i, x) in v.to_le_bytes().iter().enumerate() {
        regs[offset + i] = *x as libc::c_char;
    }
}

/// Registers and segments for `entry` on the boot CPU.
pub fn set_entry_state(
    vcpu: &VcpuFd,
    entry: EntryPoint,
) -> std::result::Result<(), kvm_ioctls::Error> {
    let mut sregs = vcpu.get_sregs()?;
    let mut regs = kvm_regs {
        rflags: 0x2,
        ..Default::default()
    };
    let gdt = boot::gdt_for(entry);
    let protected = |sregs: &mut kvm_bindings::kvm_sregs| {
        sregs.gdt.base = layout::GDT_ADDR;
        sregs.gdt.limit = (gdt.len() * 8 - 1) as u16;
        sregs.idt.base = layout::IDT_ADDR;
        sregs.idt.limit = 7;
        sregs.cs = segment(gdt[2], boot::CODE_SELECTOR);
        let data = segment(gdt[3], boot::DATA_SELECTOR);
        sregs.ds = data;
        sregs.es = data;
        sregs.fs = data;
        sregs.gs = data;
        sregs.ss = data;
        sregs.tr = segment(gdt[4], boot::TSS_SELECTOR);
    };
    match entry {
        EntryPoint::Linux64 { rip } | EntryPoint::Long { rip } => {
            protected(&mut sregs);
            sregs.cr0 |= X86_CR0_PE | X86_CR0_ET | X86_CR0_PG;
            sregs.cr3 = layout::PML4_ADDR;
            sregs.cr4 |= X86_CR4_PAE;
            sregs.efer |= EFER_LME | EFER_LMA;
            regs.rip = rip;
            regs.rsp = layout::BOOT_STACK_ADDR;
            regs.rbp = layout::BOOT_STACK_ADDR;
            if matches!(entry, EntryPoint::Linux64 { .. }) {
                regs.rsi = layout::ZERO_PAGE_ADDR;
            }
        }
        EntryPoint::Pvh { rip } => {
            protected(&mut sregs);
            sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
            sregs.cr4 = 0;
            sregs.efer = 0;
            regs.rip = rip;
            regs.rbx = layout::PVH_INFO_ADDR;
        }
        EntryPoint::Real { cs, ip } => {
            sregs.cs.base = u64::from(cs) << 4;
            sregs.cs.selector = cs;
            regs.rip = u64::from(ip);
        }
    }
    vcpu.set_sregs(&sregs)?;
    vcpu.set_regs(&regs)
}

thread_local! {
    /// This thread's `kvm_run`, for the kick signal handler.
    static KVM_RUN: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

/// The signal that kicks a vCPU out of `KVM_RUN`.
pub fn kick_signal() -> libc::c_int {
    vmm_sys_util::signal::SIGRTMIN() + 2
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    KVM_RUN.with(|p| {
        let run = p.get();
        if !run.is_null() {
            // SAFETY: the pointer is this thread's kvm_run mapping, set by
            // the run loop for as long as the VcpuFd lives; a volatile byte
            // store is async-signal-safe.
            unsafe { std::ptr::write_volatile(&raw mut (*run).immediate_exit, 1) };
        }
    });
}

/// Install the kick handler (once per process).
pub fn install_kick_handler() -> Result<()> {
    static ONCE: std::sync::OnceLock<std::result::Result<(), vmm_sys_util::errno::Error>> =
        std::sync::OnceLock::new();
    (*ONCE.get_or_init(|| vmm_sys_util::signal::register_signal_handler(kick_signal(), on_kick)))
        .map_err(Error::Signal)
}

/// Run vCPU `id` until the VM stops.
pub fn run(
    mut vcpu: VcpuFd,
    id: u8,
    pio: &Bus,
    mmio: &Bus,
    stopper: &Arc<Stopper>,
    stats: &ExitStats,
) {
    KVM_RUN.with(|p| p.set(vcpu.get_kvm_run()));
    // The thread inherits its creator's signal mask; the kick must get
    // through even if the embedding process blocks real-time signals.
    // SAFETY: sigset operations on a local set, then pthread_sigmask on
    // the calling thread.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&raw mut set);
        libc::sigaddset(&raw mut set, kick_signal());
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &raw const set, std::ptr::null_mut());
    }
    while !stopper.stopping() {
        let exit = vcpu.run();
        stats.total.fetch_add(1, Ordering::Relaxed);
        match exit {
            Ok(VcpuExit::IoIn(port, data)) => {
                stats.pio.fetch_add(1, Ordering::Relaxed);
                if !pio.read(u64::from(port), data) {
                    data.fill(0xff);
                }
            }
            Ok(VcpuExit::IoOut(port, data)) => {
                stats.pio.fetch_add(1, Ordering::Relaxed);
                if !pio.write(u64::from(port), data) {
                    tracing::trace!(port, "write to an unhandled port");
                }
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                stats.mmio.fetch_add(1, Ordering::Relaxed);
                if !mmio.read(addr, data) {
                    data.fill(0xff);
                }
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                stats.mmio.fetch_add(1, Ordering::Relaxed);
                if !mmio.write(addr, data) {
                    tracing::trace!(addr, "write to unhandled MMIO");
                }
            }
            Ok(VcpuExit::Shutdown) => stopper.stop(VmExit::TripleFault),
            Ok(VcpuExit::SystemEvent(kind, _)) => stopper.stop(VmExit::SystemEvent(kind)),
            Ok(VcpuExit::Hlt) => stopper.stop(VmExit::Failed(format!("vCPU {id} halted"))),
            Ok(VcpuExit::FailEntry(reason, cpu)) => stopper.stop(VmExit::Failed(format!(
                "vCPU {id}: entry failed, hardware reason {reason:#x} on CPU {cpu}"
            ))),
            Ok(VcpuExit::InternalError) => {
                stopper.stop(VmExit::Failed(format!("vCPU {id}: KVM internal error")));
            }
            Ok(VcpuExit::Intr) => {}
            Ok(other) => stopper.stop(VmExit::Failed(format!(
                "vCPU {id}: unexpected exit {other:?}"
            ))),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                vcpu.set_kvm_immediate_exit(0);
            }
            Err(e) => stopper.stop(VmExit::Failed(format!("vCPU {id}: KVM_RUN: {e}"))),
        }
    }
    KVM_RUN.with(|p| p.set(std::ptr::null_mut()));
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::kvm_cpuid_entry2;

    fn entry(
        function: u32,
        index: u32,
        eax: u32,
        ebx: u32,
        ecx: u32,
        edx: u32,
    ) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax,
            ebx,
            ecx,
            edx,
            ..Default::default()
        }
    }

    fn vendor_leaf(name: &[u8; 12]) -> kvm_cpuid_entry2 {
        let w = |i: usize| u32::from_le_bytes(name[i..i + 4].try_into().unwrap());
        entry(0, 0, 0x1f, w(0), w(8), w(4))
    }

    #[test]
    fn intel_topology_and_apic_ids() {
        let mut c = CpuId::from_entries(&[
            vendor_leaf(b"GenuineIntel"),
            entry(1, 0, 0x806f8, 0x0000_0800, 0, 0),
            entry(4, 0, 0x21, 0, 0, 0),
            entry(4, 3, 0x63, 0, 0, 0),
            entry(0xa, 0, 0x0803_0802, 1, 2, 3),
            entry(0xb, 0, 0, 0, 0, 0),
            entry(0xb, 1, 0, 0, 0, 0),
        ])
        .unwrap();
        assert_eq!(vendor(&c), Vendor::Intel);
        filter_cpuid(&mut c, 2, 4);
        let e = c.as_slice();
        assert_eq!(e[1].ebx >> 24, 2, "APIC ID");
        assert_eq!((e[1].ebx >> 16) & 0xff, 4, "logical processors");
        assert_eq!(e[1].ebx & 0xffff, 0x0800, "CLFLUSH size kept");
        assert_ne!(e[1].ecx & (1 << 31), 0, "hypervisor bit");
        assert_ne!(e[1].edx & (1 << 28), 0, "HTT");
        assert_eq!(e[2].eax >> 26, 3, "cores per package - 1");
        assert_eq!((e[2].eax >> 14) & 0xfff, 0, "L1 not shared");
        assert_eq!((e[3].eax >> 14) & 0xfff, 3, "L3 shared by all");
        assert_eq!(
            (e[4].eax, e[4].ebx, e[4].ecx, e[4].edx),
            (0, 0, 0, 0),
            "no PMU"
        );
        assert_eq!((e[5].ebx, e[5].edx), (1, 2));
        assert_eq!((e[6].eax, e[6].ebx, e[6].edx), (2, 4, 2));
    }

    #[test]
    fn tsc_deadline_goes_in_leaf_1_only() {
        let mut c = CpuId::from_entries(&[
            vendor_leaf(b"AuthenticAMD"),
            entry(1, 0, 0, 0, 1, 0),
            entry(0x8000_0001, 0, 0, 0, 0, 0),
        ])
        .unwrap();
        add_tsc_deadline(&mut c);
        let e = c.as_slice();
        assert_eq!(
            e[1].ecx,
            CPUID_TSC_DEADLINE | 1,
            "bit 24 added, others kept"
        );
        assert_eq!((e[0].ecx, e[2].ecx), (vendor_leaf(b"AuthenticAMD").ecx, 0));
    }

    #[test]
    fn amd_topology() {
        let mut c = CpuId::from_entries(&[
            vendor_leaf(b"AuthenticAMD"),
            entry(1, 0, 0, 0, 0, 1 << 28),
            entry(0x8000_0001, 0, 0, 0, (1 << 23) | 1, 0),
            entry(0x8000_0008, 0, 0x3030, 0, 0x700f, 0),
            entry(0x8000_001e, 0, 0, 0x100, 0x1, 0),
        ])
        .unwrap();
        assert_eq!(vendor(&c), Vendor::Amd);
        filter_cpuid(&mut c, 1, 1);
        let e = c.as_slice();
        assert_eq!(e[1].ebx >> 24, 1);
        assert_eq!(e[1].edx & (1 << 28), 0, "no HTT with one vCPU");
        assert_eq!(e[2].ecx, 1, "no core performance counters");
        assert_eq!(e[3].ecx & 0xff, 0);
        assert_eq!((e[4].eax, e[4].ebx, e[4].ecx), (1, 1, 0));
    }

    #[test]
    fn gdt_segments_decode() {
        let cs = segment(boot::GDT_CODE64, boot::CODE_SELECTOR);
        assert_eq!(
            (cs.base, cs.limit, cs.l, cs.db, cs.present, cs.type_),
            (0, 0xffff_ffff, 1, 0, 1, 0xb)
        );
        let ds = segment(boot::GDT_DATA, boot::DATA_SELECTOR);
        assert_eq!((ds.limit, ds.db, ds.type_, ds.s), (0xffff_ffff, 1, 3, 1));
        let tr = segment(boot::GDT_TSS, boot::TSS_SELECTOR);
        assert_eq!((tr.limit, tr.type_, tr.s, tr.present), (0x67, 0xb, 0, 1));
    }
}
