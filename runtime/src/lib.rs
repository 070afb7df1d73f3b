//! Vessel's OCI runtime.
//!
//! This crate implements the OCI runtime specification (1.x) on Linux: it
//! turns a bundle (a root filesystem plus `config.json`) into a running,
//! isolated process, and manages that process's lifecycle afterwards. The
//! `vessel-runtime` binary is a thin command-line front end that speaks runc's
//! command-line contract, so podman, conmon and containerd can drive it.
//!
//! It owns namespaces, mounts, devices, capabilities, seccomp, rlimits, hooks,
//! the console socket and cgroups for the containers it creates, and the
//! per-container state under its `--root` directory. It does not own images,
//! networks or logs: those belong to the daemon, which hands the runtime a
//! ready bundle.

pub mod cgroups;
pub mod container;
pub mod devfilter;
mod error;
pub mod events;
pub mod features;
pub mod foreground;
pub mod hooks;
mod init;
pub mod mounts;
mod process;
pub mod reaper;
mod rootfs;
pub mod seccomp;
pub mod shim;
pub mod spec;
pub mod state;
mod sync;
mod sys;
pub mod vm;

pub use error::{Error, Result};
pub use process::DEFAULT_PATH;
pub use state::{ContainerState, Root, Status};

/// This runtime's version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Parse a signal given as a number ("9"), a name ("KILL", "SIGKILL",
/// "sigkill") or a real-time offset ("RTMIN+3", "SIGRTMAX-1").
pub fn parse_signal(s: &str) -> Result<i32> {
    let bad = || Error::Config(format!("invalid signal {s:?}"));
    if let Ok(n) = s.parse::<i32>() {
        return if (1..=libc::SIGRTMAX()).contains(&n) {
            Ok(n)
        } else {
            Err(bad())
        };
    }
    let up = s.to_ascii_uppercase();
    let name = up.strip_prefix("SIG").unwrap_or(&up);
    let rt = |base: i32, rest: &str, sign: i32| -> Result<i32> {
        let off: i32 = if rest.is_empty() {
            0
        } else {
            rest.parse().map_err(|_| bad())?
        };
        let n = base + sign * off;
        if (libc::SIGRTMIN()..=libc::SIGRTMAX()).contains(&n) {
            Ok(n)
        } else {
            Err(bad())
        }
    };
    if let Some(rest) = name.strip_prefix("RTMIN") {
        return rt(libc::SIGRTMIN(), rest.trim_start_matches('+'), 1);
    }
    if let Some(rest) = name.strip_prefix("RTMAX") {
        return rt(libc::SIGRTMAX(), rest.trim_start_matches('-'), -1);
    }
    let full = format!("SIG{name}");
    full.parse::<nix::sys::signal::Signal>()
        .map(|s| s as i32)
        .map_err(|_| bad())
}

#[cfg(test)]
mod signal_tests {
    use super::parse_signal;

    #[test]
    fn signals() {
        assert_eq!(parse_signal("9").unwrap(), 9);
        assert_eq!(parse_signal("KILL").unwrap(), 9);
        assert_eq!(parse_signal("SIGTERM").unwrap(), 15);
        assert_eq!(parse_signal("sighup").unwrap(), 1);
        assert_eq!(parse_signal("RTMIN+1").unwrap(), libc::SIGRTMIN() + 1);
        assert_eq!(parse_signal("SIGRTMAX-2").unwrap(), libc::SIGRTMAX() - 2);
        for bad in ["0", "99", "NOPE", "RTMIN+99", ""] {
            assert!(parse_signal(bad).is_err(), "{bad}");
        }
    }
}
