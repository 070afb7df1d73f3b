//! Container networking: network records (the built-in `bridge`, `host`
//! and `none`, and user-defined bridges, optionally dual-stack), IPv4 and
//! IPv6 address leases, container endpoints (a veth pair from a bridge into
//! the container's own network namespace), published ports (nftables DNAT,
//! and a small TCP relay for the host's `::1`), the nftables table, a DNS
//! responder per bridge, and the host's forwarding switches.
//!
//! The module hands the engine plain values: a network namespace path to
//! put in the OCI spec and the addresses it configured. It never starts a
//! container and never imports the runtime. `host`, `none` and
//! `container:<id>` need no endpoint: the engine maps them to the host's
//! namespace, an empty private one, or another container's.
//!
//! Host-global names (bridges, the nftables table, subnets) carry a
//! per-daemon prefix so several daemons can run on one host at once.

pub mod dns;
pub mod ipam;
pub mod netlink;
pub mod netns;
pub mod nft;
pub mod proxy;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use ipam::{Subnet, Subnet6};
use netlink::Netlink;

/// Errors of the network module.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}")]
    Netlink {
        what: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("nftables: {message}")]
    Firewall { message: String },
    #[error("{what}")]
    Invalid { what: String },
    #[error("{what}")]
    NotFound { what: String },
    #[error("{what}")]
    Conflict { what: String },
    #[error("{what}")]
    Forbidden { what: String },
}

pub type Result<T> = std::result::Result<T, Error>;

/// Settings of the network subsystem.
#[derive(Debug, Clone)]
pub struct Config {
    /// Records: `ROOT/network`.
    pub dir: PathBuf,
    /// Pinned namespaces: `EXEC_ROOT/netns`.
    pub netns_dir: PathBuf,
    /// Prefix of host-global names (the nftables table, user bridges).
    pub prefix: String,
    /// The default bridge's device name.
    pub default_bridge: String,
}

impl Config {
    /// Names for a daemon on `root`: `vessel`/`vessel0` for the default
    /// root, otherwise a short prefix derived from the root path.
    pub fn names_for(root: &Path) -> (String, String) {
        use sha2::Digest as _;
        if root == Path::new("/var/lib/vessel") {
            return ("vessel".into(), "vessel0".into());
        }
        let h = hex::encode(sha2::Sha256::digest(root.as_os_str().as_encoded_bytes()));
        let p = format!("vs{}", &h[..5]);
        (p.clone(), format!("{p}0"))
    }
}

/// A network record.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Network {
    pub id: String,
    pub name: String,
    /// `bridge`, `host` or `null`.
    pub driver: String,
    pub created: String,
    pub subnet: Option<String>,
    pub gateway: Option<Ipv4Addr>,
    pub internal: bool,
    pub labels: BTreeMap<String, String>,
    pub options: BTreeMap<String, String>,
    /// The bridge device (bridge driver only).
    pub bridge: String,
    /// The subnet was chosen by the daemon (it may move if taken).
    pub auto_subnet: bool,
    /// Dynamic IPv4 addresses come from this prefix of the subnet only.
    pub ip_range: Option<String>,
    /// Containers get IPv6 addresses too.
    pub enable_ipv6: bool,
    pub subnet6: Option<String>,
    pub gateway6: Option<Ipv6Addr>,
    /// Dynamic IPv6 addresses come from this prefix of `subnet6` only.
    pub ip_range6: Option<String>,
    /// The IPv6 subnet was chosen by the daemon.
    pub auto_subnet6: bool,
    /// Endpoints by container ID: the leases.
    pub endpoints: BTreeMap<String, Endpoint>,
}

impl Default for Network {
    fn default() -> Self {
        Network {
            id: String::new(),
            name: String::new(),
            driver: "bridge".into(),
            created: String::new(),
            subnet: None,
            gateway: None,
            internal: false,
            labels: BTreeMap::new(),
            options: BTreeMap::new(),
            bridge: String::new(),
            auto_subnet: false,
            ip_range: None,
            enable_ipv6: false,
            subnet6: None,
            gateway6: None,
            ip_range6: None,
            auto_subnet6: false,
            endpoints: BTreeMap::new(),
        }
    }
}

impl Network {
    /// Built in (`bridge`, `host`, `none`): never removed.
    pub fn builtin(&self) -> bool {
        matches!(self.name.as_str(), "bridge" | "host" | "none")
    }

    pub fn user_defined(&self) -> bool {
        !self.builtin()
    }

    fn subnet(&self) -> Option<Subnet> {
        self.subnet.as_deref().and_then(|s| Subnet::parse(s).ok())
    }

    fn subnet6(&self) -> Option<Subnet6> {
        self.subnet6.as_deref().and_then(|s| Subnet6::parse(s).ok())
    }

    fn ip_range(&self) -> Option<Subnet> {
        self.ip_range.as_deref().and_then(|s| Subnet::parse(s).ok())
    }

    fn ip_range6(&self) -> Option<Subnet6> {
        self.ip_range6
            .as_deref()
            .and_then(|s| Subnet6::parse(s).ok())
    }
}

/// One IPAM entry of `network create` (`--subnet`, `--gateway`,
/// `--ip-range`), IPv4 or IPv6 by the subnet's form.
#[derive(Debug, Clone, Default)]
pub struct IpamRequest {
    pub subnet: Option<String>,
    pub gateway: Option<String>,
    pub ip_range: Option<String>,
}

/// What `network create` asks for.
#[derive(Debug, Clone, Default)]
pub struct CreateRequest {
    pub name: String,
    pub driver: String,
    pub ipam: Vec<IpamRequest>,
    pub enable_ipv6: bool,
    pub internal: bool,
    pub labels: BTreeMap<String, String>,
    pub options: BTreeMap<String, String>,
}

/// A container on a network.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct Endpoint {
    pub id: String,
    pub container_name: String,
    pub ip: Option<Ipv4Addr>,
    pub prefix: u8,
    pub ip6: Option<Ipv6Addr>,
    pub prefix6: u8,
    pub mac: String,
    pub aliases: Vec<String>,
    /// The interface inside the container (`eth0`, `eth1`, ...).
    pub ifname: String,
    /// The host side of the veth pair.
    pub host_veth: String,
}

/// A published port as it is in effect.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PortMapping {
    /// `80/tcp`.
    pub container_port: String,
    /// `0.0.0.0` for every address.
    pub host_ip: String,
    pub host_port: u16,
}

