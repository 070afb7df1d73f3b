//! Guest RAM: anonymous mappings aligned to 2 MiB and backed by transparent
//! huge pages, wrapped as a `vm-memory` guest memory.
//!
//! Owns the host mappings and their lifetime: a [`GuestRam`] is cheap to
//! clone and the mappings go away with the last clone, so a device thread can
//! never touch unmapped memory. It does not register the memory with KVM
//! (see `vm`).

use std::sync::Arc;

use vm_memory::{
    Address, GuestAddress, GuestMemoryBackend, GuestMemoryRegion, GuestRegionMmap, MmapRegion,
    mmap::MmapRegionBuilder,
};

use crate::layout;

/// Guest memory as the `vm-memory` crates see it.
pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<()>;

const HUGE_PAGE: usize = 2 << 20;

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("guest memory size {0} bytes is not a positive multiple of 2 MiB")]
    BadSize(u64),
    #[error("mapping {size} bytes of guest memory")]
    Map {
        size: usize,
        #[source]
        source: std::io::Error,
    },
    #[error("wrapping guest memory region")]
    Region(#[source] vm_memory::mmap::MmapRegionError),
    #[error("building guest memory map")]
    Collection(#[source] vm_memory::GuestRegionCollectionError),
    #[error("guest range {addr:#x}+{len:#x} is not inside guest memory")]
    OutOfRange { addr: u64, len: usize },
}

/// Result alias of this module.
pub type Result<T> = std::result::Result<T, Error>;

/// One host mapping, unmapped on drop.
#[derive(Debug)]
struct Mapping {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the mapping is plain memory; Mapping only unmaps it on drop and
// hands out no references itself.
unsafe impl Send for Mapping {}
// SAFETY: as above; shared access goes through vm-memory's volatile accessors.
unsafe impl Sync for Mapping {}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: ptr/len describe a mapping this struct created and nobody
        // else unmaps; the last GuestRam clone holding it is gone.
        unsafe {
            libc::munmap(self.ptr.cast(), self.len);
        }
    }
}

/// The guest's RAM. Clones share the same memory.
#[derive(Clone, Debug)]
pub struct GuestRam {
    mem: GuestMemoryMmap,
    size: u64,
    _mappings: Arc<Vec<Mapping>>,
}

impl GuestRam {
    /// Map `size` bytes of guest RAM (a multiple of 2 MiB), split around the
    /// MMIO hole, and ask for transparent huge pages.
    pub fn new(size: u64) -> Result<GuestRam> {
        if size == 0 || size % HUGE_PAGE as u64 != 0 {
            return Err(Error::BadSize(size));
        }
        let mut mappings = Vec::new();
        let mut regions = Vec::new();
        for (start, len) in layout::ram_ranges(size) {
            let len = usize::try_from(len).map_err(|_| Error::BadSize(size))?;
            let mapping = map_aligned(len)?;
            // SAFETY: mapping.ptr is a fresh private mapping of exactly `len`
            // bytes that lives as long as the GuestRam (the Arc below), and
            // vm-memory does not unmap raw-pointer regions itself.
            let region: MmapRegion<()> = unsafe {
                MmapRegionBuilder::new(len)
                    .with_raw_mmap_pointer(mapping.ptr)
                    .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
                    .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE)
                    .build()
                    .map_err(Error::Region)?
            };
            regions.push(
                GuestRegionMmap::new(region, GuestAddress(start))
                    .expect("a region starting at a layout address cannot overflow"),
            );
            mappings.push(mapping);
        }
        let mem = GuestMemoryMmap::from_regions(regions).map_err(Error::Collection)?;
        Ok(GuestRam {
            mem,
            size,
            _mappings: Arc::new(mappings),
        })
    }

    /// The `vm-memory` view.
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// Total RAM in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// First address above the RAM below the MMIO hole.
    pub fn low_end(&self) -> u64 {
        self.size.min(layout::MMIO_START)
    }

    /// The regions as `(guest address, length, host address)`, for KVM.
    pub fn regions(&self) -> Vec<(u64, u64, u64)> {
        self.mem
            .iter()
            .map(|r| {
                let host = r
                    .get_host_address(vm_memory::MemoryRegionAddress(0))
                    .expect("offset 0 is inside every region");
                (r.start_addr().raw_value(), r.len(), host as u64)
            })
            .collect()
    }

    /// A host pointer to `len` bytes of guest memory at `addr`, which must
    /// lie within one region. Used for I/O straight into guest memory.
    pub fn host_range(&self, addr: u64, len: usize) -> Result<*mut u8> {
        let out = || Error::OutOfRange { addr, len };
        let region = self.mem.find_region(GuestAddress(addr)).ok_or_else(out)?;
        let offset = addr - region.start_addr().raw_value();
        let end = offset.checked_add(len as u64).ok_or_else(out)?;
        if end > region.len() {
            return Err(out());
        }
        region
            .get_host_address(vm_memory::MemoryRegionAddress(offset))
            .map_err(|_| out())
    }
}

