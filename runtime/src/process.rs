//! The last steps before a container process becomes the user's program:
//! identity, capabilities, rlimits, the terminal, the environment, finding
//! the executable and `execve`.
//!
//! These run in the forked child, inside the container's namespaces, in the
//! order the kernel's permission rules require (see [`setup_identity`]).

use std::collections::HashSet;
use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use caps::CapSet;
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::resource::{Resource, setrlimit};
use nix::sys::stat::Mode;
use nix::unistd::{Gid, Uid};
use oci_spec::runtime::{LinuxCapabilities, PosixRlimit, PosixRlimitType, Process, User};

use crate::error::{Error, Result, SysContext};
use crate::sys;

/// The PATH used when the process's environment has none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

fn to_caps(set: Option<&HashSet<oci_spec::runtime::Capability>>) -> caps::CapsHashSet {
    set.into_iter()
        .flatten()
        .filter_map(|c| format!("CAP_{c}").parse::<caps::Capability>().ok())
        .collect()
}

fn rlimit_resource(t: PosixRlimitType) -> Resource {
    match t {
        PosixRlimitType::RlimitCpu => Resource::RLIMIT_CPU,
        PosixRlimitType::RlimitFsize => Resource::RLIMIT_FSIZE,
        PosixRlimitType::RlimitData => Resource::RLIMIT_DATA,
        PosixRlimitType::RlimitStack => Resource::RLIMIT_STACK,
        PosixRlimitType::RlimitCore => Resource::RLIMIT_CORE,
        PosixRlimitType::RlimitRss => Resource::RLIMIT_RSS,
        PosixRlimitType::RlimitNproc => Resource::RLIMIT_NPROC,
        PosixRlimitType::RlimitNofile => Resource::RLIMIT_NOFILE,
        PosixRlimitType::RlimitMemlock => Resource::RLIMIT_MEMLOCK,
        PosixRlimitType::RlimitAs => Resource::RLIMIT_AS,
        PosixRlimitType::RlimitLocks => Resource::RLIMIT_LOCKS,
        PosixRlimitType::RlimitSigpending => Resource::RLIMIT_SIGPENDING,
        PosixRlimitType::RlimitMsgqueue => Resource::RLIMIT_MSGQUEUE,
        PosixRlimitType::RlimitNice => Resource::RLIMIT_NICE,
        PosixRlimitType::RlimitRtprio => Resource::RLIMIT_RTPRIO,
        PosixRlimitType::RlimitRttime => Resource::RLIMIT_RTTIME,
    }
}

fn rlimit_name(t: PosixRlimitType) -> String {
    serde_json::to_value(t)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| format!("{t:?}"))
}

/// Apply rlimits. Raising a hard limit above the current one needs
/// CAP_SYS_RESOURCE; without it, say so clearly instead of a bare EPERM.
pub(crate) fn set_rlimits(rlimits: &[PosixRlimit]) -> Result<()> {
    for r in rlimits {
        let res = rlimit_resource(r.typ());
        if r.soft() > r.hard() {
            return Err(Error::Config(format!(
                "rlimit {}: soft limit {} is above the hard limit {}",
                rlimit_name(r.typ()),
                r.soft(),
                r.hard()
            )));
        }
        match setrlimit(res, r.soft(), r.hard()) {
            Ok(()) => {}
            Err(Errno::EPERM) => {
                let (_, cur_hard) = nix::sys::resource::getrlimit(res).unwrap_or((0, 0));
                return Err(Error::Config(format!(
                    "rlimit {}: cannot raise the hard limit to {} above the current hard limit {} without CAP_SYS_RESOURCE",
                    rlimit_name(r.typ()),
                    r.hard(),
                    cur_hard
                )));
            }
            Err(e) => {
                return Err(Error::sys(format!("setrlimit {}", rlimit_name(r.typ())), e));
            }
        }
    }
    Ok(())
}

