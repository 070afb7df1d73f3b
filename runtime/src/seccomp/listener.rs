//! Handing the notification listener to a seccomp agent (`listenerPath`).
//!
//! The runtime specification's protocol: connect to the agent's `AF_UNIX`
//! `SOCK_STREAM` socket, send the container process state as JSON
//! (`ociVersion`, `fds: ["seccompFd"]`, `pid`, `metadata` from
//! `listenerMetadata`, `state`), with the listener descriptor attached to the
//! first `sendmsg(2)` as `SCM_RIGHTS`, then close the connection. One
//! connection per state, never reused.

use std::io::IoSlice;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;

use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
use oci_spec::runtime::{ContainerProcessState, SECCOMP_FD_NAME, State};

use super::{Error, Result};

/// Send the seccomp notification listener `fd` to the agent at `path`.
///
/// `state` is the container's state as `vessel-runtime state` would print it
/// (its `pid` is the container process and is required); `metadata` is
/// `linux.seccomp.listenerMetadata`. Fails if the agent cannot be reached or
/// the connection breaks before everything was sent; the runtime must then
/// fail the container's creation.
pub fn send_listener_fd(
    path: &Path,
    fd: BorrowedFd<'_>,
    state: &State,
    metadata: Option<&str>,
) -> Result<()> {
    let Some(pid) = *state.pid() else {
        return Err(Error::ListenerNoPid {
            path: path.to_path_buf(),
        });
    };
    // The process state follows the same specification version as the state.
    let version = if state.version().is_empty() {
        oci_spec::runtime::VERSION.to_owned()
    } else {
        state.version().clone()
    };
    let mut process_state = ContainerProcessState::default();
    process_state
        .set_version(version)
        .set_fds(vec![SECCOMP_FD_NAME.to_owned()])
        .set_pid(pid)
        .set_metadata(metadata.map(str::to_owned))
        .set_state(state.clone());
    let payload = serde_json::to_vec(&process_state).map_err(Error::State)?;

    let failed = |what: &'static str| {
        move |source: std::io::Error| Error::Listener {
            path: path.to_path_buf(),
            what,
            source,
        }
    };
    let stream = UnixStream::connect(path).map_err(failed("cannot connect"))?;
    let fds = [fd.as_raw_fd()];
    let mut sent = loop {
        match sendmsg::<()>(
            stream.as_raw_fd(),
            &[IoSlice::new(&payload)],
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::MSG_NOSIGNAL,
            None,
        ) {
            Ok(n) => break n,
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(failed("cannot send the listener descriptor")(e.into())),
        }
    };
    // The descriptor went with the first message; the rest of the state, if
    // the socket took only part of it, follows without one.
    while sent < payload.len() {
        match nix::sys::socket::send(stream.as_raw_fd(), &payload[sent..], MsgFlags::MSG_NOSIGNAL) {
            Ok(0) => {
                return Err(failed("cannot send the container state")(
                    std::io::ErrorKind::WriteZero.into(),
                ));
            }
            Ok(n) => sent += n,
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(failed("cannot send the container state")(e.into())),
        }
    }
    drop(stream);
    Ok(())
}
