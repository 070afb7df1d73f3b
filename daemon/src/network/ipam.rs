//! Address management: IPv4 and IPv6 subnets (parsing, overlap, a pool of
//! private ranges to choose from, a unique-local prefix per network) and
//! addresses inside a subnet or a sub-range of it (`--ip-range`). Leases
//! themselves are stored with their network record.

use std::net::{Ipv4Addr, Ipv6Addr};

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

    /// The broadcast address.
    pub fn last(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.broadcast())
    }

    fn broadcast(self) -> u32 {
        u32::from(self.addr) | !mask(self.prefix)
    }

    /// The lowest address in the subnet that is neither the network, the
    /// broadcast address nor in `taken`.
    pub fn allocate(self, taken: &[Ipv4Addr]) -> Option<Ipv4Addr> {
        self.allocate_in(None, taken)
    }

    /// Like [`Subnet::allocate`], from `range` only when given (a prefix
    /// inside this subnet); the range's own network and broadcast
    /// addresses are skipped too.
    pub fn allocate_in(self, range: Option<Subnet>, taken: &[Ipv4Addr]) -> Option<Ipv4Addr> {
        let (mut start, mut end) = (u32::from(self.addr) + 1, self.broadcast());
        if let Some(r) = range {
            start = start.max(u32::from(r.addr) + 1);
            end = end.min(r.broadcast());
        }
        (start..end)
            .map(Ipv4Addr::from)
            .find(|ip| !taken.contains(ip))
    }

    /// Whether `inner` lies wholly inside this subnet.
    pub fn covers(&self, inner: &Subnet) -> bool {
        inner.prefix >= self.prefix && self.contains(inner.addr)
    }
}

/// An IPv6 prefix, normalised to its network address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet6 {
    pub addr: Ipv6Addr,
    pub prefix: u8,
}

fn mask6(prefix: u8) -> u128 {
    if prefix == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(prefix))
    }
}

impl Subnet6 {
    pub fn new(addr: Ipv6Addr, prefix: u8) -> Subnet6 {
        Subnet6 {
            addr: Ipv6Addr::from(u128::from(addr) & mask6(prefix)),
            prefix,
        }
    }

    /// Parse `fd00:1::/64`.
    pub fn parse(s: &str) -> Result<Subnet6> {
        let bad = || Error::Invalid {
            what: format!("invalid subnet {s:?}: want an IPv6 CIDR such as fd00:1::/64"),
        };
        let (a, p) = s.split_once('/').ok_or_else(bad)?;
        let addr: Ipv6Addr = a.parse().map_err(|_| bad())?;
        let prefix: u8 = p.parse().map_err(|_| bad())?;
        if !(16..=124).contains(&prefix) {
            return Err(Error::Invalid {
                what: format!("subnet {s}: the prefix length must be between 16 and 124"),
            });
        }
        Ok(Subnet6::new(addr, prefix))
    }

    pub fn contains(&self, ip: Ipv6Addr) -> bool {
        u128::from(ip) & mask6(self.prefix) == u128::from(self.addr)
    }

    pub fn overlaps(&self, o: &Subnet6) -> bool {
        let p = self.prefix.min(o.prefix);
        u128::from(self.addr) & mask6(p) == u128::from(o.addr) & mask6(p)
    }

    /// Whether `inner` lies wholly inside this subnet.
    pub fn covers(&self, inner: &Subnet6) -> bool {
        inner.prefix >= self.prefix && self.contains(inner.addr)
    }

    /// The first host address (the default gateway).
    pub fn first(&self) -> Ipv6Addr {
        Ipv6Addr::from(u128::from(self.addr) + 1)
    }

    /// The lowest address of the subnet (or of `range` inside it) after
    /// the prefix's own (subnet-router anycast) address that is not in
    /// `taken`. Looks at no more than 65536 candidates.
    pub fn allocate_in(self, range: Option<Subnet6>, taken: &[Ipv6Addr]) -> Option<Ipv6Addr> {
        let r = range.unwrap_or(self);
        let start = u128::from(r.addr) + 1;
        let last = u128::from(r.addr) | !mask6(r.prefix);
        (start..=last)
            .take(65536)
            .map(Ipv6Addr::from)
            .find(|ip| self.contains(*ip) && !taken.contains(ip))
    }

    /// A unique-local /64 for a network, derived from `seed` (its ID and
    /// an attempt number), in the spirit of RFC 4193's random global ID.
    pub fn unique_local(seed: &str) -> Subnet6 {
        use sha2::Digest as _;
        let h = sha2::Sha256::digest(seed.as_bytes());
        let mut o = [0u8; 16];
        o[0] = 0xfd;
        o[1..6].copy_from_slice(&h[..5]);
        Subnet6::new(Ipv6Addr::from(o), 64)
    }
}

impl std::fmt::Display for Subnet6 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
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
    fn allocates_inside_a_range() {
        let s = Subnet::parse("10.1.0.0/16").unwrap();
        let r = Subnet::parse("10.1.5.0/24").unwrap();
        assert!(s.covers(&r));
        assert!(!r.covers(&s));
        assert_eq!(
            s.allocate_in(Some(r), &[s.first()]),
            Some(Ipv4Addr::new(10, 1, 5, 1))
        );
        let r = Subnet::parse("10.1.5.0/30").unwrap();
        assert_eq!(
            s.allocate_in(Some(r), &[Ipv4Addr::new(10, 1, 5, 1)]),
            Some(Ipv4Addr::new(10, 1, 5, 2))
        );
        assert_eq!(
            s.allocate_in(
                Some(r),
                &[Ipv4Addr::new(10, 1, 5, 1), Ipv4Addr::new(10, 1, 5, 2)]
            ),
            None
        );
    }

    #[test]
    fn v6_subnets_allocate_and_overlap() {
        let s = Subnet6::parse("fd00:1:2:3::9/64").unwrap();
        assert_eq!(s.to_string(), "fd00:1:2:3::/64");
        assert_eq!(s.first(), "fd00:1:2:3::1".parse::<Ipv6Addr>().unwrap());
        assert_eq!(
            s.allocate_in(None, &[s.first()]),
            Some("fd00:1:2:3::2".parse().unwrap())
        );
        let r = Subnet6::parse("fd00:1:2:3::100/120").unwrap();
        assert!(s.covers(&r));
        assert_eq!(
            s.allocate_in(Some(r), &[]),
            Some("fd00:1:2:3::101".parse().unwrap())
        );
        assert!(s.overlaps(&Subnet6::parse("fd00:1::/32").unwrap()));
        assert!(!s.overlaps(&Subnet6::parse("fd00:1:2:4::/64").unwrap()));
        assert!(Subnet6::parse("172.20.0.0/16").is_err());
        assert!(Subnet6::parse("fd00::/8").is_err());
        let u = Subnet6::unique_local("abc");
        assert_eq!(u.prefix, 64);
        assert_eq!(u.addr.octets()[0], 0xfd);
        assert_ne!(u, Subnet6::unique_local("abd"));
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
