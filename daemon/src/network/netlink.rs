//! Links, addresses and routes through rtnetlink: bridges, veth pairs,
//! the configuration inside a container's network namespace, and what the
//! host already routes (so new subnets do not overlap it).
//!
//! This module only speaks netlink; which names and addresses to use is
//! decided by the bridge driver.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::path::Path;

use futures_util::TryStreamExt;
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags};
use rtnetlink::packet_route::link::{InfoData, InfoVeth, LinkAttribute, LinkMessage};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute};
use rtnetlink::{Handle, LinkBridge, LinkBridgePort, LinkMessageBuilder, LinkUnspec, LinkVeth};

use super::{Error, Result};

fn nl(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> Error {
    let what = what.into();
    move |source| Error::Netlink { what, source }
}

/// A netlink connection in the network namespace it was opened in.
#[derive(Clone)]
pub struct Netlink {
    handle: Handle,
}

impl Netlink {
    /// Open a connection; its task runs on the current tokio runtime.
    pub fn open() -> Result<Netlink> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(|source| Error::Io {
            what: "open a netlink socket".into(),
            source,
        })?;
        tokio::spawn(conn);
        Ok(Netlink { handle })
    }

    async fn link(&self, name: &str) -> Result<Option<LinkMessage>> {
        let mut s = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        match s.try_next().await {
            Ok(m) => Ok(m),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
            Err(e) => Err(nl(format!("look up link {name}"))(e)),
        }
    }

    /// The index of a link, if it exists.
    pub async fn index(&self, name: &str) -> Result<Option<u32>> {
        Ok(self.link(name).await?.map(|m| m.header.index))
    }

    /// Create the bridge (if missing) with `gateway/prefix`, up.
    pub async fn ensure_bridge(
        &self,
        name: &str,
        gateway: Ipv4Addr,
        prefix: u8,
        mtu: u32,
    ) -> Result<u32> {
        // A fixed address: a bridge without one takes the lowest of its
        // ports' and changes it as containers come and go, which leaves the
        // containers' ARP entries for the gateway stale.
        let o = gateway.octets();
        let mac = vec![0x02, 0x42, o[0], o[1], o[2], o[3]];
        let index = if let Some(i) = self.index(name).await? {
            i
        } else {
            self.handle
                .link()
                .add(LinkBridge::new(name).mtu(mtu).address(mac.clone()).build())
                .execute()
                .await
                .map_err(nl(format!("create bridge {name}")))?;
            self.index(name).await?.ok_or_else(|| Error::Invalid {
                what: format!("bridge {name} vanished after its creation"),
            })?
        };
        let mut have = false;
        let mut addrs = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute();
        while let Some(a) = addrs
            .try_next()
            .await
            .map_err(nl(format!("addresses of {name}")))?
        {
            for attr in &a.attributes {
                if let rtnetlink::packet_route::address::AddressAttribute::Address(IpAddr::V4(ip)) =
                    attr
                {
                    if *ip == gateway && a.header.prefix_len == prefix {
                        have = true;
                    }
                }
            }
        }
        if !have {
            self.handle
                .address()
                .add(index, IpAddr::V4(gateway), prefix)
                .execute()
                .await
                .map_err(nl(format!("add {gateway}/{prefix} to {name}")))?;
        }
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).address(mac).up().build())
            .execute()
            .await
            .map_err(nl(format!("set {name} up")))?;
        Ok(index)
    }

    /// Give the link `name` the IPv6 address `ip/prefix` (if it lacks it),
    /// usable at once: IPv6 enabled on the link, no duplicate address
    /// detection.
    pub async fn ensure_addr6(&self, name: &str, ip: Ipv6Addr, prefix: u8) -> Result<()> {
        let index = self.index(name).await?.ok_or_else(|| Error::NotFound {
            what: format!("link {name} is missing"),
        })?;
        ipv6_on(name)?;
        let mut addrs = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute();
        while let Some(a) = addrs
            .try_next()
            .await
            .map_err(nl(format!("addresses of {name}")))?
        {
            let has = a
                .attributes
                .iter()
                .any(|at| matches!(at, AddressAttribute::Address(IpAddr::V6(x)) if *x == ip));
            if has && a.header.prefix_len == prefix {
                return Ok(());
            }
        }
        self.add_addr6(index, ip, prefix)
            .await
            .map_err(nl(format!("add {ip}/{prefix} to {name}")))
    }

    async fn add_addr6(
        &self,
        index: u32,
        ip: Ipv6Addr,
        prefix: u8,
    ) -> std::result::Result<(), rtnetlink::Error> {
        let mut req = self.handle.address().add(index, IpAddr::V6(ip), prefix);
        req.message_mut()
            .attributes
            .push(AddressAttribute::Flags(AddressFlags::Nodad));
        req.execute().await
    }

    /// Delete a link by name; a missing link is not an error.
    pub async fn delete(&self, name: &str) -> Result<()> {
        let Some(index) = self.index(name).await? else {
            return Ok(());
        };
        match self.handle.link().del(index).execute().await {
            Ok(()) => Ok(()),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(()),
            Err(e) => Err(nl(format!("delete link {name}"))(e)),
        }
    }

    /// Delete a link by index; a missing link is not an error.
    pub async fn delete_index(&self, index: u32) -> Result<()> {
        match self.handle.link().del(index).execute().await {
            Ok(()) => Ok(()),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(()),
            Err(e) => Err(nl(format!("delete link {index}"))(e)),
        }
    }

    /// A veth pair: `host` on this side enslaved to `bridge` and up,
    /// `peer` created straight inside the namespace at `netns`.
    pub async fn add_veth(
        &self,
        host: &str,
        peer: &str,
        mtu: u32,
        bridge: u32,
        netns: &Path,
        mac: [u8; 6],
    ) -> Result<()> {
        let ns = std::fs::File::open(netns).map_err(|source| Error::Io {
            what: format!("open network namespace {}", netns.display()),
            source,
        })?;
        let peer_msg = LinkMessageBuilder::<LinkUnspec>::new()
            .name(peer.to_string())
            .mtu(mtu)
            .address(mac.to_vec())
            .setns_by_fd(ns.as_raw_fd())
            .build();
        let msg = LinkVeth::new(host, peer)
            .mtu(mtu)
            .controller(bridge)
            .up()
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_msg)))
            .build();
        self.handle
            .link()
            .add(msg)
            .execute()
            .await
            .map_err(nl(format!("create veth pair {host}")))?;
        drop(ns);
        // Hairpin: where br_netfilter is loaded, a container's packet to a
        // published port of its own through a host address is DNATed at
        // the bridge and bridged straight back out of the port it came in
        // on, which a bridge only does with hairpin mode on.
        let port = LinkBridgePort::new(0)
            .name(host.to_string())
            .hairpin(true)
            .build();
        self.handle
            .link()
            .set_port(port)
            .execute()
            .await
            .map_err(nl(format!("set hairpin mode on {host}")))?;
        Ok(())
    }

    /// Names of the links enslaved to the bridge with this index.
    pub async fn ports_of(&self, bridge: u32) -> Result<Vec<String>> {
        let mut out = Vec::new();
        let mut s = self.handle.link().get().execute();
        while let Some(m) = s.try_next().await.map_err(nl("list links"))? {
            let master = m
                .attributes
                .iter()
                .any(|a| matches!(a, LinkAttribute::Controller(i) if *i == bridge));
            if master {
                if let Some(name) = m.attributes.iter().find_map(|a| match a {
                    LinkAttribute::IfName(n) => Some(n.clone()),
                    _ => None,
                }) {
                    out.push(name);
                }
            }
        }
        Ok(out)
    }

    /// IPv4 prefixes the host routes (any table), so new subnets avoid them.
    pub async fn routed_v4(&self) -> Result<Vec<(Ipv4Addr, u8)>> {
        let mut out = Vec::new();
        let q = rtnetlink::RouteMessageBuilder::<Ipv4Addr>::new().build();
        let mut s = self.handle.route().get(q).execute();
        while let Some(r) = s.try_next().await.map_err(nl("list routes"))? {
            let len = r.header.destination_prefix_length;
            if len == 0 {
                continue;
            }
            for a in &r.attributes {
                if let RouteAttribute::Destination(RouteAddress::Inet(ip)) = a {
                    out.push((*ip, len));
                }
            }
        }
        Ok(out)
    }

    /// IPv6 prefixes the host routes (any table, not link-local or
    /// multicast), so new subnets avoid them.
    pub async fn routed_v6(&self) -> Result<Vec<(Ipv6Addr, u8)>> {
        let mut out = Vec::new();
        let q = rtnetlink::RouteMessageBuilder::<Ipv6Addr>::new().build();
        let mut s = self.handle.route().get(q).execute();
        while let Some(r) = s.try_next().await.map_err(nl("list routes"))? {
            let len = r.header.destination_prefix_length;
            if len == 0 {
                continue;
            }
            for a in &r.attributes {
                if let RouteAttribute::Destination(RouteAddress::Inet6(ip)) = a {
                    let seg = ip.segments()[0];
                    if seg & 0xffc0 != 0xfe80 && seg & 0xff00 != 0xff00 {
                        out.push((*ip, len));
                    }
                }
            }
        }
        Ok(out)
    }

    /// The MTU of the interface that carries the default route (1500 if
    /// there is none).
    pub async fn host_mtu(&self) -> u32 {
        let q = rtnetlink::RouteMessageBuilder::<Ipv4Addr>::new().build();
        let mut s = self.handle.route().get(q).execute();
        let mut oif = None;
        while let Ok(Some(r)) = s.try_next().await {
            if r.header.destination_prefix_length == 0
                && r.header.table == rtnetlink::packet_route::route::RouteHeader::RT_TABLE_MAIN
            {
                oif = r.attributes.iter().find_map(|a| match a {
                    RouteAttribute::Oif(i) => Some(*i),
                    _ => None,
                });
                if oif.is_some() {
                    break;
                }
            }
        }
        let Some(oif) = oif else { return 1500 };
        let mut s = self.handle.link().get().match_index(oif).execute();
        if let Ok(Some(m)) = s.try_next().await {
            if let Some(mtu) = m.attributes.iter().find_map(|a| match a {
                LinkAttribute::Mtu(m) => Some(*m),
                _ => None,
            }) {
                return mtu;
            }
        }
        1500
    }

    /// Inside a container's namespace: loopback up, `ifname` up with
    /// `ip/prefix`, and a default route through `gateway` if given; with
    /// `v6`, IPv6 enabled on the interface without duplicate address
    /// detection (so its addresses, the link-local one too, work at once),
    /// its address and a default route through its gateway if given.
    pub async fn configure_inside(
        &self,
        ifname: &str,
        ip: Ipv4Addr,
        prefix: u8,
        gateway: Option<Ipv4Addr>,
        v6: Option<Inside6>,
    ) -> Result<()> {
        if v6.is_some() {
            ipv6_on("all")?;
            ipv6_on(ifname)?;
        }
        if let Some(lo) = self.index("lo").await? {
            self.handle
                .link()
                .set(LinkUnspec::new_with_index(lo).up().build())
                .execute()
                .await
                .map_err(nl("set lo up"))?;
        }
        let index = self.index(ifname).await?.ok_or_else(|| Error::Invalid {
            what: format!("interface {ifname} is missing in the container's namespace"),
        })?;
        self.handle
            .address()
            .add(index, IpAddr::V4(ip), prefix)
            .execute()
            .await
            .map_err(nl(format!("add {ip}/{prefix} to {ifname}")))?;
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(nl(format!("set {ifname} up")))?;
        if let Some(gw) = gateway {
            let route = rtnetlink::RouteMessageBuilder::<Ipv4Addr>::new()
                .gateway(gw)
                .output_interface(index)
                .build();
            self.handle
                .route()
                .add(route)
                .execute()
                .await
                .map_err(nl(format!("add a default route via {gw}")))?;
        }
        if let Some(v6) = v6 {
            self.add_addr6(index, v6.ip, v6.prefix)
                .await
                .map_err(nl(format!("add {}/{} to {ifname}", v6.ip, v6.prefix)))?;
            if let Some(gw) = v6.gateway {
                let route = rtnetlink::RouteMessageBuilder::<Ipv6Addr>::new()
                    .gateway(gw)
                    .output_interface(index)
                    .build();
                self.handle
                    .route()
                    .add(route)
                    .execute()
                    .await
                    .map_err(nl(format!("add a default route via {gw}")))?;
            }
        }
        Ok(())
    }
}

