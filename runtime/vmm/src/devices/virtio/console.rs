//! virtio-console (virtio 1.2, section 5.3) with one named, non-console
//! port, wired to a host stream socket: the host<->guest channel.
//!
//! Owns the multiport control protocol (the guest sees one port, named so
//! the agent can find it in `/sys/class/virtio-ports/*/name`, which appears
//! as a plain character device rather than a tty) and the byte pump between
//! the port's queues and the host descriptor. Flow control is end to end:
//! guest output is taken from the transmit queue only as fast as the host
//! socket accepts it, and host input only as fast as the guest posts
//! receive buffers. When the host closes its end the guest reads EOF.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use virtio_queue::{Queue, QueueT};
use vm_memory::Bytes;

use super::{
    Error as VirtioError, Interrupt, TYPE_CONSOLE, VirtioDevice, notify_used, read_config_bytes,
    rearm,
};
use crate::memory::GuestRam;

/// Feature bit: the device has multiple ports and a control queue.
pub const F_MULTIPORT: u32 = 1;
/// Control events (virtio 1.2, 5.3.6.2).
pub mod event {
    pub const DEVICE_READY: u16 = 0;
    pub const PORT_ADD: u16 = 1;
    pub const PORT_REMOVE: u16 = 2;
    pub const PORT_READY: u16 = 3;
    pub const CONSOLE_PORT: u16 = 4;
    pub const RESIZE: u16 = 5;
    pub const PORT_OPEN: u16 = 6;
    pub const PORT_NAME: u16 = 7;
}
/// Queue indexes: port 0 receive/transmit, then control receive/transmit.
pub const RX: usize = 0;
/// Port 0 transmit queue.
pub const TX: usize = 1;
/// Control receive queue (device to driver).
pub const CTRL_RX: usize = 2;
/// Control transmit queue (driver to device).
pub const CTRL_TX: usize = 3;
const QUEUE_SIZE: u16 = 256;
/// Most guest output held on the host side while the socket is full.
const MAX_PENDING: usize = 256 << 10;
const READ_CHUNK: usize = 64 << 10;

/// A control message header: port id, event, value.
pub fn control_message(id: u32, event: u16, value: u16) -> [u8; 8] {
    let mut m = [0u8; 8];
    m[0..4].copy_from_slice(&id.to_le_bytes());
    m[4..6].copy_from_slice(&event.to_le_bytes());
    m[6..8].copy_from_slice(&value.to_le_bytes());
    m
}

/// The console device.
pub struct Console {
    name: String,
    stream: UnixStream,
    max_sizes: [u16; 4],
    active: Option<Active>,
    control_out: VecDeque<Vec<u8>>,
    /// Guest output not yet accepted by the host socket.
    tx_pending: Vec<u8>,
    tx_sent: usize,
    /// Host input not yet placed in guest buffers.
    rx_pending: Vec<u8>,
    rx_taken: usize,
    host_eof: bool,
    host_broken: bool,
    port_ready: bool,
    guest_open: bool,
}

struct Active {
    mem: GuestRam,
    queues: Vec<Queue>,
    irq: Interrupt,
}

impl Console {
    /// A console whose single port is called `name` and carries bytes to and
    /// from `stream` (a connected stream socket, made non-blocking here).
    pub fn new(name: &str, stream: OwnedFd) -> std::io::Result<Console> {
        let stream = UnixStream::from(stream);
        stream.set_nonblocking(true)?;
        Ok(Console {
            name: name.to_string(),
            stream,
            max_sizes: [QUEUE_SIZE; 4],
            active: None,
            control_out: VecDeque::new(),
            tx_pending: Vec::new(),
            tx_sent: 0,
            rx_pending: Vec::new(),
            rx_taken: 0,
            host_eof: false,
            host_broken: false,
            port_ready: false,
            guest_open: false,
        })
    }

    /// Whether the guest has the port open.
    pub fn guest_open(&self) -> bool {
        self.guest_open
    }

    fn run(&mut self, f: fn(&mut Console) -> Result<(), VirtioError>) {
        if self.active.is_none() {
            return;
        }
        if let Err(e) = f(self) {
            tracing::warn!(error = %e, "virtio-console");
        }
    }

