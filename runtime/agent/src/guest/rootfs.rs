//! The container's root inside the microVM: the layer disks mounted
//! read-only and stacked with overlayfs under a writable scratch upper
//! (tmpfs or an ext4 disk), plus /proc, /sys and a minimal /dev.
//!
//! Disks are found by their virtio-blk serial (`/sys/block/vd*/serial`), so
//! the order in which the kernel names them does not matter.

use std::path::{Path, PathBuf};

use nix::mount::{MsFlags, mount};
use nix::sys::stat::{Mode, SFlag, makedev, mknod};

use super::{Error, Result};
use crate::protocol::{RootSpec, Scratch};

/// Where the root is assembled.
pub const ROOT: &str = "/run/root";
const LAYERS: &str = "/run/layers";
const SCRATCH: &str = "/run/scratch";

/// The block device whose virtio serial is `serial`, looked up in `sys`
/// (normally `/sys/block`).
pub fn disk_by_serial(sys: &Path, serial: &str) -> Result<PathBuf> {
    let entries =
        std::fs::read_dir(sys).map_err(|e| Error::Io(format!("reading {}", sys.display()), e))?;
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(n) = name.to_str() else { continue };
        if !n.starts_with("vd") {
            continue;
        }
        if let Ok(s) = std::fs::read_to_string(e.path().join("serial")) {
            if s.trim_end_matches(['\0', '\n']) == serial {
                return Ok(Path::new("/dev").join(n));
            }
        }
    }
    Err(Error::Setup(format!("no disk with serial {serial:?}")))
}

fn mkdir(p: &str) -> Result<()> {
    std::fs::create_dir_all(p).map_err(|e| Error::Io(format!("creating {p}"), e))
}

