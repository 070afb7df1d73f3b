//! Mount option parsing: turns the OCI `mounts[].options` strings into
//! `mount(2)` flags, propagation changes, recursive attributes and the
//! filesystem-specific data string.

use nix::mount::MsFlags;

/// A mount's options, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountOptions {
    /// Flags for the mount (and for the remount of a bind mount).
    pub flags: MsFlags,
    /// Whether this is a bind mount (`bind` or `rbind`).
    pub bind: bool,
    /// Whether a bind mount is recursive (`rbind`).
    pub recursive: bool,
    /// Propagation changes applied after mounting, in order.
    pub propagation: Vec<MsFlags>,
    /// Filesystem-specific options, comma-joined.
    pub data: String,
    /// `tmpcopyup`: copy the directory's previous contents into a new tmpfs.
    pub tmpcopyup: bool,
    /// Recursive attributes (`rro`, `rnosuid`, ...) as `MOUNT_ATTR_*` bits.
    pub recursive_attrs: u64,
    /// `idmap`/`ridmap` was asked for.
    pub idmap: bool,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            flags: MsFlags::empty(),
            bind: false,
            recursive: false,
            propagation: Vec::new(),
            data: String::new(),
            tmpcopyup: false,
            recursive_attrs: 0,
            idmap: false,
        }
    }
}

/// Parse mount options.
pub fn parse(options: &[String]) -> MountOptions {
    let mut o = MountOptions::default();
    let mut data = Vec::new();
    for opt in options {
        let opt = opt.as_str();
        let set = |o: &mut MountOptions, f: MsFlags| o.flags.insert(f);
        let clear = |o: &mut MountOptions, f: MsFlags| o.flags.remove(f);
        match opt {
            "ro" => set(&mut o, MsFlags::MS_RDONLY),
            "rw" => clear(&mut o, MsFlags::MS_RDONLY),
            "suid" => clear(&mut o, MsFlags::MS_NOSUID),
            "nosuid" => set(&mut o, MsFlags::MS_NOSUID),
            "dev" => clear(&mut o, MsFlags::MS_NODEV),
            "nodev" => set(&mut o, MsFlags::MS_NODEV),
            "exec" => clear(&mut o, MsFlags::MS_NOEXEC),
            "noexec" => set(&mut o, MsFlags::MS_NOEXEC),
            "sync" => set(&mut o, MsFlags::MS_SYNCHRONOUS),
            "async" => clear(&mut o, MsFlags::MS_SYNCHRONOUS),
            "dirsync" => set(&mut o, MsFlags::MS_DIRSYNC),
            "remount" => set(&mut o, MsFlags::MS_REMOUNT),
            "mand" => set(&mut o, MsFlags::MS_MANDLOCK),
            "nomand" => clear(&mut o, MsFlags::MS_MANDLOCK),
            "atime" => clear(&mut o, MsFlags::MS_NOATIME),
            "noatime" => set(&mut o, MsFlags::MS_NOATIME),
            "diratime" => clear(&mut o, MsFlags::MS_NODIRATIME),
            "nodiratime" => set(&mut o, MsFlags::MS_NODIRATIME),
            "relatime" => set(&mut o, MsFlags::MS_RELATIME),
            "norelatime" => clear(&mut o, MsFlags::MS_RELATIME),
            "strictatime" => set(&mut o, MsFlags::MS_STRICTATIME),
            "nostrictatime" => clear(&mut o, MsFlags::MS_STRICTATIME),
            "lazytime" => set(&mut o, MsFlags::MS_LAZYTIME),
            "nolazytime" => clear(&mut o, MsFlags::MS_LAZYTIME),
            "silent" => set(&mut o, MsFlags::MS_SILENT),
            "loud" => clear(&mut o, MsFlags::MS_SILENT),
            "bind" => o.bind = true,
            "rbind" => {
                o.bind = true;
                o.recursive = true;
            }
            "private" => o.propagation.push(MsFlags::MS_PRIVATE),
            "rprivate" => o.propagation.push(MsFlags::MS_PRIVATE | MsFlags::MS_REC),
            "shared" => o.propagation.push(MsFlags::MS_SHARED),
            "rshared" => o.propagation.push(MsFlags::MS_SHARED | MsFlags::MS_REC),
            "slave" => o.propagation.push(MsFlags::MS_SLAVE),
            "rslave" => o.propagation.push(MsFlags::MS_SLAVE | MsFlags::MS_REC),
            "unbindable" => o.propagation.push(MsFlags::MS_UNBINDABLE),
            "runbindable" => o.propagation.push(MsFlags::MS_UNBINDABLE | MsFlags::MS_REC),
            "tmpcopyup" => o.tmpcopyup = true,
            "idmap" | "ridmap" => o.idmap = true,
            "rro" => o.recursive_attrs |= libc::MOUNT_ATTR_RDONLY,
            "rnosuid" => o.recursive_attrs |= libc::MOUNT_ATTR_NOSUID,
            "rnodev" => o.recursive_attrs |= libc::MOUNT_ATTR_NODEV,
            "rnoexec" => o.recursive_attrs |= libc::MOUNT_ATTR_NOEXEC,
            "rnoatime" => o.recursive_attrs |= libc::MOUNT_ATTR_NOATIME,
            "rnodiratime" => o.recursive_attrs |= libc::MOUNT_ATTR_NODIRATIME,
            "rnosymfollow" | "nosymfollow" => {
                o.recursive_attrs |= libc::MOUNT_ATTR_NOSYMFOLLOW;
            }
            // Options that only runc's userland understands and that have
            // no effect on the kernel (SELinux relabelling, copy-up hints).
            "defaults" | "z" | "Z" | "copy" | "nocopy" => {}
            other => data.push(other.to_string()),
        }
    }
    o.data = data.join(",");
    o
}

