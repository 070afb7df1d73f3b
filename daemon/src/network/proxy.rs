//! A TCP relay for published ports on the host's IPv6 loopback address.
//!
//! DNAT cannot carry a connection from `::1` to a container: IPv6 has no
//! `route_localnet`, so a packet with a loopback source never leaves the
//! loopback device. For a TCP port published on every address the daemon
//! therefore listens on `[::1]:port` itself and relays each connection to
//! the container's address, as Docker's userland proxy does. Everything
//! else (IPv4 loopback, the host's other addresses, the bridges) is DNAT
//! in the nftables table; this module owns only the relay.

use std::net::{Ipv6Addr, SocketAddr};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use super::{Error, Result};

/// A running relay; stops listening when dropped (connections already
/// relayed run to their end).
pub struct Relay {
    task: JoinHandle<()>,
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Listen on `[::1]:port` and relay to `target`. `Ok(None)` when the host
/// has no `::1`. Must be called inside a tokio runtime.
pub fn start(port: u16, target: SocketAddr) -> Result<Option<Relay>> {
    let sa = SocketAddr::new(Ipv6Addr::LOCALHOST.into(), port);
    let l = match std::net::TcpListener::bind(sa) {
        Ok(l) => l,
        Err(e) if e.kind() == std::io::ErrorKind::AddrNotAvailable => return Ok(None),
        Err(source) => {
            return Err(Error::Io {
                what: format!("listen on {sa} for the published port"),
                source,
            });
        }
    };
    let io = |source| Error::Io {
        what: format!("listen on {sa} for the published port"),
        source,
    };
    l.set_nonblocking(true).map_err(io)?;
    let l = TcpListener::from_std(l).map_err(io)?;
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut inbound, _)) = l.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                match TcpStream::connect(target).await {
                    Ok(mut out) => {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    }
                    Err(e) => {
                        tracing::debug!(%target, error = %e, "relay to a published port");
                    }
                }
            });
        }
    });
    Ok(Some(Relay { task }))
}
