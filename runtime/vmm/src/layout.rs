//! The guest physical address map of a Vessel microVM.
//!
//! Owns the fixed addresses the boot path and the devices agree on: where
//! the boot structures go in low memory, where RAM ends and the MMIO hole
//! begins, and which interrupt lines the devices use. It does not place the
//! kernel or the initramfs (their addresses come from the images).
//!
//! ```text
//! 0x0000_0500  GDT (4 entries), IDT right after it
//! 0x0000_6000  PVH start info, its memory map at 0x6100, module list at 0x6200
//! 0x0000_7000  zero page (Linux boot_params)
//! 0x0000_8ff0  boot stack top
//! 0x0000_9000  page tables: PML4, PDPT at 0xa000, 4 PDs at 0xb000 (4 GiB, 2 MiB pages)
//! 0x0002_0000  kernel command line (up to 64 KiB)
//! 0x0009_fc00  MP table (the EBDA; not RAM in the e820 map)
//! 0x0010_0000  high memory: kernel, then RAM up to the top (initramfs at the top)
//! 0xd000_0000  MMIO hole: virtio-mmio devices, 4 KiB each
//! 0xfec0_0000  IOAPIC, 0xfee0_0000 local APIC
//! 0x1_0000_0000  RAM beyond the hole, if the VM has more than 3.25 GiB
//! ```

/// The global descriptor table.
pub const GDT_ADDR: u64 = 0x500;
/// The (empty) interrupt descriptor table.
pub const IDT_ADDR: u64 = 0x520;
/// PVH `hvm_start_info`.
pub const PVH_INFO_ADDR: u64 = 0x6000;
/// PVH memory map entries.
pub const PVH_MEMMAP_ADDR: u64 = 0x6100;
/// PVH module list (the initramfs).
pub const PVH_MODLIST_ADDR: u64 = 0x6200;
/// The Linux zero page (`struct boot_params`).
pub const ZERO_PAGE_ADDR: u64 = 0x7000;
/// Initial stack pointer for the 64-bit entry.
pub const BOOT_STACK_ADDR: u64 = 0x8ff0;
/// Level 4 page table.
pub const PML4_ADDR: u64 = 0x9000;
/// Page directory pointer table.
pub const PDPT_ADDR: u64 = 0xa000;
/// First of [`PD_COUNT`] page directories with 512 entries of 2 MiB.
pub const PD_ADDR: u64 = 0xb000;
/// Page directories: one per identity-mapped GiB.
pub const PD_COUNT: u64 = 4;
/// Kernel command line.
pub const CMDLINE_ADDR: u64 = 0x20000;
/// Longest command line we accept, including the final NUL.
pub const CMDLINE_MAX: usize = 0x10000;
/// Start of the extended BIOS data area: the MP table lives here.
pub const EBDA_START: u64 = 0x9fc00;
/// First byte above the legacy hole: kernels load here or above.
pub const HIMEM_START: u64 = 0x10_0000;
/// Start of the MMIO hole below 4 GiB.
pub const MMIO_START: u64 = 0xd000_0000;
/// Size of one virtio-mmio device window.
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
/// IOAPIC base address.
pub const IOAPIC_ADDR: u64 = 0xfec0_0000;
/// Local APIC base address.
pub const LAPIC_ADDR: u64 = 0xfee0_0000;
/// KVM's task state segment scratch area (three pages, inside the hole).
pub const KVM_TSS_ADDR: u64 = 0xfffb_d000;
/// Start of RAM above the hole.
pub const HIGH_RAM_START: u64 = 0x1_0000_0000;

/// The serial port's I/O base and interrupt line.
pub const SERIAL_PORT: u16 = 0x3f8;
/// Interrupt line of the serial port.
pub const SERIAL_IRQ: u32 = 4;
/// First interrupt line handed to virtio devices.
pub const VIRTIO_IRQ_BASE: u32 = 5;
/// Number of IOAPIC pins (and so the last usable line is this minus one).
pub const IOAPIC_PINS: u32 = 24;
/// Most virtio-mmio devices one VM can have.
pub const MAX_VIRTIO_DEVICES: usize = (IOAPIC_PINS - VIRTIO_IRQ_BASE) as usize;

/// Guest physical address of the `index`th virtio-mmio window.
pub fn virtio_mmio_addr(index: usize) -> u64 {
    MMIO_START + index as u64 * VIRTIO_MMIO_SIZE
}

/// Interrupt line of the `index`th virtio-mmio device.
pub fn virtio_irq(index: usize) -> u32 {
    VIRTIO_IRQ_BASE + index as u32
}

/// The RAM ranges `(start, size)` of a VM with `mem_size` bytes: below the
/// MMIO hole, then the rest above 4 GiB.
pub fn ram_ranges(mem_size: u64) -> Vec<(u64, u64)> {
    if mem_size <= MMIO_START {
        vec![(0, mem_size)]
    } else {
        vec![(0, MMIO_START), (HIGH_RAM_START, mem_size - MMIO_START)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ram_splits_around_the_hole() {
        assert_eq!(ram_ranges(256 << 20), vec![(0, 256 << 20)]);
        assert_eq!(
            ram_ranges(4 << 30),
            vec![(0, MMIO_START), (HIGH_RAM_START, (4 << 30) - MMIO_START)]
        );
    }

    #[test]
    fn boot_structures_do_not_overlap() {
        let areas = [
            (GDT_ADDR, 0x20),
            (IDT_ADDR, 0x8),
            (PVH_INFO_ADDR, 0x100),
            (PVH_MEMMAP_ADDR, 0x100),
            (PVH_MODLIST_ADDR, 0x20),
            (ZERO_PAGE_ADDR, 0x1000),
            (PML4_ADDR, 0x1000),
            (PDPT_ADDR, 0x1000),
            (PD_ADDR, 0x1000 * PD_COUNT),
            (CMDLINE_ADDR, CMDLINE_MAX as u64),
            (EBDA_START, 0x400),
        ];
        for (i, a) in areas.iter().enumerate() {
            for b in &areas[i + 1..] {
                assert!(
                    a.0 + a.1 <= b.0 || b.0 + b.1 <= a.0,
                    "{a:x?} overlaps {b:x?}"
                );
            }
        }
        const { assert!(BOOT_STACK_ADDR < PML4_ADDR && BOOT_STACK_ADDR > ZERO_PAGE_ADDR + 0x1000) };
        assert!(virtio_mmio_addr(MAX_VIRTIO_DEVICES) <= IOAPIC_ADDR);
    }
}