/// The flags that may be changed by a bind remount, from statvfs flags of
/// the source, so a remount does not try to clear a locked flag.
pub fn locked_flags(stat: &nix::sys::statvfs::Statvfs) -> MsFlags {
    use nix::sys::statvfs::FsFlags;
    let f = stat.flags();
    let mut out = MsFlags::empty();
    for (fs, ms) in [
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
        (FsFlags::ST_RDONLY, MsFlags::MS_RDONLY),
    ] {
        if f.contains(fs) {
            out |= ms;
        }
    }
    out
}

/// Parse `rootfsPropagation`.
pub fn propagation(s: &str) -> Option<MsFlags> {
    Some(match s {
        "private" => MsFlags::MS_PRIVATE,
        "rprivate" => MsFlags::MS_PRIVATE | MsFlags::MS_REC,
        "shared" => MsFlags::MS_SHARED,
        "rshared" => MsFlags::MS_SHARED | MsFlags::MS_REC,
        "slave" => MsFlags::MS_SLAVE,
        "rslave" => MsFlags::MS_SLAVE | MsFlags::MS_REC,
        "unbindable" => MsFlags::MS_UNBINDABLE,
        "runbindable" => MsFlags::MS_UNBINDABLE | MsFlags::MS_REC,
        _ => return None,
    })
}

/// Every option name this runtime understands (for `features`).
pub const KNOWN_OPTIONS: &[&str] = &[
    "async",
    "atime",
    "bind",
    "defaults",
    "dev",
    "diratime",
    "dirsync",
    "exec",
    "lazytime",
    "loud",
    "mand",
    "noatime",
    "nodev",
    "nodiratime",
    "noexec",
    "nolazytime",
    "nomand",
    "norelatime",
    "nostrictatime",
    "nosuid",
    "nosymfollow",
    "private",
    "rbind",
    "relatime",
    "remount",
    "rnoatime",
    "rnodev",
    "rnodiratime",
    "rnoexec",
    "rnosuid",
    "rnosymfollow",
    "ro",
    "rprivate",
    "rro",
    "rshared",
    "rslave",
    "runbindable",
    "rw",
    "shared",
    "silent",
    "slave",
    "strictatime",
    "suid",
    "sync",
    "tmpcopyup",
    "unbindable",
];

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(list: &[&str]) -> MountOptions {
        parse(&list.iter().map(ToString::to_string).collect::<Vec<_>>())
    }

    #[test]
    fn flags_and_data() {
        let o = opts(&["nosuid", "strictatime", "mode=755", "size=65536k"]);
        assert!(
            o.flags
                .contains(MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME)
        );
        assert_eq!(o.data, "mode=755,size=65536k");
        assert!(!o.bind);
    }

    #[test]
    fn later_options_win() {
        let o = opts(&["ro", "rw"]);
        assert!(!o.flags.contains(MsFlags::MS_RDONLY));
        let o = opts(&["rw", "ro"]);
        assert!(o.flags.contains(MsFlags::MS_RDONLY));
    }

    #[test]
    fn binds_and_propagation() {
        let o = opts(&["rbind", "rprivate", "ro"]);
        assert!(o.bind && o.recursive);
        assert_eq!(o.propagation, vec![MsFlags::MS_PRIVATE | MsFlags::MS_REC]);
        let o = opts(&["bind", "rro"]);
        assert!(o.bind && !o.recursive);
        assert_eq!(o.recursive_attrs, libc::MOUNT_ATTR_RDONLY);
    }
}
