//! The virtio-mmio transport, version 2 (virtio 1.2, section 4.2).
//!
//! Owns the register file a driver programs: feature negotiation, the
//! device status state machine, queue configuration, interrupt status and
//! acknowledgement, and the configuration space window. On `DRIVER_OK` it
//! hands the configured queues to the device. Queue notifications are
//! turned into writes of the queue's eventfd; when that eventfd is also
//! registered as a KVM ioeventfd the write never reaches us at all.

use std::sync::{Arc, Mutex};

use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::EventFd;

use super::{Interrupt, VIRTIO_F_VERSION_1, VirtioDevice, has_feature};
use crate::bus::{BusDevice, lock};
use crate::memory::GuestRam;

/// "virt" in little endian.
pub const MAGIC: u32 = 0x7472_6976;
/// Vendor ID we report ("VSSL").
pub const VENDOR_ID: u32 = 0x4c53_5356;

/// Register offsets.
pub mod reg {
    pub const MAGIC: u64 = 0x000;
    pub const VERSION: u64 = 0x004;
    pub const DEVICE_ID: u64 = 0x008;
    pub const VENDOR_ID: u64 = 0x00c;
    pub const DEVICE_FEATURES: u64 = 0x010;
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    pub const DRIVER_FEATURES: u64 = 0x020;
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    pub const QUEUE_SEL: u64 = 0x030;
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    pub const QUEUE_NUM: u64 = 0x038;
    pub const QUEUE_READY: u64 = 0x044;
    pub const QUEUE_NOTIFY: u64 = 0x050;
    pub const INTERRUPT_STATUS: u64 = 0x060;
    pub const INTERRUPT_ACK: u64 = 0x064;
    pub const STATUS: u64 = 0x070;
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    pub const QUEUE_DRIVER_LOW: u64 = 0x090;
    pub const QUEUE_DRIVER_HIGH: u64 = 0x094;
    pub const QUEUE_DEVICE_LOW: u64 = 0x0a0;
    pub const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
    pub const SHM_LEN_LOW: u64 = 0x0b0;
    pub const SHM_LEN_HIGH: u64 = 0x0b4;
    pub const CONFIG_GENERATION: u64 = 0x0fc;
    pub const CONFIG: u64 = 0x100;
}

/// Device status bits.
pub mod status {
    pub const ACKNOWLEDGE: u32 = 1;
    pub const DRIVER: u32 = 2;
    pub const DRIVER_OK: u32 = 4;
    pub const FEATURES_OK: u32 = 8;
    pub const NEEDS_RESET: u32 = 64;
    pub const FAILED: u32 = 128;
}

#[derive(Clone, Copy, Debug, Default)]
struct QueueConfig {
    size: u16,
    ready: bool,
    desc: u64,
    driver: u64,
    device: u64,
}

/// One virtio-mmio device window.
pub struct MmioTransport {
    device: Arc<Mutex<dyn VirtioDevice>>,
    mem: GuestRam,
    interrupt: Interrupt,
    notify: Vec<EventFd>,
    max_sizes: Vec<u16>,
    device_type: u32,
    offered: u64,
    acked: u64,
    device_features_sel: u32,
    driver_features_sel: u32,
    queue_sel: u32,
    queues: Vec<QueueConfig>,
    status: u32,
}

impl MmioTransport {
    /// A transport for `device`, raising `interrupt`; `notify[i]` is
    /// written when the driver notifies queue `i` (the event loop watches
    /// these).
    pub fn new(
        device: Arc<Mutex<dyn VirtioDevice>>,
        mem: GuestRam,
        interrupt: Interrupt,
        notify: Vec<EventFd>,
    ) -> MmioTransport {
        let (max_sizes, device_type, offered) = {
            let d = lock(&device);
            (
                d.queue_max_sizes().to_vec(),
                d.device_type(),
                d.features() | (1 << VIRTIO_F_VERSION_1),
            )
        };
        let queues = vec![QueueConfig::default(); max_sizes.len()];
        MmioTransport {
            device,
            mem,
            interrupt,
            notify,
            max_sizes,
            device_type,
            offered,
            acked: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            queue_sel: 0,
            queues,
            status: 0,
        }
    }

    /// The device status register.
    pub fn status(&self) -> u32 {
        self.status
    }

    fn selected(&mut self) -> Option<&mut QueueConfig> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    fn reset(&mut self) {
        lock(&self.device).reset();
        self.acked = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.queue_sel = 0;
        self.queues.fill(QueueConfig::default());
        self.status = 0;
        self.interrupt.ack(u32::MAX);
    }

