//! A running microVM: configuration in, handle out, exit reason at the end.
//!
//! Owns the assembly of one VM: KVM objects (VM, in-kernel PIC/IOAPIC/PIT,
//! memory slots, irqfds, ioeventfds), the buses with the legacy devices and
//! the virtio-mmio windows, the boot (Linux or a raw test program), the
//! vCPU threads and the device thread, each under its seccomp filter, and
//! their teardown. It knows nothing about containers: disks are files,
//! the channel is a stream socket, the command line is the caller's.

use std::fmt::Write as _;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::thread::JoinHandleExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_bindings::{
    KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY, kvm_pit_config, kvm_userspace_memory_region,
};
use kvm_ioctls::{IoEventAddress, Kvm, VmFd};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use crate::boot::{self, EntryPoint};
use crate::bus::{Bus, SharedDevice};
use crate::control::{Stopper, VmExit};
use crate::devices::legacy::{self, CmosRtc, DebugExit, ResetController, SerialPort};
use crate::devices::virtio::block::Block;
use crate::devices::virtio::console::Console;
use crate::devices::virtio::mmio::{MmioTransport, reg};
use crate::devices::virtio::{Interrupt, VirtioDevice};
use crate::eventloop::{DeviceEvents, EventLoop};
use crate::layout;
use crate::memory::GuestRam;
use crate::mptable;
use crate::seccomp::{self, SeccompMode, ThreadKind};
use crate::vcpu::{self, ExitStats};

/// What the boot CPU runs.
#[derive(Clone, Debug)]
pub enum BootSource {
    /// A Linux kernel (ELF vmlinux or bzImage), optional initramfs and the
    /// command line; the monitor appends its device descriptions.
    Linux {
        /// The kernel image.
        kernel: PathBuf,
        /// An initramfs (cpio, possibly compressed).
        initrd: Option<PathBuf>,
        /// The command line before the monitor's additions.
        cmdline: String,
        /// Use the PVH entry of an ELF kernel that has one.
        pvh: bool,
    },
    /// A raw program loaded at `load_addr` (tests and diagnostics).
    Program {
        /// Machine code.
        code: Vec<u8>,
        /// Where it is loaded and entered.
        load_addr: u64,
        /// The CPU mode it starts in.
        mode: ProgramMode,
    },
}

/// CPU mode of a raw program.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgramMode {
    /// 16-bit real mode, `cs:ip` derived from the load address.
    Real,
    /// 64-bit long mode with the first GiB identity-mapped.
    Long,
}

/// A virtio block device.
#[derive(Clone, Debug)]
pub struct DiskConfig {
    /// The backing file (its size must be a multiple of 512).
    pub path: PathBuf,
    /// Refuse writes and tell the guest so.
    pub read_only: bool,
    /// What the guest reads as the disk's ID (`/sys/block/vdX/serial`).
    pub serial: String,
}

/// The host<->guest channel: a virtio-console port.
#[derive(Debug)]
pub struct ChannelConfig {
    /// The port's name, visible in the guest as
    /// `/sys/class/virtio-ports/vportNpM/name`.
    pub name: String,
    /// A connected stream socket; the monitor owns it from now on.
    pub stream: OwnedFd,
}

/// Where the guest's serial port output goes.
#[derive(Default)]
pub enum SerialOutput {
    /// No serial port at all (the default: every byte would be an exit).
    #[default]
    None,
    /// The monitor's standard error.
    Stderr,
    /// Any writer.
    Writer(Box<dyn Write + Send>),
}

impl std::fmt::Debug for SerialOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SerialOutput::None => "None",
            SerialOutput::Stderr => "Stderr",
            SerialOutput::Writer(_) => "Writer",
        })
    }
}

