//! A host-side virtio driver for tests: it programs a device through the
//! real MMIO transport registers, lays out split rings in real guest
//! memory, and waits for the device's interrupt on its irqfd, with the real
//! event loop serving the device on its own thread.

use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use super::mmio::{MmioTransport, reg, status};
use super::{Interrupt, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX, VirtioDevice};
use crate::bus::BusDevice;
use crate::control::Stopper;
use crate::eventloop::{DeviceEvents, EventLoop};
use crate::memory::GuestRam;

const DESC_F_NEXT: u16 = 1;
const DESC_F_WRITE: u16 = 2;

/// One buffer of a request: guest address, length, device-writable.
#[derive(Clone, Copy, Debug)]
pub struct Buf {
    pub addr: u64,
    pub len: u32,
    pub writable: bool,
}

struct DriverQueue {
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
    next_desc: u16,
    avail_idx: u16,
    last_used: u16,
}

/// The test driver.
pub struct Driver {
    pub ram: GuestRam,
    transport: MmioTransport,
    irq: Arc<EventFd>,
    queues: Vec<DriverQueue>,
    next_alloc: u64,
    stopper: Arc<Stopper>,
    io: Option<JoinHandle<()>>,
}

impl Driver {
    /// Attach to `device` with 16 MiB of guest memory and bring it up to
    /// DRIVER_OK, accepting every feature it offers.
    pub fn new(device: Arc<Mutex<dyn VirtioDevice>>) -> Driver {
        let ram = GuestRam::new(16 << 20).unwrap();
        let irqfd = EventFd::new(0).unwrap();
        let irq = Arc::new(irqfd.try_clone().unwrap());
        let nq = device.lock().unwrap().queue_max_sizes().len();
        let mut notify = Vec::new();
        let mut notify_clones = Vec::new();
        for _ in 0..nq {
            let e = EventFd::new(libc::EFD_NONBLOCK).unwrap();
            notify_clones.push(e.try_clone().unwrap());
            notify.push(e);
        }
        let transport = MmioTransport::new(
            device.clone(),
            ram.clone(),
            Interrupt::new(irqfd),
            notify_clones,
        );
        let stopper = Stopper::new().unwrap();
        let el = EventLoop::new(vec![DeviceEvents { device, notify }], stopper.clone()).unwrap();
        let io = std::thread::spawn(move || el.run());
        let mut d = Driver {
            ram,
            transport,
            irq,
            queues: Vec::new(),
            next_alloc: 0x10_0000,
            stopper,
            io: Some(io),
        };
        d.bring_up(nq);
        d
    }

    pub fn read_reg(&mut self, offset: u64) -> u32 {
        let mut b = [0u8; 4];
        self.transport.read(offset, &mut b);
        u32::from_le_bytes(b)
    }

    pub fn write_reg(&mut self, offset: u64, v: u32) {
        self.transport.write(offset, &v.to_le_bytes());
    }

    pub fn read_config(&mut self, offset: u64, len: usize) -> Vec<u8> {
        let mut b = vec![0u8; len];
        self.transport.read(reg::CONFIG + offset, &mut b);
        b
    }