/// A requested port binding (from `PortBindings` / `-P`).
#[derive(Debug, Clone)]
pub struct PortRequest {
    pub container_port: u16,
    pub proto: String,
    pub host_ip: Option<Ipv4Addr>,
    /// 0: pick a free one.
    pub host_port: u16,
}

/// What a container asks of one network when it starts.
#[derive(Debug, Clone, Default)]
pub struct AttachRequest {
    pub network: String,
    pub aliases: Vec<String>,
    pub ip: Option<Ipv4Addr>,
    pub ip6: Option<Ipv6Addr>,
}

/// What the engine needs after attaching: addresses for /etc/hosts and
/// the resolver to put in /etc/resolv.conf.
#[derive(Debug, Clone, Default)]
pub struct Attached {
    pub ip: Option<Ipv4Addr>,
    pub ip6: Option<Ipv6Addr>,
    pub nameserver: Option<Ipv4Addr>,
}

#[derive(Default)]
struct State {
    networks: BTreeMap<String, Network>,
    /// Published ports by container ID.
    ports: BTreeMap<String, Vec<PortMapping>>,
    /// Sockets that hold published host ports so nothing else takes them.
    reserved: HashMap<String, Vec<Reservation>>,
    dns: HashMap<String, (dns::Names, dns::Responder)>,
    /// Bridges set up on the host in this daemon's life.
    up: HashSet<String>,
}

#[allow(dead_code)]
enum Reservation {
    Tcp(std::net::TcpListener),
    Udp(std::net::UdpSocket),
    /// The relay from the host's `[::1]:port`; stops when dropped.
    Relay(proxy::Relay),
}

/// The network subsystem.
pub struct Manager {
    cfg: Config,
    nl: Netlink,
    mtu: u32,
    state: Mutex<State>,
    teardown: Arc<Teardown>,
}

/// Host-side veths of released endpoints that are still being deleted.
///
/// Deleting a link waits for the kernel to quiesce it (RCU grace periods,
/// tens of milliseconds on a busy host), so [`Manager::release`] drops the
/// endpoint from the records and unpins the namespace at once and leaves
/// the link deletion to a task. Links are deleted by index, so a new link
/// of the same name (the container started again) is never hit. Should the
/// daemon die first, the link is a port of our bridge that no record
/// names, and [`Manager::open`] deletes it at the next start.
#[derive(Default)]
struct Teardown {
    /// Link names whose deletion is under way.
    pending: std::sync::Mutex<HashSet<String>>,
    /// Signalled each time a deletion ends.
    done: tokio::sync::Notify,
}

impl Teardown {
    fn pending(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

fn new_id() -> String {
    let mut b = [0u8; 32];
    rand::Rng::fill(&mut rand::rng(), &mut b);
    hex::encode(b)
}

fn now() -> String {
    vessel_runtime::state::now_rfc3339()
}

fn mac_of(ip: Ipv4Addr) -> [u8; 6] {
    let o = ip.octets();
    [0x02, 0x42, o[0], o[1], o[2], o[3]]
}

fn mac_string(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A host-wide lock so daemons starting together do not choose the same
/// subnet.
fn subnet_lock() -> Result<nix::fcntl::Flock<std::fs::File>> {
    let dir = Path::new("/run/lock");
    std::fs::create_dir_all(dir).map_err(io("create /run/lock"))?;
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("vessel-network.lock"))
        .map_err(io("open /run/lock/vessel-network.lock"))?;
    nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive).map_err(|(_, e)| Error::Io {
        what: "lock /run/lock/vessel-network.lock".into(),
        source: e.into(),
    })
}

impl Manager {
    /// Load the records, set up every bridge, the DNS responders and the
    /// firewall table. `live` are the containers still running (from a
    /// previous daemon): their endpoints stay, the rest are cleaned up.
    pub async fn open(cfg: Config, live: &HashSet<String>) -> Result<Arc<Manager>> {
        std::fs::create_dir_all(&cfg.dir).map_err(io(format!("create {}", cfg.dir.display())))?;
        std::fs::create_dir_all(&cfg.netns_dir)
            .map_err(io(format!("create {}", cfg.netns_dir.display())))?;
        let nl = Netlink::open()?;
        let mtu = nl.host_mtu().await;
        let mut st = State::default();
        for e in std::fs::read_dir(&cfg.dir)
            .map_err(io(format!("read {}", cfg.dir.display())))?
            .flatten()
        {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "json")
                && p.file_stem().is_some_and(|s| s != "ports")
            {
                match std::fs::read(&p)
                    .ok()
                    .and_then(|b| serde_json::from_slice::<Network>(&b).ok())
                {
                    Some(n) => {
                        st.networks.insert(n.id.clone(), n);
                    }
                    None => {
                        tracing::warn!(path = %p.display(), "unreadable network record skipped");
                    }
                }
            }
        }
        if let Ok(b) = std::fs::read(cfg.dir.join("ports.json")) {
            st.ports = serde_json::from_slice(&b).unwrap_or_default();
        }
        let m = Arc::new(Manager {
            cfg,
            nl,
            mtu,
            state: Mutex::new(st),
            teardown: Arc::default(),
        });
        {
            let mut st = m.state.lock().await;
            for (name, driver) in [("host", "host"), ("none", "null"), ("bridge", "bridge")] {
                if !st.networks.values().any(|n| n.name == name) {
                    let n = Network {
                        id: new_id(),
                        name: name.into(),
                        driver: driver.into(),
                        created: now(),
                        bridge: if driver == "bridge" {
                            m.cfg.default_bridge.clone()
                        } else {
                            String::new()
                        },
                        auto_subnet: true,
                        options: if driver == "bridge" {
                            BTreeMap::from([
                                (
                                    "com.docker.network.bridge.name".to_string(),
                                    m.cfg.default_bridge.clone(),
                                ),
                                (
                                    "com.docker.network.bridge.default_bridge".to_string(),
                                    "true".to_string(),
                                ),
                            ])
                        } else {
                            BTreeMap::new()
                        },
                        ..Network::default()
                    };
                    m.save(&n)?;
                    st.networks.insert(n.id.clone(), n);
                }
            }
            m.reconcile(&mut st, live).await;
        }
        Ok(m)
    }

    fn save(&self, n: &Network) -> Result<()> {
        let p = self.cfg.dir.join(format!("{}.json", n.id));
        let data = serde_json::to_vec_pretty(n).map_err(|e| Error::Invalid {
            what: format!("encode network {}: {e}", n.name),
        })?;
        crate::engine::container::write_atomic(&p, &data).map_err(|e| Error::Invalid {
            what: format!("save network {}: {}", n.name, e.message),
        })
    }

