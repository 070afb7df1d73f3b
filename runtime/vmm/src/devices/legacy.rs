//! The few legacy PC devices a Linux guest touches: the 8250 UART (for a
//! debugging console), the CMOS real-time clock, the i8042 controller (only
//! its CPU-reset command) and a debug exit port.
//!
//! The UART and the i8042 are `vm-superio` models behind our bus; the RTC is
//! ours because `vm-superio` only has the ARM PL031. The PIC, PIT and IOAPIC
//! are KVM's in-kernel models and do not appear here.

use std::io::Write;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use vm_superio::{I8042Device, Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;
use crate::control::{ResetTrigger, Stopper, VmExit};

/// I/O port of the i8042 data register; the command register is at +4.
pub const I8042_PORT: u16 = 0x60;
/// I/O ports of the CMOS RTC (index, data).
pub const RTC_PORT: u16 = 0x70;
/// The debug exit port (same port and meaning as QEMU's isa-debug-exit).
pub const DEBUG_EXIT_PORT: u16 = 0xf4;

/// An interrupt line raised by writing an eventfd registered as a KVM irqfd.
#[derive(Debug)]
pub struct IrqLine(pub EventFd);

impl Trigger for IrqLine {
    type E = std::io::Error;

    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

/// The 8250 UART at 0x3f8.
pub struct SerialPort {
    inner: Serial<IrqLine, vm_superio::serial::NoEvents, Box<dyn Write + Send>>,
}

impl SerialPort {
    /// A UART raising `irq` and writing what the guest sends to `out`.
    pub fn new(irq: EventFd, out: Box<dyn Write + Send>) -> SerialPort {
        SerialPort {
            inner: Serial::new(IrqLine(irq), out),
        }
    }
}

impl BusDevice for SerialPort {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if data.len() == 1 {
            data[0] = self.inner.read(offset as u8);
        } else {
            data.fill(0xff);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if data.len() == 1 {
            if let Err(e) = self.inner.write(offset as u8, data[0]) {
                tracing::debug!(error = ?e, "serial write");
            }
        }
    }
}

/// The i8042 controller: reads as idle, and its reset command ends the VM.
pub struct ResetController {
    inner: I8042Device<ResetTrigger>,
}

impl ResetController {
    /// A controller that stops the VM with [`VmExit::Reset`].
    pub fn new(stopper: Arc<Stopper>) -> ResetController {
        ResetController {
            inner: I8042Device::new(ResetTrigger(stopper)),
        }
    }
}

impl BusDevice for ResetController {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let v = self.inner.read(offset as u8);
        data.fill(v);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let Some(v) = data.first() {
            // The trigger is infallible.
            let _ = self.inner.write(offset as u8, *v);
        }
    }
}

/// A port that ends the VM with the value written to it.
pub struct DebugExit(pub Arc<Stopper>);

impl BusDevice for DebugExit {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, _offset: u64, data: &[u8]) {
        self.0
            .stop(VmExit::DebugExit(data.first().copied().unwrap_or(0)));
    }
}

/// The MC146818 CMOS clock: the host's UTC time in BCD, 24-hour mode, never
/// "update in progress", plus 128 bytes of CMOS RAM. Its point is to answer
/// at once: a kernel probing an absent RTC waits seconds for it.
pub struct CmosRtc {
    index: u8,
    ram: [u8; 128],
    now: Box<dyn Fn() -> u64 + Send>,
}

const REG_A: u8 = 0x0a;
const REG_B: u8 = 0x0b;
const REG_C: u8 = 0x0c;
const REG_D: u8 = 0x0d;
const REG_CENTURY: u8 = 0x32;
/// Status B: 24-hour mode; bit 2 clear means BCD.
const REG_B_24H: u8 = 0x02;
/// Status D: valid RAM and time.
const REG_D_VRT: u8 = 0x80;
/// Status A: 32.768 kHz divider, 1024 Hz rate, no update in progress.
const REG_A_DEFAULT: u8 = 0x26;

impl Default for CmosRtc {
    fn default() -> Self {
        CmosRtc::new()
    }
}

