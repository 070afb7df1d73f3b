//! The daemon's nftables table: masquerade for bridge subnets, DNAT for
//! published ports (from other hosts and from the host itself, including
//! 127.0.0.1), isolation of internal networks and between networks.
//!
//! The table is rendered whole from the current state and replaced in one
//! `nft -f -` transaction, so applying it twice never duplicates a rule and
//! a daemon restart reconciles by applying it again. No other table is
//! read or touched.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

use super::{Error, Result};

/// A bridge network as the firewall sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeRules {
    pub bridge: String,
    pub subnet: Ipv4Addr,
    pub prefix: u8,
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
    pub container_port: u16,
}

/// The ruleset text of table `ip <table>`.
pub fn render(table: &str, bridges: &[BridgeRules], ports: &[PortRule]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "table ip {table} {{");
    s.push_str("  chain ports {\n");
    for p in ports {
        let dst = p
            .host_ip
            .map(|ip| format!("ip daddr {ip} "))
            .unwrap_or_default();
        let _ = writeln!(
            s,
            "    {dst}{} dport {} dnat to {}:{}",
            p.proto, p.host_port, p.container_ip, p.container_port
        );
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

/// Replace the table with `ruleset` (from [`render`]) in one transaction.
pub fn apply(table: &str, ruleset: &str) -> Result<()> {
    nft(&format!(
        "table ip {table} {{}}\ndelete table ip {table}\n{ruleset}"
    ))
}

/// Delete the table if it exists.
pub fn delete(table: &str) -> Result<()> {
    nft(&format!("table ip {table} {{}}\ndelete table ip {table}\n"))
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
                internal: false,
            },
            BridgeRules {
                bridge: "br1".into(),
                subnet: Ipv4Addr::new(172, 18, 0, 0),
                prefix: 16,
                internal: true,
            },
        ];
        let p = vec![PortRule {
            proto: "tcp".into(),
            host_ip: Some(Ipv4Addr::LOCALHOST),
            host_port: 8080,
            container_ip: Ipv4Addr::new(172, 17, 0, 2),
            container_port: 80,
        }];
        let s = render("t", &b, &p);
        assert!(s.contains("ip daddr 127.0.0.1 tcp dport 8080 dnat to 172.17.0.2:80"));
        assert!(s.contains("ip saddr 172.17.0.0/16 oifname != \"br0\" masquerade"));
        assert!(!s.contains("ip saddr 172.18.0.0/16 oifname != \"br1\" masquerade"));
        assert!(s.contains("iifname \"br1\" oifname != \"br1\" drop"));
        assert!(s.contains("iifname \"br0\" oifname \"br1\" drop"));
    }
}
