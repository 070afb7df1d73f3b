//! Vessel's microVM monitor.
//!
//! A small KVM virtual machine monitor on the rust-vmm crates: guest RAM on
//! transparent huge pages, one thread per vCPU, 64-bit Linux boot (bzImage,
//! ELF vmlinux, PVH), an MP table instead of ACPI, the legacy devices a
//! Linux guest needs (8250 UART, CMOS clock, i8042 reset), and virtio-mmio
//! block and console devices found through the kernel command line. It
//! knows nothing about containers: see `docs/microvm.md` for how the
//! runtime and the guest agent use it.
//!
//! ```no_run
//! use vessel_vmm::{BootSource, Vm, VmConfig};
//! let mut config = VmConfig::new(BootSource::Linux {
//!     kernel: "/var/cache/vessel/kernel/vmlinux".into(),
//!     initrd: Some("initramfs.cpio".into()),
//!     cmdline: "console=ttyS0 reboot=k panic=-1".into(),
//!     pvh: true,
//! });
//! config.mem_mib = 256;
//! let vm = Vm::start(config)?;
//! let outcome = vm.wait();
//! println!("{}", outcome.exit);
//! # Ok::<(), vessel_vmm::Error>(())
//! ```

pub mod boot;
pub mod bus;
pub mod control;
pub mod devices;
pub mod eventloop;
pub mod initramfs;
pub mod layer;
pub mod layout;
pub mod memory;
pub mod mptable;
pub mod sandbox;
pub mod seccomp;
pub mod vcpu;
pub mod vm;

pub use control::VmExit;
pub use sandbox::{Sandbox, SandboxConfig};
pub use seccomp::SeccompMode;
pub use vm::{
    BootSource, ChannelConfig, DiskConfig, Error, ProgramMode, Result, SerialOutput, Vm, VmConfig,
    VmHandle, VmOutcome, VmStopper,
};