/// Switch to the process's user and groups and set its capabilities.
///
/// Order matters: the bounding set can only be reduced while we still hold
/// CAP_SETPCAP; the IDs change with "keep capabilities" on so the permitted
/// set survives; then effective, permitted, inheritable and ambient sets are
/// set to exactly what the configuration lists.
pub(crate) fn setup_identity(user: &User, capabilities: Option<&LinuxCapabilities>) -> Result<()> {
    let bounding = capabilities.map(|c| to_caps(c.bounding().as_ref()));
    if let Some(bounding) = &bounding {
        for cap in caps::all() {
            if !bounding.contains(&cap) {
                match caps::drop(None, CapSet::Bounding, cap) {
                    Ok(()) => {}
                    // Capabilities newer than the running kernel are not in
                    // the bounding set to begin with.
                    Err(_) if !caps::has_cap(None, CapSet::Bounding, cap).unwrap_or(false) => {}
                    Err(e) => {
                        return Err(Error::Container(format!(
                            "drop {cap} from the bounding set: {e}"
                        )));
                    }
                }
            }
        }
    }
    nix::sys::prctl::set_keepcaps(true).sys(|| "prctl(PR_SET_KEEPCAPS)".into())?;
    let groups: Vec<Gid> = user
        .additional_gids()
        .as_deref()
        .unwrap_or_default()
        .iter()
        .map(|g| Gid::from_raw(*g))
        .collect();
    match nix::unistd::setgroups(&groups) {
        Ok(()) => {}
        // In a user namespace where setgroups is denied, only an empty list
        // could have been set anyway.
        Err(Errno::EPERM) if groups.is_empty() && setgroups_denied() => {}
        Err(e) => return Err(Error::sys("setgroups", e)),
    }
    let gid = Gid::from_raw(user.gid());
    nix::unistd::setresgid(gid, gid, gid).sys(|| format!("setresgid {gid}"))?;
    let uid = Uid::from_raw(user.uid());
    nix::unistd::setresuid(uid, uid, uid).sys(|| format!("setresuid {uid}"))?;
    nix::sys::prctl::set_keepcaps(false).sys(|| "prctl(PR_SET_KEEPCAPS)".into())?;

    if let Some(c) = capabilities {
        let set = |which: CapSet, caps: &caps::CapsHashSet| {
            caps::set(None, which, caps)
                .map_err(|e| Error::Container(format!("set {which:?} capabilities: {e}")))
        };
        // A capability the runtime itself lacks cannot be granted (this
        // happens on hosts whose root is missing some, e.g. CAP_SYS_RESOURCE
        // in some sandboxes): keep the rest and say which were dropped.
        let held = caps::read(None, CapSet::Permitted)
            .map_err(|e| Error::Container(format!("read permitted capabilities: {e}")))?;
        let keep = |set: caps::CapsHashSet| -> caps::CapsHashSet {
            set.intersection(&held).copied().collect()
        };
        let requested: caps::CapsHashSet =
            [c.effective(), c.permitted(), c.inheritable(), c.ambient()]
                .into_iter()
                .flat_map(|s| to_caps(s.as_ref()))
                .collect();
        let mut missing: Vec<String> = requested
            .difference(&held)
            .map(ToString::to_string)
            .collect();
        if !missing.is_empty() {
            missing.sort();
            tracing::warn!(capabilities = %missing.join(","), "the runtime does not hold these capabilities; the container will not get them");
        }
        let effective = keep(to_caps(c.effective().as_ref()));
        let permitted: caps::CapsHashSet = keep(to_caps(c.permitted().as_ref()))
            .union(&effective)
            .copied()
            .collect();
        let inheritable = keep(to_caps(c.inheritable().as_ref()));
        let ambient = keep(to_caps(c.ambient().as_ref()));
        // Inheritable first, while CAP_SETPCAP is still effective; then
        // effective (within the current permitted set), then permitted
        // (a superset of effective).
        set(CapSet::Inheritable, &inheritable)?;
        set(CapSet::Effective, &effective)?;
        set(CapSet::Permitted, &permitted)?;
        caps::clear(None, CapSet::Ambient)
            .map_err(|e| Error::Container(format!("clear ambient capabilities: {e}")))?;
        for cap in ambient {
            // Raising an ambient capability needs it permitted and inheritable.
            if let Err(e) = caps::raise(None, CapSet::Ambient, cap) {
                tracing::debug!(%cap, error = %e, "cannot raise ambient capability (it must be permitted and inheritable)");
            }
        }
    } else if user.uid() != 0 {
        // No capabilities section: a non-root user gets none.
        let _ = caps::clear(None, CapSet::Effective);
        let _ = caps::clear(None, CapSet::Permitted);
    }
    if let Some(mask) = user.umask() {
        nix::sys::stat::umask(Mode::from_bits_truncate(mask & 0o777));
    }
    Ok(())
}

fn setgroups_denied() -> bool {
    std::fs::read_to_string("/proc/self/setgroups").is_ok_and(|s| s.trim() == "deny")
}

/// Find the program to run: a path with a slash is used as is, otherwise the
/// first executable regular file of that name along `PATH` from the process's
/// environment. Errors use the wording container engines match to report
/// exit status 127.
pub(crate) fn find_executable(arg0: &str, env: &[String]) -> Result<PathBuf> {
    let is_exec = |p: &Path| {
        nix::sys::stat::stat(p).map(|st| {
            let kind = nix::sys::stat::SFlag::from_bits_truncate(st.st_mode)
                & nix::sys::stat::SFlag::S_IFMT;
            kind == nix::sys::stat::SFlag::S_IFREG && st.st_mode & 0o111 != 0
        })
    };
    if arg0.contains('/') {
        let p = PathBuf::from(arg0);
        return match is_exec(&p) {
            Ok(true) => Ok(p),
            Ok(false) => Err(Error::Container(format!(
                "exec: {arg0:?}: permission denied"
            ))),
            Err(e) => Err(Error::Container(format!(
                "exec: {arg0:?}: stat {arg0}: {}",
                e.desc().to_lowercase()
            ))),
        };
    }
    let path = env
        .iter()
        .find_map(|kv| kv.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH);
    for dir in path.split(':') {
        let dir = if dir.is_empty() { "." } else { dir };
        let candidate = Path::new(dir).join(arg0);
        if is_exec(&candidate) == Ok(true) {
            return Ok(candidate);
        }
    }
    Err(Error::Container(format!(
        "exec: {arg0:?}: executable file not found in $PATH"
    )))
}

