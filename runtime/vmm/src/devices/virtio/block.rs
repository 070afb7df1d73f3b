//! virtio-blk (virtio 1.2, section 5.2) backed by a host file.
//!
//! Owns request parsing and execution: reads and writes go straight between
//! the file and guest memory with one `preadv`/`pwritev` per request, flush
//! is `fdatasync`, `GET_ID` returns the disk's serial (how the guest tells
//! disks apart). A read-only disk advertises `VIRTIO_BLK_F_RO` and fails
//! writes. Requests run on the event-loop thread when the queue is
//! notified.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

use super::{
    Error as VirtioError, Interrupt, TYPE_BLOCK, VirtioDevice, notify_used, read_config_bytes,
    rearm,
};
use crate::memory::GuestRam;

/// Feature bit: `seg_max` in the configuration is valid.
pub const F_SEG_MAX: u32 = 2;
/// Feature bit: the disk is read-only.
pub const F_RO: u32 = 5;
/// Feature bit: the device supports flush.
pub const F_FLUSH: u32 = 9;
/// Request types.
pub const T_IN: u32 = 0;
/// Write.
pub const T_OUT: u32 = 1;
/// Flush.
pub const T_FLUSH: u32 = 4;
/// Get the device ID (serial).
pub const T_GET_ID: u32 = 8;
/// Status: success.
pub const S_OK: u8 = 0;
/// Status: I/O error.
pub const S_IOERR: u8 = 1;
/// Status: unsupported request.
pub const S_UNSUPP: u8 = 2;
/// Length of the `GET_ID` answer.
pub const ID_BYTES: usize = 20;
const SECTOR: u64 = 512;
const QUEUE_SIZE: u16 = 256;
const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("opening disk {0}")]
    Open(PathBuf, #[source] std::io::Error),
    #[error("disk {0}: size is not a multiple of 512 bytes")]
    Size(PathBuf),
    #[error("disk serial {0:?} is longer than {ID_BYTES} bytes")]
    Serial(String),
}

/// Result alias of this module.
pub type Result<T> = std::result::Result<T, Error>;

/// A virtio block device.
pub struct Block {
    file: File,
    read_only: bool,
    capacity: u64,
    serial: String,
    max_sizes: [u16; 1],
    active: Option<Active>,
}

struct Active {
    mem: GuestRam,
    queue: Queue,
    irq: Interrupt,
}