    fn save_ports(&self, st: &State) -> Result<()> {
        let data = serde_json::to_vec(&st.ports).map_err(|e| Error::Invalid {
            what: format!("encode published ports: {e}"),
        })?;
        crate::engine::container::write_atomic(&self.cfg.dir.join("ports.json"), &data).map_err(
            |e| Error::Invalid {
                what: format!("save published ports: {}", e.message),
            },
        )
    }

    /// Bring the host in line with the records: bridges up, DNS running,
    /// endpoints of containers that are gone removed, stray veths on our
    /// bridges deleted, the firewall table replaced.
    async fn reconcile(&self, st: &mut State, live: &HashSet<String>) {
        let ids: Vec<String> = st.networks.keys().cloned().collect();
        for id in ids {
            let Some(mut n) = st.networks.get(&id).cloned() else {
                continue;
            };
            let dead: Vec<String> = n
                .endpoints
                .keys()
                .filter(|c| !live.contains(*c))
                .cloned()
                .collect();
            for c in &dead {
                if let Some(ep) = n.endpoints.remove(c) {
                    let _ = self.nl.delete(&ep.host_veth).await;
                }
            }
            if n.driver == "bridge" {
                if let Err(e) = self.bridge_up(st, &mut n).await {
                    tracing::warn!(network = %n.name, error = %crate::engine::error::chain(&e), "bridge setup");
                }
                if let Ok(Some(idx)) = self.nl.index(&n.bridge).await {
                    let ours: HashSet<&str> =
                        n.endpoints.values().map(|e| e.host_veth.as_str()).collect();
                    for port in self.nl.ports_of(idx).await.unwrap_or_default() {
                        if !ours.contains(port.as_str()) {
                            tracing::info!(veth = %port, "removing a stale veth");
                            let _ = self.nl.delete(&port).await;
                        }
                    }
                }
            }
            let _ = self.save(&n);
            st.networks.insert(id, n);
        }
        st.ports.retain(|c, _| live.contains(c));
        let _ = self.save_ports(st);
        let relays: Vec<(String, Vec<Reservation>)> = st
            .ports
            .iter()
            .map(|(c, maps)| (c.clone(), Self::relays(st, c, maps)))
            .collect();
        for (c, r) in relays {
            st.reserved.entry(c).or_default().extend(r);
        }
        if let Ok(dir) = std::fs::read_dir(&self.cfg.netns_dir) {
            for e in dir.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if !live.contains(&name) {
                    let _ = netns::remove(&e.path());
                }
            }
        }
        Self::refresh_dns(st);
        if let Err(e) = self.apply_firewall(st) {
            tracing::warn!(error = %e, "firewall table");
        }
    }

    /// Create the bridge of `n` on the host (choosing a subnet first if it
    /// has none) and start its DNS responder.
    async fn bridge_up(&self, st: &mut State, n: &mut Network) -> Result<()> {
        if st.up.contains(&n.bridge) {
            return Ok(());
        }
        let _lock = subnet_lock()?;
        let mut exists = self.nl.index(&n.bridge).await?.is_some();
        if exists && n.subnet.is_none() {
            // A device by our name but no record of its subnet: left by a
            // daemon whose state is gone. Start it afresh.
            tracing::info!(bridge = %n.bridge, "replacing a bridge with no record");
            self.nl.delete(&n.bridge).await?;
            exists = false;
        }
        if !exists {
            let mut used: Vec<Subnet> = self
                .nl
                .routed_v4()
                .await?
                .into_iter()
                .map(|(a, p)| Subnet::new(a, p))
                .collect();
            used.extend(
                st.networks
                    .values()
                    .filter(|o| o.id != n.id)
                    .filter_map(Network::subnet),
            );
            let clash = n
                .subnet()
                .is_some_and(|s| used.iter().any(|u| u.overlaps(&s)));
            if n.subnet.is_none() || (clash && n.auto_subnet) {
                let s = ipam::pick(&used, n.name != "bridge").ok_or_else(|| Error::Invalid {
                    what: "no free private subnet left for a network".into(),
                })?;
                n.subnet = Some(s.to_string());
                n.gateway = Some(s.first());
                n.auto_subnet = true;
                n.endpoints.clear();
                self.save(n)?;
            } else if clash {
                return Err(Error::Conflict {
                    what: format!(
                        "network {}: subnet {} overlaps a route of the host",
                        n.name,
                        n.subnet.clone().unwrap_or_default()
                    ),
                });
            }
        }
        let s = n.subnet().ok_or_else(|| Error::Invalid {
            what: format!("network {} has no subnet", n.name),
        })?;
        let gw = n.gateway.unwrap_or_else(|| s.first());
        self.nl
            .ensure_bridge(&n.bridge, gw, s.prefix, self.mtu)
            .await?;
        // Let DNAT from 127.0.0.1 reach containers on this bridge (only
        // this interface's setting; nothing host-wide changes).
        let _ = std::fs::write(
            format!("/proc/sys/net/ipv4/conf/{}/route_localnet", n.bridge),
            "1",
        );
        if n.enable_ipv6 {
            let s6 = n.subnet6().ok_or_else(|| Error::Invalid {
                what: format!("network {} has IPv6 enabled but no IPv6 subnet", n.name),
            })?;
            let gw6 = n.gateway6.unwrap_or_else(|| s6.first());
            self.nl.ensure_addr6(&n.bridge, gw6, s6.prefix).await?;
        }
        enable_forwarding(n.enable_ipv6);
        st.up.insert(n.bridge.clone());
        Ok(())
    }

    /// Restart the DNS responders so each bridge has one with the current
    /// names.
    fn refresh_dns(st: &mut State) {
        let nets: Vec<Network> = st.networks.values().cloned().collect();
        st.dns.retain(|id, _| nets.iter().any(|n| &n.id == id));
        for n in nets.iter().filter(|n| n.driver == "bridge") {
            let names = if let Some((names, _)) = st.dns.get(&n.id) {
                names.clone()
            } else {
                let Some(gw) = n.gateway else { continue };
                if !st.up.contains(&n.bridge) {
                    continue;
                }
                let names: dns::Names = Arc::default();
                match dns::start(gw, names.clone()) {
                    Ok(r) => {
                        st.dns.insert(n.id.clone(), (names.clone(), r));
                    }
                    Err(e) => {
                        tracing::warn!(network = %n.name, error = %crate::engine::error::chain(&e), "DNS responder");
                        continue;
                    }
                }
                names
            };
            let mut map = HashMap::new();
            if n.user_defined() {
                for (cid, ep) in &n.endpoints {
                    let addrs = dns::Addrs {
                        v4: ep.ip,
                        v6: ep.ip6,
                    };
                    if addrs == dns::Addrs::default() {
                        continue;
                    }
                    map.insert(ep.container_name.to_ascii_lowercase(), addrs);
                    map.insert(cid[..12].to_string(), addrs);
                    for a in &ep.aliases {
                        map.insert(a.to_ascii_lowercase(), addrs);
                    }
                }
            }
            *names
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = map;
        }
    }

    fn apply_firewall(&self, st: &State) -> Result<()> {
        let bridges: Vec<nft::BridgeRules> = st
            .networks
            .values()
            .filter(|n| n.driver == "bridge" && st.up.contains(&n.bridge))
            .filter_map(|n| {
                let s = n.subnet()?;
                Some(nft::BridgeRules {
                    bridge: n.bridge.clone(),
                    subnet: s.addr,
                    prefix: s.prefix,
                    subnet6: n
                        .enable_ipv6
                        .then(|| n.subnet6())
                        .flatten()
                        .map(|s6| (s6.addr, s6.prefix)),
                    internal: n.internal,
                })
            })
            .collect();
        let mut ports = Vec::new();
        for (cid, maps) in &st.ports {
            let Some(ip) = Self::primary_ip(st, cid) else {
                continue;
            };
            let ip6 = Self::primary_ip6(st, cid);
            for p in maps {
                let (port, proto) = p
                    .container_port
                    .split_once('/')
                    .unwrap_or((&p.container_port, "tcp"));
                let Ok(port) = port.parse() else { continue };
                ports.push(nft::PortRule {
                    proto: proto.to_string(),
                    host_ip: p
                        .host_ip
                        .parse::<Ipv4Addr>()
                        .ok()
                        .filter(|a| !a.is_unspecified()),
                    host_port: p.host_port,
                    container_ip: ip,
                    container_ip6: ip6,
                    container_port: port,
                });
            }
        }
        if bridges.is_empty() && ports.is_empty() {
            return nft::delete(&self.cfg.prefix);
        }
        nft::apply(
            &self.cfg.prefix,
            &nft::render(&self.cfg.prefix, &bridges, &ports),
        )
    }

    fn primary_ip(st: &State, cid: &str) -> Option<Ipv4Addr> {
        st.networks
            .values()
            .filter_map(|n| n.endpoints.get(cid))
            .filter(|e| e.ifname == "eth0")
            .find_map(|e| e.ip)
    }

    fn primary_ip6(st: &State, cid: &str) -> Option<Ipv6Addr> {
        st.networks
            .values()
            .filter_map(|n| n.endpoints.get(cid))
            .filter(|e| e.ifname == "eth0")
            .find_map(|e| e.ip6)
    }

    /// Relays from `[::1]` for the TCP ports of `cid` published on every
    /// address (see [`proxy`]). A port that cannot be relayed is logged
    /// and left to the IPv4 forwarding.
    fn relays(st: &State, cid: &str, maps: &[PortMapping]) -> Vec<Reservation> {
        let Some(ip) = Self::primary_ip(st, cid) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for p in maps {
            let Some((port, "tcp")) = p.container_port.split_once('/') else {
                continue;
            };
            let Ok(port) = port.parse::<u16>() else {
                continue;
            };
            if !p
                .host_ip
                .parse::<IpAddr>()
                .is_ok_and(|a| a.is_unspecified())
            {
                continue;
            }
            match proxy::start(p.host_port, SocketAddr::new(IpAddr::V4(ip), port)) {
                Ok(Some(r)) => out.push(Reservation::Relay(r)),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(container = %cid, error = %crate::engine::error::chain(&e), "no relay from ::1");
                }
            }
        }
        out
    }

    // ----- lookup -----

    fn find<'a>(st: &'a State, reference: &str) -> Result<&'a Network> {
        if let Some(n) = st.networks.get(reference) {
            return Ok(n);
        }
        if let Some(n) = st.networks.values().find(|n| n.name == reference) {
            return Ok(n);
        }
        let m: Vec<&Network> = st
            .networks
            .values()
            .filter(|n| !reference.is_empty() && n.id.starts_with(reference))
            .collect();
        match m.len() {
            1 => Ok(m[0]),
            0 => Err(Error::NotFound {
                what: format!("network {reference} not found"),
            }),
            _ => Err(Error::Invalid {
                what: format!(
                    "network {reference} is ambiguous ({} matches found based on ID prefix)",
                    m.len()
                ),
            }),
        }
    }

    /// One network by ID, name or ID prefix.
    pub async fn get(&self, reference: &str) -> Result<Network> {
        let st = self.state.lock().await;
        Self::find(&st, reference).cloned()
    }

    /// Every network.
    pub async fn list(&self) -> Vec<Network> {
        let st = self.state.lock().await;
        let mut v: Vec<Network> = st.networks.values().cloned().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// The endpoints of a container (network, endpoint) and its ports.
    pub async fn of_container(&self, cid: &str) -> (Vec<(Network, Endpoint)>, Vec<PortMapping>) {
        let st = self.state.lock().await;
        let eps = st
            .networks
            .values()
            .filter_map(|n| n.endpoints.get(cid).map(|e| (n.clone(), e.clone())))
            .collect();
        (eps, st.ports.get(cid).cloned().unwrap_or_default())
    }

    /// Whether `mode` names a bridge network (the default or a user one).
    pub async fn is_bridge(&self, mode: &str) -> bool {
        let st = self.state.lock().await;
        Self::find(&st, mode).is_ok_and(|n| n.driver == "bridge")
    }

    // ----- networks -----

    /// `network create`.
    pub async fn create(&self, req: CreateRequest) -> Result<String> {
        let CreateRequest {
            name,
            driver,
            ipam,
            mut enable_ipv6,
            internal,
            labels,
            options,
        } = req;
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
        {
            return Err(Error::Invalid {
                what: format!(
                    "invalid network name {name:?}: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed"
                ),
            });
        }
        match driver.as_str() {
            "" | "bridge" => {}
            "host" | "null" => {
                return Err(Error::Forbidden {
                    what: format!("only one instance of \"{driver}\" network is allowed"),
                });
            }
            other => {
                return Err(Error::NotFound {
                    what: format!(
                        "plugin \"{other}\" not found: only the bridge driver is available"
                    ),
                });
            }
        }
        let pools = parse_ipam(&ipam)?;
        if pools.v6.is_some() {
            enable_ipv6 = true;
        }
        let mut st = self.state.lock().await;
        if st.networks.values().any(|n| n.name == name) {
            return Err(Error::Conflict {
                what: format!("network with name {name} already exists"),
            });
        }
        let pool_clash = |o: &Network| -> bool {
            pools
                .v4
                .is_some_and(|(s, ..)| o.subnet().is_some_and(|x| x.overlaps(&s)))
                || pools
                    .v6
                    .is_some_and(|(s, ..)| o.subnet6().is_some_and(|x| x.overlaps(&s)))
        };
        if let Some(o) = st.networks.values().find(|o| pool_clash(o)) {
            return Err(Error::Forbidden {
                what: format!(
                    "invalid pool request: Pool overlaps with other one on this address space (network {})",
                    o.name
                ),
            });
        }
        let id = new_id();
        let mut subnet6 = pools.v6.map(|(s, ..)| s);
        if enable_ipv6 {
            let mut used: Vec<Subnet6> = self
                .nl
                .routed_v6()
                .await?
                .into_iter()
                .map(|(a, p)| Subnet6::new(a, p))
                .collect();
            used.extend(st.networks.values().filter_map(Network::subnet6));
            if let Some(s) = subnet6 {
                if used.iter().any(|u| u.overlaps(&s)) {
                    return Err(Error::Conflict {
                        what: format!(
                            "network {name}: subnet {s} overlaps a route of the host or another network"
                        ),
                    });
                }
            } else {
                subnet6 = (0..64)
                    .map(|i| Subnet6::unique_local(&format!("{id}/{i}")))
                    .find(|s| !used.iter().any(|u| u.overlaps(s)));
                if subnet6.is_none() {
                    return Err(Error::Invalid {
                        what: "no free IPv6 subnet left for a network".into(),
                    });
                }
            }
        }
        let prefix: String = self.cfg.prefix.chars().take(8).collect();
        let mut n = Network {
            id: id.clone(),
            name: name.clone(),
            driver: "bridge".into(),
            created: now(),
            subnet: pools.v4.map(|(s, ..)| s.to_string()),
            gateway: pools.v4.map(|(s, g, _)| g.unwrap_or_else(|| s.first())),
            internal,
            labels,
            bridge: options
                .get("com.docker.network.bridge.name")
                .cloned()
                .unwrap_or_else(|| format!("{prefix}-{}", &id[..6])),
            options,
            auto_subnet: pools.v4.is_none(),
            ip_range: pools.v4.and_then(|(.., r)| r).map(|r| r.to_string()),
            enable_ipv6,
            subnet6: subnet6.map(|s| s.to_string()),
            gateway6: subnet6.map(|s| {
                pools
                    .v6
                    .and_then(|(_, g, _)| g)
                    .unwrap_or_else(|| s.first())
            }),
            ip_range6: pools.v6.and_then(|(.., r)| r).map(|r| r.to_string()),
            auto_subnet6: enable_ipv6 && pools.v6.is_none(),
            endpoints: BTreeMap::new(),
        };
        self.bridge_up(&mut st, &mut n).await?;
        self.save(&n)?;
        st.networks.insert(id.clone(), n);
        Self::refresh_dns(&mut st);
        self.apply_firewall(&st)?;
        Ok(id)
    }

    /// `network rm`.
    pub async fn remove(&self, reference: &str) -> Result<String> {
        let mut st = self.state.lock().await;
        let n = Self::find(&st, reference)?.clone();
        if n.builtin() {
            return Err(Error::Forbidden {
                what: format!("{} is a pre-defined network and cannot be removed", n.name),
            });
        }
        if !n.endpoints.is_empty() {
            return Err(Error::Forbidden {
                what: format!(
                    "error while removing network: network {} id {} has active endpoints",
                    n.name, n.id
                ),
            });
        }
        st.networks.remove(&n.id);
        st.dns.remove(&n.id);
        st.up.remove(&n.bridge);
        let mut errs = Vec::new();
        if let Err(e) = self.apply_firewall(&st) {
            errs.push(e.to_string());
        }
        if let Err(e) = self.nl.delete(&n.bridge).await {
            errs.push(crate::engine::error::chain(&e));
        }
        if let Err(e) = std::fs::remove_file(self.cfg.dir.join(format!("{}.json", n.id))) {
            errs.push(format!("remove the record: {e}"));
        }
        if !errs.is_empty() {
            tracing::warn!(network = %n.name, errors = ?errs, "network removal");
        }
        Ok(n.name)
    }

    /// `network prune`: user networks without endpoints.
    pub async fn prune(&self) -> Vec<String> {
        let victims: Vec<String> = self
            .list()
            .await
            .into_iter()
            .filter(|n| n.user_defined() && n.endpoints.is_empty())
            .map(|n| n.id)
            .collect();
        let mut out = Vec::new();
        for id in victims {
            if let Ok(name) = self.remove(&id).await {
                out.push(name);
            }
        }
        out
    }

    // ----- containers -----

    /// Where a container's namespace is pinned.
    pub fn netns_path(&self, cid: &str) -> PathBuf {
        netns::path(&self.cfg.netns_dir, cid)
    }

    /// Create the container's namespace (if it is not there yet).
    pub fn create_netns(&self, cid: &str) -> Result<PathBuf> {
        let p = self.netns_path(cid);
        netns::create(&p)?;
        Ok(p)
    }

    /// Attach a container to a network: a lease, a veth pair from the
    /// bridge into the container's namespace, addresses and (for its first
    /// interface) the default route.
    pub async fn attach(
        &self,
        cid: &str,
        cname: &str,
        req: &AttachRequest,
        netns: &Path,
    ) -> Result<Attached> {
        let mut st = self.state.lock().await;
        let mut n = Self::find(&st, &req.network)?.clone();
        if n.driver != "bridge" {
            return Err(Error::Invalid {
                what: format!(
                    "container cannot be connected to network {}: it uses the {} driver",
                    n.name, n.driver
                ),
            });
        }
        if n.endpoints.contains_key(cid) {
            return Err(Error::Forbidden {
                what: format!(
                    "endpoint with name {cname} already exists in network {}",
                    n.name
                ),
            });
        }
        self.bridge_up(&mut st, &mut n).await?;
        let s = n.subnet().ok_or_else(|| Error::Invalid {
            what: format!("network {} has no subnet", n.name),
        })?;
        let gw = n.gateway.unwrap_or_else(|| s.first());
        if req.ip.is_some() || req.ip6.is_some() {
            if !n.user_defined() {
                return Err(Error::Invalid {
                    what: "user specified IP address is supported on user defined networks only"
                        .into(),
                });
            }
            if (req.ip.is_some() && n.auto_subnet) || (req.ip6.is_some() && n.auto_subnet6) {
                return Err(Error::Invalid {
                    what: "user specified IP address is supported only when connecting to networks with user configured subnets".into(),
                });
            }
        }
        let mut taken: Vec<Ipv4Addr> = n.endpoints.values().filter_map(|e| e.ip).collect();
        taken.push(gw);
        let ip = match req.ip {
            Some(ip) if !s.contains(ip) || ip == s.addr || ip == s.last() => {
                return Err(Error::Invalid {
                    what: format!(
                        "invalid address {ip}: it does not belong to subnet {s} of network {}",
                        n.name
                    ),
                });
            }
            Some(ip) if taken.contains(&ip) => {
                return Err(Error::Conflict {
                    what: format!("address {ip} is already in use in network {}", n.name),
                });
            }
            Some(ip) => ip,
            None => s
                .allocate_in(n.ip_range(), &taken)
                .ok_or_else(|| Error::Conflict {
                    what: format!("no free address left in network {}", n.name),
                })?,
        };
        let v6 = if n.enable_ipv6 {
            let s6 = n.subnet6().ok_or_else(|| Error::Invalid {
                what: format!("network {} has IPv6 enabled but no IPv6 subnet", n.name),
            })?;
            let gw6 = n.gateway6.unwrap_or_else(|| s6.first());
            let mut taken6: Vec<Ipv6Addr> = n.endpoints.values().filter_map(|e| e.ip6).collect();
            taken6.push(gw6);
            let ip6 = match req.ip6 {
                Some(ip6) if !s6.contains(ip6) || ip6 == s6.addr => {
                    return Err(Error::Invalid {
                        what: format!(
                            "invalid address {ip6}: it does not belong to subnet {s6} of network {}",
                            n.name
                        ),
                    });
                }
                Some(ip6) if taken6.contains(&ip6) => {
                    return Err(Error::Conflict {
                        what: format!("address {ip6} is already in use in network {}", n.name),
                    });
                }
                Some(ip6) => ip6,
                None => s6
                    .allocate_in(n.ip_range6(), &taken6)
                    .ok_or_else(|| Error::Conflict {
                        what: format!("no free IPv6 address left in network {}", n.name),
                    })?,
            };
            Some(netlink::Inside6 {
                ip: ip6,
                prefix: s6.prefix,
                gateway: Some(gw6),
            })
        } else if let Some(ip6) = req.ip6 {
            return Err(Error::Invalid {
                what: format!(
                    "invalid address {ip6}: network {} has no IPv6 subnet",
                    n.name
                ),
            });
        } else {
            None
        };
        let used_ifs: Vec<String> = st
            .networks
            .values()
            .filter_map(|o| o.endpoints.get(cid))
            .map(|e| e.ifname.clone())
            .collect();
        let slot = (0..16)
            .find(|i| !used_ifs.contains(&format!("eth{i}")))
            .ok_or_else(|| Error::Conflict {
                what: format!("container {cname} is on too many networks"),
            })?;
        let ifname = format!("eth{slot}");
        let host_veth = format!("ve{}{slot:x}", &cid[..11]);
        let bridge = self
            .nl
            .index(&n.bridge)
            .await?
            .ok_or_else(|| Error::NotFound {
                what: format!("bridge {} of network {} is missing", n.bridge, n.name),
            })?;
        let mac = mac_of(ip);
        if self.teardown.pending().contains(&host_veth) {
            // The container's previous link of this name is still being
            // deleted: finish that first.
            self.nl.delete(&host_veth).await?;
        }
        let t = crate::engine::timing::step("start", "add veth", cid);
        self.nl
            .add_veth(&host_veth, &ifname, self.mtu, bridge, netns, mac)
            .await?;
        drop(t);
        let (ifn, prefix) = (ifname.clone(), s.prefix);
        let route = (slot == 0).then_some(gw);
        let inside6 = v6.map(|v| netlink::Inside6 {
            gateway: v.gateway.filter(|_| slot == 0),
            ..v
        });
        let t = crate::engine::timing::step("start", "configure inside", cid);
        let configured = netlink::in_netns(netns, move |nl| async move {
            nl.configure_inside(&ifn, ip, prefix, route, inside6).await
        })
        .await;
        drop(t);
        if let Err(e) = configured {
            let _ = self.nl.delete(&host_veth).await;
            return Err(e);
        }
        let mut aliases = req.aliases.clone();
        if n.user_defined() && !aliases.iter().any(|a| a == &cid[..12]) {
            aliases.push(cid[..12].to_string());
        }
        n.endpoints.insert(
            cid.to_string(),
            Endpoint {
                id: new_id(),
                container_name: cname.to_string(),
                ip: Some(ip),
                prefix: s.prefix,
                ip6: v6.map(|v| v.ip),
                prefix6: v6.map_or(0, |v| v.prefix),
                mac: mac_string(mac),
                aliases,
                ifname,
                host_veth,
            },
        );
        let t = crate::engine::timing::step("start", "save network", cid);
        self.save(&n)?;
        drop(t);
        let nameserver = st.dns.contains_key(&n.id).then_some(gw);
        st.networks.insert(n.id.clone(), n);
        Self::refresh_dns(&mut st);
        Ok(Attached {
            ip: Some(ip),
            ip6: v6.map(|v| v.ip),
            nameserver: nameserver.or(Some(gw)),
        })
    }

    /// Detach a container from one network (its veth goes too).
    pub async fn detach(&self, cid: &str, network: &str) -> Result<()> {
        let mut st = self.state.lock().await;
        let mut n = Self::find(&st, network)?.clone();
        let Some(ep) = n.endpoints.remove(cid) else {
            return Ok(());
        };
        self.nl.delete(&ep.host_veth).await?;
        self.save(&n)?;
        st.networks.insert(n.id.clone(), n);
        Self::refresh_dns(&mut st);
        self.apply_firewall(&st)
    }

    /// Publish ports of a container (after its endpoints exist).
    pub async fn publish(&self, cid: &str, reqs: &[PortRequest]) -> Result<Vec<PortMapping>> {
        if reqs.is_empty() {
            return Ok(Vec::new());
        }
        let mut st = self.state.lock().await;
        if Self::primary_ip(&st, cid).is_none() {
            // No bridge endpoint: nothing to forward to (host/none modes).
            return Ok(Vec::new());
        }
        let mut maps = Vec::new();
        let mut held = Vec::new();
        for r in reqs {
            let ip = r.host_ip.unwrap_or(Ipv4Addr::UNSPECIFIED);
            let sa = SocketAddr::new(IpAddr::V4(ip), r.host_port);
            let (port, res) = if r.proto == "udp" {
                let s = std::net::UdpSocket::bind(sa);
                let s = s.map_err(|e| Error::Conflict {
                    what: format!("Bind for {sa} failed: port is already allocated ({e})"),
                })?;
                let p = s.local_addr().map_or(r.host_port, |a| a.port());
                (p, Reservation::Udp(s))
            } else {
                let s = std::net::TcpListener::bind(sa).map_err(|e| Error::Conflict {
                    what: format!("Bind for {sa} failed: port is already allocated ({e})"),
                })?;
                let p = s.local_addr().map_or(r.host_port, |a| a.port());
                (p, Reservation::Tcp(s))
            };
            held.push(res);
            maps.push(PortMapping {
                container_port: format!("{}/{}", r.container_port, r.proto),
                host_ip: ip.to_string(),
                host_port: port,
            });
        }
        held.extend(Self::relays(&st, cid, &maps));
        st.ports.insert(cid.to_string(), maps.clone());
        st.reserved.insert(cid.to_string(), held);
        self.save_ports(&st)?;
        if let Err(e) = self.apply_firewall(&st) {
            st.ports.remove(cid);
            st.reserved.remove(cid);
            let _ = self.save_ports(&st);
            return Err(e);
        }
        Ok(maps)
    }

    /// Everything a stopped container held: ports, endpoints, namespace.
    /// Keeps going on errors and reports them all at the end.
    pub async fn release(&self, cid: &str) -> Result<()> {
        let mut st = self.state.lock().await;
        let mut errs = Vec::new();
        let mut links = Vec::new();
        let had_ports = st.ports.remove(cid).is_some();
        st.reserved.remove(cid);
        if had_ports {
            if let Err(e) = self.save_ports(&st) {
                errs.push(e.to_string());
            }
        }
        let ids: Vec<String> = st
            .networks
            .values()
            .filter(|n| n.endpoints.contains_key(cid))
            .map(|n| n.id.clone())
            .collect();
        for id in &ids {
            let Some(mut n) = st.networks.get(id).cloned() else {
                continue;
            };
            if let Some(ep) = n.endpoints.remove(cid) {
                match self.nl.index(&ep.host_veth).await {
                    Ok(Some(index)) => links.push((ep.host_veth, index)),
                    Ok(None) => {}
                    Err(e) => errs.push(crate::engine::error::chain(&e)),
                }
            }
            let t = crate::engine::timing::step("release", "save network", cid);
            if let Err(e) = self.save(&n) {
                errs.push(e.to_string());
            }
            drop(t);
            st.networks.insert(id.clone(), n);
        }
        if !ids.is_empty() {
            Self::refresh_dns(&mut st);
        }
        if had_ports {
            if let Err(e) = self.apply_firewall(&st) {
                errs.push(e.to_string());
            }
        }
        let t = crate::engine::timing::step("release", "remove netns", cid);
        if let Err(e) = netns::remove(&self.netns_path(cid)) {
            errs.push(crate::engine::error::chain(&e));
        }
        drop(t);
        self.delete_links_later(links);
        if errs.is_empty() {
            Ok(())
        } else {
            Err(Error::Invalid {
                what: format!("releasing the network of {cid}: {}", errs.join("; ")),
            })
        }
    }

    /// Delete released links (name, index) in a task of their own; see
    /// [`Teardown`].
    fn delete_links_later(&self, links: Vec<(String, u32)>) {
        if links.is_empty() {
            return;
        }
        self.teardown
            .pending()
            .extend(links.iter().map(|(name, _)| name.clone()));
        let nl = self.nl.clone();
        let teardown = self.teardown.clone();
        tokio::spawn(async move {
            for (name, index) in links {
                let t = crate::engine::timing::step("release", "delete veth", &name);
                if let Err(e) = nl.delete_index(index).await {
                    tracing::warn!(link = %name, error = %crate::engine::error::chain(&e), "link deletion");
                }
                drop(t);
                teardown.pending().remove(&name);
                teardown.done.notify_waiters();
            }
        });
    }

    /// Wait until every released link has been deleted.
    pub async fn settled(&self) {
        loop {
            let done = self.teardown.done.notified();
            tokio::pin!(done);
            done.as_mut().enable();
            if self.teardown.pending().is_empty() {
                return;
            }
            done.await;
        }
    }

    /// At daemon shutdown: when no container holds an endpoint any more,
    /// remove our bridges, the firewall table and the DNS responders, so a
    /// stopped daemon leaves nothing on the host. With running containers
    /// everything stays for the next daemon to adopt.
    pub async fn shutdown(&self) {
        if tokio::time::timeout(std::time::Duration::from_secs(10), self.settled())
            .await
            .is_err()
        {
            tracing::warn!(links = ?*self.teardown.pending(), "links still being deleted at shutdown");
        }
        let mut st = self.state.lock().await;
        st.dns.clear();
        if st.networks.values().any(|n| !n.endpoints.is_empty()) {
            return;
        }
        let bridges: Vec<String> = st.up.drain().collect();
        for b in bridges {
            if let Err(e) = self.nl.delete(&b).await {
                tracing::warn!(bridge = %b, error = %crate::engine::error::chain(&e), "bridge removal");
            }
        }
        if let Err(e) = nft::delete(&self.cfg.prefix) {
            tracing::warn!(error = %e, "firewall table removal");
        }
    }
}

