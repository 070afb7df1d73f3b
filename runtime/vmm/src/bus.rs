//! Dispatch of port I/O and MMIO exits to device models.
//!
//! Owns the address maps (one for ports, one for MMIO) and nothing else:
//! devices are registered before the vCPUs start and the maps are read-only
//! afterwards, so lookups take no lock; each device has its own mutex.

use std::sync::{Arc, Mutex};

/// A device model reachable through port I/O or MMIO.
pub trait BusDevice: Send {
    /// Handle a read of `data.len()` bytes at `offset` from the device's base.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Handle a write at `offset` from the device's base.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("device range {base:#x}+{len:#x} overlaps a registered device")]
    Overlap { base: u64, len: u64 },
    #[error("device range at {0:#x} is empty")]
    Empty(u64),
}

/// Result alias of this module.
pub type Result<T> = std::result::Result<T, Error>;

/// A shared device on a bus.
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

struct Entry {
    base: u64,
    len: u64,
    device: SharedDevice,
}

/// An address map from ranges to devices.
#[derive(Default)]
pub struct Bus {
    entries: Vec<Entry>,
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Bus {
        Bus::default()
    }

    /// Map `device` at `[base, base + len)`.
    pub fn insert(&mut self, base: u64, len: u64, device: SharedDevice) -> Result<()> {
        if len == 0 {
            return Err(Error::Empty(base));
        }
        let end = base.checked_add(len).ok_or(Error::Overlap { base, len })?;
        if self
            .entries
            .iter()
            .any(|e| base < e.base + e.len && e.base < end)
        {
            return Err(Error::Overlap { base, len });
        }
        let at = self.entries.partition_point(|e| e.base < base);
        self.entries.insert(at, Entry { base, len, device });
        Ok(())
    }

    fn find(&self, addr: u64) -> Option<&Entry> {
        let i = self.entries.partition_point(|e| e.base <= addr);
        let e = self.entries.get(i.checked_sub(1)?)?;
        (addr < e.base + e.len).then_some(e)
    }

    /// Dispatch a read; returns false (and leaves `data` alone) when no
    /// device covers `addr`.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        let Some(e) = self.find(addr) else {
            return false;
        };
        lock(&e.device).read(addr - e.base, data);
        true
    }

    /// Dispatch a write; returns false when no device covers `addr`.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        let Some(e) = self.find(addr) else {
            return false;
        };
        lock(&e.device).write(addr - e.base, data);
        true
    }
}

/// Lock a device, carrying on with its state if another thread panicked
/// while holding it (the VM is being torn down then anyway).
pub fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Recorder(Vec<(u64, Vec<u8>)>);

    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.0.push((offset, data.to_vec()));
        }
    }

    #[test]
    fn dispatches_by_range_and_rejects_overlaps() {
        let a = Arc::new(Mutex::new(Recorder(Vec::new())));
        let b = Arc::new(Mutex::new(Recorder(Vec::new())));
        let mut bus = Bus::new();
        bus.insert(0x100, 0x10, a.clone()).unwrap();
        bus.insert(0x200, 0x8, b.clone()).unwrap();
        assert!(bus.insert(0x108, 0x10, b.clone()).is_err());
        assert!(bus.insert(0x1f8, 0x9, b.clone()).is_err());
        assert!(bus.insert(0x300, 0, b.clone()).is_err());

        let mut d = [0u8; 2];
        assert!(bus.read(0x105, &mut d));
        assert_eq!(d, [5, 5]);
        assert!(bus.write(0x207, &[9]));
        assert!(!bus.write(0x208, &[9]));
        assert!(!bus.read(0xff, &mut d));
        assert!(!bus.read(0x110, &mut d));
        assert_eq!(lock(&b).0, vec![(7, vec![9])]);
        assert!(lock(&a).0.is_empty());
    }
}