impl Block {
    /// A disk over the file at `path`; `serial` is what `GET_ID` returns.
    pub fn open(path: &Path, read_only: bool, serial: &str) -> Result<Block> {
        if serial.len() > ID_BYTES {
            return Err(Error::Serial(serial.to_string()));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(|e| Error::Open(path.to_path_buf(), e))?;
        let len = file
            .metadata()
            .map_err(|e| Error::Open(path.to_path_buf(), e))?
            .len();
        if len % SECTOR != 0 {
            return Err(Error::Size(path.to_path_buf()));
        }
        Ok(Block {
            file,
            read_only,
            capacity: len / SECTOR,
            serial: serial.to_string(),
            max_sizes: [QUEUE_SIZE],
            active: None,
        })
    }

    fn process(&mut self) -> std::result::Result<(), VirtioError> {
        let Some(a) = self.active.as_mut() else {
            return Ok(());
        };
        loop {
            while let Some(chain) = a.queue.pop_descriptor_chain(a.mem.memory()) {
                let head = chain.head_index();
                let descs: Vec<Descriptor> = chain.collect();
                let written = execute(
                    &self.file,
                    self.read_only,
                    self.capacity,
                    &self.serial,
                    &a.mem,
                    &descs,
                );
                a.queue
                    .add_used(a.mem.memory(), head, written)
                    .map_err(|source| VirtioError::Queue {
                        device: "block",
                        source,
                    })?;
            }
            if !rearm(&mut a.queue, &a.mem, "block")? {
                break;
            }
        }
        notify_used(&mut a.queue, &a.mem, &a.irq, "block")
    }
}

/// Run one request; returns how many bytes were written into guest memory
/// (the used length), including the status byte.
fn execute(
    file: &File,
    read_only: bool,
    capacity: u64,
    serial: &str,
    mem: &GuestRam,
    descs: &[Descriptor],
) -> u32 {
    let (Some(header), Some(status)) = (descs.first(), descs.last()) else {
        return 0;
    };
    if descs.len() < 2
        || status.len() < 1
        || !status.is_write_only()
        || header.len() < 16
        || header.is_write_only()
    {
        tracing::debug!("malformed block request");
        return 0;
    }
    let mut hdr = [0u8; 16];
    if mem.memory().read_slice(&mut hdr, header.addr()).is_err() {
        return 0;
    }
    let kind = u32::from_le_bytes(hdr[0..4].try_into().expect("4 bytes"));
    let sector = u64::from_le_bytes(hdr[8..16].try_into().expect("8 bytes"));
    let data = &descs[1..descs.len() - 1];
    let status_addr = status.addr().unchecked_add_raw(u64::from(status.len()) - 1);

    let (code, written) = match kind {
        T_IN => transfer(file, mem, data, sector, capacity, true),
        T_OUT if read_only => (S_IOERR, 0),
        T_OUT => transfer(file, mem, data, sector, capacity, false),
        T_FLUSH => {
            if read_only {
                (S_OK, 0)
            } else {
                // SAFETY: fdatasync on a descriptor we own.
                let rc = unsafe { libc::fdatasync(file.as_raw_fd()) };
                (if rc == 0 { S_OK } else { S_IOERR }, 0)
            }
        }
        T_GET_ID => match data.first() {
            Some(d) if d.is_write_only() => {
                let mut id = [0u8; ID_BYTES];
                id[..serial.len()].copy_from_slice(serial.as_bytes());
                let n = (d.len() as usize).min(ID_BYTES);
                match mem.memory().write_slice(&id[..n], d.addr()) {
                    Ok(()) => (S_OK, n as u32),
                    Err(_) => (S_IOERR, 0),
                }
            }
            _ => (S_IOERR, 0),
        },
        _ => (S_UNSUPP, 0),
    };
    if mem.memory().write_obj(code, status_addr).is_err() {
        return written;
    }
    written + 1
}

trait AddRaw {
    fn unchecked_add_raw(self, n: u64) -> GuestAddress;
}

impl AddRaw for GuestAddress {
    fn unchecked_add_raw(self, n: u64) -> GuestAddress {
        GuestAddress(self.0.wrapping_add(n))
    }
}

/// Read (`to_guest`) or write the data descriptors at `sector` with one
/// vectored syscall. Returns the status and the bytes written to the guest.
fn transfer(
    file: &File,
    mem: &GuestRam,
    data: &[Descriptor],
    sector: u64,
    capacity: u64,
    to_guest: bool,
) -> (u8, u32) {
    let mut iov = Vec::with_capacity(data.len());
    let mut total: u64 = 0;
    for d in data {
        if d.is_write_only() != to_guest {
            return (S_IOERR, 0);
        }
        let Ok(ptr) = mem.host_range(d.addr().0, d.len() as usize) else {
            return (S_IOERR, 0);
        };
        iov.push(libc::iovec {
            iov_base: ptr.cast(),
            iov_len: d.len() as usize,
        });
        total += u64::from(d.len());
    }
    let Some(offset) = sector.checked_mul(SECTOR) else {
        return (S_IOERR, 0);
    };
    if offset
        .checked_add(total)
        .is_none_or(|end| end > capacity * SECTOR)
    {
        return (S_IOERR, 0);
    }
    let mut done: u64 = 0;
    let mut iov = iov.as_mut_slice();
    while !iov.is_empty() {
        let at = (offset + done) as libc::off_t;
        let cnt = iov.len().min(1024) as libc::c_int;
        // SAFETY: every iovec points into guest memory ranges checked by
        // host_range above, which stay mapped while the device holds the
        // GuestRam; the descriptor is ours.
        let n = unsafe {
            if to_guest {
                libc::preadv(file.as_raw_fd(), iov.as_ptr(), cnt, at)
            } else {
                libc::pwritev(file.as_raw_fd(), iov.as_ptr(), cnt, at)
            }
        };
        if n < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return (S_IOERR, 0);
        }
        if n == 0 {
            return (S_IOERR, 0);
        }
        let mut n = n as usize;
        done += n as u64;
        while n > 0 && !iov.is_empty() {
            if n >= iov[0].iov_len {
                n -= iov[0].iov_len;
                iov = &mut iov[1..];
            } else {
                // SAFETY: advancing within the same iovec's buffer.
                iov[0].iov_base = unsafe { iov[0].iov_base.cast::<u8>().add(n).cast() };
                iov[0].iov_len -= n;
                n = 0;
            }
        }
    }
    (S_OK, if to_guest { done as u32 } else { 0 })
}