    /// Handle control messages from the driver.
    fn control_tx(&mut self) -> Result<(), VirtioError> {
        let mut msgs = Vec::new();
        {
            let a = self.active.as_mut().expect("checked by run");
            loop {
                while let Some(chain) = a.queues[CTRL_TX].pop_descriptor_chain(a.mem.memory()) {
                    let head = chain.head_index();
                    let mut buf = Vec::new();
                    for d in chain {
                        if d.is_write_only() {
                            continue;
                        }
                        let mut part = vec![0u8; d.len() as usize];
                        a.mem
                            .memory()
                            .read_slice(&mut part, d.addr())
                            .map_err(|source| VirtioError::Memory {
                                device: "console",
                                source,
                            })?;
                        buf.extend_from_slice(&part);
                    }
                    msgs.push(buf);
                    a.queues[CTRL_TX]
                        .add_used(a.mem.memory(), head, 0)
                        .map_err(|source| VirtioError::Queue {
                            device: "console",
                            source,
                        })?;
                }
                if !rearm(&mut a.queues[CTRL_TX], &a.mem, "console")? {
                    break;
                }
            }
            notify_used(&mut a.queues[CTRL_TX], &a.mem, &a.irq, "console")?;
        }
        for m in msgs {
            if m.len() < 8 {
                continue;
            }
            let id = u32::from_le_bytes(m[0..4].try_into().expect("4 bytes"));
            let ev = u16::from_le_bytes(m[4..6].try_into().expect("2 bytes"));
            let value = u16::from_le_bytes(m[6..8].try_into().expect("2 bytes"));
            match ev {
                event::DEVICE_READY if value == 1 => {
                    self.control_out
                        .push_back(control_message(0, event::PORT_ADD, 0).to_vec());
                }
                event::DEVICE_READY => tracing::warn!("guest failed to set up the console device"),
                event::PORT_READY if id == 0 && value == 1 => {
                    self.port_ready = true;
                    let mut name = control_message(0, event::PORT_NAME, 1).to_vec();
                    name.extend_from_slice(self.name.as_bytes());
                    self.control_out.push_back(name);
                    let open = u16::from(!self.host_eof);
                    self.control_out
                        .push_back(control_message(0, event::PORT_OPEN, open).to_vec());
                }
                event::PORT_OPEN if id == 0 => self.guest_open = value == 1,
                _ => tracing::debug!(id, ev, value, "ignored console control message"),
            }
        }
        self.control_rx()
    }

    /// Deliver queued control messages into the driver's control buffers.
    fn control_rx(&mut self) -> Result<(), VirtioError> {
        let a = self.active.as_mut().expect("checked by run");
        let mut used = false;
        while let Some(msg) = self.control_out.front() {
            let Some(chain) = a.queues[CTRL_RX].pop_descriptor_chain(a.mem.memory()) else {
                break;
            };
            let head = chain.head_index();
            let written = write_to_chain(&a.mem, chain, msg)?;
            a.queues[CTRL_RX]
                .add_used(a.mem.memory(), head, written as u32)
                .map_err(|source| VirtioError::Queue {
                    device: "console",
                    source,
                })?;
            self.control_out.pop_front();
            used = true;
        }
        rearm(&mut a.queues[CTRL_RX], &a.mem, "console")?;
        if used {
            notify_used(&mut a.queues[CTRL_RX], &a.mem, &a.irq, "console")?;
        }
        Ok(())
    }

    /// Write pending guest output to the host; true when all of it went.
    fn flush_tx(&mut self) -> bool {
        Self::flush_pending(
            &mut self.stream,
            &mut self.tx_pending,
            &mut self.tx_sent,
            &mut self.host_broken,
        )
    }