impl CmosRtc {
    /// A clock reading the host's time.
    pub fn new() -> CmosRtc {
        CmosRtc::with_clock(Box::new(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        }))
    }

    /// A clock reading seconds since the epoch from `now` (for tests).
    pub fn with_clock(now: Box<dyn Fn() -> u64 + Send>) -> CmosRtc {
        let mut ram = [0u8; 128];
        ram[REG_A as usize] = REG_A_DEFAULT;
        ram[REG_B as usize] = REG_B_24H;
        ram[REG_D as usize] = REG_D_VRT;
        CmosRtc { index: 0, ram, now }
    }

    fn register(&self, reg: u8) -> u8 {
        let secs = (self.now)();
        let (y, mo, d) = civil_from_days((secs / 86400) as i64);
        let sod = secs % 86400;
        match reg {
            0x00 => bcd((sod % 60) as u8),
            0x02 => bcd(((sod / 60) % 60) as u8),
            0x04 => bcd((sod / 3600) as u8),
            // 1970-01-01 was a Thursday; the RTC counts Sunday as 1.
            0x06 => bcd((((secs / 86400) + 4) % 7 + 1) as u8),
            0x07 => bcd(d),
            0x08 => bcd(mo),
            0x09 => bcd((y % 100) as u8),
            REG_CENTURY => bcd((y / 100) as u8),
            REG_C => 0,
            r => self.ram[r as usize & 0x7f],
        }
    }
}

impl BusDevice for CmosRtc {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let v = match offset {
            1 => self.register(self.index),
            _ => self.index,
        };
        data.fill(v);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(v) = data.first().copied() else {
            return;
        };
        match offset {
            // Bit 7 of the index port masks NMIs; ignore it.
            0 => self.index = v & 0x7f,
            _ => match self.index {
                // The clock itself follows the host; status A keeps UIP clear.
                0x00..=0x09 | REG_C | REG_D | REG_CENTURY => {}
                REG_A => self.ram[REG_A as usize] = v & 0x7f,
                i => self.ram[i as usize] = v,
            },
        }
    }
}

fn bcd(v: u8) -> u8 {
    ((v / 10) << 4) | (v % 10)
}

/// Proleptic Gregorian (year, month, day) of a day count since 1970-01-01.
pub fn civil_from_days(days: i64) -> (i64, u8, u8) {
    // Shift the epoch to 0000-03-01 so leap days fall at the end of a year;
    // 719468 days separate that from 1970-01-01, an era is 400 years.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(59), (1970, 3, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }

    fn read_reg(rtc: &mut CmosRtc, reg: u8) -> u8 {
        rtc.write(0, &[reg | 0x80]);
        let mut d = [0u8];
        rtc.read(1, &mut d);
        d[0]
    }

    #[test]
    fn rtc_reports_time_in_bcd() {
        // 2024-02-29 13:45:56 UTC, a Thursday.
        let t = 1_709_214_356;
        let mut rtc = CmosRtc::with_clock(Box::new(move || t));
        assert_eq!(read_reg(&mut rtc, 0x00), 0x56);
        assert_eq!(read_reg(&mut rtc, 0x02), 0x45);
        assert_eq!(read_reg(&mut rtc, 0x04), 0x13);
        assert_eq!(read_reg(&mut rtc, 0x06), 0x05);
        assert_eq!(read_reg(&mut rtc, 0x07), 0x29);
        assert_eq!(read_reg(&mut rtc, 0x08), 0x02);
        assert_eq!(read_reg(&mut rtc, 0x09), 0x24);
        assert_eq!(read_reg(&mut rtc, REG_CENTURY), 0x20);
        assert_eq!(
            read_reg(&mut rtc, REG_A) & 0x80,
            0,
            "never update-in-progress"
        );
        assert_eq!(read_reg(&mut rtc, REG_B), REG_B_24H);
        assert_eq!(read_reg(&mut rtc, REG_D), REG_D_VRT);
        // CMOS RAM keeps what is written; the clock ignores writes.
        rtc.write(0, &[0x40]);
        rtc.write(1, &[0xab]);
        assert_eq!(read_reg(&mut rtc, 0x40), 0xab);
        rtc.write(0, &[0x00]);
        rtc.write(1, &[0x11]);
        assert_eq!(read_reg(&mut rtc, 0x00), 0x56);
    }

    #[test]
    fn i8042_reset_stops_the_vm() {
        let s = Stopper::new().unwrap();
        let mut c = ResetController::new(s.clone());
        let mut d = [0xffu8];
        c.read(4, &mut d);
        assert_eq!(d[0], 0, "status reads idle so kb_wait returns at once");
        c.write(4, &[0x12]);
        assert!(!s.stopping());
        c.write(4, &[0xfe]);
        assert_eq!(s.reason(), Some(VmExit::Reset));
    }

    #[test]
    fn serial_writes_reach_the_output() {
        struct Shared(Arc<std::sync::Mutex<Vec<u8>>>);
        impl Write for Shared {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Arc::new(std::sync::Mutex::new(Vec::new()));
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut s = SerialPort::new(irq, Box::new(Shared(buf.clone())));
        for b in b"ok\n" {
            s.write(0, &[*b]);
        }
        assert_eq!(&*buf.lock().unwrap(), b"ok\n");
    }
}
