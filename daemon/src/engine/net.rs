//! The engine's side of networking: which networks a container joins,
//! wiring them before the runtime starts it, publishing its ports, and
//! releasing all of it when it stops. The network module does the work.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::sync::Arc;

use serde_json::{Value, json};

use super::Engine;
use super::container::Container;
use super::error::{Error, Kind, Result};
use crate::network::{self, AttachRequest, Attached, PortRequest};

impl From<network::Error> for Error {
    fn from(e: network::Error) -> Error {
        let kind = match &e {
            network::Error::NotFound { .. } => Kind::NotFound,
            network::Error::Conflict { .. } => Kind::Conflict,
            network::Error::Invalid { .. } => Kind::InvalidArgument,
            network::Error::Forbidden { .. } => Kind::Forbidden,
            _ => Kind::Internal,
        };
        Error::new(kind, super::error::chain(&e))
    }
}

/// How a container is networked.
pub enum Mode {
    Host,
    None,
    Container(String),
    /// Bridge networks (the first is the one named by `NetworkMode`).
    Bridge(Vec<AttachRequest>),
}

/// The networks of `c`: `NetworkMode` first, then the other endpoints of
/// `NetworkingConfig` (and `network connect`).
pub fn requests(c: &Container) -> Vec<AttachRequest> {
    let mode = c.host_config.network_mode.as_str();
    let mut out = Vec::new();
    let req = |name: &str, v: Option<&Value>| AttachRequest {
        network: name.to_string(),
        aliases: v
            .and_then(|v| v.get("Aliases"))
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default(),
        ip: v
            .and_then(|v| v.get("IPAMConfig"))
            .and_then(|v| v.get("IPv4Address"))
            .and_then(Value::as_str)
            .and_then(|s| s.parse::<Ipv4Addr>().ok()),
        ip6: v
            .and_then(|v| v.get("IPAMConfig"))
            .and_then(|v| v.get("IPv6Address"))
            .and_then(Value::as_str)
            .and_then(|s| s.parse::<Ipv6Addr>().ok()),
    };
    let eps = &c.networking.endpoints_config;
    out.push(req(mode, eps.get(mode)));
    for (name, v) in eps {
        if name != mode {
            out.push(req(name, Some(v)));
        }
    }
    out
}

/// The ports to publish: `PortBindings`, and with `-P` every exposed port
/// without a binding on a free host port.
pub fn port_requests(c: &Container) -> Result<Vec<PortRequest>> {
    let mut out = Vec::new();
    let mut keys: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    for (k, v) in &c.host_config.port_bindings {
        let list = if v.is_empty() {
            vec![(String::new(), String::new())]
        } else {
            v.iter()
                .map(|b| (b.host_ip.clone(), b.host_port.clone()))
                .collect()
        };
        keys.insert(k.clone(), list);
    }
    if c.host_config.publish_all_ports {
        for k in c.config.exposed_ports.iter().flat_map(|p| p.keys()) {
            keys.entry(k.clone())
                .or_insert_with(|| vec![(String::new(), String::new())]);
        }
    }
    for (k, binds) in keys {
        let (port, proto) = k.split_once('/').unwrap_or((k.as_str(), "tcp"));
        let container_port: u16 = port
            .parse()
            .map_err(|_| Error::invalid(format!("invalid container port {k:?}")))?;
        if !matches!(proto, "tcp" | "udp") {
            return Err(Error::invalid(format!(
                "port {k}: only tcp and udp can be published"
            )));
        }
        for (hip, hport) in binds {
            let host_ip = match hip.as_str() {
                "" | "0.0.0.0" => None,
                "::" => continue,
                s => Some(s.parse::<Ipv4Addr>().map_err(|_| {
                    Error::invalid(format!("port {k}: invalid host address {s:?}"))
                })?),
            };
            let host_port = if hport.is_empty() {
                0
            } else {
                // A range such as 8000-8010: take its first port.
                let first = hport.split('-').next().unwrap_or_default();
                first
                    .parse::<u16>()
                    .map_err(|_| Error::invalid(format!("port {k}: invalid host port {hport:?}")))?
            };
            out.push(PortRequest {
                container_port,
                proto: proto.to_string(),
                host_ip,
                host_port,
            });
        }
    }
    Ok(out)
}

impl Engine {
    /// The network subsystem, if it came up.
    pub fn network(&self) -> Result<&Arc<network::Manager>> {
        self.network.get().ok_or_else(|| {
            Error::new(
                Kind::Unavailable,
                "bridge networking is unavailable on this daemon (see its log)",
            )
        })
    }

