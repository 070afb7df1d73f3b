//! The daemon's nftables table (family `inet`, so one table holds the IPv4
//! and IPv6 rules): masquerade for bridge subnets, DNAT for published ports
//! (from other hosts, from the host itself including 127.0.0.1, and from
//! containers through a host address: hairpin), isolation of internal
//! networks and between networks.
//!
//! The table is rendered whole from the current state and replaced in one
//! `nft -f -` transaction, so applying it twice never duplicates a rule and
//! a daemon restart reconciles by applying it again. No other table is
//! read or touched (an `ip` table of the same name, from daemons before the
//! `inet` one, is replaced in the same transaction).

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::process::{Command, Stdio};

use super::{Error, Result};

/// A bridge network as the firewall sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeRules {
    pub bridge: String,
    pub subnet: Ipv4Addr,
    pub prefix: u8,
    /// The IPv6 subnet of a dual-stack network.
    pub subnet6: Option<(Ipv6Addr, u8)>,
    pub internal: bool,
}

/// One published port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortRule {
    pub proto: String,
    /// `None` means every local address.
    pub host_ip: Option<Ipv4Addr>,
    pub host_port: u16,
    pub container_ip: Ipv4Addr,
    /// The container's IPv6 address, if it has one: the port is then
    /// forwarded from the host's IPv6 addresses too (not `::1`, which the
    /// relay in `proxy` serves).
    pub container_ip6: Option<Ipv6Addr>,
    pub container_port: u16,
}

/// The ruleset text of table `inet <table>`.
pub fn render(table: &str, bridges: &[BridgeRules], ports: &[PortRule]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "table inet {table} {{");
    s.push_str("  chain ports {\n");
    for p in ports {
        let dst = p.host_ip.map_or_else(
            || "meta nfproto ipv4 ".to_string(),
            |ip| format!("ip daddr {ip} "),
        );
        let _ = writeln!(
            s,
            "    {dst}{} dport {} dnat ip to {}:{}",
            p.proto, p.host_port, p.container_ip, p.container_port
        );
        if let (None, Some(ip6)) = (p.host_ip, p.container_ip6) {
            let _ = writeln!(
                s,
                "    ip6 daddr != ::1 {} dport {} dnat ip6 to [{ip6}]:{}",
                p.proto, p.host_port, p.container_port
            );
        }
    }
    s.push_str("  }\n");
    s.push_str("  chain prerouting {\n    type nat hook prerouting priority dstnat; policy accept;\n    fib daddr type local jump ports\n  }\n");
    s.push_str("  chain output {\n    type nat hook output priority -100; policy accept;\n    fib daddr type local jump ports\n  }\n");
    s.push_str(
        "  chain postrouting {\n    type nat hook postrouting priority srcnat; policy accept;\n",
    );
    for b in bridges {
        let net = format!("{}/{}", b.subnet, b.prefix);
        if !b.internal {
            let _ = writeln!(
                s,
                "    ip saddr {net} oifname != \"{}\" masquerade",
                b.bridge
            );
        }
        // From the host's loopback (DNAT to a container) and hairpin:
        // the container must answer through the host.
        let _ = writeln!(
            s,
            "    oifname \"{}\" ip saddr 127.0.0.0/8 masquerade",
            b.bridge
        );
        let _ = writeln!(
            s,
            "    oifname \"{}\" ct status dnat ip saddr {net} masquerade",
            b.bridge
        );
        if let Some((a6, p6)) = b.subnet6 {
            if !b.internal {
                let _ = writeln!(
                    s,
                    "    ip6 saddr {a6}/{p6} oifname != \"{}\" masquerade",
                    b.bridge
                );
            }
            let _ = writeln!(
                s,
                "    oifname \"{}\" ct status dnat ip6 saddr {a6}/{p6} masquerade",
                b.bridge
            );
        }
    }
    s.push_str("  }\n");
    s.push_str("  chain forward {\n    type filter hook forward priority filter; policy accept;\n");
    for b in bridges {
        if b.internal {
            let _ = writeln!(
                s,
                "    iifname \"{0}\" oifname != \"{0}\" drop\n    oifname \"{0}\" iifname != \"{0}\" drop",
                b.bridge
            );
        }
        for o in bridges {
            if o.bridge != b.bridge {
                let _ = writeln!(
                    s,
                    "    iifname \"{}\" oifname \"{}\" drop",
                    b.bridge, o.bridge
                );
            }
        }
    }
    s.push_str("  }\n}\n");
    s
}