fn mount_at(
    source: &Path,
    target: &str,
    fstype: &str,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<()> {
    mount(Some(source), target, Some(fstype), flags, data).map_err(|e| {
        Error::Sys(
            format!("mounting {} ({fstype}) on {target}", source.display()),
            e,
        )
    })
}

/// Mount a read-only layer image, trying EROFS and then ext4.
fn mount_layer(dev: &Path, target: &str) -> Result<()> {
    let ro = MsFlags::MS_RDONLY | MsFlags::MS_NODEV;
    if mount(Some(dev), target, Some("erofs"), ro, None::<&str>).is_ok() {
        return Ok(());
    }
    mount_at(dev, target, "ext4", ro, Some("noload"))
}

/// Assemble the root described by `spec` at [`ROOT`] and return its path.
pub fn prepare(spec: &RootSpec) -> Result<PathBuf> {
    if spec.layers.is_empty() {
        return Err(Error::Setup("the root needs at least one layer".into()));
    }
    let mut lowers = Vec::new();
    for (i, serial) in spec.layers.iter().enumerate() {
        let dev = disk_by_serial(Path::new("/sys/block"), serial)?;
        let target = format!("{LAYERS}/{i}");
        mkdir(&target)?;
        mount_layer(&dev, &target)?;
        lowers.push(target);
    }
    // overlayfs lists the top layer first.
    lowers.reverse();
    mkdir(ROOT)?;
    let nodev = MsFlags::MS_NODEV;
    if spec.readonly && lowers.len() == 1 {
        mount_at(Path::new(&lowers[0]), ROOT, "none", MsFlags::MS_BIND, None)?;
        mount_at(
            Path::new("none"),
            ROOT,
            "none",
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None,
        )?;
    } else if spec.readonly {
        let data = format!("lowerdir={}", lowers.join(":"));
        mount_at(
            Path::new("overlay"),
            ROOT,
            "overlay",
            nodev | MsFlags::MS_RDONLY,
            Some(&data),
        )?;
    } else {
        mkdir(SCRATCH)?;
        match &spec.scratch {
            Scratch::Tmpfs => mount_at(
                Path::new("tmpfs"),
                SCRATCH,
                "tmpfs",
                nodev,
                Some("mode=0755"),
            )?,
            Scratch::TmpfsLimited(mib) => {
                mount_at(
                    Path::new("tmpfs"),
                    SCRATCH,
                    "tmpfs",
                    nodev,
                    Some(&format!("mode=0755,size={mib}m")),
                )?;
            }
            Scratch::Disk(serial) => {
                let dev = disk_by_serial(Path::new("/sys/block"), serial)?;
                mount_at(&dev, SCRATCH, "ext4", nodev, None)?;
            }
        }
        mkdir(&format!("{SCRATCH}/upper"))?;
        mkdir(&format!("{SCRATCH}/work"))?;
        let data = format!(
            "lowerdir={},upperdir={SCRATCH}/upper,workdir={SCRATCH}/work",
            lowers.join(":")
        );
        mount_at(Path::new("overlay"), ROOT, "overlay", nodev, Some(&data))?;
    }
    container_mounts(Path::new(ROOT), spec.readonly)?;
    Ok(PathBuf::from(ROOT))
}

/// /proc, /sys, and a tmpfs /dev with the usual nodes, ptys and shm.
fn container_mounts(root: &Path, readonly: bool) -> Result<()> {
    let at = |p: &str| root.join(p.trim_start_matches('/'));
    let ensure = |p: &Path| -> Result<()> {
        if !p.is_dir() && !readonly {
            std::fs::create_dir_all(p)
                .map_err(|e| Error::Io(format!("creating {}", p.display()), e))?;
        }
        Ok(())
    };
    let m = |src: &str,
             target: &Path,
             fstype: &str,
             flags: MsFlags,
             data: Option<&str>|
     -> Result<()> {
        ensure(target)?;
        mount(Some(src), target, Some(fstype), flags, data)
            .map_err(|e| Error::Sys(format!("mounting {fstype} on {}", target.display()), e))
    };
    let hardened = MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC | MsFlags::MS_NODEV;
    m("proc", &at("/proc"), "proc", hardened, None)?;
    m(
        "sysfs",
        &at("/sys"),
        "sysfs",
        hardened | MsFlags::MS_RDONLY,
        None,
    )?;
    let dev = at("/dev");
    m(
        "tmpfs",
        &dev,
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME,
        Some("mode=0755,size=65536k"),
    )?;
    for (name, major, minor) in [
        ("null", 1, 3),
        ("zero", 1, 5),
        ("full", 1, 7),
        ("random", 1, 8),
        ("urandom", 1, 9),
        ("tty", 5, 0),
    ] {
        let p = dev.join(name);
        mknod(
            &p,
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(0o666),
            makedev(major, minor),
        )
        .map_err(|e| Error::Sys(format!("creating {}", p.display()), e))?;
        // mknod honours the umask; make the modes exact.
        std::os::unix::fs::chown(&p, Some(0), Some(0)).ok();
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o666))
            .map_err(|e| Error::Io(format!("chmod {}", p.display()), e))?;
    }
    m(
        "devpts",
        &dev.join("pts"),
        "devpts",
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620"),
    )?;
    m(
        "shm",
        &dev.join("shm"),
        "tmpfs",
        hardened,
        Some("mode=1777,size=65536k"),
    )?;
    for (link, target) in [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        std::os::unix::fs::symlink(target, dev.join(link))
            .map_err(|e| Error::Io(format!("linking /dev/{link}"), e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_disks_by_serial() {
        let t = vessel_testkit::TempRoot::new("agent-sys");
        for (dev, serial) in [
            ("vda", "layer-0\0\0\0"),
            ("vdb", "scratch"),
            ("loop0", "layer-0"),
        ] {
            std::fs::create_dir_all(t.join(dev)).unwrap();
            std::fs::write(t.join(dev).join("serial"), serial).unwrap();
        }
        assert_eq!(
            disk_by_serial(t.path(), "layer-0").unwrap(),
            Path::new("/dev/vda")
        );
        assert_eq!(
            disk_by_serial(t.path(), "scratch").unwrap(),
            Path::new("/dev/vdb")
        );
        assert!(disk_by_serial(t.path(), "layer-9").is_err());
    }
}
