//! The code that runs in the processes the runtime forks: entering or
//! creating namespaces, building the root filesystem and becoming the
//! container's process.
//!
//! When the container joins no namespace by path and gets no user or time
//! namespace, the runtime clones the container process directly into its
//! new namespaces, and only stage 2 below runs ([`direct`]). Otherwise two
//! stages, as the kernel requires:
//! - stage 1 (forked from the runtime) joins namespaces given by path,
//!   unshares the new ones and, for a user namespace, has the runtime write
//!   its ID maps. A new or joined PID namespace only applies to children, so
//!   stage 1 then forks stage 2 as a sibling (`CLONE_PARENT`: the runtime is
//!   its parent and can wait for it) and exits.
//! - stage 2 is the container process. For a new container it builds the
//!   root filesystem, pivots into it, drops privileges, reports ready and
//!   waits on the exec fifo until `start`; for `exec` it drops privileges and
//!   runs the program at once.
//!
//! Both stages are non-dumpable until `execve`, so nothing in the container
//! can open `/proc/PID/exe` (the host's runtime binary) or `/proc/PID/fd/*`
//! of a process that is still ours.

use std::fmt::Write as _;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;

use nix::fcntl::OFlag;
use nix::sched::CloneFlags;
use nix::sys::stat::Mode;
use nix::unistd::{Gid, Uid};
use oci_spec::runtime::{LinuxNamespaceType, Process, Spec};

use crate::error::{Error, Result, SysContext};
use crate::sync::{Channel, Msg};
use crate::{hooks, process, reaper, rootfs, seccomp, spec, sys};

/// What the child is for.
pub(crate) enum Role {
    /// A new container's init: waits on the exec fifo (opened `O_PATH`).
    Init {
        fifo: OwnedFd,
        no_pivot: bool,
        no_new_keyring: bool,
    },
    /// An extra process in a running container.
    Exec,
}

/// Everything the child needs, prepared by the runtime before forking.
pub(crate) struct ChildConfig<'a> {
    pub id: &'a str,
    pub spec: &'a Spec,
    pub process: &'a Process,
    pub rootfs: &'a Path,
    pub cgroup_path: &'a str,
    /// The host's cgroup hierarchies, described before forking.
    pub hierarchies: &'a crate::cgroups::Hierarchies,
    pub role: Role,
    pub console: Option<OwnedFd>,
    pub preserve_fds: u32,
    /// Namespaces to join, opened by the runtime.
    pub join: Vec<(LinuxNamespaceType, OwnedFd)>,
    /// Namespaces to create.
    pub new: CloneFlags,
    /// Stage 1 waits for the runtime's go-ahead (sent once it is in its
    /// cgroup) before it does anything. Otherwise the runtime moves the
    /// container process into the cgroup while it builds the root
    /// filesystem, and answers its request for the hooks after the move.
    pub wait_for_go: bool,
    /// The seccomp filter, compiled by the runtime before forking.
    pub seccomp: Option<seccomp::Program>,
    /// Descriptors for the process's standard streams; without them it
    /// inherits the runtime's.
    pub stdio: Option<[OwnedFd; 3]>,
}

impl ChildConfig<'_> {
    fn creates(&self, t: LinuxNamespaceType) -> bool {
        self.new.contains(spec::ns_flag(t))
    }

    fn joins(&self, t: LinuxNamespaceType) -> bool {
        self.join.iter().any(|(j, _)| *j == t)
    }
}

/// Stage 1, in the freshly forked child. Never returns.
pub(crate) fn stage1(cfg: &ChildConfig<'_>, chan: &Channel) -> ! {
    match stage1_inner(cfg, chan) {
        Ok(Some(())) => sys::exit_now(0),
        Ok(None) => stage2(cfg, chan),
        Err(e) => {
            let _ = chan.send(&Msg::Error(e.chain()));
            sys::exit_now(1)
        }
    }
}

/// The container process when the runtime created it directly in its new
/// namespaces (nothing to join, no user or time namespace): what is left of
/// stage 1 is the cgroup namespace, which must wait for the move into the
/// cgroup. Never returns.
pub(crate) fn direct(cfg: &ChildConfig<'_>, chan: &Channel) -> ! {
    let prepared = (|| -> Result<()> {
        nix::sys::prctl::set_dumpable(false).sys(|| "prctl(PR_SET_DUMPABLE)".into())?;
        if cfg.wait_for_go {
            chan.expect(&Msg::Go)?;
        }
        if cfg.creates(LinuxNamespaceType::Cgroup) {
            nix::sched::unshare(CloneFlags::CLONE_NEWCGROUP)
                .sys(|| "unshare the cgroup namespace".into())?;
        }
        Ok(())
    })();
    match prepared {
        Ok(()) => stage2(cfg, chan),
        Err(e) => {
            let _ = chan.send(&Msg::Error(e.chain()));
            sys::exit_now(1)
        }
    }
}