/// Turn on IPv4 forwarding (and IPv6 forwarding with `v6`) on the host,
/// as Docker does when it sets up bridge networking: routed traffic
/// (outbound NAT, published ports, hairpin through a host address) needs
/// it. Each switch is looked at once per daemon and logged when turned on.
fn enable_forwarding(v6: bool) {
    use std::sync::atomic::{AtomicBool, Ordering};
    static V4: AtomicBool = AtomicBool::new(false);
    static V6: AtomicBool = AtomicBool::new(false);
    let mut todo = vec![(&V4, "/proc/sys/net/ipv4/ip_forward")];
    if v6 {
        todo.push((&V6, "/proc/sys/net/ipv6/conf/all/forwarding"));
    }
    for (done, path) in todo {
        if done.swap(true, Ordering::SeqCst) {
            continue;
        }
        match std::fs::read_to_string(path) {
            Ok(v) if v.trim() == "0" => match std::fs::write(path, "1") {
                Ok(()) => tracing::info!(sysctl = path, "forwarding turned on for bridge networks"),
                Err(e) => tracing::warn!(sysctl = path, error = %e, "cannot turn on forwarding"),
            },
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(sysctl = path, error = %e, "cannot read the forwarding switch");
            }
        }
    }
}

/// The parsed IPAM entries of `network create`: at most one IPv4 and one
/// IPv6 pool, each (subnet, gateway, range).
#[derive(Default)]
struct Pools {
    v4: Option<(Subnet, Option<Ipv4Addr>, Option<Subnet>)>,
    v6: Option<(Subnet6, Option<Ipv6Addr>, Option<Subnet6>)>,
}