impl VirtioDevice for Block {
    fn name(&self) -> &'static str {
        "block"
    }

    fn device_type(&self) -> u32 {
        TYPE_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.max_sizes
    }

    fn features(&self) -> u64 {
        let mut f = (1 << F_SEG_MAX) | (1 << F_FLUSH) | (1 << super::VIRTIO_RING_F_EVENT_IDX);
        if self.read_only {
            f |= 1 << F_RO;
        }
        f
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // capacity (u64), size_max (u32), seg_max (u32).
        let mut cfg = [0u8; 16];
        cfg[0..8].copy_from_slice(&self.capacity.to_le_bytes());
        cfg[12..16].copy_from_slice(&SEG_MAX.to_le_bytes());
        read_config_bytes(&cfg, offset, data);
    }

    fn activate(
        &mut self,
        mem: GuestRam,
        _features: u64,
        mut queues: Vec<Queue>,
        interrupt: Interrupt,
    ) -> std::result::Result<(), VirtioError> {
        if queues.len() != 1 {
            return Err(VirtioError::QueueCount {
                device: "block",
                expected: 1,
                got: queues.len(),
            });
        }
        let queue = queues.remove(0);
        self.active = Some(Active {
            mem,
            queue,
            irq: interrupt,
        });
        Ok(())
    }

    fn is_active(&self) -> bool {
        self.active.is_some()
    }

    fn queue_notify(&mut self, _index: usize) {
        if let Err(e) = self.process() {
            tracing::warn!(error = %e, "virtio-blk request processing");
        }
    }

    fn reset(&mut self) {
        self.active = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::testdriver::{Buf, Driver};
    use std::sync::{Arc, Mutex};

    fn header(d: &mut Driver, kind: u32, sector: u64) -> Buf {
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&kind.to_le_bytes());
        h[8..16].copy_from_slice(&sector.to_le_bytes());
        d.out_buf(&h)
    }

    fn disk(pattern: bool) -> (vessel_testkit::TempRoot, PathBuf) {
        let t = vessel_testkit::TempRoot::new("vmm-blk");
        let p = t.join("disk.img");
        let data: Vec<u8> = (0..8 * 512u32)
            .map(|i| if pattern { (i / 512) as u8 + 1 } else { 0 })
            .collect();
        std::fs::write(&p, data).unwrap();
        (t, p)
    }

    fn request(d: &mut Driver, bufs: &[Buf]) -> u32 {
        let head = d.add(0, bufs);
        d.notify(0);
        let (id, len) = d.wait_used(0);
        assert_eq!(id, head);
        len
    }

    #[test]
    fn reads_writes_flushes_and_identifies() {
        let (_t, path) = disk(true);
        let dev = Arc::new(Mutex::new(Block::open(&path, false, "layer-0").unwrap()));
        let mut d = Driver::new(dev);
        // Capacity: 8 sectors; seg_max offered.
        assert_eq!(d.read_config(0, 8), 8u64.to_le_bytes());
        assert_eq!(d.read_config(12, 4), SEG_MAX.to_le_bytes());

        // Read sectors 1 and 2 into two buffers.
        let h = header(&mut d, T_IN, 1);
        let a = d.in_buf(512);
        let b = d.in_buf(512);
        let st = d.in_buf(1);
        assert_eq!(request(&mut d, &[h, a, b, st]), 1025);
        assert_eq!(d.read(st, 1), [S_OK]);
        assert!(d.read(a, 512).iter().all(|x| *x == 2));
        assert!(d.read(b, 512).iter().all(|x| *x == 3));

        // Write sector 5, then flush; the host file sees it.
        let h = header(&mut d, T_OUT, 5);
        let data = d.out_buf(&[0x5a; 512]);
        let st = d.in_buf(1);
        assert_eq!(request(&mut d, &[h, data, st]), 1);
        assert_eq!(d.read(st, 1), [S_OK]);
        let h = header(&mut d, T_FLUSH, 0);
        let st = d.in_buf(1);
        request(&mut d, &[h, st]);
        assert_eq!(d.read(st, 1), [S_OK]);
        let file = std::fs::read(&path).unwrap();
        assert!(file[5 * 512..6 * 512].iter().all(|x| *x == 0x5a));
        assert!(file[4 * 512..5 * 512].iter().all(|x| *x == 5));

        // GET_ID returns the serial, NUL padded.
        let h = header(&mut d, T_GET_ID, 0);
        let id = d.in_buf(20);
        let st = d.in_buf(1);
        assert_eq!(request(&mut d, &[h, id, st]), 21);
        assert_eq!(&d.read(id, 20)[..8], b"layer-0\0");

        // Past the end and unknown types fail without touching memory.
        let h = header(&mut d, T_IN, 8);
        let a = d.in_buf(512);
        let st = d.in_buf(1);
        request(&mut d, &[h, a, st]);
        assert_eq!(d.read(st, 1), [S_IOERR]);
        assert!(d.read(a, 512).iter().all(|x| *x == 0xee));
        let h = header(&mut d, 99, 0);
        let st = d.in_buf(1);
        request(&mut d, &[h, st]);
        assert_eq!(d.read(st, 1), [S_UNSUPP]);
    }

    #[test]
    fn read_only_disks_refuse_writes() {
        let (_t, path) = disk(false);
        let dev = Arc::new(Mutex::new(Block::open(&path, true, "ro").unwrap()));
        let mut d = Driver::new(dev);
        d.write_reg(super::super::mmio::reg::DEVICE_FEATURES_SEL, 0);
        assert_ne!(
            d.read_reg(super::super::mmio::reg::DEVICE_FEATURES) & (1 << F_RO),
            0
        );
        let h = header(&mut d, T_OUT, 0);
        let data = d.out_buf(&[1; 512]);
        let st = d.in_buf(1);
        request(&mut d, &[h, data, st]);
        assert_eq!(d.read(st, 1), [S_IOERR]);
        assert!(std::fs::read(&path).unwrap().iter().all(|x| *x == 0));
    }

    #[test]
    fn many_requests_in_one_kick() {
        let (_t, path) = disk(true);
        let dev = Arc::new(Mutex::new(Block::open(&path, true, "x").unwrap()));
        let mut d = Driver::new(dev);
        let mut expect = Vec::new();
        for s in 0..5u64 {
            let h = header(&mut d, T_IN, s);
            let a = d.in_buf(512);
            let st = d.in_buf(1);
            expect.push((d.add(0, &[h, a, st]), a, s));
        }
        d.notify(0);
        for (head, a, s) in expect {
            let (id, len) = d.wait_used(0);
            assert_eq!((id, len), (head, 513));
            assert!(d.read(a, 512).iter().all(|x| u64::from(*x) == s + 1));
        }
        // The device asked to be kicked again at the next request.
        assert_eq!(d.avail_event(0), 5);
    }

    #[test]
    fn refuses_bad_disks() {
        let t = vessel_testkit::TempRoot::new("vmm-blk");
        let p = t.join("odd.img");
        std::fs::write(&p, [0u8; 100]).unwrap();
        assert!(matches!(Block::open(&p, true, "x"), Err(Error::Size(_))));
        assert!(matches!(
            Block::open(&t.join("missing"), true, "x"),
            Err(Error::Open(..))
        ));
        std::fs::write(&p, [0u8; 512]).unwrap();
        assert!(matches!(
            Block::open(&p, true, "this-serial-is-too-long"),
            Err(Error::Serial(_))
        ));
    }
}