/// Returns `Some` in the intermediate process (which then exits) and `None`
/// in the process that goes on to be the container process.
fn stage1_inner(cfg: &ChildConfig<'_>, chan: &Channel) -> Result<Option<()>> {
    if cfg.wait_for_go {
        chan.expect(&Msg::Go)?;
    }
    nix::sys::prctl::set_dumpable(false).sys(|| "prctl(PR_SET_DUMPABLE)".into())?;

    // Join by path: the user namespace first, so we hold capabilities over
    // the namespaces it owns; the mount namespace last, since it changes
    // our root.
    let mut order: Vec<&(LinuxNamespaceType, OwnedFd)> = cfg.join.iter().collect();
    order.sort_by_key(|(t, _)| match t {
        LinuxNamespaceType::User => 0,
        LinuxNamespaceType::Mount => 2,
        _ => 1,
    });
    for (t, fd) in order {
        nix::sched::setns(fd.as_fd(), spec::ns_flag(*t))
            .sys(|| format!("join {} namespace", spec::ns_name(*t)))?;
        if *t == LinuxNamespaceType::User {
            become_ns_root()?;
        }
    }
    if !cfg.new.is_empty() {
        nix::sched::unshare(cfg.new).sys(|| format!("unshare {:?}", cfg.new))?;
    }
    if cfg.creates(LinuxNamespaceType::User) {
        chan.send(&Msg::MapIds)?;
        chan.expect(&Msg::IdsMapped)?;
        become_ns_root()?;
    }
    if let Some(offsets) = cfg
        .spec
        .linux()
        .as_ref()
        .and_then(|l| l.time_offsets().as_ref())
    {
        if cfg.creates(LinuxNamespaceType::Time) {
            let mut text = String::new();
            for (clock, off) in offsets {
                let _ = writeln!(
                    text,
                    "{clock} {} {}",
                    off.secs().unwrap_or(0),
                    off.nanosecs().unwrap_or(0)
                );
            }
            std::fs::write("/proc/self/timens_offsets", text)
                .map_err(|e| Error::io("write", "/proc/self/timens_offsets", e))?;
        }
    }
    let needs_fork = cfg.creates(LinuxNamespaceType::Pid)
        || cfg.joins(LinuxNamespaceType::Pid)
        || cfg.creates(LinuxNamespaceType::Time)
        || cfg.joins(LinuxNamespaceType::Time);
    if needs_fork {
        // The runtime must learn the PID before anything the new process
        // says: it waits for our go-ahead, sent after the PID.
        let (go_r, go_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).sys(|| "pipe".into())?;
        match sys::fork_as_sibling().sys(|| "fork the container process".into())? {
            sys::Forked::Parent(pid) => {
                drop(go_r);
                chan.send(&Msg::Pid(pid.as_raw()))?;
                nix::unistd::write(&go_w, b"1").sys(|| "release the container process".into())?;
                Ok(Some(()))
            }
            sys::Forked::Child => {
                drop(go_w);
                let mut b = [0u8; 1];
                loop {
                    match nix::unistd::read(go_r.as_fd(), &mut b) {
                        Ok(1) => break,
                        Err(nix::errno::Errno::EINTR) => {}
                        Ok(_) | Err(_) => {
                            return Err(Error::Container("the intermediate process died before releasing the container process".into()));
                        }
                    }
                }
                Ok(None)
            }
        }
    } else {
        chan.send(&Msg::Pid(nix::unistd::getpid().as_raw()))?;
        Ok(None)
    }
}

/// In a user namespace we created or joined, become its root.
fn become_ns_root() -> Result<()> {
    nix::unistd::setresgid(Gid::from_raw(0), Gid::from_raw(0), Gid::from_raw(0))
        .sys(|| "setresgid 0 in the user namespace".into())?;
    nix::unistd::setresuid(Uid::from_raw(0), Uid::from_raw(0), Uid::from_raw(0))
        .sys(|| "setresuid 0 in the user namespace".into())?;
    Ok(())
}

/// Stage 2: the container process. Never returns.
fn stage2(cfg: &ChildConfig<'_>, chan: &Channel) -> ! {
    let err = match stage2_inner(cfg, chan) {
        Ok(never) => match never {},
        Err(e) => e,
    };
    // Before Ready the runtime is listening; after it, the only place left
    // to report to is the process's own stderr.
    if chan.send(&Msg::Error(err.chain())).is_err() {
        eprintln!("vessel-runtime: {}", err.chain());
    }
    sys::exit_now(127)
}

