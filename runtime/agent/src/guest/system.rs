//! What PID 1 of the microVM does before and after serving the host:
//! mounting the kernel filesystems, logging to the kernel log, finding the
//! channel port, and resetting the machine at the end.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use nix::mount::{MsFlags, mount};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};

use super::{Error, Result};
use crate::protocol::PORT_NAME;

/// Write a line to the kernel log (visible with the serial console on),
/// or to standard error when there is no /dev/kmsg.
pub fn log(msg: &str) {
    let line = format!("<3>vessel-agent: {msg}\n");
    if let Ok(mut k) = OpenOptions::new().write(true).open("/dev/kmsg") {
        let _ = k.write_all(line.as_bytes());
    } else {
        eprintln!("vessel-agent: {msg}");
    }
}

fn mount_fs(
    source: &str,
    target: &str,
    fstype: &str,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<()> {
    std::fs::create_dir_all(target).map_err(|e| Error::Io(format!("creating {target}"), e))?;
    mount(Some(source), target, Some(fstype), flags, data)
        .map_err(|e| Error::Sys(format!("mounting {fstype} on {target}"), e))
}

/// Mount /proc, /sys, /dev and /dev/pts in the guest's own root.
pub fn mount_kernel_filesystems() -> Result<()> {
    let nosuid = MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC | MsFlags::MS_NODEV;
    mount_fs("proc", "/proc", "proc", nosuid, None)?;
    mount_fs("sysfs", "/sys", "sysfs", nosuid, None)?;
    mount_fs(
        "devtmpfs",
        "/dev",
        "devtmpfs",
        MsFlags::MS_NOSUID,
        Some("mode=0755"),
    )?;
    mount_fs(
        "devpts",
        "/dev/pts",
        "devpts",
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("mode=0620,ptmxmode=0666"),
    )?;
    mount_fs(
        "tmpfs",
        "/run",
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=0755"),
    )?;
    Ok(())
}

/// The virtio-console ports present now, as (device node, name).
fn ports() -> Vec<(PathBuf, String)> {
    let mut found = Vec::new();
    let Ok(dir) = std::fs::read_dir("/sys/class/virtio-ports") else {
        return found;
    };
    for e in dir.flatten() {
        let node = Path::new("/dev").join(e.file_name());
        if !node.exists() {
            continue;
        }
        let name = std::fs::read_to_string(e.path().join("name")).unwrap_or_default();
        found.push((node, name.trim().to_string()));
    }
    found.sort();
    found
}

fn pick(ports: &[(PathBuf, String)]) -> Option<PathBuf> {
    ports
        .iter()
        .find(|(_, n)| n == PORT_NAME)
        .or_else(|| ports.first())
        .map(|(p, _)| p.clone())
}

/// Wait for the channel port and open it: the port named [`PORT_NAME`] if
/// several exist, else the only one. Ports appear when the host answers the
/// driver's control messages, which can be after init starts, so wait for
/// devtmpfs to create the node (inotify) instead of polling. The port's
/// name may arrive just after its node; with a single port it does not
/// matter, and the first write blocks until the host side is open.
pub fn open_channel() -> Result<File> {
    let inotify =
        Inotify::init(InitFlags::IN_CLOEXEC).map_err(|e| Error::Sys("inotify".into(), e))?;
    inotify
        .add_watch("/dev", AddWatchFlags::IN_CREATE)
        .map_err(|e| Error::Sys("watching /dev".into(), e))?;
    let path = loop {
        if let Some(p) = pick(&ports()) {
            break p;
        }
        inotify
            .read_events()
            .map_err(|e| Error::Sys("waiting for the channel port".into(), e))?;
    };
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| Error::Io(format!("opening {}", path.display()), e))
}

/// The kernel release, for `Ready`.
pub fn kernel_release() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// End the VM: sync, then reset (Linux with `reboot=k` resets through the
/// i8042, which the monitor turns into a clean exit). Never returns.
pub fn reset_machine() -> ! {
    nix::unistd::sync();
    // SAFETY: reboot with a constant command; it only returns on failure.
    unsafe {
        libc::reboot(libc::RB_AUTOBOOT);
    }
    log("reboot failed; halting");
    loop {
        // SAFETY: pause has no preconditions.
        unsafe {
            libc::pause();
        }
    }
}