    fn bring_up(&mut self, nq: usize) {
        assert_eq!(self.read_reg(reg::MAGIC), super::mmio::MAGIC);
        assert_eq!(self.read_reg(reg::VERSION), 2);
        self.write_reg(reg::STATUS, 0);
        self.write_reg(reg::STATUS, status::ACKNOWLEDGE);
        self.write_reg(reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        self.write_reg(reg::DEVICE_FEATURES_SEL, 0);
        let lo = self.read_reg(reg::DEVICE_FEATURES);
        self.write_reg(reg::DEVICE_FEATURES_SEL, 1);
        let hi = self.read_reg(reg::DEVICE_FEATURES);
        assert_ne!(
            hi & (1 << (VIRTIO_F_VERSION_1 - 32)),
            0,
            "VERSION_1 offered"
        );
        self.write_reg(reg::DRIVER_FEATURES_SEL, 0);
        self.write_reg(reg::DRIVER_FEATURES, lo);
        self.write_reg(reg::DRIVER_FEATURES_SEL, 1);
        self.write_reg(reg::DRIVER_FEATURES, hi);
        let s = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
        self.write_reg(reg::STATUS, s);
        assert_eq!(
            self.read_reg(reg::STATUS) & status::FEATURES_OK,
            status::FEATURES_OK
        );
        assert_ne!(lo & (1 << VIRTIO_RING_F_EVENT_IDX), 0, "EVENT_IDX offered");
        for q in 0..nq {
            self.write_reg(reg::QUEUE_SEL, q as u32);
            assert_eq!(self.read_reg(reg::QUEUE_READY), 0);
            let size = 16u16.min(self.read_reg(reg::QUEUE_NUM_MAX) as u16);
            let desc = self.alloc(16 * u64::from(size), 16);
            let avail = self.alloc(6 + 2 * u64::from(size), 2);
            let used = self.alloc(6 + 8 * u64::from(size), 4);
            self.write_reg(reg::QUEUE_NUM, u32::from(size));
            self.write_reg(reg::QUEUE_DESC_LOW, desc as u32);
            self.write_reg(reg::QUEUE_DESC_HIGH, 0);
            self.write_reg(reg::QUEUE_DRIVER_LOW, avail as u32);
            self.write_reg(reg::QUEUE_DRIVER_HIGH, 0);
            self.write_reg(reg::QUEUE_DEVICE_LOW, used as u32);
            self.write_reg(reg::QUEUE_DEVICE_HIGH, 0);
            self.write_reg(reg::QUEUE_READY, 1);
            self.queues.push(DriverQueue {
                size,
                desc,
                avail,
                used,
                next_desc: 0,
                avail_idx: 0,
                last_used: 0,
            });
        }
        self.write_reg(reg::STATUS, s | status::DRIVER_OK);
        assert_eq!(self.read_reg(reg::STATUS) & status::NEEDS_RESET, 0);
    }

    /// Bump-allocate `len` bytes of guest memory aligned to `align`.
    pub fn alloc(&mut self, len: u64, align: u64) -> u64 {
        let a = self.next_alloc.next_multiple_of(align);
        self.next_alloc = a + len;
        a
    }

    /// Allocate and fill a device-readable buffer.
    pub fn out_buf(&mut self, data: &[u8]) -> Buf {
        let addr = self.alloc(data.len() as u64, 8);
        self.ram
            .memory()
            .write_slice(data, GuestAddress(addr))
            .unwrap();
        Buf {
            addr,
            len: data.len() as u32,
            writable: false,
        }
    }

    /// Allocate a device-writable buffer.
    pub fn in_buf(&mut self, len: u32) -> Buf {
        let addr = self.alloc(u64::from(len), 8);
        self.ram
            .memory()
            .write_slice(&vec![0xeeu8; len as usize], GuestAddress(addr))
            .unwrap();
        Buf {
            addr,
            len,
            writable: true,
        }
    }

    pub fn read(&self, b: Buf, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.ram
            .memory()
            .read_slice(&mut v, GuestAddress(b.addr))
            .unwrap();
        v
    }

    /// Put a chain of `bufs` on queue `q` and make it available, without
    /// notifying. Returns the head descriptor index.
    pub fn add(&mut self, q: usize, bufs: &[Buf]) -> u16 {
        let mem = self.ram.memory().clone();
        let dq = &mut self.queues[q];
        let head = dq.next_desc;
        for (i, b) in bufs.iter().enumerate() {
            let idx = (head + i as u16) % dq.size;
            let next = (idx + 1) % dq.size;
            let mut flags = if b.writable { DESC_F_WRITE } else { 0 };
            if i + 1 < bufs.len() {
                flags |= DESC_F_NEXT;
            }
            let at = dq.desc + 16 * u64::from(idx);
            mem.write_obj(b.addr, GuestAddress(at)).unwrap();
            mem.write_obj(b.len, GuestAddress(at + 8)).unwrap();
            mem.write_obj(flags, GuestAddress(at + 12)).unwrap();
            mem.write_obj(next, GuestAddress(at + 14)).unwrap();
        }
        dq.next_desc = (head + bufs.len() as u16) % dq.size;
        let slot = dq.avail + 4 + 2 * u64::from(dq.avail_idx % dq.size);
        mem.write_obj(head, GuestAddress(slot)).unwrap();
        dq.avail_idx = dq.avail_idx.wrapping_add(1);
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        mem.write_obj(dq.avail_idx, GuestAddress(dq.avail + 2))
            .unwrap();
        head
    }

    /// Kick queue `q` through the QueueNotify register, as a guest would.
    pub fn notify(&mut self, q: usize) {
        self.write_reg(reg::QUEUE_NOTIFY, q as u32);
    }

    /// Whether the device wants a kick for queue `q` (its avail_event).
    pub fn avail_event(&self, q: usize) -> u16 {
        let dq = &self.queues[q];
        self.ram
            .memory()
            .read_obj(GuestAddress(dq.used + 4 + 8 * u64::from(dq.size)))
            .unwrap()
    }

    fn used_idx(&self, q: usize) -> u16 {
        self.ram
            .memory()
            .read_obj(GuestAddress(self.queues[q].used + 2))
            .unwrap()
    }

    /// Take the next used element of queue `q`, if any: `(head, len)`.
    pub fn poll_used(&mut self, q: usize) -> Option<(u16, u32)> {
        let idx = self.used_idx(q);
        let dq = &mut self.queues[q];
        if idx == dq.last_used {
            return None;
        }
        let at = dq.used + 4 + 8 * u64::from(dq.last_used % dq.size);
        let id: u32 = self.ram.memory().read_obj(GuestAddress(at)).unwrap();
        let len: u32 = self.ram.memory().read_obj(GuestAddress(at + 4)).unwrap();
        dq.last_used = dq.last_used.wrapping_add(1);
        Some((id as u16, len))
    }

    /// Wait for the next used element of queue `q`, sleeping on the
    /// device's interrupt (with EVENT_IDX: ask for one at the next entry).
    pub fn wait_used(&mut self, q: usize) -> (u16, u32) {
        loop {
            let dq = &self.queues[q];
            // used_event lives after the avail ring.
            let used_event = dq.avail + 4 + 2 * u64::from(dq.size);
            self.ram
                .memory()
                .write_obj(dq.last_used, GuestAddress(used_event))
                .unwrap();
            std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
            if let Some(u) = self.poll_used(q) {
                return u;
            }
            self.irq.read().unwrap();
            let st = self.read_reg(reg::INTERRUPT_STATUS);
            self.write_reg(reg::INTERRUPT_ACK, st);
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        self.stopper.stop(crate::control::VmExit::Killed);
        if let Some(io) = self.io.take() {
            io.join().unwrap();
        }
    }
}
