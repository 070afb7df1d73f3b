//! IPv4 address management: subnets (parsing, overlap, a pool of private
//! ranges to choose from) and addresses inside a subnet. Leases themselves
//! are stored with their network record.

use std::net::Ipv4Addr;

use super::{Error, Result};

/// An IPv4 prefix, normalised to its network address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl Subnet {
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Subnet {
        Subnet {
            addr: Ipv4Addr::from(u32::from(addr) & mask(prefix)),
            prefix,
        }
    }

    /// Parse `a.b.c.d/n`.
    pub fn parse(s: &str) -> Result<Subnet> {
        let bad = || Error::Invalid {
            what: format!("invalid subnet {s:?}: want an IPv4 CIDR such as 172.20.0.0/16"),
        };
        let (a, p) = s.split_once('/').ok_or_else(bad)?;
        let addr: Ipv4Addr = a.parse().map_err(|_| bad())?;
        let prefix: u8 = p.parse().map_err(|_| bad())?;
        if !(8..=30).contains(&prefix) {
            return Err(Error::Invalid {
                what: format!("subnet {s}: the prefix length must be between 8 and 30"),
            });
        }
        Ok(Subnet::new(addr, prefix))
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & mask(self.prefix) == u32::from(self.addr)
    }

    pub fn overlaps(&self, o: &Subnet) -> bool {
        let p = self.prefix.min(o.prefix);
        u32::from(self.addr) & mask(p) == u32::from(o.addr) & mask(p)
    }

    /// The first host address (the default gateway).
    pub fn first(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) + 1)
    }

    fn broadcast(self) -> u32 {
        u32::from(self.addr) | !mask(self.prefix)
    }

    /// The lowest address in the subnet that is neither the network, the
    /// broadcast address nor in `taken`.
    pub fn allocate(self, taken: &[Ipv4Addr]) -> Option<Ipv4Addr> {
        let start = u32::from(self.addr) + 1;
        (start..self.broadcast())
            .map(Ipv4Addr::from)
            .find(|ip| !taken.contains(ip))
    }
}

impl std::fmt::Display for Subnet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

fn mask(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix))
    }
}

/// Candidate subnets in order: Docker's 172.17-31.0.0/16, then
/// 192.168.x.0/20, then 10.x.0.0/16 from 10.128 up.
pub fn pool() -> impl Iterator<Item = Subnet> {
    let a = (17..=31).map(|b| Subnet::new(Ipv4Addr::new(172, b, 0, 0), 16));
    let b = (0..16u8).map(|i| Subnet::new(Ipv4Addr::new(192, 168, i * 16, 0), 20));
    let c = (128..=255).map(|b| Subnet::new(Ipv4Addr::new(10, b, 0, 0), 16));
    a.chain(b).chain(c)
}

/// The first subnet of the pool (from `start`) that overlaps nothing used.
pub fn pick(used: &[Subnet], skip_first: bool) -> Option<Subnet> {
    pool()
        .skip(usize::from(skip_first))
        .find(|s| !used.iter().any(|u| u.overlaps(s)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_normalises() {
        let s = Subnet::parse("172.20.5.9/16").unwrap();
        assert_eq!(s.to_string(), "172.20.0.0/16");
        assert!(Subnet::parse("172.20.0.0").is_err());
        assert!(Subnet::parse("300.1.1.1/16").is_err());
        assert!(Subnet::parse("10.0.0.0/31").is_err());
    }

    #[test]
    fn allocates_lowest_free() {
        let s = Subnet::parse("10.1.0.0/30").unwrap();
        let gw = s.first();
        assert_eq!(s.allocate(&[gw]), Some(Ipv4Addr::new(10, 1, 0, 2)));
        assert_eq!(s.allocate(&[gw, Ipv4Addr::new(10, 1, 0, 2)]), None);
    }

    #[test]
    fn picks_a_free_range() {
        let used = [
            Subnet::parse("172.17.0.0/16").unwrap(),
            Subnet::parse("172.16.0.0/12").unwrap(),
        ];
        let s = pick(&used, false).unwrap();
        assert_eq!(s.to_string(), "192.168.0.0/20");
        assert_eq!(
            pick(&[], false).unwrap().to_string(),
            "172.17.0.0/16".to_string()
        );
    }
}