    /// Move guest output from the transmit queue to the host socket.
    fn tx(&mut self) -> Result<(), VirtioError> {
        let a = self.active.as_mut().expect("checked by run");
        let mut used = false;
        loop {
            // Take buffers only while the host keeps up.
            while self.tx_pending.len() < MAX_PENDING {
                let Some(chain) = a.queues[TX].pop_descriptor_chain(a.mem.memory()) else {
                    break;
                };
                let head = chain.head_index();
                for d in chain {
                    if d.is_write_only() {
                        continue;
                    }
                    let start = self.tx_pending.len();
                    self.tx_pending.resize(start + d.len() as usize, 0);
                    a.mem
                        .memory()
                        .read_slice(&mut self.tx_pending[start..], d.addr())
                        .map_err(|source| VirtioError::Memory {
                            device: "console",
                            source,
                        })?;
                }
                a.queues[TX]
                    .add_used(a.mem.memory(), head, 0)
                    .map_err(|source| VirtioError::Queue {
                        device: "console",
                        source,
                    })?;
                used = true;
            }
            let all_sent = Self::flush_pending(
                &mut self.stream,
                &mut self.tx_pending,
                &mut self.tx_sent,
                &mut self.host_broken,
            );
            if !all_sent {
                break;
            }
            if !rearm(&mut a.queues[TX], &a.mem, "console")? {
                break;
            }
        }
        if used {
            notify_used(&mut a.queues[TX], &a.mem, &a.irq, "console")?;
        }
        Ok(())
    }

    fn flush_pending(
        stream: &mut UnixStream,
        pending: &mut Vec<u8>,
        sent: &mut usize,
        broken: &mut bool,
    ) -> bool {
        while *sent < pending.len() {
            if *broken {
                break;
            }
            match stream.write(&pending[*sent..]) {
                Ok(0) => *broken = true,
                Ok(n) => *sent += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::debug!(error = %e, "host end of the console is gone; dropping guest output");
                    *broken = true;
                }
            }
        }
        pending.clear();
        *sent = 0;
        true
    }

    /// Move host input into the guest's receive buffers.
    fn rx(&mut self) -> Result<(), VirtioError> {
        if !self.port_ready {
            return Ok(());
        }
        let a = self.active.as_mut().expect("checked by run");
        let mut used = false;
        let mut closed = false;
        loop {
            if self.rx_taken == self.rx_pending.len() {
                self.rx_pending.clear();
                self.rx_taken = 0;
                if self.host_eof {
                    break;
                }
                self.rx_pending.resize(READ_CHUNK, 0);
                match self.stream.read(&mut self.rx_pending) {
                    Ok(0) => {
                        self.rx_pending.clear();
                        self.host_eof = true;
                        closed = true;
                        break;
                    }
                    Ok(n) => self.rx_pending.truncate(n),
                    Err(e) => {
                        self.rx_pending.clear();
                        match e.kind() {
                            std::io::ErrorKind::WouldBlock => break,
                            std::io::ErrorKind::Interrupted => continue,
                            _ => {
                                tracing::debug!(error = %e, "reading the host end of the console");
                                self.host_eof = true;
                                closed = true;
                                break;
                            }
                        }
                    }
                }
            }
            let Some(chain) = a.queues[RX].pop_descriptor_chain(a.mem.memory()) else {
                // No guest buffers: the next receive-queue notification
                // brings us back here.
                if rearm(&mut a.queues[RX], &a.mem, "console")? {
                    continue;
                }
                break;
            };
            let head = chain.head_index();
            let n = write_to_chain(&a.mem, chain, &self.rx_pending[self.rx_taken..])?;
            self.rx_taken += n;
            a.queues[RX]
                .add_used(a.mem.memory(), head, n as u32)
                .map_err(|source| VirtioError::Queue {
                    device: "console",
                    source,
                })?;
            used = true;
        }
        if used {
            notify_used(&mut a.queues[RX], &a.mem, &a.irq, "console")?;
        }
        if closed {
            self.control_out
                .push_back(control_message(0, event::PORT_OPEN, 0).to_vec());
            self.control_rx()?;
        }
        Ok(())
    }
}

