//! Loading a Linux kernel and writing what it expects to find at entry.
//!
//! Owns the x86 boot protocols: the 64-bit Linux boot protocol (bzImage or
//! ELF vmlinux entered at its 64-bit entry with a zero page, e820 map,
//! command line and initramfs), the PVH protocol (ELF vmlinux with a
//! `XEN_ELFNOTE_PHYS32_ENTRY` note, entered in 32-bit protected mode with an
//! `hvm_start_info`), the identity page tables and GDT the 64-bit entry
//! needs, and the MP table that tells the kernel about CPUs and the IOAPIC
//! without ACPI. It does not set vCPU registers (`vcpu` does that from the
//! [`EntryPoint`] returned here).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::elf::PvhBootCapability;
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use linux_loader::loader::{BzImage, Elf, KernelLoader};
use vm_memory::{Bytes, GuestAddress};

use crate::layout;
use crate::memory::GuestRam;

/// The e820 type of usable RAM.
pub const E820_RAM: u32 = 1;
/// The e820 type of reserved memory.
pub const E820_RESERVED: u32 = 2;
const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448;
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT: u32 = 0x0100_0000;
const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;
/// Highest initramfs address for kernels that do not say (boot protocol < 2.03).
const DEFAULT_INITRD_ADDR_MAX: u64 = 0x37ff_ffff;
/// Offset of the 64-bit entry point from the start of a bzImage's
/// protected-mode kernel.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;
/// The bzImage setup header advertises a 64-bit entry point (xloadflags).
const XLF_KERNEL_64: u16 = 1;

/// GDT entries: null, null, code (selector 0x10), data (0x18), TSS (0x20),
/// laid out so the same table serves the 64-bit Linux entry (which wants
/// `__BOOT_CS` = 0x10 and `__BOOT_DS` = 0x18) and, with a 32-bit code
/// segment, the PVH entry.
pub const GDT_CODE64: u64 = 0x00af_9b00_0000_ffff;
/// 32-bit flat code segment for PVH and protected-mode test programs.
pub const GDT_CODE32: u64 = 0x00cf_9b00_0000_ffff;
/// Flat read/write data segment.
pub const GDT_DATA: u64 = 0x00cf_9300_0000_ffff;
/// A 32-bit busy TSS with base 0 and limit 0x67.
pub const GDT_TSS: u64 = 0x0000_8b00_0000_0067;
/// Code segment selector.
pub const CODE_SELECTOR: u16 = 0x10;
/// Data segment selector.
pub const DATA_SELECTOR: u16 = 0x18;
/// Task state segment selector.
pub const TSS_SELECTOR: u16 = 0x20;

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("opening {what} {path}")]
    Open {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("reading kernel {0}")]
    Read(PathBuf, #[source] std::io::Error),
    #[error("kernel {0}: neither an ELF vmlinux nor a bzImage")]
    UnknownFormat(PathBuf),
    #[error("kernel {0}: bzImage has no 64-bit entry point (boot protocol {1:#x})")]
    No64BitEntry(PathBuf, u16),
    #[error("loading kernel {0}")]
    Load(PathBuf, #[source] linux_loader::loader::Error),
    #[error("command line is {len} bytes, the kernel accepts at most {max}")]
    CmdlineTooLong { len: usize, max: usize },
    #[error("command line contains a NUL byte")]
    CmdlineNul,
    #[error(
        "initramfs {path} ({size} bytes) does not fit between the kernel end {kernel_end:#x} and {limit:#x}"
    )]
    InitrdTooBig {
        path: PathBuf,
        size: u64,
        kernel_end: u64,
        limit: u64,
    },
    #[error("loading initramfs {0}")]
    LoadInitrd(PathBuf, #[source] vm_memory::GuestMemoryError),
    #[error("writing boot parameters")]
    BootParams(#[source] linux_loader::configurator::Error),
    #[error("writing {0} to guest memory")]
    Write(&'static str, #[source] vm_memory::GuestMemoryError),
    #[error("guest memory of {0} bytes is too small to boot Linux")]
    TooLittleMemory(u64),
}

/// Result alias of this module.
pub type Result<T> = std::result::Result<T, Error>;

/// How a vCPU starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryPoint {
    /// The 64-bit Linux boot protocol: long mode with the identity page
    /// tables, `rip` at the kernel's 64-bit entry, RSI = the zero page.
    Linux64 { rip: u64 },
    /// PVH: 32-bit protected mode without paging, EBX = `hvm_start_info`.
    Pvh { rip: u64 },
    /// Real mode at `cs:ip` (test programs).
    Real { cs: u16, ip: u16 },
    /// Long mode with the identity page tables at `rip` (test programs).
    Long { rip: u64 },
}

/// What loading a kernel produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinuxBoot {
    /// Where the boot CPU starts.
    pub entry: EntryPoint,
    /// First byte above the loaded kernel.
    pub kernel_end: u64,
    /// Guest address and size of the initramfs, if any.
    pub initrd: Option<(u64, u64)>,
}