    /// What `NetworkMode` means for `c`. A `--runtime vm` container has no
    /// network interface yet, whatever it asked for (its create warned).
    pub async fn mode(&self, c: &Container) -> Result<Mode> {
        if c.host_config.runtime == super::RUNTIME_VM {
            return Ok(Mode::None);
        }
        let m = c.host_config.network_mode.as_str();
        Ok(match m {
            "host" => Mode::Host,
            "none" => Mode::None,
            _ if m.starts_with("container:") => Mode::Container(m["container:".len()..].into()),
            _ => {
                let net = self.network()?;
                let reqs = requests(c);
                for r in &reqs {
                    let n = net.get(&r.network).await?;
                    if n.driver != "bridge" {
                        return Err(Error::invalid(format!(
                            "container cannot be connected to network {} together with others",
                            n.name
                        )));
                    }
                }
                Mode::Bridge(reqs)
            }
        })
    }

    /// Check a create request's network mode names something that exists.
    pub async fn check_network_mode(&self, mode: &str) -> Result<()> {
        if matches!(mode, "host" | "none" | "bridge") || mode.starts_with("container:") {
            return Ok(());
        }
        self.network()?
            .get(mode)
            .await
            .map(drop)
            .map_err(Error::from)
    }

    /// Wire a bridge-mode container before its start: its own namespace,
    /// one interface per network, published ports. Returns the namespace
    /// path for the OCI spec and what /etc/hosts and resolv.conf need.
    pub async fn setup_network(
        &self,
        c: &Container,
        reqs: &[AttachRequest],
    ) -> Result<(PathBuf, Attached)> {
        let net = self.network()?.clone();
        let id = c.id.clone();
        let n2 = net.clone();
        let t = super::timing::step("start", "create netns", &c.id);
        let ns = tokio::task::spawn_blocking(move || n2.create_netns(&id))
            .await
            .map_err(|e| Error::internal(format!("task failed: {e}")))??;
        drop(t);
        let mut first = Attached::default();
        let t = super::timing::step("start", "attach networks", &c.id);
        for (i, r) in reqs.iter().enumerate() {
            let a = net.attach(&c.id, &c.name, r, &ns).await?;
            if i == 0 {
                first = a;
            }
        }
        drop(t);
        let ports = port_requests(c)?;
        let t = super::timing::step("start", "publish ports", &c.id);
        net.publish(&c.id, &ports).await?;
        drop(t);
        if let Some(rate) = c.config.labels.get(RATE_LABEL) {
            self.apply_rate(c, rate).await?;
        }
        Ok((ns, first))
    }

    /// Give back what a stopped container held on the network.
    pub async fn release_network(&self, id: &str) {
        if let Ok(net) = self.network() {
            if let Err(e) = net.release(id).await {
                tracing::warn!(%id, error = %super::error::chain(&e), "network release");
            }
        }
    }

