//! The device thread: one epoll loop serving every virtio device.
//!
//! Owns the wait for queue notifications (eventfds, registered with KVM as
//! ioeventfds so a guest kick costs no exit to user space), for host
//! descriptors of devices (the channel socket), and for the VM's stop
//! signal. On stop it lets every device drain what the guest left behind.

use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use crate::bus::lock;
use crate::control::Stopper;
use crate::devices::virtio::VirtioDevice;

/// A device and the notification eventfd of each of its queues.
pub struct DeviceEvents {
    /// The device model.
    pub device: Arc<Mutex<dyn VirtioDevice>>,
    /// `notify[i]` fires when the driver kicks queue `i`.
    pub notify: Vec<EventFd>,
}

const STOP_TOKEN: u64 = u64::MAX;
const HOST_FD: u64 = 0xffff;

fn token(device: usize, slot: u64) -> u64 {
    ((device as u64) << 32) | slot
}

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("setting up epoll")]
    Epoll(#[source] std::io::Error),
}

/// The event loop.
pub struct EventLoop {
    epoll: Epoll,
    devices: Vec<DeviceEvents>,
    stopper: Arc<Stopper>,
}

impl EventLoop {
    /// Watch `devices` and `stopper`.
    pub fn new(devices: Vec<DeviceEvents>, stopper: Arc<Stopper>) -> Result<EventLoop, Error> {
        let epoll = Epoll::new().map_err(Error::Epoll)?;
        let add = |fd, events, data| {
            epoll
                .ctl(ControlOperation::Add, fd, EpollEvent::new(events, data))
                .map_err(Error::Epoll)
        };
        add(stopper.wake_fd().as_raw_fd(), EventSet::IN, STOP_TOKEN)?;
        for (d, dev) in devices.iter().enumerate() {
            for (q, evt) in dev.notify.iter().enumerate() {
                add(evt.as_raw_fd(), EventSet::IN, token(d, q as u64))?;
            }
            if let Some(fd) = lock(&dev.device).host_fd() {
                add(
                    fd,
                    EventSet::IN
                        | EventSet::OUT
                        | EventSet::READ_HANG_UP
                        | EventSet::EDGE_TRIGGERED,
                    token(d, HOST_FD),
                )?;
            }
        }
        Ok(EventLoop {
            epoll,
            devices,
            stopper,
        })
    }

    /// Serve events until the VM stops, then drain the devices.
    pub fn run(&self) {
        let mut events = vec![EpollEvent::default(); 32];
        'outer: loop {
            let n = match self.epoll.wait(-1, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.stopper.stop(crate::control::VmExit::Failed(format!(
                        "device event loop: {e}"
                    )));
                    break;
                }
            };
            for ev in &events[..n] {
                let data = ev.data();
                if data == STOP_TOKEN {
                    break 'outer;
                }
                let d = (data >> 32) as usize;
                let slot = data & 0xffff_ffff;
                let Some(dev) = self.devices.get(d) else {
                    continue;
                };
                if slot == HOST_FD {
                    lock(&dev.device).host_event(ev.events());
                } else if let Some(evt) = dev.notify.get(slot as usize) {
                    // Reset the counter first so a kick during processing
                    // wakes us again.
                    let _ = evt.read();
                    let mut device = lock(&dev.device);
                    if device.is_active() {
                        device.queue_notify(slot as usize);
                    }
                }
            }
        }
        for dev in &self.devices {
            lock(&dev.device).drain();
        }
    }
}
