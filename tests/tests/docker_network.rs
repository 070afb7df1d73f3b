//! Networking with the real docker CLI against vesseld: user networks with
//! name resolution, published ports reached from the host over loopback,
//! `none` and `host` modes, connect/disconnect, cleanup, and a daemon
//! restart that keeps running containers reachable. All traffic stays on
//! loopback or between the daemon's own containers.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;

use common::{Daemon, json};

macro_rules! need {
    () => {
        vessel_testkit::require!(
            common::can_run() && vessel_testkit::have_command("nft"),
            "needs root, the docker CLI and nft"
        );
    };
}

/// GET `path` from 127.0.0.1:`port` and return the body.
fn http_get(port: u16, path: &str) -> String {
    http_get_from("127.0.0.1", port, path)
}

/// Whether the host has an IPv6 loopback address.
fn have_ipv6_loopback() -> bool {
    std::net::TcpListener::bind("[::1]:0").is_ok()
}

/// GET `path` from `host`:`port` and return the body.
fn http_get_from(host: &str, port: u16, path: &str) -> String {
    let mut s = TcpStream::connect((host, port)).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or(out)
}

/// The daemon's nftables table (named like its default bridge without the
/// final `0`) and default bridge.
fn names(d: &Daemon) -> (String, String) {
    let v = json(&d.ok(&["network", "inspect", "bridge"]));
    let bridge = v[0]["Options"]["com.docker.network.bridge.name"]
        .as_str()
        .unwrap()
        .to_string();
    (bridge.strip_suffix('0').unwrap().to_string(), bridge)
}

