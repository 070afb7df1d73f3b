//! The monitor running small guest programs on whatever /dev/kvm this
//! machine has (PVM included): real mode and 64-bit long mode with paging,
//! port I/O and MMIO exits, the i8042 reset, the debug exit port, seccomp,
//! and killing a spinning guest.

use std::io::Write;
use std::sync::{Arc, Mutex};

use vessel_vmm::{BootSource, DiskConfig, ProgramMode, SerialOutput, Vm, VmConfig, VmExit};

fn kvm_usable() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("capture lock").extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn program(code: &[u8], load_addr: u64, mode: ProgramMode) -> (VmConfig, Captured) {
    let out = Captured::default();
    let mut c = VmConfig::new(BootSource::Program {
        code: code.to_vec(),
        load_addr,
        mode,
    });
    c.mem_mib = 16;
    c.serial = SerialOutput::Writer(Box::new(out.clone()));
    (c, out)
}

/// Real mode at 0x1000:0000: print "hi", read CMOS status register B
/// through ports 0x70/0x71 and print it, then reset through the i8042.
const REAL_MODE: &[u8] = &[
    0xba, 0xf8, 0x03, // mov dx, 0x3f8
    0xb0, b'h', 0xee, // mov al, 'h'; out dx, al
    0xb0, b'i', 0xee, // mov al, 'i'; out dx, al
    0xb0, 0x0b, 0xe6, 0x70, // mov al, 0x0b; out 0x70, al
    0xe4, 0x71, 0xee, // in al, 0x71; out dx, al
    0xb0, 0xfe, 0xe6, 0x64, // mov al, 0xfe; out 0x64, al
    0xf4, // hlt
];

#[test]
fn real_mode_port_io_and_reset() {
    vessel_testkit::require!(kvm_usable(), "needs /dev/kvm");
    let (config, out) = program(REAL_MODE, 0x1_0000, ProgramMode::Real);
    let outcome = Vm::start(config).expect("start").wait();
    assert_eq!(outcome.exit, VmExit::Reset);
    assert_eq!(&*out.0.lock().unwrap(), b"hi\x02");
    let (total, pio, mmio) = outcome.exits;
    assert!(pio >= 6, "port exits: {pio}");
    assert_eq!(mmio, 0);
    assert!(total >= pio);
}

/// Long mode at 1 MiB: read the virtio-mmio magic of the first device at
/// 0xd000_0000 (an MMIO read exit), print its four bytes, write the device
/// status register (an MMIO write exit), then leave through the debug exit
/// port with 0x2a.
const LONG_MODE: &[u8] = &[
    0xbb, 0x00, 0x00, 0x00, 0xd0, // mov ebx, 0xd0000000
    0x8b, 0x03, // mov eax, [rbx]
    0x66, 0xba, 0xf8, 0x03, // mov dx, 0x3f8
    0xee, // out dx, al
    0xc1, 0xe8, 0x08, 0xee, // shr eax, 8; out dx, al
    0xc1, 0xe8, 0x08, 0xee, // shr eax, 8; out dx, al
    0xc1, 0xe8, 0x08, 0xee, // shr eax, 8; out dx, al
    0xc7, 0x43, 0x70, 0x01, 0x00, 0x00, 0x00, // mov dword [rbx+0x70], 1
    0x8b, 0x43, 0x70, // mov eax, [rbx+0x70]
    0xee, // out dx, al
    0xb0, 0x2a, 0xe6, 0xf4, // mov al, 42; out 0xf4, al
    0xf4, // hlt
];