fn nft(input: &str) -> Result<()> {
    let mut child = Command::new("nft")
        .arg("-f")
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| Error::Io {
            what: "run nft".into(),
            source,
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(input.as_bytes())
            .map_err(|source| Error::Io {
                what: "write the ruleset to nft".into(),
                source,
            })?;
    }
    let out = child.wait_with_output().map_err(|source| Error::Io {
        what: "run nft".into(),
        source,
    })?;
    if !out.status.success() {
        return Err(Error::Firewall {
            message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

/// Commands that remove our table (and an older `ip` one) whether or not
/// they exist: declaring an empty table first makes the deletion certain
/// to find it.
fn drop_tables(table: &str) -> String {
    format!(
        "table ip {table} {{}}\ndelete table ip {table}\ntable inet {table} {{}}\ndelete table inet {table}\n"
    )
}

/// Replace the table with `ruleset` (from [`render`]) in one transaction.
pub fn apply(table: &str, ruleset: &str) -> Result<()> {
    nft(&format!("{}{ruleset}", drop_tables(table)))
}

/// Delete the table if it exists.
pub fn delete(table: &str) -> Result<()> {
    nft(&drop_tables(table))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_ports_masquerade_and_isolation() {
        let b = vec![
            BridgeRules {
                bridge: "br0".into(),
                subnet: Ipv4Addr::new(172, 17, 0, 0),
                prefix: 16,
                subnet6: Some(("fd00:1::".parse().unwrap(), 64)),
                internal: false,
            },
            BridgeRules {
                bridge: "br1".into(),
                subnet: Ipv4Addr::new(172, 18, 0, 0),
                prefix: 16,
                subnet6: None,
                internal: true,
            },
        ];
        let p = vec![PortRule {
            proto: "tcp".into(),
            host_ip: Some(Ipv4Addr::LOCALHOST),
            host_port: 8080,
            container_ip: Ipv4Addr::new(172, 17, 0, 2),
            container_ip6: Some("fd00:1::2".parse().unwrap()),
            container_port: 80,
        }];
        let s = render("t", &b, &p);
        assert!(s.starts_with("table inet t {"));
        assert!(s.contains("ip daddr 127.0.0.1 tcp dport 8080 dnat ip to 172.17.0.2:80"));
        assert!(!s.contains("dnat ip6 to"), "a port on 127.0.0.1 only");
        assert!(s.contains("ip6 saddr fd00:1::/64 oifname != \"br0\" masquerade"));
        let p = vec![PortRule {
            host_ip: None,
            ..p[0].clone()
        }];
        let s = render("t", &b, &p);
        assert!(s.contains("meta nfproto ipv4 tcp dport 8080 dnat ip to 172.17.0.2:80"));
        assert!(s.contains("ip6 daddr != ::1 tcp dport 8080 dnat ip6 to [fd00:1::2]:80"));
        assert!(s.contains("ip saddr 172.17.0.0/16 oifname != \"br0\" masquerade"));
        assert!(!s.contains("ip saddr 172.18.0.0/16 oifname != \"br1\" masquerade"));
        assert!(s.contains("iifname \"br1\" oifname != \"br1\" drop"));
        assert!(s.contains("iifname \"br0\" oifname \"br1\" drop"));
    }
}
