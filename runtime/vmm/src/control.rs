//! How a VM ends: the exit reasons and the shared stop signal.
//!
//! Owns [`VmExit`] and the one-shot [`Stopper`] that any thread (a vCPU that
//! saw a reset, a device, the host calling `kill`) uses to end the VM: the
//! first reason recorded wins, every vCPU and the event loop are woken.
//! It does not join threads (the VM handle does).

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use vmm_sys_util::eventfd::EventFd;

use crate::bus::lock;

/// Why a VM stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VmExit {
    /// The guest reset the machine through the i8042 controller. This is
    /// how a Linux guest booted with `reboot=k` ends on `reboot`, on
    /// poweroff without ACPI, and on a panic with `panic=-1`.
    Reset,
    /// The guest triple-faulted (KVM reported a shutdown).
    TripleFault,
    /// KVM reported a system event of this type.
    SystemEvent(u32),
    /// The guest wrote this value to the debug exit port.
    DebugExit(u8),
    /// The host stopped the VM.
    Killed,
    /// The monitor could not keep running the VM.
    Failed(String),
}

impl VmExit {
    /// Whether the guest itself ended the VM in an orderly way.
    pub fn is_clean(&self) -> bool {
        matches!(
            self,
            VmExit::Reset | VmExit::DebugExit(_) | VmExit::SystemEvent(_)
        )
    }
}

impl std::fmt::Display for VmExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VmExit::Reset => write!(f, "guest reset"),
            VmExit::TripleFault => write!(f, "guest triple fault"),
            VmExit::SystemEvent(t) => write!(f, "system event {t}"),
            VmExit::DebugExit(v) => write!(f, "debug exit {v}"),
            VmExit::Killed => write!(f, "killed by the host"),
            VmExit::Failed(m) => write!(f, "monitor failure: {m}"),
        }
    }
}

/// The shared stop signal of one VM.
pub struct Stopper {
    reason: Mutex<Option<VmExit>>,
    stopping: AtomicBool,
    wake: EventFd,
    kick: Mutex<Option<Box<dyn Fn() + Send + Sync>>>,
}

impl std::fmt::Debug for Stopper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stopper")
            .field("reason", &self.reason())
            .field("stopping", &self.stopping())
            .finish_non_exhaustive()
    }
}

impl Stopper {
    /// A new stop signal; `wake` becomes readable when the VM should stop.
    pub fn new() -> std::io::Result<Arc<Stopper>> {
        Ok(Arc::new(Stopper {
            reason: Mutex::new(None),
            stopping: AtomicBool::new(false),
            wake: EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)?,
            kick: Mutex::new(None),
        }))
    }

    /// Set how to interrupt vCPUs blocked in `KVM_RUN`. If the VM is
    /// already stopping, kick at once: either `stop` sees the kick or this
    /// sees the stop.
    pub fn set_kick(&self, kick: Box<dyn Fn() + Send + Sync>) {
        let mut slot = lock(&self.kick);
        if self.stopping() {
            kick();
        }
        *slot = Some(kick);
    }

    /// End the VM for `why`, unless it is already ending.
    pub fn stop(&self, why: VmExit) {
        {
            let mut r = lock(&self.reason);
            if r.is_some() {
                return;
            }
            tracing::debug!(reason = %why, "vm stopping");
            *r = Some(why);
        }
        self.stopping.store(true, Ordering::SeqCst);
        // An eventfd counter cannot overflow from a handful of writes.
        let _ = self.wake.write(1);
        if let Some(kick) = lock(&self.kick).as_ref() {
            kick();
        }
    }

    /// Whether the VM is ending.
    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// The reason recorded by the first `stop`.
    pub fn reason(&self) -> Option<VmExit> {
        lock(&self.reason).clone()
    }

    /// The descriptor that becomes readable on stop.
    pub fn wake_fd(&self) -> &EventFd {
        &self.wake
    }
}

/// A `vm-superio` trigger that ends the VM with [`VmExit::Reset`].
#[derive(Clone, Debug)]
pub struct ResetTrigger(pub Arc<Stopper>);

impl vm_superio::Trigger for ResetTrigger {
    type E = std::convert::Infallible;

    fn trigger(&self) -> Result<(), Self::E> {
        self.0.stop(VmExit::Reset);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_reason_wins_and_wakes() {
        let s = Stopper::new().unwrap();
        assert!(!s.stopping());
        s.stop(VmExit::Reset);
        s.stop(VmExit::Killed);
        assert!(s.stopping());
        assert_eq!(s.reason(), Some(VmExit::Reset));
        assert_eq!(s.wake_fd().read().unwrap(), 1);
    }
}