fn parse_ipam(reqs: &[IpamRequest]) -> Result<Pools> {
    let mut out = Pools::default();
    for r in reqs {
        let Some(subnet) = r.subnet.as_deref() else {
            if r.gateway.is_some() || r.ip_range.is_some() {
                return Err(Error::Invalid {
                    what: "a gateway or an IP range needs a subnet (--subnet)".into(),
                });
            }
            continue;
        };
        if subnet.contains(':') {
            if out.v6.is_some() {
                return Err(Error::Invalid {
                    what: "only one IPv6 subnet per network is supported".into(),
                });
            }
            let (s, gw, range) =
                pool::<Subnet6>(subnet, r.gateway.as_deref(), r.ip_range.as_deref())?;
            out.v6 = Some((s, gw, range));
        } else {
            if out.v4.is_some() {
                return Err(Error::Invalid {
                    what: "only one IPv4 subnet per network is supported".into(),
                });
            }
            let (s, gw, range) =
                pool::<Subnet>(subnet, r.gateway.as_deref(), r.ip_range.as_deref())?;
            out.v4 = Some((s, gw, range));
        }
    }
    Ok(out)
}

/// What [`pool`] needs of an IPv4 or IPv6 subnet.
trait Pool: Sized + std::fmt::Display {
    type Addr: std::str::FromStr + PartialEq + Copy + std::fmt::Display;
    fn parse(s: &str) -> Result<Self>;
    fn network(&self) -> Self::Addr;
    fn holds(&self, ip: Self::Addr) -> bool;
    fn covers(&self, inner: &Self) -> bool;
}

