//! Container lifecycle operations as the runc command line exposes them:
//! create, start, run, exec, kill, delete, state, list, pause, resume,
//! update, ps and events.
//!
//! This module is the runtime's side of the handshake with the processes it
//! forks (see [`crate::init`]): it places them in their cgroup, writes user
//! namespace ID maps, runs the hooks that belong to the runtime, and records
//! the result under the runtime's root.

use std::fmt::Write as _;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::fcntl::OFlag;
use nix::sched::CloneFlags;
use nix::sys::stat::Mode;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use oci_spec::runtime::{LinuxNamespaceType, LinuxResources, Process, Spec};

use crate::cgroups::{Cgroup, Hierarchies};
use crate::error::{Error, Result, SysContext};
use crate::init::{ChildConfig, Role};
use crate::spec::Bundle;
use crate::state::{ContainerState, EXEC_FIFO, Root, Status};
use crate::sync::Msg;
use crate::{hooks, seccomp, spec, sync, sys};

/// Options of `create` and `run`.
#[derive(Debug, Default)]
pub struct CreateOptions {
    /// Container ID.
    pub id: String,
    /// Bundle directory.
    pub bundle: PathBuf,
    /// Where to write the init PID.
    pub pid_file: Option<PathBuf>,
    /// Unix socket to send the terminal's master side to.
    pub console_socket: Option<PathBuf>,
    /// An already connected console socket (takes precedence over the path).
    pub console_fd: Option<OwnedFd>,
    /// Descriptors that become the container's stdin, stdout and stderr
    /// (instead of the caller's own).
    pub stdio: Option<[OwnedFd; 3]>,
    /// Use `MS_MOVE` + `chroot` instead of `pivot_root`.
    pub no_pivot: bool,
    /// Keep the caller's session keyring.
    pub no_new_keyring: bool,
    /// Pass descriptors 3..3+N through to the container.
    pub preserve_fds: u32,
    /// Running without root on the host.
    pub rootless: bool,
}

/// Options of `exec`.
#[derive(Debug)]
pub struct ExecOptions {
    /// Container ID.
    pub id: String,
    /// The process to run.
    pub process: Process,
    /// Where to write the process's PID.
    pub pid_file: Option<PathBuf>,
    /// Unix socket to send the terminal's master side to.
    pub console_socket: Option<PathBuf>,
    /// An already connected console socket (takes precedence over the path).
    pub console_fd: Option<OwnedFd>,
    /// Descriptors that become the process's stdin, stdout and stderr.
    pub stdio: Option<[OwnedFd; 3]>,
    /// Pass descriptors 3..3+N through.
    pub preserve_fds: u32,
}

/// Undoes a half-made container when creation fails: kills what was
/// started, removes the cgroup and the state directory.
struct Undo<'a> {
    root: &'a Root,
    id: String,
    pids: Vec<i32>,
    cgroup: Option<Cgroup>,
    armed: bool,
    remove_dir: bool,
}

impl Drop for Undo<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        for pid in &self.pids {
            let _ = sys::kill(*pid, libc::SIGKILL);
            let _ = waitpid(Pid::from_raw(*pid), None);
        }
        if let Some(cg) = &mut self.cgroup {
            for pid in cg.pids() {
                let _ = sys::kill(pid, libc::SIGKILL);
            }
            wait_gone(&cg.pids(), Duration::from_secs(5));
            if let Err(e) = cg.destroy() {
                tracing::warn!(error = %e, "cleanup after failed create");
            }
        }
        if self.remove_dir {
            let _ = self.root.remove(&self.id);
        }
    }
}

/// Namespaces to create and namespaces to join, from the spec.
fn namespace_plan(spec: &Spec) -> Result<(CloneFlags, Vec<(LinuxNamespaceType, OwnedFd)>)> {
    let mut new = CloneFlags::empty();
    let mut join = Vec::new();
    for ns in spec::namespaces(spec) {
        match ns.path() {
            None => new |= spec::ns_flag(ns.typ()),
            Some(p) => {
                let fd = nix::fcntl::open(p, OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty())
                    .sys(|| {
                        format!("open {} namespace {}", spec::ns_name(ns.typ()), p.display())
                    })?;
                join.push((ns.typ(), fd));
            }
        }
    }
    Ok((new, join))
}