fn stage2_inner(cfg: &ChildConfig<'_>, chan: &Channel) -> Result<std::convert::Infallible> {
    let process = cfg.process;
    let env: Vec<String> = process.env().clone().unwrap_or_default();
    nix::unistd::setsid().sys(|| "setsid".into())?;
    if let Some(stdio) = &cfg.stdio {
        for (target, fd) in stdio.iter().enumerate() {
            // SAFETY: dup2 onto a standard descriptor number; `fd` is open and
            // owned by the config for the duration of the call.
            let rc = unsafe { libc::dup2(fd.as_raw_fd(), target as i32) };
            nix::errno::Errno::result(rc).sys(|| format!("dup2 stdio to fd {target}"))?;
        }
    }

    let linux = cfg.spec.linux().as_ref();
    let mut hook_state = serde_json::Value::Null;
    if let Role::Init {
        no_pivot,
        no_new_keyring,
        ..
    } = &cfg.role
    {
        let rootfs = rootfs::Rootfs {
            spec: cfg.spec,
            dir: cfg.rootfs,
            userns: cfg.creates(LinuxNamespaceType::User) || cfg.joins(LinuxNamespaceType::User),
            cgroup_path: cfg.cgroup_path,
            hierarchies: cfg.hierarchies,
        };
        rootfs.prepare()?;
        chan.send(&Msg::RunHooks)?;
        let state = match chan.recv()? {
            Some(Msg::HooksDone(state)) => state,
            Some(Msg::Error(e)) => return Err(Error::Container(e)),
            other => {
                return Err(Error::Container(format!(
                    "sync: expected HooksDone, got {other:?}"
                )));
            }
        };
        hook_state = serde_json::from_str(&state).unwrap_or_default();
        if let Some(h) = cfg
            .spec
            .hooks()
            .as_ref()
            .and_then(|h| h.create_container().as_ref())
        {
            hooks::run_all("createContainer", h, &hook_state)?;
        }
        if *no_pivot {
            rootfs::move_root(cfg.rootfs)?;
        } else {
            rootfs::pivot(cfg.rootfs)?;
        }
        if process.terminal().unwrap_or(false) {
            let console = cfg.console.as_ref().ok_or_else(|| {
                Error::Config("process.terminal is set but no console socket was given".into())
            })?;
            process::setup_console(console.as_fd(), process, true)?;
        }
        if let Some(sysctl) = linux.and_then(|l| l.sysctl().as_ref()) {
            for (k, v) in sysctl {
                process::write_sysctl(k, v)?;
            }
        }
        if let Some(paths) = linux.and_then(|l| l.masked_paths().as_ref()) {
            rootfs::mask_paths(paths)?;
        }
        if let Some(paths) = linux.and_then(|l| l.readonly_paths().as_ref()) {
            rootfs::readonly_paths(paths)?;
        }
        if let Some(h) = cfg.spec.hostname().as_deref().filter(|h| !h.is_empty()) {
            nix::unistd::sethostname(h).sys(|| format!("sethostname {h}"))?;
        }
        if let Some(d) = cfg.spec.domainname().as_deref().filter(|d| !d.is_empty()) {
            sys::set_domainname(d).sys(|| format!("setdomainname {d}"))?;
        }
        if cfg
            .spec
            .root()
            .as_ref()
            .and_then(oci_spec::runtime::Root::readonly)
            .unwrap_or(false)
        {
            rootfs::readonly_root()?;
        }
        if !no_new_keyring {
            join_session_keyring(cfg.id);
        }
        if let Some(adj) = process.oom_score_adj() {
            process::set_oom_score_adj(adj)?;
        }
    } else if process.terminal().unwrap_or(false) {
        let console = cfg.console.as_ref().ok_or_else(|| {
            Error::Config("terminal requested but no console socket was given".into())
        })?;
        process::setup_console(console.as_fd(), process, false)?;
    }
    if let Some(p) = linux.and_then(|l| l.personality().as_ref()) {
        set_personality(p)?;
    }
    process::set_rlimits(process.rlimits().as_deref().unwrap_or_default())?;

    let args = process.args().clone().unwrap_or_default();
    let arg0 = args
        .first()
        .ok_or_else(|| Error::Config("process.args is empty".into()))?;
    process::enter_cwd(process.cwd())?;
    let exe = process::find_executable(arg0, &env)?;

    let no_new_privs = process.no_new_privileges().unwrap_or(false);
    let filter = cfg.seccomp.as_ref();
    let mut listener = None;
    if let (Some(f), false) = (filter, no_new_privs) {
        // Without no_new_privs, installing a filter needs CAP_SYS_ADMIN,
        // which we still hold now.
        listener = seccomp::load(f)?;
    }
    process::setup_identity(process.user(), process.capabilities().as_ref())?;
    if no_new_privs {
        nix::sys::prctl::set_no_new_privs().sys(|| "prctl(PR_SET_NO_NEW_PRIVS)".into())?;
    }

    chan.send(&Msg::Ready)?;

    let started = match &cfg.role {
        Role::Init { fifo, .. } => Some(wait_for_start(fifo)?),
        Role::Exec => None,
    };
    if let (Some(f), true) = (filter, no_new_privs) {
        listener = seccomp::load(f)?;
    }
    if let Some(fd) = listener {
        send_seccomp_listener(cfg, &fd)?;
    }
    if let Role::Init { .. } = &cfg.role {
        if let Some(h) = cfg
            .spec
            .hooks()
            .as_ref()
            .and_then(|h| h.start_container().as_ref())
        {
            let mut state = hook_state.clone();
            state["status"] = "created".into();
            state["pid"] = nix::unistd::getpid().as_raw().into();
            hooks::run_all("startContainer", h, &state)?;
        }
    }
    sys::cloexec_from(3 + cfg.preserve_fds).sys(|| "close_range".into())?;
    if matches!(cfg.role, Role::Init { .. }) && reaper::requested(cfg.spec) {
        return reaper::run(&exe, &args, &env, started);
    }
    sys::reset_signals();
    process::exec(&exe, &args, &env)
}