    fn set_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        let new_bits = value & !self.status;
        if new_bits & status::FEATURES_OK != 0 {
            let ok = self.acked & !self.offered == 0 && has_feature(self.acked, VIRTIO_F_VERSION_1);
            if !ok {
                tracing::debug!(
                    acked = self.acked,
                    offered = self.offered,
                    "driver features refused"
                );
                self.status = value & !status::FEATURES_OK;
                return;
            }
        }
        self.status = value;
        if new_bits & status::DRIVER_OK != 0 && value & status::FEATURES_OK != 0 {
            self.activate();
        }
    }

    fn activate(&mut self) {
        let mut queues = Vec::with_capacity(self.queues.len());
        for (i, cfg) in self.queues.iter().enumerate() {
            let mut q =
                Queue::new(self.max_sizes[i]).expect("queue maximum sizes are powers of two");
            if cfg.ready {
                q.set_size(cfg.size);
                q.set_desc_table_address(Some(cfg.desc as u32), Some((cfg.desc >> 32) as u32));
                q.set_avail_ring_address(Some(cfg.driver as u32), Some((cfg.driver >> 32) as u32));
                q.set_used_ring_address(Some(cfg.device as u32), Some((cfg.device >> 32) as u32));
                q.set_event_idx(has_feature(self.acked, super::VIRTIO_RING_F_EVENT_IDX));
                q.set_ready(true);
                if !q.is_valid(self.mem.memory()) {
                    tracing::warn!(queue = i, "driver configured an invalid queue");
                    self.status |= status::NEEDS_RESET;
                    return;
                }
            }
            queues.push(q);
        }
        let mut dev = lock(&self.device);
        if let Err(e) = dev.activate(self.mem.clone(), self.acked, queues, self.interrupt.clone()) {
            tracing::warn!(error = %e, "activating virtio device");
            self.status |= status::NEEDS_RESET;
        }
    }

    fn read_reg(&mut self, offset: u64) -> u32 {
        match offset {
            reg::MAGIC => MAGIC,
            reg::VERSION => 2,
            reg::DEVICE_ID => self.device_type,
            reg::VENDOR_ID => VENDOR_ID,
            reg::DEVICE_FEATURES => match self.device_features_sel {
                0 => self.offered as u32,
                1 => (self.offered >> 32) as u32,
                _ => 0,
            },
            reg::QUEUE_NUM_MAX => self
                .max_sizes
                .get(self.queue_sel as usize)
                .map_or(0, |s| u32::from(*s)),
            reg::QUEUE_READY => self.selected().map_or(0, |q| u32::from(q.ready)),
            reg::INTERRUPT_STATUS => self.interrupt.status(),
            reg::STATUS => self.status,
            reg::SHM_LEN_LOW | reg::SHM_LEN_HIGH => u32::MAX,
            // CONFIG_GENERATION: the configuration never changes.
            _ => 0,
        }
    }

    fn write_reg(&mut self, offset: u64, v: u32) {
        let configurable = self.status & status::DRIVER_OK == 0;
        match offset {
            reg::DEVICE_FEATURES_SEL => self.device_features_sel = v,
            reg::DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            reg::DRIVER_FEATURES if self.status & status::FEATURES_OK == 0 => {
                match self.driver_features_sel {
                    0 => self.acked = (self.acked & !0xffff_ffff) | u64::from(v),
                    1 => self.acked = (self.acked & 0xffff_ffff) | (u64::from(v) << 32),
                    _ => {}
                }
            }
            reg::QUEUE_SEL => self.queue_sel = v,
            reg::QUEUE_NUM if configurable => {
                let max = self
                    .max_sizes
                    .get(self.queue_sel as usize)
                    .copied()
                    .unwrap_or(0);
                if let Some(q) = self.selected() {
                    if v > 0 && v <= u32::from(max) && v.is_power_of_two() {
                        q.size = v as u16;
                    }
                }
            }
            reg::QUEUE_READY if configurable => {
                if let Some(q) = self.selected() {
                    q.ready = v == 1;
                }
            }
            reg::QUEUE_DESC_LOW if configurable => self.set_addr(v, |q| &mut q.desc, false),
            reg::QUEUE_DESC_HIGH if configurable => self.set_addr(v, |q| &mut q.desc, true),
            reg::QUEUE_DRIVER_LOW if configurable => self.set_addr(v, |q| &mut q.driver, false),
            reg::QUEUE_DRIVER_HIGH if configurable => self.set_addr(v, |q| &mut q.driver, true),
            reg::QUEUE_DEVICE_LOW if configurable => self.set_addr(v, |q| &mut q.device, false),
            reg::QUEUE_DEVICE_HIGH if configurable => self.set_addr(v, |q| &mut q.device, true),
            reg::QUEUE_NOTIFY => {
                if let Some(evt) = self.notify.get(v as usize) {
                    let _ = evt.write(1);
                }
            }
            reg::INTERRUPT_ACK => self.interrupt.ack(v),
            reg::STATUS => self.set_status(v),
            _ => tracing::trace!(offset, value = v, "ignored virtio-mmio register write"),
        }
    }

    fn set_addr(&mut self, v: u32, field: fn(&mut QueueConfig) -> &mut u64, high: bool) {
        if let Some(q) = self.selected() {
            let f = field(q);
            *f = if high {
                (*f & 0xffff_ffff) | (u64::from(v) << 32)
            } else {
                (*f & !0xffff_ffff) | u64::from(v)
            };
        }
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= reg::CONFIG {
            lock(&self.device).read_config(offset - reg::CONFIG, data);
            return;
        }
        if data.len() != 4 {
            data.fill(0);
            return;
        }
        data.copy_from_slice(&self.read_reg(offset).to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= reg::CONFIG {
            lock(&self.device).write_config(offset - reg::CONFIG, data);
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            return;
        };
        self.write_reg(offset, u32::from_le_bytes(bytes));
    }
}