    /// `NetworkSettings` of container inspect (never null where docker
    /// clients read it).
    pub async fn network_settings(&self, c: &Container) -> Value {
        let (eps, ports) = match self.network() {
            Ok(n) => n.of_container(&c.id).await,
            Err(_) => (Vec::new(), Vec::new()),
        };
        let mut networks = serde_json::Map::new();
        let mode = c.host_config.network_mode.as_str();
        let configured: Vec<String> = match mode {
            _ if mode.starts_with("container:") => Vec::new(),
            _ => requests(c).into_iter().map(|r| r.network).collect(),
        };
        for name in &configured {
            let found = eps.iter().find(|(n, _)| &n.name == name || &n.id == name);
            let (nid, ep) = match found {
                Some((n, e)) => (n.id.clone(), Some((n, e))),
                None => match self.network() {
                    Ok(m) => (m.get(name).await.map(|n| n.id).unwrap_or_default(), None),
                    Err(_) => (String::new(), None),
                },
            };
            let key = found.map_or(name.clone(), |(n, _)| n.name.clone());
            let ipam = c
                .networking
                .endpoints_config
                .get(name)
                .and_then(|v| v.get("IPAMConfig"))
                .filter(|v| v.is_object())
                .cloned()
                .unwrap_or(Value::Null);
            let aliases = requests(c)
                .into_iter()
                .find(|r| &r.network == name)
                .map(|r| r.aliases)
                .unwrap_or_default();
            networks.insert(
                key,
                json!({
                    "IPAMConfig": ipam,
                    "Links": null,
                    "Aliases": if aliases.is_empty() { Value::Null } else { json!(aliases) },
                    "MacAddress": ep.map(|(_, e)| e.mac.clone()).unwrap_or_default(),
                    "DriverOpts": null,
                    "NetworkID": nid,
                    "EndpointID": ep.map(|(_, e)| e.id.clone()).unwrap_or_default(),
                    "Gateway": ep.and_then(|(n, _)| n.gateway).map(|g| g.to_string()).unwrap_or_default(),
                    "IPAddress": ep.and_then(|(_, e)| e.ip).map(|i| i.to_string()).unwrap_or_default(),
                    "IPPrefixLen": ep.map_or(0, |(_, e)| e.prefix),
                    "IPv6Gateway": ep.and_then(|(n, e)| e.ip6.and(n.gateway6)).map(|g| g.to_string()).unwrap_or_default(),
                    "GlobalIPv6Address": ep.and_then(|(_, e)| e.ip6).map(|i| i.to_string()).unwrap_or_default(),
                    "GlobalIPv6PrefixLen": ep.map_or(0, |(_, e)| e.prefix6),
                    "DNSNames": ep.map_or(Value::Null, |(n, e)| {
                        if n.user_defined() {
                            let mut v = vec![e.container_name.clone()];
                            v.extend(e.aliases.iter().cloned());
                            json!(v)
                        } else {
                            Value::Null
                        }
                    }),
                }),
            );
        }
        let mut port_map = serde_json::Map::new();
        for k in c.config.exposed_ports.iter().flat_map(|p| p.keys()) {
            port_map.insert(k.clone(), Value::Null);
        }
        for p in &ports {
            let e = port_map
                .entry(p.container_port.clone())
                .or_insert_with(|| json!([]));
            if !e.is_array() {
                *e = json!([]);
            }
            if let Some(a) = e.as_array_mut() {
                a.push(json!({"HostIp": p.host_ip, "HostPort": p.host_port.to_string()}));
            }
        }
        let primary = eps.iter().find(|(_, e)| e.ifname == "eth0");
        let sandbox = if eps.is_empty() {
            String::new()
        } else {
            self.network()
                .map(|n| n.netns_path(&c.id).display().to_string())
                .unwrap_or_default()
        };
        json!({
            "Bridge": "",
            "SandboxID": if sandbox.is_empty() { String::new() } else { c.id.clone() },
            "SandboxKey": sandbox,
            "HairpinMode": false,
            "LinkLocalIPv6Address": "",
            "LinkLocalIPv6PrefixLen": 0,
            "Ports": port_map,
            "SecondaryIPAddresses": null,
            "SecondaryIPv6Addresses": null,
            "EndpointID": primary.map(|(_, e)| e.id.clone()).unwrap_or_default(),
            "Gateway": primary.and_then(|(n, _)| n.gateway).map(|g| g.to_string()).unwrap_or_default(),
            "GlobalIPv6Address": primary.and_then(|(_, e)| e.ip6).map(|i| i.to_string()).unwrap_or_default(),
            "GlobalIPv6PrefixLen": primary.map_or(0, |(_, e)| e.prefix6),
            "IPAddress": primary.and_then(|(_, e)| e.ip).map(|i| i.to_string()).unwrap_or_default(),
            "IPPrefixLen": primary.map_or(0, |(_, e)| e.prefix),
            "IPv6Gateway": primary.and_then(|(n, e)| e.ip6.and(n.gateway6)).map(|g| g.to_string()).unwrap_or_default(),
            "MacAddress": primary.map(|(_, e)| e.mac.clone()).unwrap_or_default(),
            "Networks": networks,
        })
    }
}

/// The label that limits a container's network bandwidth in both
/// directions (`10mbit`, `512kbit`, `1gbit`; tc rate units).
pub const RATE_LABEL: &str = "vessel.network.rate";

