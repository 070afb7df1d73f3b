//! virtio devices on the MMIO transport.
//!
//! Owns the contract between a transport and a device model
//! ([`VirtioDevice`]), the interrupt a device raises, and the constants from
//! the virtio 1.2 specification the devices share. Queues are
//! `virtio-queue`'s split rings. `mmio` is the transport, `block` and
//! `console` the two device models.

pub mod block;
pub mod console;
pub mod mmio;
#[cfg(test)]
pub mod testdriver;

use std::os::fd::RawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

use crate::memory::GuestRam;

/// Feature bit: the device conforms to virtio 1.x (required by MMIO v2).
pub const VIRTIO_F_VERSION_1: u32 = 32;
/// Feature bit: used/available event indexes suppress notifications.
pub const VIRTIO_RING_F_EVENT_IDX: u32 = 29;
/// Device type of a block device.
pub const TYPE_BLOCK: u32 = 2;
/// Device type of a console.
pub const TYPE_CONSOLE: u32 = 3;
/// Interrupt status bit: a used ring was updated.
pub const INT_VRING: u32 = 1;
/// Interrupt status bit: the configuration changed.
pub const INT_CONFIG: u32 = 2;

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{device}: expected {expected} queues, the driver set up {got}")]
    QueueCount {
        device: &'static str,
        expected: usize,
        got: usize,
    },
    #[error("{device}: guest memory access")]
    Memory {
        device: &'static str,
        #[source]
        source: vm_memory::GuestMemoryError,
    },
    #[error("{device}: queue access")]
    Queue {
        device: &'static str,
        #[source]
        source: virtio_queue::Error,
    },
}

/// Result alias of this module.
pub type Result<T> = std::result::Result<T, Error>;

/// The interrupt of one device: the status the driver reads through the
/// transport, and the irqfd that raises the line.
#[derive(Clone, Debug)]
pub struct Interrupt {
    status: Arc<AtomicU32>,
    irqfd: Arc<EventFd>,
}

impl Interrupt {
    /// An interrupt raising `irqfd` (an eventfd registered as a KVM irqfd).
    pub fn new(irqfd: EventFd) -> Interrupt {
        Interrupt {
            status: Arc::new(AtomicU32::new(0)),
            irqfd: Arc::new(irqfd),
        }
    }

    /// Tell the driver that used rings changed.
    pub fn signal_used_queue(&self) {
        self.raise(INT_VRING);
    }

    /// Tell the driver that the configuration changed.
    pub fn signal_config(&self) {
        self.raise(INT_CONFIG);
    }

    fn raise(&self, bit: u32) {
        self.status.fetch_or(bit, Ordering::SeqCst);
        if let Err(e) = self.irqfd.write(1) {
            tracing::warn!(error = %e, "raising virtio interrupt");
        }
    }

    /// The pending interrupt bits.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// Clear the bits the driver acknowledged.
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// The eventfd behind the line (for tests and for KVM registration).
    pub fn irqfd(&self) -> &EventFd {
        &self.irqfd
    }
}

/// A virtio device model. The transport calls it from vCPU threads (for
/// configuration), the event loop calls it when a queue is notified or its
/// host descriptor is ready; both hold the device's mutex.
pub trait VirtioDevice: Send {
    /// Short name for messages.
    fn name(&self) -> &'static str;
    /// The virtio device type.
    fn device_type(&self) -> u32;
    /// The maximum size of each queue; the length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// The feature bits offered.
    fn features(&self) -> u64;
    /// Read from the device configuration space.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Write to the device configuration space.
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// Start operating: the driver set `DRIVER_OK` with these queues and
    /// negotiated `features`.
    fn activate(
        &mut self,
        mem: GuestRam,
        features: u64,
        queues: Vec<Queue>,
        interrupt: Interrupt,
    ) -> Result<()>;
    /// Whether `activate` has run (and `reset` has not since).
    fn is_active(&self) -> bool;
    /// The driver notified queue `index`.
    fn queue_notify(&mut self, index: usize);
    /// A host descriptor the event loop should watch (edge-triggered, for
    /// reading and writing), if the device has one.
    fn host_fd(&self) -> Option<RawFd> {
        None
    }
    /// The host descriptor is ready (`events` are epoll bits).
    fn host_event(&mut self, _events: u32) {}
    /// The driver reset the device: drop the queues and go back to the
    /// state before `activate`.
    fn reset(&mut self);
    /// The VM is stopping: push out whatever the guest left in the queues.
    fn drain(&mut self) {}
}

/// Whether feature bit `bit` is set in `features`.
pub fn has_feature(features: u64, bit: u32) -> bool {
    features & (1 << bit) != 0
}

/// Copy the part of `src` (a configuration space image) at `offset` into
/// `data`; bytes beyond the end read as zero.
pub fn read_config_bytes(src: &[u8], offset: u64, data: &mut [u8]) {
    for (i, b) in data.iter_mut().enumerate() {
        *b = usize::try_from(offset)
            .ok()
            .and_then(|o| o.checked_add(i))
            .and_then(|o| src.get(o))
            .copied()
            .unwrap_or(0);
    }
}

/// After processing a queue: tell the driver we want notifications again
/// and report whether more buffers arrived in the meantime (process again
/// if so), so that no kick is ever lost with `EVENT_IDX`.
pub fn rearm(queue: &mut Queue, mem: &GuestRam, device: &'static str) -> Result<bool> {
    use virtio_queue::QueueT;
    queue
        .enable_notification(mem.memory())
        .map_err(|source| Error::Queue { device, source })
}

/// Raise the interrupt if the driver wants one for `queue`.
pub fn notify_used(
    queue: &mut Queue,
    mem: &GuestRam,
    irq: &Interrupt,
    device: &'static str,
) -> Result<()> {
    use virtio_queue::QueueT;
    if queue
        .needs_notification(mem.memory())
        .map_err(|source| Error::Queue { device, source })?
    {
        irq.signal_used_queue();
    }
    Ok(())
}