fn nft_table(table: &str) -> Option<String> {
    let out = std::process::Command::new("nft")
        .args(["list", "table", "inet", table])
        .output()
        .unwrap();
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn published_port(d: &Daemon, name: &str) -> u16 {
    let out = d.ok(&["port", name, "80/tcp"]);
    let line = out.lines().next().unwrap_or_default();
    assert!(line.starts_with("127.0.0.1:"), "{out}");
    line.rsplit(':').next().unwrap().trim().parse().unwrap()
}

#[test]
fn networks_names_ports_modes_and_cleanup() {
    need!();
    let d = Daemon::start("net-main");
    d.load_busybox();
    let (table, bridge) = names(&d);
    assert!(
        vessel_testkit::net_links().contains(&bridge),
        "default bridge {bridge} is up"
    );

    // A user network with a label; inspect shows its subnet and gateway.
    let net = vessel_testkit::unique_name("n");
    let nid = d
        .ok(&["network", "create", "--label", "team=qa", &net])
        .trim()
        .to_string();
    let n = json(&d.ok(&["network", "inspect", &net]));
    assert_eq!(n[0]["Labels"]["team"], "qa");
    assert_eq!(n[0]["Driver"], "bridge");
    assert!(
        n[0]["IPAM"]["Config"][0]["Subnet"]
            .as_str()
            .unwrap()
            .contains('/')
    );
    let ls = d.ok(&["network", "ls", "--format", "{{.Name}}"]);
    assert!(ls.lines().any(|l| l == net), "{ls}");
    let out = d.run(&["network", "create", &net]);
    assert!(!out.status.success(), "duplicate names are refused");

    // Two containers reach each other by name and by alias.
    d.ok(&[
        "run",
        "-d",
        "--name",
        "web",
        "--network",
        &net,
        "--network-alias",
        "www",
        "busybox",
        "httpd",
        "-f",
        "-p",
        "80",
        "-h",
        "/etc",
    ]);
    let web = json(&d.ok(&["inspect", "web"]));
    let ip = web[0]["NetworkSettings"]["Networks"][&net]["IPAddress"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(!ip.is_empty(), "{}", web[0]["NetworkSettings"]);
    let got = d.ok(&[
        "run",
        "--rm",
        "--network",
        &net,
        "busybox",
        "sh",
        "-c",
        "wget -q -O- http://web/hostname && wget -q -O- http://www/hostname",
    ]);
    let id12 = &web[0]["Id"].as_str().unwrap()[..12];
    assert_eq!(got, format!("{id12}\n{id12}\n"));

    // A published port on 127.0.0.1 with a port the daemon picks.
    d.ok(&[
        "run",
        "-d",
        "--name",
        "pub",
        "-p",
        "127.0.0.1:0:80",
        "busybox",
        "httpd",
        "-f",
        "-p",
        "80",
        "-h",
        "/etc",
    ]);
    let port = published_port(&d, "pub");
    assert_ne!(port, 0);
    let p = json(&d.ok(&["inspect", "pub"]));
    let ns = &p[0]["NetworkSettings"];
    assert_eq!(ns["Ports"]["80/tcp"][0]["HostIp"], "127.0.0.1");
    assert_eq!(ns["Ports"]["80/tcp"][0]["HostPort"], port.to_string());
    assert!(!ns["IPAddress"].as_str().unwrap().is_empty());
    assert!(!ns["Gateway"].as_str().unwrap().is_empty());
    assert_eq!(
        http_get(port, "/hostname").trim(),
        &p[0]["Id"].as_str().unwrap()[..12]
    );
    let ps = d.ok(&["ps", "--format", "{{.Ports}}", "--filter", "name=pub"]);
    assert!(ps.contains(&format!("127.0.0.1:{port}->80/tcp")), "{ps}");

    // The default bridge has no name resolution, like Docker's.
    let out = d.run(&[
        "run",
        "--rm",
        "busybox",
        "wget",
        "-q",
        "-T",
        "2",
        "-O-",
        "http://pub/",
    ]);
    assert!(!out.status.success());

    // Connect a running container to the user network and disconnect it.
    d.ok(&["network", "connect", "--alias", "second", &net, "pub"]);
    let got = d.ok(&[
        "run",
        "--rm",
        "--network",
        &net,
        "busybox",
        "wget",
        "-q",
        "-O-",
        "http://second/hostname",
    ]);
    assert_eq!(got.trim(), &p[0]["Id"].as_str().unwrap()[..12]);
    let addrs = d.ok(&["exec", "pub", "ip", "addr"]);
    assert!(addrs.contains("eth1"), "{addrs}");
    d.ok(&["network", "disconnect", &net, "pub"]);
    let addrs = d.ok(&["exec", "pub", "ip", "addr"]);
    assert!(!addrs.contains("eth1"), "{addrs}");

    // A network in use cannot be removed.
    let out = d.run(&["network", "rm", &net]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("active endpoints"));

    // none: loopback only. host: the host's interfaces.
    let out = d.ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        "busybox",
        "ls",
        "/sys/class/net",
    ]);
    assert_eq!(out.split_whitespace().collect::<Vec<_>>(), ["lo"]);
    let out = d.ok(&[
        "run",
        "--rm",
        "--network",
        "host",
        "busybox",
        "ls",
        "/sys/class/net",
    ]);
    let mut inside: Vec<String> = out.split_whitespace().map(String::from).collect();
    inside.sort();
    assert!(
        inside.contains(&bridge),
        "host mode sees {bridge}: {inside:?}"
    );

    // Removal leaves no veth, bridge, rule or namespace behind.
    let ids: Vec<String> = ["web", "pub"]
        .iter()
        .map(|n| {
            json(&d.ok(&["inspect", n]))[0]["Id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert!(
        nft_table(&table)
            .unwrap()
            .contains(&format!("dport {port} dnat"))
    );
    d.ok(&["rm", "-f", "web", "pub"]);
    d.ok(&["network", "rm", &net]);
    // The host-side veths are deleted after the removal is reported.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let now = vessel_testkit::net_links();
        let left: Vec<&String> = now
            .iter()
            .filter(|l| {
                ids.iter()
                    .any(|id| l.starts_with(&format!("ve{}", &id[..11])))
            })
            .collect();
        if left.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "veths of removed containers stay: {left:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let now = vessel_testkit::net_links();
    assert!(
        !now.iter().any(|l| l.ends_with(&format!("-{}", &nid[..6]))),
        "bridge of {net} is gone: {now:?}"
    );
    assert!(!nft_table(&table).unwrap().contains(" dport "));
    let netns = d.tmp.join("run/netns");
    assert!(
        std::fs::read_dir(&netns).map_or(true, |mut r| r.next().is_none()),
        "no namespace left in {}",
        netns.display()
    );
    let out = d.ok(&["network", "prune", "-f"]);
    assert!(!out.contains(&net));
    // A stopped daemon with nothing running removes its bridge and table.
    let mut d = d;
    d.stop();
    assert!(!Path::new("/sys/class/net").join(&bridge).exists());
    assert!(nft_table(&table).is_none(), "table {table} is gone");
}

#[test]
fn daemon_restart_keeps_published_ports_without_duplicate_rules() {
    need!();
    let mut d = Daemon::start("net-restart");
    d.load_busybox();
    let (table, _) = names(&d);
    d.ok(&[
        "run",
        "-d",
        "--name",
        "srv",
        "-p",
        "127.0.0.1:0:80",
        "busybox",
        "httpd",
        "-f",
        "-p",
        "80",
        "-h",
        "/etc",
    ]);
    let port = published_port(&d, "srv");
    let id12 = d.ok(&["inspect", "-f", "{{.Id}}", "srv"])[..12].to_string();
    assert_eq!(http_get(port, "/hostname").trim(), id12);
    // And one on an IPv6 network (subnet chosen by the daemon) with a port
    // on every address, so it has a relay on [::1].
    let net6 = vessel_testkit::unique_name("r6");
    d.ok(&["network", "create", "--ipv6", &net6]);
    d.ok(&[
        "run",
        "-d",
        "--name",
        "srv6",
        "--network",
        &net6,
        "-p",
        "80",
        "busybox",
        "httpd",
        "-f",
        "-p",
        "80",
        "-h",
        "/etc",
    ]);
    let port6: u16 = d
        .ok(&["port", "srv6", "80/tcp"])
        .lines()
        .next()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let id6 = d.ok(&["inspect", "-f", "{{.Id}}", "srv6"])[..12].to_string();
    let addr6 = |d: &Daemon| {
        json(&d.ok(&["inspect", "srv6"]))[0]["NetworkSettings"]["GlobalIPv6Address"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let ip6 = addr6(&d);
    assert!(ip6.starts_with("fd"), "a unique-local address: {ip6}");
    d.stop();
    // The container and its forwarding outlive the daemon.
    assert_eq!(http_get(port, "/hostname").trim(), id12);
    d.spawn();
    assert_eq!(http_get(port, "/hostname").trim(), id12);
    let rules = nft_table(&table).unwrap_or_else(|| panic!("no table {table}: {}", d.log()));
    assert_eq!(
        rules.matches(&format!("dport {port} dnat")).count(),
        1,
        "{rules}"
    );
    assert_eq!(published_port(&d, "srv"), port);
    // The v6 container keeps its address and the relay on [::1] is back.
    assert_eq!(addr6(&d), ip6);
    if have_ipv6_loopback() {
        assert_eq!(http_get_from("::1", port6, "/hostname").trim(), id6);
    }
    let got = d.ok(&[
        "run",
        "--rm",
        "--network",
        &net6,
        "busybox",
        "sh",
        "-c",
        &format!("printf 'GET /hostname HTTP/1.0\\r\\n\\r\\n' | nc -w 10 {ip6} 80"),
    ]);
    assert!(got.ends_with(&format!("{id6}\n")), "{got}");
    d.ok(&["rm", "-f", "srv6"]);
    d.ok(&["network", "rm", &net6]);
    // A second container still gets its own address after the restart.
    let ip = d.ok(&[
        "run",
        "--rm",
        "busybox",
        "sh",
        "-c",
        "ip -o -4 addr show eth0",
    ]);
    assert!(ip.contains("inet "), "{ip}");
    d.ok(&["rm", "-f", "srv"]);
}

const TESTCONTAINERS_SCRIPT: &str = r#"
import urllib.request
from testcontainers.core.container import DockerContainer
c = DockerContainer("busybox:latest").with_command("httpd -f -p 80 -h /etc").with_exposed_ports(80)
with c:
    host = c.get_container_host_ip()
    port = c.get_exposed_port(80)
    body = urllib.request.urlopen(f"http://{host}:{port}/hostname", timeout=20).read().decode()
    print("hostname", body.strip())
"#;

#[test]
fn testcontainers_python_reaches_a_published_port() {
    need!();
    let python = vessel_testkit::python_venv("testcontainers", "testcontainers==4.15.0");
    vessel_testkit::require!(
        python.is_some(),
        "testcontainers-python could not be installed"
    );
    let d = Daemon::start("net-tc");
    d.load_busybox();
    let out = std::process::Command::new(python.unwrap())
        .args(["-c", TESTCONTAINERS_SCRIPT])
        .env("DOCKER_HOST", format!("unix://{}", d.sock.display()))
        .env("TESTCONTAINERS_RYUK_DISABLED", "true")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        d.log()
    );
    let name = stdout.trim().strip_prefix("hostname ").unwrap_or_default();
    assert_eq!(name.len(), 12, "{stdout}");
    // The container is gone again, and so are its ports.
    assert_eq!(d.ok(&["ps", "-aq"]).trim(), "");
}

/// A prefix no other network of a test run is likely to use.
fn private_prefixes() -> (String, String) {
    let seed = std::process::id()
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
    (
        format!("10.{}.{}", 1 + seed % 100, (seed >> 8) % 250),
        format!(
            "fd{:02x}:{:x}:{:x}",
            (seed >> 3) % 256,
            seed >> 16,
            seed % 65536
        ),
    )
}

fn read_sysctl(p: &str) -> String {
    std::fs::read_to_string(p).unwrap().trim().to_string()
}

#[test]
fn ipv6_ip_ranges_static_addresses_and_hairpin() {
    need!();
    vessel_testkit::require!(
        Path::new("/proc/sys/net/ipv6").exists(),
        "needs IPv6 in the kernel"
    );
    let d = Daemon::start("net-v6");
    d.load_busybox();
    let (table, _) = names(&d);
    // The daemon turned forwarding on for its bridges.
    assert_eq!(read_sysctl("/proc/sys/net/ipv4/ip_forward"), "1");

    // A dual-stack network: a v4 subnet with a range for dynamic
    // addresses, and a v6 subnet.
    let (v4, v6) = private_prefixes();
    let net = vessel_testkit::unique_name("v6");
    let nid = d
        .ok(&[
            "network",
            "create",
            "--ipv6",
            "--subnet",
            &format!("{v4}.0/24"),
            "--ip-range",
            &format!("{v4}.64/26"),
            "--gateway",
            &format!("{v4}.1"),
            "--subnet",
            &format!("{v6}::/64"),
            &net,
        ])
        .trim()
        .to_string();
    assert_eq!(
        read_sysctl("/proc/sys/net/ipv6/conf/all/forwarding"),
        "1",
        "IPv6 forwarding is on with a v6 network"
    );
    let n = json(&d.ok(&["network", "inspect", &net]));
    assert_eq!(n[0]["EnableIPv6"], true, "{}", n[0]);
    let cfg = n[0]["IPAM"]["Config"].as_array().unwrap();
    assert_eq!(cfg.len(), 2, "{cfg:?}");
    assert_eq!(cfg[0]["Subnet"], format!("{v4}.0/24"));
    assert_eq!(cfg[0]["IPRange"], format!("{v4}.64/26"));
    assert_eq!(cfg[0]["Gateway"], format!("{v4}.1"));
    assert_eq!(cfg[1]["Subnet"], format!("{v6}::/64"));
    assert_eq!(cfg[1]["Gateway"], format!("{v6}::1"));

    // A server with a published port; its addresses come from the range
    // and the v6 subnet.
    d.ok(&[
        "run",
        "-d",
        "--name",
        "v6a",
        "--network",
        &net,
        "-p",
        "80",
        "busybox",
        "httpd",
        "-f",
        "-p",
        "80",
        "-h",
        "/etc",
    ]);
    let a = json(&d.ok(&["inspect", "v6a"]));
    let id12 = a[0]["Id"].as_str().unwrap()[..12].to_string();
    let ns = &a[0]["NetworkSettings"];
    let ep = &ns["Networks"][&net];
    let ip4 = ep["IPAddress"].as_str().unwrap().to_string();
    let last: u8 = ip4.rsplit('.').next().unwrap().parse().unwrap();
    assert!(
        ip4.starts_with(&format!("{v4}.")) && (64..128).contains(&last),
        "{ip4} is in the range"
    );
    let ip6 = ep["GlobalIPv6Address"].as_str().unwrap().to_string();
    assert!(ip6.starts_with(&format!("{v6}::")), "{ep}");
    assert_eq!(ep["GlobalIPv6PrefixLen"], 64);
    assert_eq!(ep["IPv6Gateway"], format!("{v6}::1"));
    assert_eq!(ns["GlobalIPv6Address"], ip6.as_str());
    assert_eq!(ns["IPv6Gateway"], format!("{v6}::1"));
    let n = json(&d.ok(&["network", "inspect", &net]));
    let listed = n[0]["Containers"][a[0]["Id"].as_str().unwrap()]["IPv6Address"].clone();
    assert_eq!(listed, format!("{ip6}/64"));

    // Inside: the addresses are usable at once (no tentative address),
    // with a link-local one and a default v6 route.
    let inside = d.ok(&[
        "exec",
        "v6a",
        "sh",
        "-c",
        "ip -6 addr show eth0; ip -6 route",
    ]);
    assert!(inside.contains(&format!("{ip6}/64")), "{inside}");
    assert!(inside.contains("scope link"), "{inside}");
    assert!(!inside.contains("tentative"), "{inside}");
    assert!(inside.contains(&format!("default via {v6}::1")), "{inside}");

    // A second container reaches the first by v6 address and its name
    // resolves to that address (AAAA); a port published on every address
    // is reachable through the gateway addresses (hairpin).
    let port = {
        let out = d.ok(&["port", "v6a", "80/tcp"]);
        out.lines()
            .next()
            .unwrap()
            .rsplit(':')
            .next()
            .unwrap()
            .trim()
            .to_string()
    };
    // (busybox wget cannot fetch from IPv6 literals; nc can.)
    let get = |host: &str, port: &str| {
        format!("printf 'GET /hostname HTTP/1.0\\r\\n\\r\\n' | nc -w 10 {host} {port}; ")
    };
    let script = format!(
        "set -e; nslookup -type=AAAA v6a; {}{}{}",
        get(&ip6, "80"),
        get(&format!("{v4}.1"), &port),
        get(&format!("{v6}::1"), &port)
    );
    let out = d.ok(&[
        "run",
        "--rm",
        "--network",
        &net,
        "busybox",
        "sh",
        "-c",
        &script,
    ]);
    assert!(out.contains(&ip6), "AAAA answer: {out}");
    assert_eq!(
        out.matches(&id12).count(),
        3,
        "by v6 address, by v4 gateway and by v6 gateway: {out}"
    );
    // The server reaches its own published port through the gateway too.
    let own = d.ok(&["exec", "v6a", "sh", "-c", &get(&format!("{v4}.1"), &port)]);
    assert!(own.ends_with(&format!("{id12}\n")), "{own}");
    // From the host: IPv4 loopback (DNAT) and IPv6 loopback (the relay).
    let port: u16 = port.parse().unwrap();
    assert_eq!(http_get(port, "/hostname").trim(), id12);
    if have_ipv6_loopback() {
        assert_eq!(http_get_from("::1", port, "/hostname").trim(), id12);
    }

    // Static addresses: anywhere in the subnet, not only in the range;
    // refused outside it, when taken, and on the default bridge.
    let out = d.ok(&[
        "run",
        "--rm",
        "--network",
        &net,
        "--ip",
        &format!("{v4}.200"),
        "--ip6",
        &format!("{v6}::beef"),
        "busybox",
        "sh",
        "-c",
        "ip -o addr show eth0",
    ]);
    assert!(out.contains(&format!("{v4}.200/24")), "{out}");
    assert!(out.contains(&format!("{v6}::beef/64")), "{out}");
    // network connect with fixed addresses adds eth1 with them.
    d.ok(&["run", "-d", "--name", "v6c", "busybox", "sleep", "600"]);
    d.ok(&[
        "network",
        "connect",
        "--ip",
        &format!("{v4}.201"),
        "--ip6",
        &format!("{v6}::c"),
        &net,
        "v6c",
    ]);
    let out = d.ok(&["exec", "v6c", "ip", "-o", "addr", "show", "eth1"]);
    assert!(out.contains(&format!("{v4}.201/24")), "{out}");
    assert!(out.contains(&format!("{v6}::c/64")), "{out}");
    let c = json(&d.ok(&["inspect", "v6c"]));
    let cep = &c[0]["NetworkSettings"]["Networks"][&net];
    assert_eq!(cep["IPAMConfig"]["IPv4Address"], format!("{v4}.201"));
    assert_eq!(cep["GlobalIPv6Address"], format!("{v6}::c"));
    d.ok(&["rm", "-f", "v6c"]);
    let refused = |args: &[&str], want: &str| {
        let mut all = vec!["run", "--rm"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["busybox", "true"]);
        let out = d.run(&all);
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(
            !out.status.success() && err.contains(want),
            "{args:?}: {err}"
        );
    };
    refused(&["--network", &net, "--ip", "192.0.2.9"], "does not belong");
    refused(&["--network", &net, "--ip", &ip4], "already in use");
    refused(
        &["--network", &net, "--ip6", "fd99:1:2:3::9"],
        "does not belong",
    );
    refused(&["--ip", "172.17.9.9"], "user defined networks only");

    // Removal leaves no link, no rule and no table behind.
    let aid = a[0]["Id"].as_str().unwrap().to_string();
    d.ok(&["rm", "-f", "v6a"]);
    d.ok(&["network", "rm", &net]);
    let rules = nft_table(&table).unwrap_or_default();
    assert!(!rules.contains(" dport "), "{rules}");
    assert!(!rules.contains(&v6), "{rules}");
    let mut d = d;
    d.stop();
    assert!(nft_table(&table).is_none(), "table {table} is gone");
    let left: Vec<String> = vessel_testkit::net_links()
        .into_iter()
        .filter(|l| l.starts_with(&format!("ve{}", &aid[..11])) || l.ends_with(&nid[..6]))
        .collect();
    assert!(left.is_empty(), "links left: {left:?}");
}