impl Pool for Subnet {
    type Addr = Ipv4Addr;
    fn parse(s: &str) -> Result<Self> {
        Subnet::parse(s)
    }
    fn network(&self) -> Ipv4Addr {
        self.addr
    }
    fn holds(&self, ip: Ipv4Addr) -> bool {
        self.contains(ip)
    }
    fn covers(&self, inner: &Self) -> bool {
        Subnet::covers(self, inner)
    }
}

impl Pool for Subnet6 {
    type Addr = Ipv6Addr;
    fn parse(s: &str) -> Result<Self> {
        Subnet6::parse(s)
    }
    fn network(&self) -> Ipv6Addr {
        self.addr
    }
    fn holds(&self, ip: Ipv6Addr) -> bool {
        self.contains(ip)
    }
    fn covers(&self, inner: &Self) -> bool {
        Subnet6::covers(self, inner)
    }
}

/// One IPAM entry of one address family: the subnet, its gateway (a host
/// address of the subnet) and the range addresses are given from (inside
/// the subnet).
fn pool<S: Pool>(
    subnet: &str,
    gateway: Option<&str>,
    ip_range: Option<&str>,
) -> Result<(S, Option<S::Addr>, Option<S>)> {
    let s = S::parse(subnet)?;
    let gw = gateway
        .map(|g| {
            let ip: S::Addr = g.parse().map_err(|_| Error::Invalid {
                what: format!("invalid gateway address {g:?} for subnet {s}"),
            })?;
            if !s.holds(ip) || ip == s.network() {
                return Err(Error::Invalid {
                    what: format!("gateway {ip} is not a host address of subnet {s}"),
                });
            }
            Ok(ip)
        })
        .transpose()?;
    let range = ip_range
        .map(|x| {
            let rg = S::parse(x)?;
            if s.covers(&rg) {
                Ok(rg)
            } else {
                Err(Error::Invalid {
                    what: format!("IP range {rg} is not inside subnet {s}"),
                })
            }
        })
        .transpose()?;
    Ok((s, gw, range))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipam_entries_are_checked_the_same_way_for_both_families() {
        let (s, gw, range) = pool::<Subnet>("10.9.0.0/16", Some("10.9.0.1"), Some("10.9.5.0/24"))
            .expect("a valid v4 entry");
        assert_eq!(s.to_string(), "10.9.0.0/16");
        assert_eq!(gw, Some(Ipv4Addr::new(10, 9, 0, 1)));
        assert_eq!(range.map(|r| r.to_string()).as_deref(), Some("10.9.5.0/24"));
        let (s6, gw6, _) =
            pool::<Subnet6>("fd00:9::/64", Some("fd00:9::1"), None).expect("a valid v6 entry");
        assert_eq!(s6.to_string(), "fd00:9::/64");
        assert_eq!(gw6, Some("fd00:9::1".parse::<Ipv6Addr>().unwrap()));

        let err = |r: Result<_>| match r {
            Err(Error::Invalid { what }) => what,
            Err(e) => panic!("unexpected error {e}"),
            Ok(()) => panic!("accepted"),
        };
        let v4 = |gw, range| pool::<Subnet>("10.9.0.0/16", gw, range).map(drop);
        let v6 = |gw, range| pool::<Subnet6>("fd00:9::/64", gw, range).map(drop);
        assert!(err(v4(Some("10.8.0.1"), None)).contains("not a host address"));
        assert!(err(v4(Some("10.9.0.0"), None)).contains("not a host address"));
        assert!(err(v4(Some("nonsense"), None)).contains("invalid gateway address"));
        assert!(err(v4(None, Some("10.8.0.0/24"))).contains("not inside subnet"));
        assert!(err(v6(Some("fd00:8::1"), None)).contains("not a host address"));
        assert!(err(v6(Some("10.9.0.1"), None)).contains("invalid gateway address"));
        assert!(err(v6(None, Some("fd00:8::/80"))).contains("not inside subnet"));
    }
}
