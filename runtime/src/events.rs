//! `events`: a stream of JSON lines about a container — resource statistics
//! at an interval, and an `oom` event whenever the kernel's OOM killer acts
//! inside its memory cgroup.

use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use serde::Serialize;

use crate::cgroups::{Cgroup, Hierarchies, Layout};
use crate::error::{Error, Result, SysContext};
use crate::state::{Root, Status};

#[derive(Serialize)]
struct Event<'a, T: Serialize> {
    #[serde(rename = "type")]
    kind: &'a str,
    id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<T>,
}

fn emit<T: Serialize>(out: &mut dyn Write, kind: &str, id: &str, data: Option<T>) -> Result<()> {
    let line = serde_json::to_string(&Event { kind, id, data }).map_err(|e| Error::Json {
        context: "encode event".into(),
        source: e,
    })?;
    writeln!(out, "{line}").map_err(|e| Error::io("write event", "<stdout>", e))?;
    out.flush()
        .map_err(|e| Error::io("write event", "<stdout>", e))
}

/// Print one stats event.
pub fn stats_once(root: &Root, id: &str, out: &mut dyn Write) -> Result<()> {
    let s = crate::container::stats(root, id)?;
    emit(out, "stats", id, Some(s))
}

/// Watches a memory cgroup for OOM kills.
enum OomWatch {
    /// cgroup v1: an eventfd registered for memory.oom_control.
    V1 {
        eventfd: OwnedFd,
        _control: std::fs::File,
    },
    /// cgroup v2: inotify on memory.events, comparing the oom_kill count.
    V2 {
        inotify: nix::sys::inotify::Inotify,
        events: std::path::PathBuf,
        seen: u64,
    },
}

impl OomWatch {
    fn new(cg: &Cgroup) -> Option<OomWatch> {
        if cg.layout() == Layout::V2 {
            let events = cg.memory_file("memory.events")?;
            let inotify =
                nix::sys::inotify::Inotify::init(nix::sys::inotify::InitFlags::IN_CLOEXEC).ok()?;
            inotify
                .add_watch(&events, nix::sys::inotify::AddWatchFlags::IN_MODIFY)
                .ok()?;
            let seen = oom_kills(&events);
            return Some(OomWatch::V2 {
                inotify,
                events,
                seen,
            });
        }
        let control_path = cg.memory_file("memory.oom_control")?;
        let event_control = cg.memory_file("cgroup.event_control")?;
        let control = std::fs::File::open(&control_path).ok()?;
        let eventfd =
            nix::sys::eventfd::EventFd::from_flags(nix::sys::eventfd::EfdFlags::EFD_CLOEXEC)
                .ok()?;
        let eventfd = OwnedFd::from(eventfd);
        let registration = format!("{} {}", eventfd.as_raw_fd(), control.as_raw_fd());
        std::fs::write(&event_control, registration).ok()?;
        Some(OomWatch::V1 {
            eventfd,
            _control: control,
        })
    }

    fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        match self {
            OomWatch::V1 { eventfd, .. } => eventfd.as_fd(),
            OomWatch::V2 { inotify, .. } => inotify.as_fd(),
        }
    }

    /// Consume the readiness and say whether an OOM kill happened.
    fn fired(&mut self) -> bool {
        match self {
            OomWatch::V1 { eventfd, .. } => {
                let mut buf = [0u8; 8];
                nix::unistd::read(eventfd.as_fd(), &mut buf).is_ok()
            }
            OomWatch::V2 {
                inotify,
                events,
                seen,
            } => {
                let _ = inotify.read_events();
                let now = oom_kills(events);
                let fired = now > *seen;
                *seen = now;
                fired
            }
        }
    }
}

fn oom_kills(path: &Path) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("oom_kill ")
                    .and_then(|v| v.trim().parse().ok())
            })
        })
        .unwrap_or(0)
}

/// Stream events until the container stops: stats every `interval`, `oom`
/// as they happen.
pub fn stream(root: &Root, id: &str, interval: Duration, out: &mut dyn Write) -> Result<()> {
    let state = root.load(id)?;
    let hier = Hierarchies::detect();
    if state.status_in(root, &hier) == Status::Stopped {
        return Err(Error::NotRunning);
    }
    let cg = Cgroup::open(&state.cgroup_path, &hier)?;
    let mut oom = OomWatch::new(&cg);
    let pidfd = crate::sys::pidfd_open(state.pid).sys(|| format!("pidfd for {}", state.pid))?;
    let mut next = Instant::now();
    loop {
        let now = Instant::now();
        if now >= next {
            emit(out, "stats", id, Some(cg.stats()))?;
            next = now + interval;
        }
        let wait = next.saturating_duration_since(Instant::now());
        let timeout = PollTimeout::try_from(wait).unwrap_or(PollTimeout::MAX);
        let mut fds = vec![PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
        if let Some(w) = &oom {
            fds.push(PollFd::new(w.fd(), PollFlags::POLLIN));
        }
        match poll(&mut fds, timeout) {
            Err(nix::errno::Errno::EINTR) | Ok(0) => continue,
            Err(e) => return Err(Error::sys("poll for events", e)),
            Ok(_) => {}
        }
        let exited = fds[0].revents().is_some_and(|r| !r.is_empty());
        let oom_ready = fds
            .get(1)
            .and_then(PollFd::revents)
            .is_some_and(|r| !r.is_empty());
        drop(fds);
        if oom_ready {
            if let Some(w) = &mut oom {
                if w.fired() {
                    emit::<()>(out, "oom", id, None)?;
                }
            }
        }
        if exited {
            return Ok(());
        }
    }
}