/// The kernel image formats we boot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelFormat {
    /// An ELF vmlinux.
    Elf,
    /// A bzImage.
    BzImage,
}

/// Tell an ELF vmlinux from a bzImage by their magic numbers.
pub fn detect_format(path: &Path, file: &mut File) -> Result<KernelFormat> {
    let read_err = |e| Error::Read(path.to_path_buf(), e);
    let mut head = [0u8; 0x206];
    file.seek(SeekFrom::Start(0)).map_err(read_err)?;
    let mut filled = 0;
    while filled < head.len() {
        let n = file.read(&mut head[filled..]).map_err(read_err)?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    if filled >= 4 && head[..4] == *b"\x7fELF" {
        return Ok(KernelFormat::Elf);
    }
    if filled >= 0x206 && head[0x202..0x206] == *b"HdrS" {
        return Ok(KernelFormat::BzImage);
    }
    Err(Error::UnknownFormat(path.to_path_buf()))
}

/// Load `kernel` (and `initrd`) into `ram` and write the boot structures for
/// the protocol the image supports: PVH for an ELF with a PVH note (unless
/// `prefer_pvh` is false), otherwise the 64-bit Linux boot protocol.
pub fn load_linux(
    ram: &GuestRam,
    kernel: &Path,
    initrd: Option<&Path>,
    cmdline: &str,
    prefer_pvh: bool,
) -> Result<LinuxBoot> {
    if ram.low_end() < 16 << 20 {
        return Err(Error::TooLittleMemory(ram.size()));
    }
    let mut file = File::open(kernel).map_err(|source| Error::Open {
        what: "kernel",
        path: kernel.to_path_buf(),
        source,
    })?;
    let format = detect_format(kernel, &mut file)?;
    let himem = Some(GuestAddress(layout::HIMEM_START));
    let load_err = |e| Error::Load(kernel.to_path_buf(), e);
    let (result, hdr, entry) = match format {
        KernelFormat::Elf => {
            let r = Elf::load(ram.memory(), None, &mut file, himem).map_err(load_err)?;
            let entry = match r.pvh_boot_cap {
                PvhBootCapability::PvhEntryPresent(addr) if prefer_pvh => {
                    EntryPoint::Pvh { rip: addr.0 }
                }
                _ => EntryPoint::Linux64 {
                    rip: r.kernel_load.0,
                },
            };
            (r, None, entry)
        }
        KernelFormat::BzImage => {
            let r = BzImage::load(ram.memory(), None, &mut file, himem).map_err(load_err)?;
            let hdr = r
                .setup_header
                .expect("the bzImage loader always returns the setup header");
            if hdr.version < 0x020c || hdr.xloadflags & XLF_KERNEL_64 == 0 {
                return Err(Error::No64BitEntry(kernel.to_path_buf(), hdr.version));
            }
            let entry = EntryPoint::Linux64 {
                rip: r.kernel_load.0 + BZIMAGE_64BIT_ENTRY_OFFSET,
            };
            (r, Some(hdr), entry)
        }
    };
    let kernel_end = result.kernel_end;

    let max_cmdline = match &hdr {
        Some(h) if h.version >= 0x0206 && h.cmdline_size > 0 => {
            (h.cmdline_size as usize).min(layout::CMDLINE_MAX - 1)
        }
        Some(_) => 255,
        None => layout::CMDLINE_MAX - 1,
    };
    write_cmdline(ram, cmdline, max_cmdline)?;

    let initrd = match initrd {
        Some(path) => {
            let limit = match &hdr {
                Some(h) if h.version >= 0x0203 && h.initrd_addr_max != 0 => {
                    u64::from(h.initrd_addr_max) + 1
                }
                Some(_) => DEFAULT_INITRD_ADDR_MAX + 1,
                None => u64::from(u32::MAX) + 1,
            };
            Some(load_initrd(ram, path, kernel_end, limit)?)
        }
        None => None,
    };

    if let EntryPoint::Pvh { .. } = entry {
        write_pvh_info(ram, initrd)?;
    } else {
        write_zero_page(ram, hdr, cmdline.len(), initrd)?;
        write_page_tables(ram)?;
    }
    write_gdt(ram, entry)?;
    Ok(LinuxBoot {
        entry,
        kernel_end,
        initrd,
    })
}

fn write_cmdline(ram: &GuestRam, cmdline: &str, max: usize) -> Result<()> {
    if cmdline.len() > max {
        return Err(Error::CmdlineTooLong {
            len: cmdline.len(),
            max,
        });
    }
    if cmdline.as_bytes().contains(&0) {
        return Err(Error::CmdlineNul);
    }
    let mut bytes = Vec::with_capacity(cmdline.len() + 1);
    bytes.extend_from_slice(cmdline.as_bytes());
    bytes.push(0);
    ram.memory()
        .write_slice(&bytes, GuestAddress(layout::CMDLINE_ADDR))
        .map_err(|e| Error::Write("command line", e))
}

/// Place the initramfs page-aligned as high as allowed below `limit` and
/// the top of low RAM, above the kernel.
fn load_initrd(ram: &GuestRam, path: &Path, kernel_end: u64, limit: u64) -> Result<(u64, u64)> {
    let mut file = File::open(path).map_err(|source| Error::Open {
        what: "initramfs",
        path: path.to_path_buf(),
        source,
    })?;
    let size = file
        .metadata()
        .map_err(|e| Error::Read(path.to_path_buf(), e))?
        .len();
    let top = ram.low_end().min(limit);
    let addr = initrd_address(size, kernel_end, top).ok_or_else(|| Error::InitrdTooBig {
        path: path.to_path_buf(),
        size,
        kernel_end,
        limit: top,
    })?;
    ram.memory()
        .read_exact_volatile_from(GuestAddress(addr), &mut file, size as usize)
        .map_err(|e| Error::LoadInitrd(path.to_path_buf(), e))?;
    Ok((addr, size))
}

/// Highest page-aligned address `a` with `a + size <= top` and
/// `a >= kernel_end`, if there is one.
pub fn initrd_address(size: u64, kernel_end: u64, top: u64) -> Option<u64> {
    let start = top.checked_sub(size)? & !0xfff;
    (start >= kernel_end).then_some(start)
}

/// The e820 map of `ram`: low RAM below the EBDA, RAM from 1 MiB to the
/// hole, and RAM above 4 GiB.
pub fn e820_map(ram: &GuestRam) -> Vec<(u64, u64, u32)> {
    let mut map = vec![(0, layout::EBDA_START, E820_RAM)];
    for (start, len) in layout::ram_ranges(ram.size()) {
        if start == 0 {
            map.push((layout::HIMEM_START, len - layout::HIMEM_START, E820_RAM));
        } else {
            map.push((start, len, E820_RAM));
        }
    }
    map
}

fn write_zero_page(
    ram: &GuestRam,
    hdr: Option<setup_header>,
    cmdline_len: usize,
    initrd: Option<(u64, u64)>,
) -> Result<()> {
    let mut params = boot_params::default();
    if let Some(h) = hdr {
        params.hdr = h;
    } else {
        params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT;
    }
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    params.hdr.header = KERNEL_HDR_MAGIC;
    params.hdr.cmd_line_ptr = layout::CMDLINE_ADDR as u32;
    params.hdr.cmdline_size = cmdline_len as u32 + 1;
    if let Some((addr, size)) = initrd {
        params.hdr.ramdisk_image = addr as u32;
        params.hdr.ramdisk_size = size as u32;
    }
    let map = e820_map(ram);
    for (i, (addr, size, kind)) in map.iter().enumerate() {
        params.e820_table[i] = boot_e820_entry {
            addr: *addr,
            size: *size,
            r#type: *kind,
        };
    }
    params.e820_entries = map.len() as u8;
    LinuxBootConfigurator::write_bootparams(
        &BootParams::new(&params, GuestAddress(layout::ZERO_PAGE_ADDR)),
        ram.memory(),
    )
    .map_err(Error::BootParams)
}

fn write_pvh_info(ram: &GuestRam, initrd: Option<(u64, u64)>) -> Result<()> {
    let memmap: Vec<hvm_memmap_table_entry> = e820_map(ram)
        .into_iter()
        .map(|(addr, size, kind)| hvm_memmap_table_entry {
            addr,
            size,
            type_: kind,
            reserved: 0,
        })
        .collect();
    let mut info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC,
        version: 1,
        cmdline_paddr: layout::CMDLINE_ADDR,
        memmap_paddr: layout::PVH_MEMMAP_ADDR,
        memmap_entries: memmap.len() as u32,
        ..Default::default()
    };
    let mut modules = Vec::new();
    if let Some((addr, size)) = initrd {
        info.nr_modules = 1;
        info.modlist_paddr = layout::PVH_MODLIST_ADDR;
        modules.push(hvm_modlist_entry {
            paddr: addr,
            size,
            ..Default::default()
        });
    }
    let mut params = BootParams::new(&info, GuestAddress(layout::PVH_INFO_ADDR));
    params.set_sections(&memmap, GuestAddress(layout::PVH_MEMMAP_ADDR));
    if !modules.is_empty() {
        params.set_modules(&modules, GuestAddress(layout::PVH_MODLIST_ADDR));
    }
    PvhBootConfigurator::write_bootparams(&params, ram.memory()).map_err(Error::BootParams)
}

