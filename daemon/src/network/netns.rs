//! Network namespaces kept alive by a bind mount of their nsfs file onto a
//! file under the daemon's exec root (`EXEC_ROOT/netns/<container id>`), so
//! the daemon can wire them before the runtime starts the container, and
//! the runtime joins them by path.

use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};

use super::{Error, Result};

fn io(what: String) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Io { what, source }
}

/// Where the namespace of `id` is kept.
pub fn path(dir: &Path, id: &str) -> PathBuf {
    dir.join(id)
}

/// Create a new network namespace and pin it at `path`.
pub fn create(path: &Path) -> Result<()> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).map_err(io(format!("create {}", d.display())))?;
    }
    if is_pinned(path) {
        return Ok(());
    }
    std::fs::write(path, b"").map_err(io(format!("create {}", path.display())))?;
    let target = path.to_path_buf();
    // unshare(CLONE_NEWNET) changes only the calling thread: do it on a
    // thread of its own that ends right after the bind mount.
    let r = std::thread::spawn(move || -> Result<()> {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| Error::Io {
            what: "unshare the network namespace".into(),
            source: e.into(),
        })?;
        nix::mount::mount(
            Some("/proc/thread-self/ns/net"),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| Error::Io {
            what: format!("pin the network namespace at {}", target.display()),
            source: e.into(),
        })
    })
    .join()
    .map_err(|_| Error::Invalid {
        what: "the namespace thread panicked".into(),
    })?;
    if r.is_err() {
        let _ = std::fs::remove_file(path);
    }
    r
}

/// Whether `path` holds a pinned namespace (a mount, not the empty file).
pub fn is_pinned(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let (Ok(me), Some(Ok(parent))) = (
        std::fs::metadata(path),
        path.parent().map(std::fs::metadata),
    ) else {
        return false;
    };
    me.dev() != parent.dev()
}

/// Unpin and delete; a missing file is not an error.
pub fn remove(path: &Path) -> Result<()> {
    if !path.exists() {
        return Ok(());
    }
    match nix::mount::umount2(path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL | nix::errno::Errno::ENOENT) => {}
        Err(e) => {
            return Err(Error::Io {
                what: format!("unmount {}", path.display()),
                source: e.into(),
            });
        }
    }
    std::fs::remove_file(path).map_err(io(format!("remove {}", path.display())))
}
