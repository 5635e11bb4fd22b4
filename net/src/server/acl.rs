//! Allow and deny lists of address blocks (CIDR).

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// An address block such as `10.0.0.0/8` or `2001:db8::/32`; a bare address is a block of
/// one (`/32` or `/128`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

/// Why a CIDR string was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CidrError {
    /// The address part is not an IPv4 or IPv6 address.
    #[error("not an IP address: {0:?}")]
    BadAddress(String),
    /// The prefix length is not a number within the address family's width.
    #[error("bad prefix length {0:?} (0..=32 for IPv4, 0..=128 for IPv6)")]
    BadPrefix(String),
}

impl Cidr {
    /// The block of `prefix` leading bits of `addr`; bits past the prefix are cleared.
    ///
    /// # Errors
    /// [`CidrError::BadPrefix`] when `prefix` is wider than the address.
    pub fn new(addr: IpAddr, prefix: u8) -> Result<Cidr, CidrError> {
        let addr = addr.to_canonical();
        let width = if addr.is_ipv4() { 32 } else { 128 };
        if prefix > width {
            return Err(CidrError::BadPrefix(prefix.to_string()));
        }
        Ok(Cidr { addr: mask(addr, prefix), prefix })
    }

    /// Whether `ip` lies in this block. IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`, what a
    /// dual-stack listener reports for IPv4 peers) match IPv4 blocks.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        ip.is_ipv4() == self.addr.is_ipv4() && mask(ip, self.prefix) == self.addr
    }
}

fn mask(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            let m = if prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(prefix)) };
            IpAddr::V4((bits & m).into())
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let m = if prefix == 0 { 0 } else { u128::MAX << (128 - u32::from(prefix)) };
            IpAddr::V6((bits & m).into())
        }
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Cidr, CidrError> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| CidrError::BadAddress(addr.to_string()))?;
        let addr = addr.to_canonical();
        let width = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => width,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|&n| n <= width && !p.starts_with('+'))
                .ok_or_else(|| CidrError::BadPrefix(p.to_string()))?,
        };
        Cidr::new(addr, prefix)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Which peers may connect: a deny list and an allow list.
///
/// **Deny wins.** A peer in any deny block is refused; otherwise, if the allow list is empty
/// every peer is allowed, else only peers in an allow block. So `allow 10.0.0.0/8` with
/// `deny 10.0.0.13` admits the whole block but one host, whatever the order of the entries.
/// Unix-domain peers have no address and are always admitted (guard the socket's file mode).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AccessList {
    allow: Vec<Cidr>,
    deny: Vec<Cidr>,
}

impl AccessList {
    /// An empty list: everyone is allowed.
    pub fn new() -> Self {
        AccessList::default()
    }

    /// Adds an allowed block.
    pub fn allow(&mut self, block: Cidr) -> &mut Self {
        self.allow.push(block);
        self
    }

    /// Adds a denied block.
    pub fn deny(&mut self, block: Cidr) -> &mut Self {
        self.deny.push(block);
        self
    }

    /// Whether `ip` may connect.
    pub fn admits(&self, ip: IpAddr) -> bool {
        if self.deny.iter().any(|c| c.contains(ip)) {
            return false;
        }
        self.allow.is_empty() || self.allow.iter().any(|c| c.contains(ip))
    }

    /// True when neither list has an entry.
    pub fn is_empty(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn parses_blocks_and_bare_addresses() {
        assert_eq!("10.1.2.3/8".parse::<Cidr>().unwrap().to_string(), "10.0.0.0/8");
        assert_eq!("192.168.1.7".parse::<Cidr>().unwrap().to_string(), "192.168.1.7/32");
        assert_eq!("2001:db8::1/32".parse::<Cidr>().unwrap().to_string(), "2001:db8::/32");
        assert_eq!("0.0.0.0/0".parse::<Cidr>().unwrap().to_string(), "0.0.0.0/0");
        assert_eq!("::ffff:10.0.0.1/8".parse::<Cidr>().unwrap().to_string(), "10.0.0.0/8");
        for bad in ["10.0.0.0/33", "::/129", "10.0.0.0/", "10.0.0.0/+8", "10.0.0/8", "x/1", ""] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn membership_respects_family_and_mapped_addresses() {
        let c: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(c.contains(ip("10.255.0.1")));
        assert!(c.contains(ip("::ffff:10.0.0.1")));
        assert!(!c.contains(ip("11.0.0.1")));
        assert!(!c.contains(ip("::a00:1")), "an IPv6 address never matches an IPv4 block");
        let all6: Cidr = "::/0".parse().unwrap();
        assert!(all6.contains(ip("::1")));
        assert!(!all6.contains(ip("127.0.0.1")));
    }

    #[test]
    fn deny_wins_over_allow() {
        let mut acl = AccessList::new();
        assert!(acl.admits(ip("8.8.8.8")), "an empty list admits everyone");
        acl.deny("10.0.0.13".parse().unwrap()).allow("10.0.0.0/8".parse().unwrap());
        assert!(acl.admits(ip("10.0.0.12")));
        assert!(!acl.admits(ip("10.0.0.13")));
        assert!(!acl.admits(ip("192.168.0.1")), "a non-empty allow list admits only its blocks");
    }
}