fn dup_fd(fd: &OwnedFd) -> Result<OwnedFd> {
    fd.try_clone()
        .map_err(|e| Error::io("duplicate descriptor", "<console or stdio>", e))
}

fn dup_stdio(stdio: Option<&[OwnedFd; 3]>) -> Result<Option<[OwnedFd; 3]>> {
    stdio
        .map(|[a, b, c]| Ok([dup_fd(a)?, dup_fd(b)?, dup_fd(c)?]))
        .transpose()
}

fn connect_console(path: &Path) -> Result<OwnedFd> {
    let s = std::os::unix::net::UnixStream::connect(path)
        .map_err(|e| Error::io("connect to console socket", path, e))?;
    Ok(OwnedFd::from(s))
}

fn write_id_maps(pid: i32, spec: &Spec) -> Result<()> {
    let linux = spec
        .linux()
        .as_ref()
        .ok_or_else(|| Error::Config("linux must be set".into()))?;
    let render = |maps: &[oci_spec::runtime::LinuxIdMapping]| {
        maps.iter().fold(String::new(), |mut acc, m| {
            let _ = writeln!(acc, "{} {} {}", m.container_id(), m.host_id(), m.size());
            acc
        })
    };
    let uid = render(linux.uid_mappings().as_deref().unwrap_or_default());
    let gid = render(linux.gid_mappings().as_deref().unwrap_or_default());
    for (file, text) in [("uid_map", uid), ("gid_map", gid)] {
        let path = PathBuf::from(format!("/proc/{pid}/{file}"));
        std::fs::write(&path, text.as_bytes()).map_err(|e| Error::io("write ID map", &path, e))?;
    }
    Ok(())
}

/// Write a PID file atomically (containerd and conmon read it as soon as
/// the runtime exits).
fn write_pid_file(path: &Path, pid: i32) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("pid")
    ));
    std::fs::write(&tmp, pid.to_string()).map_err(|e| Error::io("write pid file", &tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io("write pid file", path, e))
}

/// Where compiled seccomp filters are cached, inside the runtime's root
/// (not a valid container ID, so never mistaken for one).
const SECCOMP_CACHE: &str = ".seccomp-cache";

/// Create a container: everything up to the point where its init waits for
/// `start`.
pub fn create(root: &Root, o: &CreateOptions) -> Result<ContainerState> {
    create_loaded(root, o, spec::load_bundle(&o.bundle)?)
}