/// The IPv6 side of a container's interface.
#[derive(Debug, Clone, Copy)]
pub struct Inside6 {
    pub ip: Ipv6Addr,
    pub prefix: u8,
    pub gateway: Option<Ipv6Addr>,
}

/// Write `value` to `/proc/sys/net/<key>` of the calling thread's network
/// namespace.
pub fn sysctl(key: &str, value: &str) -> Result<()> {
    let p = format!("/proc/sys/net/{key}");
    std::fs::write(&p, value).map_err(|source| Error::Io {
        what: format!("write {value} to {p}"),
        source,
    })
}

/// IPv6 on for the link (or `all`/`default`), without duplicate address
/// detection, in the calling thread's network namespace.
fn ipv6_on(link: &str) -> Result<()> {
    sysctl(&format!("ipv6/conf/{link}/disable_ipv6"), "0")?;
    sysctl(&format!("ipv6/conf/{link}/accept_dad"), "0")
}

/// Run `f` with a netlink connection opened inside the network namespace
/// at `netns`, on a thread of its own (namespaces are per thread).
pub async fn in_netns<F, Fut, T>(netns: &Path, f: F) -> Result<T>
where
    F: FnOnce(Netlink) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<T>>,
    T: Send + 'static,
{
    let path = netns.to_path_buf();
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("netns".into())
        .spawn(move || {
            let r = (|| {
                let ns = std::fs::File::open(&path).map_err(|source| Error::Io {
                    what: format!("open network namespace {}", path.display()),
                    source,
                })?;
                nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| {
                    Error::Io {
                        what: format!("enter network namespace {}", path.display()),
                        source: e.into(),
                    }
                })?;
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_io()
                    .build()
                    .map_err(|source| Error::Io {
                        what: "start a runtime for the namespace".into(),
                        source,
                    })?;
                rt.block_on(async move {
                    let nl = Netlink::open()?;
                    f(nl).await
                })
            })();
            let _ = tx.send(r);
        })
        .map_err(|source| Error::Io {
            what: "start a thread for the namespace".into(),
            source,
        })?;
    rx.await.map_err(|_| Error::Invalid {
        what: "the namespace thread ended without an answer".into(),
    })?
}