/// Block until `start` opens the exec fifo for reading, then signal it.
///
/// The returned write end is close-on-exec and must stay open until
/// `execve`: `start` waits for it to close, so it returns only once the
/// user's program has replaced us (or we died), which orders the poststart
/// hooks after the startContainer hooks and the exec.
fn wait_for_start(fifo: &OwnedFd) -> Result<OwnedFd> {
    let path = format!("/proc/self/fd/{}", fifo.as_raw_fd());
    let fd = nix::fcntl::open(
        Path::new(&path),
        OFlag::O_WRONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .sys(|| "open the exec fifo".into())?;
    nix::unistd::write(&fd, b"0").sys(|| "write the exec fifo".into())?;
    Ok(fd)
}

fn send_seccomp_listener(cfg: &ChildConfig<'_>, fd: &OwnedFd) -> Result<()> {
    let Some(sc) = cfg.spec.linux().as_ref().and_then(|l| l.seccomp().as_ref()) else {
        return Ok(());
    };
    let Some(path) = sc.listener_path() else {
        return Err(Error::Config(
            "seccomp notify rules need linux.seccomp.listenerPath".into(),
        ));
    };
    let mut state = oci_spec::runtime::State::default();
    state.set_version(spec::OCI_VERSION.to_string());
    state.set_id(cfg.id.to_string());
    state.set_status(oci_spec::runtime::ContainerState::Creating);
    state.set_pid(Some(nix::unistd::getpid().as_raw()));
    state.set_annotations(cfg.spec.annotations().clone());
    seccomp::send_listener_fd(path, fd.as_fd(), &state, sc.listener_metadata().as_deref())?;
    Ok(())
}

/// Give the container a session keyring of its own, so it cannot see or
/// use the host's keys. Best effort: kernels or user namespaces without
/// keyring support simply keep the inherited one.
fn join_session_keyring(id: &str) {
    const KEYCTL_JOIN_SESSION_KEYRING: libc::c_long = 1;
    let Ok(name) = sys::cstring(&format!("_ses.{id}")) else {
        return;
    };
    // SAFETY: keyctl(KEYCTL_JOIN_SESSION_KEYRING, name) reads a C string that
    // is valid for the duration of the call.
    let rc = unsafe { libc::syscall(libc::SYS_keyctl, KEYCTL_JOIN_SESSION_KEYRING, name.as_ptr()) };
    if rc < 0 {
        tracing::debug!(errno = %nix::errno::Errno::last(), "cannot join a new session keyring");
    }
}

fn set_personality(p: &oci_spec::runtime::LinuxPersonality) -> Result<()> {
    use oci_spec::runtime::LinuxPersonalityDomain;
    let persona = match p.domain() {
        LinuxPersonalityDomain::PerLinux => nix::sys::personality::Persona::empty(),
        LinuxPersonalityDomain::PerLinux32 => {
            nix::sys::personality::Persona::from_bits_retain(0x0008)
        }
    };
    nix::sys::personality::set(persona).sys(|| "personality".into())?;
    Ok(())
}