/// [`create`] for a caller that has already loaded `o.bundle` (to look at
/// its spec first), so the start path parses config.json once.
pub fn create_loaded(root: &Root, o: &CreateOptions, bundle: Bundle) -> Result<ContainerState> {
    let spec = bundle.spec;
    if !spec::has_namespace(&spec, LinuxNamespaceType::Mount) {
        return Err(Error::Config(
            "a mount namespace is required (add {\"type\": \"mount\"} to linux.namespaces)".into(),
        ));
    }
    let process = spec
        .process()
        .clone()
        .ok_or_else(|| Error::Config("process must be set".into()))?;
    let terminal = process.terminal().unwrap_or(false);
    if terminal && o.console_socket.is_none() && o.console_fd.is_none() {
        return Err(Error::Config(
            "process.terminal is true but no --console-socket was given".into(),
        ));
    }
    let seccomp = spec
        .linux()
        .as_ref()
        .and_then(|l| l.seccomp().as_ref())
        .map(|s| seccomp::compile_cached(s, &root.dir().join(SECCOMP_CACHE)))
        .transpose()?;
    let cgroup_path = crate::cgroups::resolve_path(
        spec.linux()
            .as_ref()
            .and_then(|l| l.cgroups_path().as_deref()),
        &o.id,
    )?;
    let dir = root.reserve(&o.id)?;
    let mut undo = Undo {
        root,
        id: o.id.clone(),
        pids: Vec::new(),
        cgroup: None,
        armed: true,
        remove_dir: true,
    };
    let fifo_path = dir.join(EXEC_FIFO);
    nix::unistd::mkfifo(&fifo_path, Mode::from_bits_truncate(0o622))
        .sys(|| format!("mkfifo {}", fifo_path.display()))?;
    // mkfifo honours the umask; the container's root may be an unprivileged
    // host user that must be able to open it for writing.
    std::fs::set_permissions(&fifo_path, std::fs::Permissions::from_mode(0o622))
        .map_err(|e| Error::io("chmod exec fifo", &fifo_path, e))?;
    let fifo = nix::fcntl::open(&fifo_path, OFlag::O_PATH | OFlag::O_CLOEXEC, Mode::empty())
        .sys(|| format!("open {}", fifo_path.display()))?;
    let console = if terminal {
        match &o.console_fd {
            Some(fd) => Some(dup_fd(fd)?),
            None => o
                .console_socket
                .as_deref()
                .map(connect_console)
                .transpose()?,
        }
    } else {
        None
    };
    let (new, join) = namespace_plan(&spec)?;
    let hier = Hierarchies::detect();
    let mut cgroup = Cgroup::open(&cgroup_path, &hier)?;
    // The cgroup and its limits exist before the fork. The first move of a
    // process into a v1 cgroup waits for an RCU grace period (milliseconds);
    // unless the container gets a cgroup namespace (rooted where its first
    // process stands when it unshares), the container process builds its
    // root filesystem meanwhile and is moved in as soon as its PID is known.
    // It runs nothing of the user's before the hooks' turn, which comes
    // after the move.
    let resources = spec
        .linux()
        .as_ref()
        .and_then(|l| l.resources().clone())
        .unwrap_or_default();
    let devices = spec
        .linux()
        .as_ref()
        .and_then(|l| l.devices().clone())
        .unwrap_or_default();
    let prepared = cgroup
        .create()
        .and_then(|()| cgroup.set(&resources, &devices));
    undo.cgroup = Some(cgroup);
    let mut cgroup_ok = match prepared {
        Ok(()) => true,
        Err(e) if o.rootless => {
            tracing::warn!(error = %e, "rootless: continuing without cgroup limits");
            false
        }
        Err(e) => return Err(e),
    };
    let early = !new.contains(CloneFlags::CLONE_NEWCGROUP);

    let (parent, child) = sync::pair()?;
    let cfg = ChildConfig {
        id: &o.id,
        spec: &spec,
        process: &process,
        rootfs: &bundle.rootfs,
        cgroup_path: &cgroup_path,
        hierarchies: &hier,
        role: Role::Init {
            fifo,
            no_pivot: o.no_pivot,
            no_new_keyring: o.no_new_keyring,
        },
        console,
        preserve_fds: o.preserve_fds,
        join,
        new,
        wait_for_go: !early,
        seccomp,
        stdio: dup_stdio(o.stdio.as_ref())?,
    };
    // With nothing to join and no user or time namespace (whose set-up
    // needs a process in between), the container process is cloned
    // directly into its new namespaces; the cgroup namespace, if any, it
    // unshares itself once it is in its cgroup.
    let direct = cfg.join.is_empty()
        && !new.intersects(CloneFlags::CLONE_NEWUSER | spec::ns_flag(LinuxNamespaceType::Time));
    let forked = if direct {
        sys::fork_into(new - CloneFlags::CLONE_NEWCGROUP)
            .sys(|| format!("clone into new namespaces {new:?}"))?
    } else {
        sys::fork().sys(|| "fork".into())?
    };
    let stage1 = match forked {
        sys::Forked::Child if direct => {
            drop(parent);
            crate::init::direct(&cfg, &child)
        }
        sys::Forked::Child => {
            drop(parent);
            crate::init::stage1(&cfg, &child)
        }
        sys::Forked::Parent(pid) => pid.as_raw(),
    };
    drop(child);
    drop(cfg);
    undo.pids.push(stage1);

    // Moves `pid` into the cgroup; a rootless container may go without.
    let enter_cgroup = |undo: &mut Undo<'_>, ok: &mut bool, pid: i32| -> Result<()> {
        let Some(cg) = undo.cgroup.as_mut().filter(|_| *ok) else {
            return Ok(());
        };
        match cg.apply(pid) {
            Ok(()) => Ok(()),
            Err(e) if o.rootless => {
                tracing::warn!(error = %e, "rootless: continuing without cgroup limits");
                *ok = false;
                Ok(())
            }
            Err(e) => Err(e),
        }
    };
    let mut init_pid = None;
    if direct {
        // No intermediate process: the child is the container process.
        init_pid = Some(stage1);
        if early {
            enter_cgroup(&mut undo, &mut cgroup_ok, stage1)?;
        }
    }
    if !early {
        enter_cgroup(&mut undo, &mut cgroup_ok, stage1)?;
        parent.send(&Msg::Go)?;
    }

    let created = crate::state::now_rfc3339();
    loop {
        match parent.recv()? {
            Some(Msg::MapIds) => {
                write_id_maps(stage1, &spec)?;
                parent.send(&Msg::IdsMapped)?;
            }
            Some(Msg::Pid(p)) => {
                if p != stage1 {
                    // The intermediate process has done its job.
                    let _ = waitpid(Pid::from_raw(stage1), None);
                    undo.pids.retain(|x| *x != stage1);
                }
                undo.pids.push(p);
                init_pid = Some(p);
                if early {
                    enter_cgroup(&mut undo, &mut cgroup_ok, p)?;
                }
            }
            Some(Msg::RunHooks) => {
                let state = serde_json::json!({
                    "ociVersion": spec::OCI_VERSION,
                    "id": o.id,
                    "status": "creating",
                    "pid": init_pid.unwrap_or(stage1),
                    "bundle": bundle.dir,
                    "annotations": spec::annotations(&spec),
                });
                if let Some(h) = spec.hooks() {
                    #[allow(deprecated)]
                    if let Some(pre) = h.prestart() {
                        hooks::run_all("prestart", pre, &state)?;
                    }
                    if let Some(cr) = h.create_runtime() {
                        hooks::run_all("createRuntime", cr, &state)?;
                    }
                }
                parent.send(&Msg::HooksDone(state.to_string()))?;
            }
            Some(Msg::Ready) => break,
            Some(Msg::Error(e)) => return Err(Error::Container(e)),
            Some(other) => {
                return Err(Error::Container(format!("sync: unexpected {other:?}")));
            }
            None => {
                return Err(Error::Container(
                    "container init exited before it was ready".into(),
                ));
            }
        }
    }
    let pid = init_pid.ok_or_else(|| Error::Container("container init PID unknown".into()))?;
    let pid_start = sys::process_start_time(pid)
        .ok_or_else(|| Error::Container(format!("container init {pid} vanished")))?;
    let state = ContainerState {
        id: o.id.clone(),
        pid,
        pid_start,
        bundle: bundle.dir.clone(),
        rootfs: bundle.rootfs.clone(),
        created,
        config: spec.clone(),
        cgroup_path,
        rootless: o.rootless,
        own_pid_ns: spec::has_namespace(&spec, LinuxNamespaceType::Pid)
            && spec::namespaces(&spec)
                .iter()
                .any(|n| n.typ() == LinuxNamespaceType::Pid && n.path().is_none()),
    };
    root.save(&state)?;
    if let Some(p) = &o.pid_file {
        write_pid_file(p, pid)?;
    }
    undo.armed = false;
    Ok(state)
}