/// Everything a VM is made of.
#[derive(Debug)]
pub struct VmConfig {
    /// Number of vCPUs, 1 to 32.
    pub vcpus: u8,
    /// Guest RAM in MiB (even).
    pub mem_mib: u32,
    /// The kernel or program.
    pub boot: BootSource,
    /// Block devices, in the order the guest enumerates them.
    pub disks: Vec<DiskConfig>,
    /// The host<->guest channel.
    pub channel: Option<ChannelConfig>,
    /// The 8250 serial port.
    pub serial: SerialOutput,
    /// Provide the debug exit port (0xf4).
    pub debug_exit: bool,
    /// Seccomp for the monitor's threads.
    pub seccomp: SeccompMode,
}

impl VmConfig {
    /// A configuration booting `boot` with 1 vCPU, 128 MiB, no devices.
    pub fn new(boot: BootSource) -> VmConfig {
        VmConfig {
            vcpus: 1,
            mem_mib: 128,
            boot,
            disks: Vec::new(),
            channel: None,
            serial: SerialOutput::None,
            debug_exit: false,
            seccomp: SeccompMode::Enforce,
        }
    }
}

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid VM configuration: {0}")]
    Config(String),
    #[error("opening /dev/kvm")]
    Kvm(#[source] kvm_ioctls::Error),
    #[error("KVM: {0}")]
    KvmCall(&'static str, #[source] kvm_ioctls::Error),
    #[error("guest memory")]
    Memory(#[from] crate::memory::Error),
    #[error("booting")]
    Boot(#[from] boot::Error),
    #[error("MP table")]
    MpTable(#[from] mptable::Error),
    #[error("disk {0}")]
    Disk(String, #[source] crate::devices::virtio::block::Error),
    #[error("channel")]
    Channel(#[source] std::io::Error),
    #[error("creating an eventfd")]
    EventFd(#[source] std::io::Error),
    #[error("device bus")]
    Bus(#[from] crate::bus::Error),
    #[error("vCPU")]
    Vcpu(#[from] vcpu::Error),
    #[error("device event loop")]
    EventLoop(#[from] crate::eventloop::Error),
    #[error("writing the test program")]
    Program(#[source] vm_memory::GuestMemoryError),
    #[error("starting thread {0}")]
    Thread(String, #[source] std::io::Error),
}

/// Result alias of this module.
pub type Result<T> = std::result::Result<T, Error>;

/// A microVM.
pub struct Vm;

/// A running VM. Dropping it kills the VM and waits for its threads.
pub struct VmHandle {
    stopper: Arc<Stopper>,
    vcpus: Vec<JoinHandle<()>>,
    io: Option<JoinHandle<()>>,
    stats: Arc<ExitStats>,
    started: Instant,
    cmdline: Option<String>,
    boot: Option<boot::LinuxBoot>,
    _vm: Arc<VmFd>,
    _ram: GuestRam,
}

impl std::fmt::Debug for VmHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmHandle")
            .field("vcpus", &self.vcpus.len())
            .field("stopping", &self.stopper.stopping())
            .field("exits", &self.stats.snapshot())
            .finish_non_exhaustive()
    }
}

/// A cloneable way to stop a running VM from elsewhere.
#[derive(Clone, Debug)]
pub struct VmStopper(Arc<Stopper>);

impl VmStopper {
    /// Stop the VM now ([`VmExit::Killed`] unless it is already ending).
    pub fn kill(&self) {
        self.0.stop(VmExit::Killed);
    }
}

/// How a VM ended.
#[derive(Clone, Debug)]
pub struct VmOutcome {
    /// Why it stopped.
    pub exit: VmExit,
    /// Wall time from `Vm::start` to the stop.
    pub elapsed: Duration,
    /// `(total, pio, mmio)` exits to user space.
    pub exits: (u64, u64, u64),
}

impl Vm {
    /// Build and start a VM. Returns once the vCPUs run.
    pub fn start(config: VmConfig) -> Result<VmHandle> {
        let started = Instant::now();
        validate(&config)?;
        let kvm = Kvm::new().map_err(Error::Kvm)?;
        let vm = Arc::new(
            kvm.create_vm()
                .map_err(|e| Error::KvmCall("creating the VM", e))?,
        );
        let ram = GuestRam::new(u64::from(config.mem_mib) << 20)?;
        for (slot, (guest, size, host)) in ram.regions().into_iter().enumerate() {
            let region = kvm_userspace_memory_region {
                slot: slot as u32,
                flags: 0,
                guest_phys_addr: guest,
                memory_size: size,
                userspace_addr: host,
            };
            // SAFETY: the host range is a mapping owned by `ram`, which the
            // handle keeps alive until the VM fd is closed.
            unsafe { vm.set_user_memory_region(region) }
                .map_err(|e| Error::KvmCall("registering guest memory", e))?;
        }
        vm.set_tss_address(layout::KVM_TSS_ADDR as usize)
            .map_err(|e| Error::KvmCall("setting the TSS address", e))?;
        vm.create_irq_chip()
            .map_err(|e| Error::KvmCall("creating the interrupt controllers", e))?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        vm.create_pit2(pit)
            .map_err(|e| Error::KvmCall("creating the PIT", e))?;

        let stopper = Stopper::new().map_err(Error::EventFd)?;
        let mut pio = Bus::new();
        pio.insert(
            u64::from(legacy::I8042_PORT),
            5,
            Arc::new(Mutex::new(ResetController::new(stopper.clone()))),
        )?;
        pio.insert(
            u64::from(legacy::RTC_PORT),
            2,
            Arc::new(Mutex::new(CmosRtc::new())),
        )?;
        let serial_out: Option<Box<dyn Write + Send>> = match config.serial {
            SerialOutput::None => None,
            SerialOutput::Stderr => Some(Box::new(std::io::stderr())),
            SerialOutput::Writer(w) => Some(w),
        };
        if let Some(out) = serial_out {
            let irq = new_eventfd()?;
            vm.register_irqfd(&irq, layout::SERIAL_IRQ)
                .map_err(|e| Error::KvmCall("registering the serial irqfd", e))?;
            pio.insert(
                u64::from(layout::SERIAL_PORT),
                8,
                Arc::new(Mutex::new(SerialPort::new(irq, out))),
            )?;
        }
        if config.debug_exit {
            pio.insert(
                u64::from(legacy::DEBUG_EXIT_PORT),
                1,
                Arc::new(Mutex::new(DebugExit(stopper.clone()))),
            )?;
        }

        let mut devices: Vec<Arc<Mutex<dyn VirtioDevice>>> = Vec::new();
        for d in &config.disks {
            let block = Block::open(&d.path, d.read_only, &d.serial)
                .map_err(|e| Error::Disk(d.path.display().to_string(), e))?;
            devices.push(Arc::new(Mutex::new(block)));
        }
        if let Some(ch) = config.channel {
            devices.push(Arc::new(Mutex::new(
                Console::new(&ch.name, ch.stream).map_err(Error::Channel)?,
            )));
        }
        let mut mmio = Bus::new();
        let mut device_events = Vec::new();
        let mut device_args = String::new();
        for (i, device) in devices.into_iter().enumerate() {
            let addr = layout::virtio_mmio_addr(i);
            let irq_line = layout::virtio_irq(i);
            let irqfd = new_eventfd()?;
            vm.register_irqfd(&irqfd, irq_line)
                .map_err(|e| Error::KvmCall("registering a virtio irqfd", e))?;
            let queues = crate::bus::lock(&device).queue_max_sizes().len();
            let mut notify = Vec::with_capacity(queues);
            let mut notify_clones = Vec::with_capacity(queues);
            for q in 0..queues {
                let evt = new_eventfd()?;
                vm.register_ioevent(
                    &evt,
                    &IoEventAddress::Mmio(addr + reg::QUEUE_NOTIFY),
                    q as u32,
                )
                .map_err(|e| Error::KvmCall("registering a queue ioeventfd", e))?;
                notify_clones.push(evt.try_clone().map_err(Error::EventFd)?);
                notify.push(evt);
            }
            let transport = MmioTransport::new(
                device.clone(),
                ram.clone(),
                Interrupt::new(irqfd),
                notify_clones,
            );
            let shared: SharedDevice = Arc::new(Mutex::new(transport));
            mmio.insert(addr, layout::VIRTIO_MMIO_SIZE, shared)?;
            device_events.push(DeviceEvents { device, notify });
            let _ = write!(device_args, " virtio_mmio.device=4K@{addr:#x}:{irq_line}");
        }

        let (entry, cmdline, linux) = match &config.boot {
            BootSource::Linux {
                kernel,
                initrd,
                cmdline,
                pvh,
            } => {
                let full = format!("{}{device_args}", cmdline.trim_end());
                let b = boot::load_linux(&ram, kernel, initrd.as_deref(), &full, *pvh)?;
                mptable::write(&ram, config.vcpus)?;
                (b.entry, Some(full), Some(b))
            }
            BootSource::Program {
                code,
                load_addr,
                mode,
            } => {
                ram.memory()
                    .write_slice(code, GuestAddress(*load_addr))
                    .map_err(Error::Program)?;
                let entry = match mode {
                    ProgramMode::Real => EntryPoint::Real {
                        cs: (*load_addr >> 4) as u16,
                        ip: (*load_addr & 0xf) as u16,
                    },
                    ProgramMode::Long => {
                        boot::write_page_tables(&ram)?;
                        EntryPoint::Long { rip: *load_addr }
                    }
                };
                boot::write_gdt(&ram, entry)?;
                (entry, None, None)
            }
        };

        let mut supported = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(|e| Error::KvmCall("reading supported CPUID", e))?;
        // KVM emulates the TSC-deadline timer but leaves its CPUID bit out
        // of the supported set for userspace to add. Without it the guest
        // calibrates its local APIC timer against the PIT at boot: 100 ms
        // of spinning (HZ/10 ticks) on every boot, and one-shot timer
        // programming afterwards.
        if kvm.check_extension(kvm_ioctls::Cap::TscDeadlineTimer) {
            vcpu::add_tsc_deadline(&mut supported);
        }
        let mut vcpu_fds = Vec::new();
        for id in 0..config.vcpus {
            let fd = vm
                .create_vcpu(u64::from(id))
                .map_err(|e| Error::KvmCall("creating a vCPU", e))?;
            vcpu::configure(&fd, id, config.vcpus, &supported, entry)?;
            vcpu_fds.push(fd);
        }
        vcpu::install_kick_handler()?;

        let stats = Arc::new(ExitStats::default());
        let event_loop = EventLoop::new(device_events, stopper.clone())?;
        let mode = config.seccomp;
        let io_stopper = stopper.clone();
        let io = std::thread::Builder::new()
            .name("vmm-io".into())
            .spawn(move || {
                if let Err(e) = seccomp::apply(ThreadKind::EventLoop, mode) {
                    io_stopper.stop(VmExit::Failed(format!("seccomp on the device thread: {e}")));
                    return;
                }
                event_loop.run();
            })
            .map_err(|e| Error::Thread("vmm-io".into(), e))?;

        let pio = Arc::new(pio);
        let mmio = Arc::new(mmio);
        let mut vcpus = Vec::new();
        for (id, fd) in vcpu_fds.into_iter().enumerate() {
            let (pio, mmio, vcpu_stopper, stats) =
                (pio.clone(), mmio.clone(), stopper.clone(), stats.clone());
            let name = format!("vmm-vcpu{id}");
            let handle = std::thread::Builder::new()
                .name(name.clone())
                .spawn(move || {
                    if let Err(e) = seccomp::apply(ThreadKind::Vcpu, mode) {
                        vcpu_stopper.stop(VmExit::Failed(format!("seccomp on vCPU {id}: {e}")));
                        return;
                    }
                    vcpu::run(fd, id as u8, &pio, &mmio, &vcpu_stopper, &stats);
                })
                .map_err(|e| Error::Thread(name, e));
            match handle {
                Ok(h) => vcpus.push(h),
                Err(e) => {
                    stopper.stop(VmExit::Failed("starting vCPU threads".into()));
                    return Err(e);
                }
            }
        }
        let threads: Vec<libc::pthread_t> = vcpus.iter().map(JoinHandleExt::as_pthread_t).collect();
        let signal = vcpu::kick_signal();
        stopper.set_kick(Box::new(move || {
            for t in &threads {
                // SAFETY: the threads are joined only after the stopper has
                // fired and this closure has run, so each pthread_t is live.
                unsafe {
                    libc::pthread_kill(*t, signal);
                }
            }
        }));
        tracing::debug!(
            elapsed_us = started.elapsed().as_micros() as u64,
            "vm started"
        );
        Ok(VmHandle {
            stopper,
            vcpus,
            io: Some(io),
            stats,
            started,
            cmdline,
            boot: linux,
            _vm: vm,
            _ram: ram,
        })
    }
}

/// Lowest load address of a raw program.
pub const PROGRAM_MIN_ADDR: u64 = 0x1_0000;

fn validate(config: &VmConfig) -> Result<()> {
    if config.vcpus == 0 || config.vcpus > mptable::MAX_CPUS {
        return Err(Error::Config(format!(
            "{} vCPUs; 1 to {} are supported",
            config.vcpus,
            mptable::MAX_CPUS
        )));
    }
    if config.mem_mib < 2 || config.mem_mib % 2 != 0 {
        return Err(Error::Config(format!(
            "{} MiB of memory; an even number of MiB is needed",
            config.mem_mib
        )));
    }
    let devices = config.disks.len() + usize::from(config.channel.is_some());
    if devices > layout::MAX_VIRTIO_DEVICES {
        return Err(Error::Config(format!(
            "{devices} virtio devices; at most {} fit",
            layout::MAX_VIRTIO_DEVICES
        )));
    }
    if let BootSource::Program {
        code, load_addr, ..
    } = &config.boot
    {
        // Below 64 KiB live the GDT, the boot stack and the page tables.
        let end = load_addr.saturating_add(code.len() as u64);
        if *load_addr < PROGRAM_MIN_ADDR || end > u64::from(config.mem_mib) << 20 {
            return Err(Error::Config(format!(
                "program at {load_addr:#x}+{:#x} must lie in RAM at or above {PROGRAM_MIN_ADDR:#x}",
                code.len()
            )));
        }
    }
    Ok(())
}

fn new_eventfd() -> Result<EventFd> {
    EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC).map_err(Error::EventFd)
}

impl VmHandle {
    /// A handle that can stop the VM from another thread.
    pub fn stopper(&self) -> VmStopper {
        VmStopper(self.stopper.clone())
    }

    /// Stop the VM now.
    pub fn kill(&self) {
        self.stopper.stop(VmExit::Killed);
    }

    /// The full kernel command line, for a Linux boot.
    pub fn cmdline(&self) -> Option<&str> {
        self.cmdline.as_deref()
    }

    /// Where the kernel and initramfs went, for a Linux boot.
    pub fn linux_boot(&self) -> Option<&boot::LinuxBoot> {
        self.boot.as_ref()
    }

    /// `(total, pio, mmio)` exits to user space so far.
    pub fn exits(&self) -> (u64, u64, u64) {
        self.stats.snapshot()
    }

    /// Wait until the VM stops and report how.
    pub fn wait(mut self) -> VmOutcome {
        self.join()
    }

    fn join(&mut self) -> VmOutcome {
        for h in self.vcpus.drain(..) {
            if h.join().is_err() {
                self.stopper
                    .stop(VmExit::Failed("a vCPU thread panicked".into()));
            }
        }
        let elapsed = self.started.elapsed();
        // vCPUs only return once the stopper fired, which also ends the
        // event loop.
        if let Some(io) = self.io.take() {
            if io.join().is_err() {
                self.stopper
                    .stop(VmExit::Failed("the device thread panicked".into()));
            }
        }
        VmOutcome {
            exit: self
                .stopper
                .reason()
                .unwrap_or_else(|| VmExit::Failed("stopped without a reason".into())),
            elapsed,
            exits: self.stats.snapshot(),
        }
    }
}

impl Drop for VmHandle {
    fn drop(&mut self) {
        if !self.vcpus.is_empty() || self.io.is_some() {
            self.stopper.stop(VmExit::Killed);
            self.join();
        }
    }
}