/// Identity-map the first 4 GiB with 2 MiB pages: PML4[0] -> PDPT[0..4]
/// -> four page directories. Linux needs only its own image mapped; the
/// rest lets 64-bit test programs reach the MMIO hole.
pub fn write_page_tables(ram: &GuestRam) -> Result<()> {
    let mem = ram.memory();
    let w = |v: u64, a: u64| {
        mem.write_obj(v, GuestAddress(a))
            .map_err(|e| Error::Write("page tables", e))
    };
    w(layout::PDPT_ADDR | 0x03, layout::PML4_ADDR)?;
    for gib in 0..layout::PD_COUNT {
        let pd = layout::PD_ADDR + gib * 0x1000;
        w(pd | 0x03, layout::PDPT_ADDR + gib * 8)?;
        let mut table = [0u8; 4096];
        for (i, chunk) in table.chunks_exact_mut(8).enumerate() {
            // Present, writable, 2 MiB page.
            let entry = (gib << 30) | ((i as u64) << 21) | 0x83;
            chunk.copy_from_slice(&entry.to_le_bytes());
        }
        mem.write_slice(&table, GuestAddress(pd))
            .map_err(|e| Error::Write("page tables", e))?;
    }
    Ok(())
}

/// The GDT for `entry`: see the `GDT_*` constants. An empty IDT follows.
pub fn gdt_for(entry: EntryPoint) -> [u64; 5] {
    let code = match entry {
        EntryPoint::Linux64 { .. } | EntryPoint::Long { .. } => GDT_CODE64,
        EntryPoint::Pvh { .. } | EntryPoint::Real { .. } => GDT_CODE32,
    };
    [0, 0, code, GDT_DATA, GDT_TSS]
}

