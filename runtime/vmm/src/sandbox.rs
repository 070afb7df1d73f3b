//! The shape of a container sandbox VM, for the runtime: layer images as
//! read-only disks, an optional scratch disk, the channel, sized by memory
//! and vCPUs, booting the guest kernel with the agent's initramfs.
//!
//! Owns only the naming convention the agent relies on (disk serials
//! `layer-N` from the lowest layer up, `scratch`, the channel port
//! `vessel.agent`) and the command line of a sandbox guest. What runs in
//! the sandbox is the agent protocol's business (`vessel-agent`): the
//! caller passes [`Sandbox::layer_serials`] and [`SCRATCH_SERIAL`] in its
//! start request, and speaks the protocol over the other end of the
//! channel.

use std::os::fd::OwnedFd;
use std::path::PathBuf;

use crate::seccomp::SeccompMode;
use crate::vm::{
    BootSource, ChannelConfig, DiskConfig, Result, SerialOutput, Vm, VmConfig, VmHandle,
};

/// Serial of the scratch disk.
pub const SCRATCH_SERIAL: &str = "scratch";
/// Name of the channel port.
pub const CHANNEL_NAME: &str = "vessel.agent";
/// Command line of a sandbox guest: quiet (every console byte is an exit),
/// reset through the i8042 on reboot and on panic.
pub const CMDLINE: &str = "reboot=k panic=-1 quiet";

/// Serial of layer disk `index` (0 is the lowest layer).
pub fn layer_serial(index: usize) -> String {
    format!("layer-{index}")
}

/// A container sandbox.
#[derive(Debug)]
pub struct SandboxConfig {
    /// The guest kernel (`vmlinux` from guest/build-kernel.sh).
    pub kernel: PathBuf,
    /// The initramfs with the agent as /init
    /// (`initramfs::write_agent_initramfs`).
    pub initrd: PathBuf,
    /// Layer images, lowest first (`layer::LayerImages`).
    pub layers: Vec<PathBuf>,
    /// An ext4 scratch disk for the writable layer
    /// (`layer::create_scratch_disk`); without it the agent uses tmpfs.
    pub scratch: Option<PathBuf>,
    /// Guest memory in MiB (`--memory`).
    pub mem_mib: u32,
    /// vCPUs (`--cpus`, rounded up).
    pub vcpus: u8,
    /// The guest end of the channel: a connected stream socket.
    pub channel: OwnedFd,
    /// Extra kernel command line words (debugging).
    pub extra_cmdline: String,
    /// Guest serial console output, off unless debugging.
    pub serial: SerialOutput,
}

/// A running sandbox VM.
#[derive(Debug)]
pub struct Sandbox {
    handle: VmHandle,
    layers: usize,
}

/// The VM configuration for `config`.
pub fn vm_config(config: SandboxConfig) -> VmConfig {
    let mut cmdline = CMDLINE.to_string();
    if !config.extra_cmdline.is_empty() {
        cmdline.push(' ');
        cmdline.push_str(&config.extra_cmdline);
    }
    let mut vm = VmConfig::new(BootSource::Linux {
        kernel: config.kernel,
        initrd: Some(config.initrd),
        cmdline,
        pvh: true,
    });
    vm.mem_mib = config.mem_mib;
    vm.vcpus = config.vcpus;
    vm.serial = config.serial;
    vm.seccomp = SeccompMode::Enforce;
    for (i, path) in config.layers.into_iter().enumerate() {
        vm.disks.push(DiskConfig {
            path,
            read_only: true,
            serial: layer_serial(i),
        });
    }
    if let Some(path) = config.scratch {
        vm.disks.push(DiskConfig {
            path,
            read_only: false,
            serial: SCRATCH_SERIAL.to_string(),
        });
    }
    vm.channel = Some(ChannelConfig {
        name: CHANNEL_NAME.to_string(),
        stream: config.channel,
    });
    vm
}

impl Sandbox {
    /// Boot the sandbox.
    pub fn start(config: SandboxConfig) -> Result<Sandbox> {
        let layers = config.layers.len();
        let handle = Vm::start(vm_config(config))?;
        Ok(Sandbox { handle, layers })
    }

    /// The disk serials of the layers, lowest first, for the agent's
    /// start request.
    pub fn layer_serials(&self) -> Vec<String> {
        (0..self.layers).map(layer_serial).collect()
    }

    /// The VM.
    pub fn vm(&self) -> &VmHandle {
        &self.handle
    }

    /// Wait for the VM to end.
    pub fn wait(self) -> crate::vm::VmOutcome {
        self.handle.wait()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    #[test]
    fn disks_serials_and_command_line() {
        let (_host, guest) = UnixStream::pair().unwrap();
        let vm = vm_config(SandboxConfig {
            kernel: "/k".into(),
            initrd: "/i".into(),
            layers: vec!["/l0".into(), "/l1".into()],
            scratch: Some("/s".into()),
            mem_mib: 512,
            vcpus: 2,
            channel: guest.into(),
            extra_cmdline: "console=ttyS0".into(),
            serial: SerialOutput::None,
        });
        let disks: Vec<(&str, bool, &str)> = vm
            .disks
            .iter()
            .map(|d| (d.path.to_str().unwrap(), d.read_only, d.serial.as_str()))
            .collect();
        assert_eq!(
            disks,
            [
                ("/l0", true, "layer-0"),
                ("/l1", true, "layer-1"),
                ("/s", false, "scratch")
            ]
        );
        assert_eq!((vm.mem_mib, vm.vcpus), (512, 2));
        assert_eq!(vm.channel.as_ref().unwrap().name, "vessel.agent");
        let BootSource::Linux {
            cmdline,
            initrd,
            pvh,
            ..
        } = &vm.boot
        else {
            panic!()
        };
        assert_eq!(cmdline, "reboot=k panic=-1 quiet console=ttyS0");
        assert_eq!(initrd.as_deref(), Some(std::path::Path::new("/i")));
        assert!(pvh);
    }
}