/// An anonymous mapping of `len` bytes whose start is 2 MiB aligned, so that
/// guest huge pages line up with host huge pages, marked MADV_HUGEPAGE.
fn map_aligned(len: usize) -> Result<Mapping> {
    let map_err = |source| Error::Map { size: len, source };
    let total = len + HUGE_PAGE;
    // SAFETY: anonymous private mapping with no address hint; the result is
    // checked before use.
    let raw = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            total,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if raw == libc::MAP_FAILED {
        return Err(map_err(std::io::Error::last_os_error()));
    }
    let start = raw as usize;
    let aligned = start.next_multiple_of(HUGE_PAGE);
    let head = aligned - start;
    let tail = total - head - len;
    // SAFETY: both trimmed ranges lie inside the mapping just created and
    // are not used by anything.
    unsafe {
        if head > 0 {
            libc::munmap(raw, head);
        }
        if tail > 0 {
            libc::munmap((aligned + len) as *mut libc::c_void, tail);
        }
    }
    let ptr = aligned as *mut u8;
    // SAFETY: advice on a range we own; failure only means no huge pages
    // (THP disabled on the host), which is not an error.
    let rc = unsafe { libc::madvise(ptr.cast(), len, libc::MADV_HUGEPAGE) };
    if rc != 0 {
        tracing::debug!(
            error = %std::io::Error::last_os_error(),
            "madvise(MADV_HUGEPAGE) refused; guest RAM uses small pages"
        );
    }
    Ok(Mapping { ptr, len })
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    #[test]
    fn ram_is_aligned_and_usable() {
        let ram = GuestRam::new(64 << 20).unwrap();
        let regions = ram.regions();
        assert_eq!(regions.len(), 1);
        assert_eq!(regions[0].0, 0);
        assert_eq!(regions[0].1, 64 << 20);
        assert_eq!(
            regions[0].2 % HUGE_PAGE as u64,
            0,
            "host address is 2 MiB aligned"
        );
        ram.memory()
            .write_obj(0xdead_beef_u32, GuestAddress(0x1234))
            .unwrap();
        let p = ram.host_range(0x1234, 4).unwrap();
        // SAFETY: p points at 4 readable bytes of guest memory.
        let v = unsafe { std::ptr::read_unaligned(p.cast::<u32>()) };
        assert_eq!(v, 0xdead_beef);
        assert!(ram.host_range((64 << 20) - 2, 4).is_err());
    }

    #[test]
    fn rejects_odd_sizes() {
        assert!(matches!(GuestRam::new(3 << 20), Err(Error::BadSize(_))));
        assert!(matches!(GuestRam::new(0), Err(Error::BadSize(_))));
    }

    #[test]
    fn big_ram_is_split_around_the_hole() {
        // Address space only: MAP_NORESERVE and nothing touched.
        let ram = GuestRam::new(4 << 30).unwrap();
        let regions = ram.regions();
        assert_eq!(regions.len(), 2);
        assert_eq!(regions[1].0, layout::HIGH_RAM_START);
        assert_eq!(ram.low_end(), layout::MMIO_START);
    }
}