impl Engine {
    /// Limit the container's traffic with tc token buckets on both ends of
    /// each of its veth pairs: the host side shapes what goes into the
    /// container, the side inside its namespace what comes out (the
    /// container lacks CAP_NET_ADMIN, so it cannot lift either).
    async fn apply_rate(&self, c: &Container, rate: &str) -> Result<()> {
        let valid = {
            let digits = rate.trim_end_matches(|ch: char| ch.is_ascii_alphabetic());
            let unit = &rate[digits.len()..];
            !digits.is_empty()
                && digits.chars().all(|ch| ch.is_ascii_digit() || ch == '.')
                && matches!(
                    unit.to_ascii_lowercase().as_str(),
                    "bit" | "kbit" | "mbit" | "gbit" | "bps" | "kbps" | "mbps" | "gbps"
                )
        };
        if !valid {
            return Err(Error::invalid(format!(
                "label {RATE_LABEL}={rate:?}: want a tc rate such as 10mbit"
            )));
        }
        let net = self.network()?;
        let (eps, _) = net.of_container(&c.id).await;
        let ns = format!("--net={}", net.netns_path(&c.id).display());
        for (_, ep) in eps {
            let tbf = |dev: &str| -> Vec<String> {
                [
                    "qdisc", "replace", "dev", dev, "root", "tbf", "rate", rate, "burst", "64kb",
                    "latency", "100ms",
                ]
                .iter()
                .map(ToString::to_string)
                .collect()
            };
            let mut inside = vec![ns.clone(), "tc".to_string()];
            inside.extend(tbf(&ep.ifname));
            for (prog, args) in [("tc", tbf(&ep.host_veth)), ("nsenter", inside)] {
                let out = tokio::process::Command::new(prog)
                    .args(&args)
                    .output()
                    .await
                    .map_err(|e| Error::from_err(&format!("run {prog}"), &e))?;
                if !out.status.success() {
                    return Err(Error::internal(format!(
                        "{prog} {}: {}",
                        args.join(" "),
                        String::from_utf8_lossy(&out.stderr).trim()
                    )));
                }
            }
        }
        Ok(())
    }
}

impl Engine {
    /// At daemon shutdown: let networking remove what no container needs.
    pub async fn shutdown(&self) {
        if let Some(n) = self.network.get() {
            n.shutdown().await;
        }
    }
}

impl Engine {
    /// `network connect`: record the endpoint; attach it now if running.
    pub async fn network_connect(&self, network: &str, container: &str, ep: Value) -> Result<()> {
        let net = self.network()?.clone();
        let n = net.get(network).await?;
        if n.driver != "bridge" {
            return Err(Error::new(
                Kind::Forbidden,
                format!(
                    "container cannot be disconnected from or connected to the {} network",
                    n.name
                ),
            ));
        }
        let entry = self.get(container)?;
        let mut c = entry.rec.lock().await;
        let mode = c.host_config.network_mode.clone();
        if mode == "host" || mode == "none" || mode.starts_with("container:") {
            return Err(Error::new(
                Kind::Forbidden,
                "container sharing network namespace with another container or host cannot be connected to any other network",
            ));
        }
        let already = requests(&c)
            .iter()
            .any(|r| r.network == n.name || r.network == n.id);
        if already {
            return Err(Error::new(
                Kind::Forbidden,
                format!(
                    "endpoint with name {} already exists in network {}",
                    c.name, n.name
                ),
            ));
        }
        c.networking.endpoints_config.insert(n.name.clone(), ep);
        if c.state.status.is_live() {
            let req = requests(&c)
                .into_iter()
                .find(|r| r.network == n.name)
                .unwrap_or_default();
            let ns = net.netns_path(&c.id);
            if let Err(e) = net.attach(&c.id, &c.name, &req, &ns).await {
                c.networking.endpoints_config.remove(&n.name);
                return Err(e.into());
            }
        }
        entry.persist(&self.paths, &c)?;
        self.events.emit(
            "network",
            "connect",
            &n.id,
            BTreeMap::from([
                ("container".to_string(), c.id.clone()),
                ("name".to_string(), n.name.clone()),
            ]),
        );
        Ok(())
    }

    /// `network disconnect`.
    pub async fn network_disconnect(&self, network: &str, container: &str) -> Result<()> {
        let net = self.network()?.clone();
        let n = net.get(network).await?;
        let entry = self.get(container)?;
        let mut c = entry.rec.lock().await;
        let on = requests(&c)
            .iter()
            .any(|r| r.network == n.name || r.network == n.id)
            || n.endpoints.contains_key(&c.id);
        if !on {
            return Err(Error::new(
                Kind::Forbidden,
                format!("container {} is not connected to network {}", c.id, n.name),
            ));
        }
        c.networking.endpoints_config.remove(&n.name);
        c.networking.endpoints_config.remove(&n.id);
        if c.host_config.network_mode == n.name || c.host_config.network_mode == n.id {
            c.host_config.network_mode = "none".into();
        }
        net.detach(&c.id, &n.id).await?;
        entry.persist(&self.paths, &c)?;
        self.events.emit(
            "network",
            "disconnect",
            &n.id,
            BTreeMap::from([
                ("container".to_string(), c.id.clone()),
                ("name".to_string(), n.name.clone()),
            ]),
        );
        Ok(())
    }
}