/// Start a created container: release its init from the exec fifo and run
/// the poststart hooks.
pub fn start(root: &Root, id: &str) -> Result<()> {
    let _lock = root.lock(id)?;
    let state = root.load(id)?;
    match state.status(root) {
        Status::Created => {}
        Status::Stopped => {
            return Err(Error::BadStatus {
                id: id.to_string(),
                status: "stopped".into(),
                op: "start",
            });
        }
        s => {
            return Err(Error::BadStatus {
                id: id.to_string(),
                status: s.to_string(),
                op: "start",
            });
        }
    }
    // Take the pidfd first: opening the fifo releases the init, which may
    // exit and be reaped by its parent before we could refer to it.
    let pidfd = sys::pidfd_open(state.pid).map_err(|e| match e {
        nix::errno::Errno::ESRCH => {
            Error::Container(format!("container {id}: init exited before it was started"))
        }
        e => Error::sys(format!("pidfd for {}", state.pid), e),
    })?;
    let fifo_path = root.container_dir(id).join(EXEC_FIFO);
    let fifo = nix::fcntl::open(
        &fifo_path,
        OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .sys(|| format!("open {}", fifo_path.display()))?;
    // Wait until the init has written its byte, or has died.
    loop {
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        let mut fds = [
            PollFd::new(fifo.as_fd(), PollFlags::POLLIN),
            PollFd::new(pidfd.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(Error::sys("poll the exec fifo", e)),
            Ok(_) => {}
        }
        let fifo_ready = fds[0]
            .revents()
            .is_some_and(|r| r.contains(PollFlags::POLLIN));
        let died = fds[1].revents().is_some_and(|r| !r.is_empty());
        if fifo_ready {
            let mut b = [0u8; 1];
            match nix::unistd::read(fifo.as_fd(), &mut b) {
                Ok(1) => break,
                Ok(_) | Err(nix::errno::Errno::EAGAIN) => {}
                Err(e) => return Err(Error::sys("read the exec fifo", e)),
            }
        }
        if died {
            let _ = std::fs::remove_file(&fifo_path);
            return Err(Error::Container(format!(
                "container {id}: init exited before it was started"
            )));
        }
    }
    std::fs::remove_file(&fifo_path).map_err(|e| Error::io("remove exec fifo", &fifo_path, e))?;
    // The init keeps its (close-on-exec) write end open until execve; wait
    // for that so the user's program runs before the poststart hooks.
    loop {
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        let mut fds = [PollFd::new(fifo.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::NONE) {
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(Error::sys("poll the exec fifo", e)),
            Ok(_) => {}
        }
        let mut b = [0u8; 16];
        match nix::unistd::read(fifo.as_fd(), &mut b) {
            Ok(0) => break,
            Ok(_) | Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(Error::sys("read the exec fifo", e)),
        }
    }
    if let Some(h) = state
        .config
        .hooks()
        .as_ref()
        .and_then(|h| h.poststart().as_ref())
    {
        hooks::run_all_warn("poststart", h, &state.hook_state(Status::Running));
    }
    Ok(())
}

/// Load a container's state.
pub fn state(root: &Root, id: &str) -> Result<ContainerState> {
    root.load(id)
}

/// Every container under the root, with its state.
pub fn list(root: &Root) -> Result<Vec<ContainerState>> {
    let mut out = Vec::new();
    for id in root.list()? {
        match root.load(&id) {
            Ok(s) => out.push(s),
            Err(e) => tracing::warn!(%id, error = %e, "skipping unreadable container state"),
        }
    }
    Ok(out)
}

/// Send a signal to the container's init, or to all its processes.
pub fn kill(root: &Root, id: &str, sig: i32, all: bool) -> Result<()> {
    let state = root.load(id)?;
    let hier = Hierarchies::detect();
    let status = state.status_in(root, &hier);
    if status == Status::Stopped {
        return Err(Error::NotRunning);
    }
    if all {
        let cg = Cgroup::open(&state.cgroup_path, &hier)?;
        signal_all(&cg, sig);
        return Ok(());
    }
    sys::kill(state.pid, sig).map_err(|e| match e {
        nix::errno::Errno::ESRCH => Error::NotRunning,
        e => Error::sys(format!("kill {} with signal {sig}", state.pid), e),
    })
}

/// Signal every process of a cgroup. For SIGKILL the cgroup is frozen
/// first so no process can fork a new one between the listing and the kill.
fn signal_all(cg: &Cgroup, sig: i32) {
    let freeze = sig == libc::SIGKILL;
    if freeze {
        let _ = cg.freeze();
    }
    for pid in cg.pids() {
        match sys::kill(pid, sig) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
            Err(e) => tracing::warn!(pid, error = %e, "signal"),
        }
    }
    if freeze {
        let _ = cg.thaw();
    }
}

/// Wait until none of `pids` exists any more (or `limit` passes).
fn wait_gone(pids: &[i32], limit: Duration) {
    let deadline = std::time::Instant::now() + limit;
    for pid in pids {
        let Ok(fd) = sys::pidfd_open(*pid) else {
            continue;
        };
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let _ = sys::pidfd_wait(&fd, Some(left));
    }
}

/// Delete a container. A running one is refused unless `force`, which
/// kills it first. Deleting an unknown container with `force` succeeds.
pub fn delete(root: &Root, id: &str, force: bool) -> Result<()> {
    delete_in(root, id, force, &Hierarchies::detect())
}

/// [`delete`] with the cgroup hierarchies the calling operation already
/// has.
pub fn delete_in(root: &Root, id: &str, force: bool, hier: &Hierarchies) -> Result<()> {
    let state = match root.load(id) {
        Ok(s) => s,
        Err(Error::NotExist(_)) => {
            // A create that died before writing its state leaves a bare
            // directory behind: remove it.
            if crate::state::validate_id(id).is_ok() {
                let _ = root.remove(id);
            }
            return if force {
                Ok(())
            } else {
                Err(Error::NotExist(id.to_string()))
            };
        }
        Err(e) => return Err(e),
    };
    let _lock = root.lock(id)?;
    let status = state.status_in(root, hier);
    let mut cg = Cgroup::open(&state.cgroup_path, hier)?;
    match status {
        Status::Stopped | Status::Created => {}
        Status::Running | Status::Paused | Status::Creating if force => {}
        s => {
            return Err(Error::Container(format!(
                "cannot delete container {id} that is not stopped: {s}"
            )));
        }
    }
    if status != Status::Stopped {
        if status == Status::Paused {
            let _ = cg.thaw();
        }
        let _ = sys::kill(state.pid, libc::SIGKILL);
    }
    // Without a PID namespace of its own, the init's death does not take
    // the other processes with it.
    let leftover = cg.pids();
    if !leftover.is_empty() {
        signal_all(&cg, libc::SIGKILL);
    }
    let mut waiting = cg.pids();
    if state.init_alive() {
        waiting.push(state.pid);
    }
    wait_gone(&waiting, Duration::from_secs(10));
    let mut errors = Vec::new();
    if let Err(e) = cg.destroy() {
        errors.push(e.to_string());
    }
    if let Some(h) = state
        .config
        .hooks()
        .as_ref()
        .and_then(|h| h.poststop().as_ref())
    {
        hooks::run_all_warn("poststop", h, &state.hook_state(Status::Stopped));
    }
    if let Err(e) = root.remove(id) {
        errors.push(e.to_string());
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(Error::Container(format!(
            "delete {id}: {}",
            errors.join("; ")
        )))
    }
}

/// Freeze a running container.
pub fn pause(root: &Root, id: &str) -> Result<()> {
    let _lock = root.lock(id)?;
    let state = root.load(id)?;
    let hier = Hierarchies::detect();
    match state.status_in(root, &hier) {
        Status::Running => Cgroup::open(&state.cgroup_path, &hier)?.freeze(),
        Status::Paused => Ok(()),
        _ => Err(Error::NotRunning),
    }
}

/// Thaw a paused container.
pub fn resume(root: &Root, id: &str) -> Result<()> {
    let _lock = root.lock(id)?;
    let state = root.load(id)?;
    let hier = Hierarchies::detect();
    match state.status_in(root, &hier) {
        Status::Paused => Cgroup::open(&state.cgroup_path, &hier)?.thaw(),
        Status::Stopped => Err(Error::NotRunning),
        _ => Err(Error::NotPaused),
    }
}

/// PIDs of all processes in the container.
pub fn pids(root: &Root, id: &str) -> Result<Vec<i32>> {
    let state = root.load(id)?;
    Ok(Hierarchies::detect().pids_of(&state.cgroup_path))
}

/// Change a running container's resource limits. Only the fields present
/// in `update` change.
pub fn update(root: &Root, id: &str, update: &LinuxResources) -> Result<()> {
    let _lock = root.lock(id)?;
    let mut state = root.load(id)?;
    let hier = Hierarchies::detect();
    if state.status_in(root, &hier) == Status::Stopped {
        return Err(Error::NotRunning);
    }
    let mut cg = Cgroup::open(&state.cgroup_path, &hier)?;
    cg.set(update, &[])?;
    let mut merged = state
        .config
        .linux()
        .as_ref()
        .and_then(|l| l.resources().clone())
        .unwrap_or_default();
    merge_resources(&mut merged, update);
    if let Some(linux) = state.config.linux_mut() {
        linux.set_resources(Some(merged));
    }
    root.save(&state)
}

fn merge_resources(into: &mut LinuxResources, from: &LinuxResources) {
    if from.memory().is_some() {
        into.set_memory(*from.memory());
    }
    if from.cpu().is_some() {
        into.set_cpu(from.cpu().clone());
    }
    if from.pids().is_some() {
        into.set_pids(*from.pids());
    }
    if from.block_io().is_some() {
        into.set_block_io(from.block_io().clone());
    }
    if from.hugepage_limits().is_some() {
        into.set_hugepage_limits(from.hugepage_limits().clone());
    }
    if from.unified().is_some() {
        into.set_unified(from.unified().clone());
    }
}

/// Resource statistics of a container.
pub fn stats(root: &Root, id: &str) -> Result<crate::cgroups::Stats> {
    let state = root.load(id)?;
    let hier = Hierarchies::detect();
    if state.status_in(root, &hier) == Status::Stopped {
        return Err(Error::NotRunning);
    }
    Ok(Cgroup::open(&state.cgroup_path, &hier)?.stats())
}

/// Run an extra process in a created or running container. Returns its PID
/// (a child of the calling process).
pub fn exec(root: &Root, o: &ExecOptions) -> Result<i32> {
    let state = root.load(&o.id)?;
    let hier = Hierarchies::detect();
    match state.status_in(root, &hier) {
        Status::Running | Status::Created => {}
        Status::Paused => {
            return Err(Error::BadStatus {
                id: o.id.clone(),
                status: "paused".into(),
                op: "exec in",
            });
        }
        _ => return Err(Error::NotRunning),
    }
    let spec = &state.config;
    let terminal = o.process.terminal().unwrap_or(false);
    let console = match (terminal, &o.console_fd, &o.console_socket) {
        (true, Some(fd), _) => Some(dup_fd(fd)?),
        (true, None, Some(p)) => Some(connect_console(p)?),
        (true, None, None) => {
            return Err(Error::Config(
                "a terminal was requested but no console socket was given".into(),
            ));
        }
        (false, _, _) => None,
    };
    // Join every namespace the container has, except those we already share
    // (setns into one's own user namespace fails).
    let mut join = Vec::new();
    for ns in spec::namespaces(spec) {
        let name = spec::ns_name(ns.typ());
        let theirs = PathBuf::from(format!("/proc/{}/ns/{name}", state.pid));
        let ours = PathBuf::from(format!("/proc/self/ns/{name}"));
        let same = match (std::fs::metadata(&theirs), std::fs::metadata(&ours)) {
            (Ok(a), Ok(b)) => {
                use std::os::unix::fs::MetadataExt;
                a.ino() == b.ino() && a.dev() == b.dev()
            }
            _ => false,
        };
        if same {
            continue;
        }
        let fd = nix::fcntl::open(&theirs, OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty())
            .sys(|| format!("open {}", theirs.display()))?;
        join.push((ns.typ(), fd));
    }
    let seccomp = spec
        .linux()
        .as_ref()
        .and_then(|l| l.seccomp().as_ref())
        .map(|s| seccomp::compile_cached(s, &root.dir().join(SECCOMP_CACHE)))
        .transpose()?;
    let mut cgroup = Cgroup::open(&state.cgroup_path, &hier)?;
    let (parent, child) = sync::pair()?;
    let cfg = ChildConfig {
        id: &o.id,
        spec,
        process: &o.process,
        rootfs: &state.rootfs,
        cgroup_path: &state.cgroup_path,
        hierarchies: &hier,
        role: Role::Exec,
        console,
        preserve_fds: o.preserve_fds,
        join,
        new: CloneFlags::empty(),
        wait_for_go: true,
        seccomp,
        stdio: dup_stdio(o.stdio.as_ref())?,
    };
    let stage1 = match sys::fork().sys(|| "fork".into())? {
        sys::Forked::Child => {
            drop(parent);
            crate::init::stage1(&cfg, &child)
        }
        sys::Forked::Parent(pid) => pid.as_raw(),
    };
    drop(child);
    drop(cfg);
    let fail = |e: Error, pids: &[i32]| {
        for p in pids {
            let _ = sys::kill(*p, libc::SIGKILL);
            let _ = waitpid(Pid::from_raw(*p), None);
        }
        e
    };
    if let Err(e) = cgroup.add(stage1) {
        if !state.rootless {
            return Err(fail(e, &[stage1]));
        }
    }
    if let Err(e) = parent.send(&Msg::Go) {
        return Err(fail(e, &[stage1]));
    }
    let mut pid = None;
    loop {
        let msg = match parent.recv() {
            Ok(m) => m,
            Err(e) => return Err(fail(e, &[stage1])),
        };
        match msg {
            Some(Msg::Pid(p)) => {
                if p != stage1 {
                    let _ = waitpid(Pid::from_raw(stage1), None);
                }
                pid = Some(p);
            }
            Some(Msg::Ready) => break,
            Some(Msg::Error(e)) => {
                let pids: Vec<i32> = pid.into_iter().chain([stage1]).collect();
                return Err(fail(Error::Container(e), &pids));
            }
            Some(other) => {
                return Err(fail(
                    Error::Container(format!("sync: unexpected {other:?}")),
                    &[stage1],
                ));
            }
            None => {
                // The process may have exec'd already (then EOF is normal
                // only after Ready), so this is a failure.
                let pids: Vec<i32> = pid.into_iter().chain([stage1]).collect();
                return Err(fail(
                    Error::Container("exec process exited before it was ready".into()),
                    &pids,
                ));
            }
        }
    }
    let pid = pid.ok_or_else(|| Error::Container("exec process PID unknown".into()))?;
    if let Some(p) = &o.pid_file {
        write_pid_file(p, pid)?;
    }
    Ok(pid)
}

/// Wait for a child process and return its exit code the way a shell
/// reports it (128 + signal for a killed process).
pub fn wait_exit_code(pid: i32) -> Result<i32> {
    loop {
        match waitpid(Pid::from_raw(pid), Some(WaitPidFlag::__WALL)) {
            Ok(WaitStatus::Exited(_, code)) => return Ok(code),
            Ok(WaitStatus::Signaled(_, sig, _)) => return Ok(128 + sig as i32),
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(Error::sys(format!("wait for {pid}"), e)),
        }
    }
}
