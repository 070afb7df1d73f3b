//! The message channel between the runtime and the processes it forks while
//! creating a container or an exec'd process.
//!
//! A `SOCK_SEQPACKET` socket pair carries one small JSON message per packet,
//! so message boundaries are kept and a peer that dies shows up as end of
//! file rather than a hang.

use std::os::fd::{AsFd, OwnedFd};

use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result, SysContext};

/// One step of the create/exec handshake.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Msg {
    /// Parent -> child: the child sits in its cgroup; go on.
    Go,
    /// Child -> parent: I unshared a user namespace; write my ID maps.
    MapIds,
    /// Parent -> child: the maps are written.
    IdsMapped,
    /// Child -> parent: the container process is this PID (in the parent's
    /// PID namespace); the intermediate process exits.
    Pid(i32),
    /// Child -> parent: namespaces and mounts are ready; run the prestart
    /// and createRuntime hooks now.
    RunHooks,
    /// Parent -> child: hooks ran; here is the state document for the
    /// hooks the child runs itself (createContainer, startContainer).
    HooksDone(String),
    /// Child -> parent: set up and about to wait for start (or exec).
    Ready,
    /// Child -> parent: setting up failed with this message.
    Error(String),
}

/// One end of the handshake channel.
pub(crate) struct Channel {
    fd: OwnedFd,
}

/// Make a connected pair: `(parent end, child end)`. Both are close-on-exec.
pub(crate) fn pair() -> Result<(Channel, Channel)> {
    let (a, b) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .sys(|| "socketpair for the sync channel".into())?;
    Ok((Channel { fd: a }, Channel { fd: b }))
}

impl Channel {
    /// Send one message.
    pub(crate) fn send(&self, msg: &Msg) -> Result<()> {
        let bytes = serde_json::to_vec(msg).map_err(|e| Error::Json {
            context: "encode sync message".into(),
            source: e,
        })?;
        nix::unistd::write(self.fd.as_fd(), &bytes).sys(|| "write to the sync channel".into())?;
        Ok(())
    }

    /// Receive one message; `None` when the peer closed its end.
    pub(crate) fn recv(&self) -> Result<Option<Msg>> {
        let mut buf = vec![0u8; 64 * 1024];
        let n = loop {
            match nix::unistd::read(self.fd.as_fd(), &mut buf) {
                Err(nix::errno::Errno::EINTR) => {}
                other => break other.sys(|| "read from the sync channel".into())?,
            }
        };
        if n == 0 {
            return Ok(None);
        }
        serde_json::from_slice(&buf[..n])
            .map(Some)
            .map_err(|e| Error::Json {
                context: "decode sync message".into(),
                source: e,
            })
    }

    /// Receive and require a specific message, turning a reported error or a
    /// vanished peer into an error.
    pub(crate) fn expect(&self, want: &Msg) -> Result<()> {
        match self.recv()? {
            Some(m) if &m == want => Ok(()),
            Some(Msg::Error(e)) => Err(Error::Container(e)),
            Some(other) => Err(Error::Container(format!(
                "sync: expected {want:?}, got {other:?}"
            ))),
            None => Err(Error::Container(format!(
                "sync: peer exited while waiting for {want:?}"
            ))),
        }
    }
}