/// Change to the working directory and make sure it is inside the root: a
/// descriptor leaked from the host could otherwise put the process in a
/// host directory (`getcwd` then reports an unreachable path).
pub(crate) fn enter_cwd(cwd: &Path) -> Result<()> {
    nix::unistd::chdir(cwd)
        .sys(|| format!("chdir to cwd {:?} set in config.json", cwd.display()))?;
    let now = nix::unistd::getcwd().sys(|| "getcwd".into())?;
    if !now.is_absolute() || now.to_string_lossy().starts_with("(unreachable)") {
        return Err(Error::Container(format!(
            "current working directory {} is outside the container's root",
            cwd.display()
        )));
    }
    Ok(())
}

/// Replace the process image with the user's program.
pub(crate) fn exec(
    path: &Path,
    args: &[String],
    env: &[String],
) -> Result<std::convert::Infallible> {
    let path_c = sys::cstring(&path.to_string_lossy())?;
    let argv: Vec<CString> = args
        .iter()
        .map(|a| sys::cstring(a))
        .collect::<Result<_>>()?;
    let envp: Vec<CString> = env.iter().map(|a| sys::cstring(a)).collect::<Result<_>>()?;
    nix::unistd::execve(&path_c, &argv, &envp).sys(|| format!("exec {}", path.display()))
}

/// Allocate the container's terminal from its own devpts, send the master
/// side to the console socket and make the slave this process's controlling
/// terminal and standard streams.
pub(crate) fn setup_console(
    socket: BorrowedFd<'_>,
    process: &Process,
    bind_console: bool,
) -> Result<()> {
    let (master, slave_path) =
        sys::open_pty(Path::new("/dev/ptmx")).sys(|| "open /dev/ptmx".into())?;
    let slave = nix::fcntl::open(
        Path::new(&slave_path),
        OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .sys(|| format!("open {slave_path}"))?;
    if let Some(size) = process.console_size() {
        sys::set_winsize(slave.as_raw_fd(), size.height() as u16, size.width() as u16)
            .sys(|| "set console size".into())?;
    }
    let user = process.user();
    let _ = nix::unistd::fchown(&slave, Some(Uid::from_raw(user.uid())), None);
    send_fd(socket, &master, "/dev/ptmx")?;
    drop(master);
    if bind_console {
        let console = Path::new("/dev/console");
        if !console.exists() {
            std::fs::File::create(console).map_err(|e| Error::io("create", console, e))?;
        }
        nix::mount::mount(
            Some(Path::new(&slave_path)),
            console,
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        )
        .sys(|| "bind the terminal at /dev/console".into())?;
    }
    for target in 0..3 {
        // SAFETY: dup2 onto the standard descriptors; both are valid numbers and
        // the old targets are ours to replace.
        let rc = unsafe { libc::dup2(slave.as_raw_fd(), target) };
        Errno::result(rc).sys(|| format!("dup2 terminal to fd {target}"))?;
    }
    sys::set_controlling_tty(0).sys(|| "make the terminal the controlling tty".into())?;
    Ok(())
}

/// Send a descriptor over a unix socket with `SCM_RIGHTS`.
pub(crate) fn send_fd(socket: BorrowedFd<'_>, fd: &OwnedFd, name: &str) -> Result<()> {
    use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
    let iov = [std::io::IoSlice::new(name.as_bytes())];
    let fds = [fd.as_fd().as_raw_fd()];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    sendmsg::<()>(socket.as_raw_fd(), &iov, &cmsg, MsgFlags::empty(), None)
        .sys(|| "send the terminal to the console socket".into())?;
    Ok(())
}

/// Write the OOM score adjustment of the calling process.
pub(crate) fn set_oom_score_adj(value: i32) -> Result<()> {
    std::fs::write("/proc/self/oom_score_adj", value.to_string())
        .map_err(|e| Error::io("write oom_score_adj", "/proc/self/oom_score_adj", e))
}

/// Write one sysctl through /proc/sys.
pub(crate) fn write_sysctl(key: &str, value: &str) -> Result<()> {
    // Dots separate components; a slash stands for a dot inside one (as in
    // "net.ipv4.conf.eth0/100.forwarding"), the same convention sysctl(8) uses.
    let rel: String = key
        .chars()
        .map(|c| match c {
            '.' => '/',
            '/' => '.',
            other => other,
        })
        .collect();
    let path = PathBuf::from("/proc/sys").join(rel);
    std::fs::write(&path, value).map_err(|e| Error::io("write sysctl", &path, e))
}