/// Copy `data` into the writable descriptors of `chain`; returns how much
/// fitted.
fn write_to_chain<M>(
    mem: &GuestRam,
    chain: virtio_queue::DescriptorChain<M>,
    data: &[u8],
) -> Result<usize, VirtioError>
where
    M: std::ops::Deref + Clone,
    M::Target: vm_memory::GuestMemory,
{
    let mut off = 0;
    for d in chain {
        if !d.is_write_only() || off == data.len() {
            continue;
        }
        let n = (d.len() as usize).min(data.len() - off);
        mem.memory()
            .write_slice(&data[off..off + n], d.addr())
            .map_err(|source| VirtioError::Memory {
                device: "console",
                source,
            })?;
        off += n;
    }
    Ok(off)
}

impl VirtioDevice for Console {
    fn name(&self) -> &'static str {
        "console"
    }

    fn device_type(&self) -> u32 {
        TYPE_CONSOLE
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.max_sizes
    }

    fn features(&self) -> u64 {
        (1 << F_MULTIPORT) | (1 << super::VIRTIO_RING_F_EVENT_IDX)
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // cols (u16), rows (u16), max_nr_ports (u32), emerg_wr (u32).
        let mut cfg = [0u8; 12];
        cfg[4..8].copy_from_slice(&1u32.to_le_bytes());
        read_config_bytes(&cfg, offset, data);
    }

    fn activate(
        &mut self,
        mem: GuestRam,
        _features: u64,
        queues: Vec<Queue>,
        interrupt: Interrupt,
    ) -> Result<(), VirtioError> {
        if queues.len() != 4 {
            return Err(VirtioError::QueueCount {
                device: "console",
                expected: 4,
                got: queues.len(),
            });
        }
        self.active = Some(Active {
            mem,
            queues,
            irq: interrupt,
        });
        Ok(())
    }

    fn is_active(&self) -> bool {
        self.active.is_some()
    }

    fn queue_notify(&mut self, index: usize) {
        match index {
            RX => self.run(Console::rx),
            TX => self.run(Console::tx),
            CTRL_RX => self.run(Console::control_rx),
            CTRL_TX => {
                self.run(Console::control_tx);
                // The port may have just become ready: pick up early input.
                self.run(Console::rx);
            }
            _ => {}
        }
    }

    fn host_fd(&self) -> Option<RawFd> {
        Some(self.stream.as_raw_fd())
    }

    fn host_event(&mut self, events: u32) {
        if events & (libc::EPOLLOUT as u32) != 0 {
            self.run(Console::tx);
        }
        if events & ((libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLHUP) as u32) != 0 {
            self.run(Console::rx);
        }
    }

    fn reset(&mut self) {
        self.active = None;
        self.control_out.clear();
        self.port_ready = false;
        self.guest_open = false;
    }

    fn drain(&mut self) {
        self.run(Console::tx);
        if !self.flush_tx() {
            // The VM is gone; give the host a moment to take the rest.
            // (fcntl, not set_nonblocking: that is an ioctl, which the
            // device thread's seccomp filter refuses.)
            let fd = self.stream.as_raw_fd();
            // SAFETY: F_GETFL/F_SETFL on a descriptor we own.
            unsafe {
                let flags = libc::fcntl(fd, libc::F_GETFL);
                if flags >= 0 {
                    libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK);
                }
            }
            let _ = self
                .stream
                .set_write_timeout(Some(std::time::Duration::from_secs(2)));
            let pending = std::mem::take(&mut self.tx_pending);
            let _ = self.stream.write_all(&pending[self.tx_sent..]);
            self.tx_sent = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::testdriver::Driver;
    use std::sync::{Arc, Mutex};

    fn control(d: &mut Driver, id: u32, ev: u16, value: u16) {
        let b = d.out_buf(&control_message(id, ev, value));
        d.add(CTRL_TX, &[b]);
        d.notify(CTRL_TX);
        d.wait_used(CTRL_TX);
    }

    /// Post a control receive buffer and return the next message in it.
    fn next_control(
        d: &mut Driver,
        posted: &mut Vec<(u16, crate::devices::virtio::testdriver::Buf)>,
    ) -> Vec<u8> {
        let (id, len) = d.wait_used(CTRL_RX);
        let i = posted
            .iter()
            .position(|(h, _)| *h == id)
            .expect("known buffer");
        let (_, buf) = posted.remove(i);
        d.read(buf, len as usize)
    }

    /// Bring the port up the way Linux's virtio_console does.
    fn handshake(
        host: &UnixStream,
    ) -> (Driver, Vec<(u16, crate::devices::virtio::testdriver::Buf)>) {
        let dev = Arc::new(Mutex::new(
            Console::new("vessel.agent", host.try_clone().unwrap().into()).unwrap(),
        ));
        let mut d = Driver::new(dev);
        assert_eq!(d.read_config(4, 4), 1u32.to_le_bytes(), "max_nr_ports");
        let mut posted = Vec::new();
        for _ in 0..4 {
            let b = d.in_buf(64);
            posted.push((d.add(CTRL_RX, &[b]), b));
        }
        d.notify(CTRL_RX);
        control(&mut d, u32::MAX, event::DEVICE_READY, 1);
        assert_eq!(
            next_control(&mut d, &mut posted),
            control_message(0, event::PORT_ADD, 0)
        );
        control(&mut d, 0, event::PORT_READY, 1);
        let name = next_control(&mut d, &mut posted);
        assert_eq!(&name[..8], &control_message(0, event::PORT_NAME, 1));
        assert_eq!(&name[8..], b"vessel.agent");
        assert_eq!(
            next_control(&mut d, &mut posted),
            control_message(0, event::PORT_OPEN, 1)
        );
        control(&mut d, 0, event::PORT_OPEN, 1);
        (d, posted)
    }

    #[test]
    fn port_comes_up_and_carries_bytes_both_ways() {
        let (host, device_end) = UnixStream::pair().unwrap();
        let (mut d, mut posted) = handshake(&device_end);
        drop(device_end);

        // Guest to host.
        let b = d.out_buf(b"hello from the guest");
        d.add(TX, &[b]);
        d.notify(TX);
        d.wait_used(TX);
        let mut got = vec![0u8; 20];
        (&host).read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hello from the guest");

        // Host to guest, into a posted receive buffer.
        let rx = d.in_buf(64);
        let head = d.add(RX, &[rx]);
        d.notify(RX);
        (&host).write_all(b"hi guest").unwrap();
        let (id, len) = d.wait_used(RX);
        assert_eq!((id, len), (head, 8));
        assert_eq!(d.read(rx, 8), b"hi guest");

        // Host closes: the guest is told the host end is no longer open.
        drop(host);
        let rx = d.in_buf(64);
        d.add(RX, &[rx]);
        d.notify(RX);
        assert_eq!(
            next_control(&mut d, &mut posted),
            control_message(0, event::PORT_OPEN, 0)
        );
    }

    #[test]
    fn large_output_arrives_intact_through_a_slow_reader() {
        let (host, device_end) = UnixStream::pair().unwrap();
        let (mut d, _posted) = handshake(&device_end);
        drop(device_end);
        let total = 4 << 20;
        let reader = std::thread::spawn(move || {
            let mut all = Vec::new();
            let mut buf = [0u8; 1000];
            while all.len() < total {
                let n = (&host).read(&mut buf).unwrap();
                assert!(n > 0);
                all.extend_from_slice(&buf[..n]);
            }
            all
        });
        // 4 MiB in 32 KiB chunks, one chunk in flight per queue slot.
        let chunk: Vec<u8> = (0..32 * 1024u32).map(|i| (i % 251) as u8).collect();
        let mut in_flight = 0;
        for _ in 0..total / chunk.len() {
            if in_flight == 8 {
                d.wait_used(TX);
                in_flight -= 1;
            }
            let b = d.out_buf(&chunk);
            d.add(TX, &[b]);
            d.notify(TX);
            in_flight += 1;
        }
        while in_flight > 0 {
            d.wait_used(TX);
            in_flight -= 1;
        }
        let all = reader.join().unwrap();
        assert_eq!(all.len(), total);
        assert!(all.chunks(chunk.len()).all(|c| c == chunk.as_slice()));
    }
}