#[test]
fn long_mode_mmio_and_debug_exit() {
    vessel_testkit::require!(kvm_usable(), "needs /dev/kvm");
    let dir = vessel_testkit::TempRoot::new("vmm-prog");
    let disk = dir.join("disk.img");
    std::fs::write(&disk, vec![0u8; 4096]).unwrap();
    let (mut config, out) = program(LONG_MODE, 0x10_0000, ProgramMode::Long);
    config.debug_exit = true;
    config.disks.push(DiskConfig {
        path: disk,
        read_only: true,
        serial: "d0".into(),
    });
    let outcome = Vm::start(config).expect("start").wait();
    assert_eq!(outcome.exit, VmExit::DebugExit(42));
    // "virt" from the magic, then status 1 (ACKNOWLEDGE) read back.
    assert_eq!(&*out.0.lock().unwrap(), b"virt\x01");
    let (_, _, mmio) = outcome.exits;
    assert_eq!(
        mmio, 3,
        "one read of the magic, one status write, one read back"
    );
}

/// A guest spinning forever (`jmp $`) ends when the host kills it.
#[test]
fn kill_stops_a_spinning_guest() {
    vessel_testkit::require!(kvm_usable(), "needs /dev/kvm");
    let (mut config, _) = program(&[0xeb, 0xfe], 0x1_0000, ProgramMode::Real);
    config.vcpus = 2;
    let vm = Vm::start(config).expect("start");
    vm.kill();
    assert_eq!(vm.wait().exit, VmExit::Killed);
}

/// A vCPU thread under the enforcing filter still runs a guest that does
/// port I/O to completion (the filter allows what the run loop needs).
#[test]
fn enforcing_seccomp_lets_the_vm_run() {
    vessel_testkit::require!(kvm_usable(), "needs /dev/kvm");
    let (config, out) = program(REAL_MODE, 0x1_0000, ProgramMode::Real);
    assert_eq!(config.seccomp, vessel_vmm::SeccompMode::Enforce);
    let outcome = Vm::start(config).expect("start").wait();
    assert_eq!(outcome.exit, VmExit::Reset);
    assert_eq!(out.0.lock().unwrap().len(), 3);
}

#[test]
fn bad_configurations_are_refused() {
    let (mut c, _) = program(REAL_MODE, 0x1_0000, ProgramMode::Real);
    c.vcpus = 0;
    assert!(Vm::start(c).unwrap_err().to_string().contains("vCPUs"));
    let (mut c, _) = program(REAL_MODE, 0x1_0000, ProgramMode::Real);
    c.mem_mib = 15;
    assert!(Vm::start(c).unwrap_err().to_string().contains("MiB"));
    let (c, _) = program(REAL_MODE, 0x500, ProgramMode::Real);
    assert!(Vm::start(c).unwrap_err().to_string().contains("program"));
}

/// A writer that passes every write on to a channel.
struct Notify(std::sync::mpsc::Sender<Vec<u8>>);

impl Write for Notify {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        let _ = self.0.send(b.to_vec());
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The kick reaches a vCPU inside KVM_RUN even when the thread that
/// started the VM blocks every signal (vCPU threads inherit its mask).
#[test]
fn kill_works_when_the_creator_blocks_signals() {
    vessel_testkit::require!(kvm_usable(), "needs /dev/kvm");
    std::thread::spawn(|| {
        // SAFETY: blocking all signals in this test thread only.
        unsafe {
            let mut all: libc::sigset_t = std::mem::zeroed();
            libc::sigfillset(&raw mut all);
            libc::pthread_sigmask(libc::SIG_BLOCK, &raw const all, std::ptr::null_mut());
        }
        // Print 'r', then spin: once 'r' arrives the vCPU is in the guest.
        let code = [0xba, 0xf8, 0x03, 0xb0, b'r', 0xee, 0xeb, 0xfe];
        let (mut config, _) = program(&code, 0x1_0000, ProgramMode::Real);
        let (tx, rx) = std::sync::mpsc::channel();
        config.serial = SerialOutput::Writer(Box::new(Notify(tx)));
        let vm = Vm::start(config).expect("start");
        assert_eq!(rx.recv().unwrap(), b"r");
        vm.kill();
        assert_eq!(vm.wait().exit, VmExit::Killed);
    })
    .join()
    .unwrap();
}
