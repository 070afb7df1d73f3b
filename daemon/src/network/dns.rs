//! A small DNS responder per bridge network, on the bridge's gateway
//! address (UDP and TCP port 53): it answers A and AAAA queries for the
//! names and aliases of containers on that network (an empty answer when
//! the name has no address of that family), and relays every other query to
//! the host's own resolvers (from /etc/resolv.conf).
//!
//! It parses only what it needs (header and one question) and copies the
//! question into the answer; anything else goes upstream unchanged.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio::task::JoinHandle;

use super::{Error, Result};

/// The addresses of one name.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Addrs {
    pub v4: Option<Ipv4Addr>,
    pub v6: Option<Ipv6Addr>,
}

/// Names answered on one network (lower case, no final dot).
pub type Names = Arc<RwLock<HashMap<String, Addrs>>>;

const A: u16 = 1;
const AAAA: u16 = 28;

/// A running responder; stops when dropped.
pub struct Responder {
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Responder {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// The host's resolvers (port 53).
pub fn upstreams() -> Vec<SocketAddr> {
    std::fs::read_to_string("/etc/resolv.conf")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some("nameserver"))
                .then(|| w.next())
                .flatten()
                .and_then(|a| a.parse::<IpAddr>().ok())
        })
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

/// Start answering on `addr:53`.
/// Must be called inside a tokio runtime.
pub fn start(addr: Ipv4Addr, names: Names) -> Result<Responder> {
    let sa = SocketAddr::new(IpAddr::V4(addr), 53);
    let bind_err = |proto: &str| {
        let what = format!("bind the DNS responder to {proto} {sa}");
        move |source| Error::Io { what, source }
    };
    let udp = std::net::UdpSocket::bind(sa).map_err(bind_err("udp"))?;
    udp.set_nonblocking(true).map_err(bind_err("udp"))?;
    let udp = Arc::new(UdpSocket::from_std(udp).map_err(bind_err("udp"))?);
    let tcp = std::net::TcpListener::bind(sa).map_err(bind_err("tcp"))?;
    tcp.set_nonblocking(true).map_err(bind_err("tcp"))?;
    let tcp = TcpListener::from_std(tcp).map_err(bind_err("tcp"))?;
    let up = Arc::new(upstreams());
    let (n1, u1) = (names.clone(), up.clone());
    let udp_task = tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        loop {
            let Ok((len, peer)) = udp.recv_from(&mut buf).await else {
                continue;
            };
            let q = buf[..len].to_vec();
            let (udp, names, up) = (udp.clone(), n1.clone(), u1.clone());
            tokio::spawn(async move {
                if let Some(resp) = answer(&q, &names, &up).await {
                    let _ = udp.send_to(&resp, peer).await;
                }
            });
        }
    });
    let tcp_task = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = tcp.accept().await else {
                continue;
            };
            let (names, up) = (names.clone(), up.clone());
            tokio::spawn(async move {
                loop {
                    let Ok(len) = s.read_u16().await else { return };
                    let mut q = vec![0u8; usize::from(len)];
                    if s.read_exact(&mut q).await.is_err() {
                        return;
                    }
                    let Some(resp) = answer(&q, &names, &up).await else {
                        return;
                    };
                    let Ok(l) = u16::try_from(resp.len()) else {
                        return;
                    };
                    if s.write_u16(l).await.is_err() || s.write_all(&resp).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    Ok(Responder {
        tasks: vec![udp_task, tcp_task],
    })
}

/// The question: lower-case name without the final dot, type, and the
/// offset where the question ends.
fn question(q: &[u8]) -> Option<(String, u16, usize)> {
    if q.len() < 12 || u16::from_be_bytes([q[4], q[5]]) != 1 {
        return None;
    }
    let mut i = 12;
    let mut labels = Vec::new();
    loop {
        let l = usize::from(*q.get(i)?);
        i += 1;
        if l == 0 {
            break;
        }
        if l > 63 {
            return None;
        }
        labels.push(
            std::str::from_utf8(q.get(i..i + l)?)
                .ok()?
                .to_ascii_lowercase(),
        );
        i += l;
    }
    let qtype = u16::from_be_bytes([*q.get(i)?, *q.get(i + 1)?]);
    Some((labels.join("."), qtype, i + 4))
}

/// The reply to one query: ours if the name is a container's, otherwise
/// relayed upstream (None when nobody answers).
async fn answer(q: &[u8], names: &Names, up: &[SocketAddr]) -> Option<Vec<u8>> {
    let (name, qtype, end) = question(q)?;
    let found = names
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .get(&name)
        .copied();
    if let Some(addrs) = found {
        let rdata: Option<Vec<u8>> = match qtype {
            A => addrs.v4.map(|ip| ip.octets().to_vec()),
            AAAA => addrs.v6.map(|ip| ip.octets().to_vec()),
            _ => None,
        };
        let mut r = Vec::with_capacity(end + 28);
        r.extend_from_slice(&q[..2]);
        // QR, opcode and RD from the query, AA, RA, NOERROR.
        r.push(0x84 | (q[2] & 0x79));
        r.push(0x80);
        r.extend_from_slice(&[0, 1]);
        r.extend_from_slice(&[0, u8::from(rdata.is_some())]);
        r.extend_from_slice(&[0, 0, 0, 0]);
        r.extend_from_slice(&q[12..end]);
        if let Some(d) = rdata {
            // A pointer to the question's name, type, class IN, TTL 60.
            r.extend_from_slice(&[0xc0, 0x0c]);
            r.extend_from_slice(&qtype.to_be_bytes());
            r.extend_from_slice(&[0, 1, 0, 0, 0, 60, 0]);
            r.push(u8::try_from(d.len()).unwrap_or(0));
            r.extend_from_slice(&d);
        }
        return Some(r);
    }
    for u in up {
        let bind: SocketAddr = if u.is_ipv4() {
            "0.0.0.0:0".parse().ok()?
        } else {
            "[::]:0".parse().ok()?
        };
        let Ok(s) = UdpSocket::bind(bind).await else {
            continue;
        };
        if s.send_to(q, u).await.is_err() {
            continue;
        }
        let mut buf = vec![0u8; 4096];
        if let Ok(Ok((n, _))) =
            tokio::time::timeout(Duration::from_secs(3), s.recv_from(&mut buf)).await
        {
            buf.truncate(n);
            return Some(buf);
        }
    }
    // Nobody upstream: NXDOMAIN for names we do not know.
    let mut r = q[..end].to_vec();
    r[2] = 0x80 | (q[2] & 0x79);
    r[3] = 0x83;
    r[6..12].fill(0);
    Some(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(name: &str, qtype: u16) -> Vec<u8> {
        let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        for l in name.split('.') {
            q.push(u8::try_from(l.len()).unwrap());
            q.extend_from_slice(l.as_bytes());
        }
        q.push(0);
        q.extend_from_slice(&qtype.to_be_bytes());
        q.extend_from_slice(&[0, 1]);
        q
    }

    #[tokio::test]
    async fn answers_known_names_and_refuses_unknown_without_upstream() {
        let names: Names = Arc::default();
        names.write().unwrap().insert(
            "web".into(),
            Addrs {
                v4: Some(Ipv4Addr::new(10, 0, 0, 2)),
                v6: None,
            },
        );
        names.write().unwrap().insert(
            "dual".into(),
            Addrs {
                v4: Some(Ipv4Addr::new(10, 0, 0, 3)),
                v6: Some("fd00:1::3".parse().unwrap()),
            },
        );
        let r = answer(&query("WEB", 1), &names, &[]).await.unwrap();
        assert_eq!(&r[..2], &[0x12, 0x34]);
        assert_eq!(r[7], 1, "one answer");
        assert_eq!(&r[r.len() - 4..], &[10, 0, 0, 2]);
        let r = answer(&query("web", 28), &names, &[]).await.unwrap();
        assert_eq!(r[7], 0, "no AAAA record");
        let r = answer(&query("dual", 28), &names, &[]).await.unwrap();
        assert_eq!(r[7], 1, "one AAAA record");
        assert_eq!(&r[r.len() - 18..r.len() - 16], &[0, 16]);
        let six: Ipv6Addr = "fd00:1::3".parse().unwrap();
        assert_eq!(&r[r.len() - 16..], &six.octets());
        let r = answer(&query("nothere", 1), &names, &[]).await.unwrap();
        assert_eq!(r[3] & 0x0f, 3, "NXDOMAIN");
    }
}