/// Write the GDT for `entry` and an empty IDT.
pub fn write_gdt(ram: &GuestRam, entry: EntryPoint) -> Result<()> {
    let mem = ram.memory();
    for (i, e) in gdt_for(entry).iter().enumerate() {
        mem.write_obj(*e, GuestAddress(layout::GDT_ADDR + 8 * i as u64))
            .map_err(|e| Error::Write("GDT", e))?;
    }
    mem.write_obj(0u64, GuestAddress(layout::IDT_ADDR))
        .map_err(|e| Error::Write("IDT", e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    const MIB: u64 = 1 << 20;

    fn put16(b: &mut [u8], at: usize, v: u16) {
        b[at..at + 2].copy_from_slice(&v.to_le_bytes());
    }
    fn put32(b: &mut [u8], at: usize, v: u32) {
        b[at..at + 4].copy_from_slice(&v.to_le_bytes());
    }
    fn put64(b: &mut [u8], at: usize, v: u64) {
        b[at..at + 8].copy_from_slice(&v.to_le_bytes());
    }
    fn get<T: vm_memory::ByteValued>(ram: &GuestRam, addr: u64) -> T {
        ram.memory().read_obj(GuestAddress(addr)).unwrap()
    }

    /// A bzImage as the boot protocol describes it: 4 setup sectors after
    /// the boot sector, the setup header at 0x1f1, then the payload.
    fn bzimage(version: u16, initrd_max: u32, cmdline_size: u32, payload: &[u8]) -> Vec<u8> {
        let mut img = vec![0u8; 5 * 512];
        img[0x1f1] = 4;
        put16(&mut img, 0x1fe, 0xaa55);
        img[0x202..0x206].copy_from_slice(b"HdrS");
        put16(&mut img, 0x206, version);
        img[0x211] = 0x01; // LOADED_HIGH
        put32(&mut img, 0x214, 0x10_0000);
        put32(&mut img, 0x22c, initrd_max);
        put32(&mut img, 0x230, 0x20_0000);
        put16(&mut img, 0x236, 0x3); // XLF_KERNEL_64 | XLF_CAN_BE_LOADED_ABOVE_4G
        put32(&mut img, 0x238, cmdline_size);
        img.extend_from_slice(payload);
        img
    }

    /// An ELF vmlinux with one PT_LOAD at 16 MiB (0x2000 bytes in the file,
    /// 0x3000 in memory) and, optionally, a PVH entry note.
    fn vmlinux(pvh_entry: Option<u32>) -> Vec<u8> {
        let mut img = vec![0u8; 0x1000];
        img[0..4].copy_from_slice(b"\x7fELF");
        img[4] = 2; // 64-bit
        img[5] = 1; // little endian
        img[6] = 1;
        put16(&mut img, 16, 2); // ET_EXEC
        put16(&mut img, 18, 62); // x86-64
        put32(&mut img, 20, 1);
        put64(&mut img, 24, 0x100_0000); // e_entry
        put64(&mut img, 32, 64); // e_phoff
        put16(&mut img, 52, 64);
        put16(&mut img, 54, 56);
        put16(&mut img, 56, if pvh_entry.is_some() { 2 } else { 1 });
        // PT_LOAD
        let ph = 64;
        put32(&mut img, ph, 1);
        put32(&mut img, ph + 4, 5);
        put64(&mut img, ph + 8, 0x1000);
        put64(&mut img, ph + 16, 0xffff_ffff_8100_0000);
        put64(&mut img, ph + 24, 0x100_0000);
        put64(&mut img, ph + 32, 0x2000);
        put64(&mut img, ph + 40, 0x3000);
        put64(&mut img, ph + 48, 0x1000);
        if let Some(entry) = pvh_entry {
            // PT_NOTE with the Xen PHYS32_ENTRY note at 0x200.
            let ph = 64 + 56;
            put32(&mut img, ph, 4);
            put64(&mut img, ph + 8, 0x200);
            put64(&mut img, ph + 32, 16);
            put64(&mut img, ph + 40, 16);
            put32(&mut img, 0x200, 4);
            put32(&mut img, 0x204, 4);
            put32(&mut img, 0x208, 18);
            img[0x20c..0x210].copy_from_slice(b"Xen\0");
            put32(&mut img, 0x210, entry);
        }
        img.extend((0..0x2000u32).map(|i| (i % 253) as u8));
        img
    }

    fn write_file(dir: &vessel_testkit::TempRoot, name: &str, data: &[u8]) -> PathBuf {
        let p = dir.join(name);
        std::fs::File::create(&p).unwrap().write_all(data).unwrap();
        p
    }

    #[test]
    fn bzimage_zero_page_e820_cmdline_and_initrd_follow_the_boot_protocol() {
        let dir = vessel_testkit::TempRoot::new("vmm-boot");
        let payload: Vec<u8> = (0..0x4000u32).map(|i| (i % 241) as u8).collect();
        let kernel = write_file(
            &dir,
            "bzImage",
            &bzimage(0x020f, 0x7fff_ffff, 2047, &payload),
        );
        let initrd_data: Vec<u8> = (0..5000u32).map(|i| (i % 7) as u8).collect();
        let initrd = write_file(&dir, "initrd", &initrd_data);
        let ram = GuestRam::new(64 * MIB).unwrap();
        let cmdline = "console=ttyS0 reboot=k panic=-1";
        let boot = load_linux(&ram, &kernel, Some(&initrd), cmdline, true).unwrap();

        // Entered at the 64-bit entry, 0x200 into the protected-mode kernel.
        assert_eq!(boot.entry, EntryPoint::Linux64 { rip: 0x10_0200 });
        let mut loaded = vec![0u8; payload.len()];
        ram.memory()
            .read_slice(&mut loaded, GuestAddress(layout::HIMEM_START))
            .unwrap();
        assert_eq!(loaded, payload);
        assert_eq!(boot.kernel_end, layout::HIMEM_START + payload.len() as u64);

        // The initramfs sits page-aligned at the top of RAM.
        let (addr, size) = boot.initrd.unwrap();
        assert_eq!(size, initrd_data.len() as u64);
        assert_eq!(addr % 4096, 0);
        assert_eq!(addr, (64 * MIB - size) & !0xfff);
        let mut got = vec![0u8; initrd_data.len()];
        ram.memory()
            .read_slice(&mut got, GuestAddress(addr))
            .unwrap();
        assert_eq!(got, initrd_data);

        // Zero page fields at their boot protocol offsets.
        let zp = layout::ZERO_PAGE_ADDR;
        assert_eq!(get::<u16>(&ram, zp + 0x1fe), 0xaa55, "boot_flag");
        assert_eq!(get::<u32>(&ram, zp + 0x202), 0x5372_6448, "HdrS");
        assert_eq!(
            get::<u16>(&ram, zp + 0x206),
            0x020f,
            "version kept from the image"
        );
        assert_eq!(get::<u8>(&ram, zp + 0x210), 0xff, "type_of_loader");
        assert_eq!(get::<u8>(&ram, zp + 0x211) & 1, 1, "loadflags kept");
        assert_eq!(get::<u32>(&ram, zp + 0x218), addr as u32, "ramdisk_image");
        assert_eq!(get::<u32>(&ram, zp + 0x21c), size as u32, "ramdisk_size");
        assert_eq!(
            get::<u32>(&ram, zp + 0x228),
            layout::CMDLINE_ADDR as u32,
            "cmd_line_ptr"
        );
        assert_eq!(get::<u8>(&ram, zp + 0x1e8), 2, "e820_entries");
        let e820 = |i: u64| {
            let at = zp + 0x2d0 + 20 * i;
            (
                get::<u64>(&ram, at),
                get::<u64>(&ram, at + 8),
                get::<u32>(&ram, at + 16),
            )
        };
        assert_eq!(e820(0), (0, layout::EBDA_START, E820_RAM));
        assert_eq!(
            e820(1),
            (
                layout::HIMEM_START,
                64 * MIB - layout::HIMEM_START,
                E820_RAM
            )
        );

        // The command line, NUL terminated.
        let mut c = vec![0u8; cmdline.len() + 1];
        ram.memory()
            .read_slice(&mut c, GuestAddress(layout::CMDLINE_ADDR))
            .unwrap();
        assert_eq!(&c[..cmdline.len()], cmdline.as_bytes());
        assert_eq!(c[cmdline.len()], 0);

        // Identity page tables and the boot GDT.
        assert_eq!(get::<u64>(&ram, layout::PML4_ADDR), layout::PDPT_ADDR | 3);
        assert_eq!(get::<u64>(&ram, layout::PDPT_ADDR), layout::PD_ADDR | 3);
        assert_eq!(get::<u64>(&ram, layout::PD_ADDR + 8), 0x20_0000 | 0x83);
        assert_eq!(
            get::<u64>(&ram, layout::PDPT_ADDR + 24),
            (layout::PD_ADDR + 0x3000) | 3
        );
        assert_eq!(get::<u64>(&ram, layout::GDT_ADDR + 16), GDT_CODE64);
        assert_eq!(get::<u64>(&ram, layout::GDT_ADDR + 24), GDT_DATA);
    }

    #[test]
    fn initrd_respects_initrd_addr_max() {
        let dir = vessel_testkit::TempRoot::new("vmm-boot");
        let kernel = write_file(
            &dir,
            "bzImage",
            &bzimage(0x020f, 0x1ff_ffff, 2047, &[0x90; 512]),
        );
        let initrd = write_file(&dir, "initrd", &[1; 100]);
        let ram = GuestRam::new(64 * MIB).unwrap();
        let boot = load_linux(&ram, &kernel, Some(&initrd), "", true).unwrap();
        assert_eq!(boot.initrd.unwrap().0, 0x1ff_f000);
    }

    #[test]
    fn bad_images_and_arguments_are_refused() {
        let dir = vessel_testkit::TempRoot::new("vmm-boot");
        let ram = GuestRam::new(64 * MIB).unwrap();
        let kernel = write_file(
            &dir,
            "bzImage",
            &bzimage(0x020f, 0x7fff_ffff, 64, &[0x90; 512]),
        );
        let long = "x".repeat(65);
        assert!(matches!(
            load_linux(&ram, &kernel, None, &long, true),
            Err(Error::CmdlineTooLong { len: 65, max: 64 })
        ));
        let huge = write_file(&dir, "initrd", &vec![0u8; 70 << 20]);
        assert!(matches!(
            load_linux(&ram, &kernel, Some(&huge), "", true),
            Err(Error::InitrdTooBig { .. })
        ));
        let old = write_file(&dir, "old", &bzimage(0x0204, 0x7fff_ffff, 64, &[0x90; 512]));
        assert!(matches!(
            load_linux(&ram, &old, None, "", true),
            Err(Error::No64BitEntry(..))
        ));
        let junk = write_file(&dir, "junk", &[0u8; 4096]);
        assert!(matches!(
            load_linux(&ram, &junk, None, "", true),
            Err(Error::UnknownFormat(_))
        ));
        let small = GuestRam::new(8 * MIB).unwrap();
        assert!(matches!(
            load_linux(&small, &kernel, None, "", true),
            Err(Error::TooLittleMemory(_))
        ));
    }

    #[test]
    fn elf_with_pvh_note_gets_start_info_memmap_and_module() {
        let dir = vessel_testkit::TempRoot::new("vmm-boot");
        let kernel = write_file(&dir, "vmlinux", &vmlinux(Some(0x100_0123)));
        let initrd = write_file(&dir, "initrd", &[9; 3000]);
        let ram = GuestRam::new(64 * MIB).unwrap();
        let boot = load_linux(&ram, &kernel, Some(&initrd), "quiet", true).unwrap();
        assert_eq!(boot.entry, EntryPoint::Pvh { rip: 0x100_0123 });
        assert_eq!(boot.kernel_end, 0x100_3000);
        assert_eq!(get::<u8>(&ram, 0x100_0001), 1);
        // The bss is not written: guest RAM starts zeroed, and Linux clears
        // its bss itself.

        let si = layout::PVH_INFO_ADDR;
        assert_eq!(get::<u32>(&ram, si), 0x336e_c578, "magic");
        assert_eq!(get::<u32>(&ram, si + 4), 1, "version");
        assert_eq!(get::<u32>(&ram, si + 12), 1, "nr_modules");
        assert_eq!(get::<u64>(&ram, si + 16), layout::PVH_MODLIST_ADDR);
        assert_eq!(get::<u64>(&ram, si + 24), layout::CMDLINE_ADDR);
        assert_eq!(get::<u64>(&ram, si + 40), layout::PVH_MEMMAP_ADDR);
        assert_eq!(get::<u32>(&ram, si + 48), 2, "memmap entries");
        let mm = layout::PVH_MEMMAP_ADDR;
        assert_eq!(
            (
                get::<u64>(&ram, mm),
                get::<u64>(&ram, mm + 8),
                get::<u32>(&ram, mm + 16)
            ),
            (0, layout::EBDA_START, E820_RAM)
        );
        assert_eq!(get::<u64>(&ram, mm + 24), layout::HIMEM_START);
        let (addr, size) = boot.initrd.unwrap();
        assert_eq!(get::<u64>(&ram, layout::PVH_MODLIST_ADDR), addr);
        assert_eq!(get::<u64>(&ram, layout::PVH_MODLIST_ADDR + 8), size);
        // 32-bit code segment for the protected-mode entry.
        assert_eq!(get::<u64>(&ram, layout::GDT_ADDR + 16), GDT_CODE32);
    }

    #[test]
    fn elf_without_pvh_or_with_pvh_declined_uses_the_64_bit_entry() {
        let dir = vessel_testkit::TempRoot::new("vmm-boot");
        let ram = GuestRam::new(64 * MIB).unwrap();
        let plain = write_file(&dir, "plain", &vmlinux(None));
        let boot = load_linux(&ram, &plain, None, "", true).unwrap();
        assert_eq!(boot.entry, EntryPoint::Linux64 { rip: 0x100_0000 });
        assert_eq!(
            get::<u32>(&ram, layout::ZERO_PAGE_ADDR + 0x230),
            KERNEL_MIN_ALIGNMENT
        );
        let pvh = write_file(&dir, "pvh", &vmlinux(Some(0x100_0040)));
        let boot = load_linux(&ram, &pvh, None, "", false).unwrap();
        assert_eq!(boot.entry, EntryPoint::Linux64 { rip: 0x100_0000 });
    }

    #[test]
    fn initrd_goes_high_and_page_aligned() {
        assert_eq!(
            initrd_address(0x1800, 0x200_0000, 0x800_0000),
            Some(0x7ff_e000)
        );
        assert_eq!(
            initrd_address(0x1000, 0x200_0000, 0x800_0000),
            Some(0x7ff_f000)
        );
        // Does not fit above the kernel.
        assert_eq!(initrd_address(0x700_0000, 0x200_0000, 0x800_0000), None);
        assert_eq!(initrd_address(0x900_0000, 0, 0x800_0000), None);
    }

    #[test]
    fn gdt_entries_decode_to_flat_segments() {
        // Base 0, limit 0xfffff with 4 KiB granularity, present, DPL 0.
        for e in [GDT_CODE64, GDT_CODE32, GDT_DATA] {
            assert_eq!(e & 0xffff, 0xffff);
            assert_eq!((e >> 16) & 0xff_ffff, 0, "base low");
            assert_eq!(e >> 56, 0, "base high");
            assert_ne!(e & (1 << 47), 0, "present");
            assert_ne!(e & (1 << 55), 0, "granularity");
        }
        assert_ne!(GDT_CODE64 & (1 << 53), 0, "long mode code");
        assert_eq!(GDT_CODE64 & (1 << 54), 0, "D clear in long mode");
        assert_ne!(GDT_CODE32 & (1 << 54), 0, "32-bit code");
        assert_eq!(CODE_SELECTOR as usize / 8, 2);
        assert_eq!(DATA_SELECTOR as usize / 8, 3);
    }
}
