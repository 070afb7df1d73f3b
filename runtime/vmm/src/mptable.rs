//! The Intel MultiProcessor Specification (1.4) table that tells a guest
//! without ACPI how many CPUs it has, where the IOAPIC is and how the ISA
//! interrupt lines are wired.
//!
//! Owns the byte layout of the floating pointer and the configuration table
//! and writes them into the EBDA, where Linux's `smp_scan_config` looks.

use vm_memory::{Bytes, GuestAddress};

use crate::layout;
use crate::memory::GuestRam;

/// Most vCPUs whose table still fits in the 1 KiB EBDA.
pub const MAX_CPUS: u8 = 32;
const MPC_SPEC: u8 = 4;
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const CPU_ENABLED: u8 = 1;
const CPU_BOOTPROCESSOR: u8 = 2;
const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_INTSRC: u8 = 3;
const ENTRY_LINTSRC: u8 = 4;
const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;
const ISA_BUS_ID: u8 = 0;
/// CPU signature (family 6) and feature flags (FPU and APIC) for the
/// processor entries; Linux reads the real values from CPUID.
const CPU_SIGNATURE: u32 = 0x600;
const CPU_FEATURES: u32 = 0x201;

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0} vCPUs: an MP table in the EBDA describes 1 to {MAX_CPUS}")]
    TooManyCpus(u8),
    #[error("writing the MP table")]
    Write(#[source] vm_memory::GuestMemoryError),
}

/// Result alias of this module.
pub type Result<T> = std::result::Result<T, Error>;

fn checksum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |a, b| a.wrapping_sub(*b))
}

/// Build the floating pointer followed by the configuration table, as they
/// sit at `base`.
pub fn build(base: u64, cpus: u8) -> Result<Vec<u8>> {
    if cpus == 0 || cpus > MAX_CPUS {
        return Err(Error::TooManyCpus(cpus));
    }
    let ioapic_id = cpus;
    let table_addr = base + 16;

    let mut entries = Vec::new();
    let mut count: u16 = 0;
    for id in 0..cpus {
        let flags = CPU_ENABLED | if id == 0 { CPU_BOOTPROCESSOR } else { 0 };
        entries.extend_from_slice(&[ENTRY_PROCESSOR, id, APIC_VERSION, flags]);
        entries.extend_from_slice(&CPU_SIGNATURE.to_le_bytes());
        entries.extend_from_slice(&CPU_FEATURES.to_le_bytes());
        entries.extend_from_slice(&[0; 8]);
        count += 1;
    }
    entries.extend_from_slice(&[ENTRY_BUS, ISA_BUS_ID]);
    entries.extend_from_slice(b"ISA   ");
    count += 1;
    entries.extend_from_slice(&[ENTRY_IOAPIC, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend_from_slice(&(layout::IOAPIC_ADDR as u32).to_le_bytes());
    count += 1;
    for irq in 0..layout::IOAPIC_PINS as u8 {
        // Flags 0: polarity and trigger conform to the bus (ISA: edge, high).
        entries.extend_from_slice(&[
            ENTRY_INTSRC,
            INT_TYPE_INT,
            0,
            0,
            ISA_BUS_ID,
            irq,
            ioapic_id,
            irq,
        ]);
        count += 1;
    }
    entries.extend_from_slice(&[ENTRY_LINTSRC, INT_TYPE_EXTINT, 0, 0, ISA_BUS_ID, 0, 0, 0]);
    entries.extend_from_slice(&[ENTRY_LINTSRC, INT_TYPE_NMI, 0, 0, ISA_BUS_ID, 0, 0xff, 1]);
    count += 2;

    let mut table = Vec::with_capacity(44 + entries.len());
    table.extend_from_slice(b"PCMP");
    table.extend_from_slice(&((44 + entries.len()) as u16).to_le_bytes());
    table.push(MPC_SPEC);
    table.push(0); // checksum, below
    table.extend_from_slice(b"VESSEL  ");
    table.extend_from_slice(b"MICROVM     ");
    table.extend_from_slice(&0u32.to_le_bytes()); // OEM table
    table.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    table.extend_from_slice(&count.to_le_bytes());
    table.extend_from_slice(&(layout::LAPIC_ADDR as u32).to_le_bytes());
    table.extend_from_slice(&0u16.to_le_bytes()); // extended table length
    table.push(0); // extended table checksum
    table.push(0);
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    let mut fp = Vec::with_capacity(16);
    fp.extend_from_slice(b"_MP_");
    fp.extend_from_slice(&(table_addr as u32).to_le_bytes());
    fp.push(1); // length in 16-byte units
    fp.push(MPC_SPEC);
    fp.push(0); // checksum, below
    fp.extend_from_slice(&[0; 5]); // feature bytes: no default configuration, no IMCR
    fp[10] = checksum(&fp);

    fp.extend_from_slice(&table);
    Ok(fp)
}

/// Write the MP table for `cpus` vCPUs at the start of the EBDA.
pub fn write(ram: &GuestRam, cpus: u8) -> Result<()> {
    let bytes = build(layout::EBDA_START, cpus)?;
    ram.memory()
        .write_slice(&bytes, GuestAddress(layout::EBDA_START))
        .map_err(Error::Write)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_and_counts_are_right() {
        let t = build(layout::EBDA_START, 3).unwrap();
        assert_eq!(&t[..4], b"_MP_");
        assert_eq!(t[..16].iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
        let ptr = u32::from_le_bytes(t[4..8].try_into().unwrap()) as u64;
        assert_eq!(ptr, layout::EBDA_START + 16);
        let table = &t[16..];
        assert_eq!(&table[..4], b"PCMP");
        let len = u16::from_le_bytes([table[4], table[5]]) as usize;
        assert_eq!(len, table.len());
        assert_eq!(table.iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
        let count = u16::from_le_bytes([table[34], table[35]]);
        // 3 CPUs, a bus, an IOAPIC, 24 interrupt sources, 2 local sources.
        assert_eq!(count, 3 + 1 + 1 + 24 + 2);
        assert_eq!(len, 44 + 3 * 20 + (1 + 1 + 24 + 2) * 8);
        // The first processor entry is the enabled boot processor.
        assert_eq!(table[44], ENTRY_PROCESSOR);
        assert_eq!(table[47], CPU_ENABLED | CPU_BOOTPROCESSOR);
        assert_eq!(table[64 + 3], CPU_ENABLED);
        // The whole thing fits in the EBDA below 640 KiB.
        assert!(layout::EBDA_START + t.len() as u64 <= 0xa0000);
    }

    #[test]
    fn rejects_zero_and_too_many_cpus() {
        assert!(build(layout::EBDA_START, 0).is_err());
        assert!(build(layout::EBDA_START, MAX_CPUS + 1).is_err());
        let biggest = build(layout::EBDA_START, MAX_CPUS).unwrap();
        assert!(biggest.len() <= 0x400, "{} bytes", biggest.len());
    }
}
