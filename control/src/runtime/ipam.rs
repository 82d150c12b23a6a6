//! Addresses on the node's `bridge` network: the subnet of `--bip`, its
//! gateway (the bridge), and next-fit allocation so a just-released
//! address is not handed out again at once (as libnetwork's bitmap does).
//! Pure.

use std::{collections::BTreeSet, net::Ipv4Addr};

use ipnet::Ipv4Net;

#[derive(Debug, Clone)]
pub struct BridgeIpam {
    subnet: Ipv4Net,
    gateway: Ipv4Addr,
    used: BTreeSet<Ipv4Addr>,
    /// Where the next search starts.
    next: u32,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IpamError {
    #[error(
        "invalid --bip {0}: want ADDRESS/PREFIX with the address inside the subnet, e.g. 172.17.0.1/16"
    )]
    InvalidBip(String),
    #[error("no available IPv4 addresses on this network's address pools: bridge ({0})")]
    Exhausted(Ipv4Net),
}

impl BridgeIpam {
    /// From `--bip` (`198.18.1.1/24`): the address is the gateway.
    pub fn from_bip(bip: &str) -> Result<Self, IpamError> {
        let net: Ipv4Net = bip
            .parse()
            .map_err(|_| IpamError::InvalidBip(bip.to_owned()))?;
        let subnet = net.trunc();
        let gateway = net.addr();
        if net.prefix_len() > 30 || gateway == subnet.network() || gateway == subnet.broadcast() {
            return Err(IpamError::InvalidBip(bip.to_owned()));
        }
        Ok(Self {
            subnet,
            gateway,
            used: BTreeSet::new(),
            next: u32::from(subnet.network()) + 1,
        })
    }

    pub fn subnet(&self) -> Ipv4Net {
        self.subnet
    }

    pub fn gateway(&self) -> Ipv4Addr {
        self.gateway
    }

    /// Marks an address taken (a container found running at start).
    pub fn reserve(&mut self, ip: Ipv4Addr) {
        if self.subnet.contains(&ip) {
            self.used.insert(ip);
        }
    }

    pub fn allocate(&mut self) -> Result<Ipv4Addr, IpamError> {
        let first = u32::from(self.subnet.network()) + 1;
        let last = u32::from(self.subnet.broadcast()) - 1;
        let span = last - first + 1;
        for i in 0..span {
            let n = first + (self.next - first + i) % span;
            let ip = Ipv4Addr::from(n);
            if ip != self.gateway && !self.used.contains(&ip) {
                self.used.insert(ip);
                self.next = if n == last { first } else { n + 1 };
                return Ok(ip);
            }
        }
        Err(IpamError::Exhausted(self.subnet))
    }

    pub fn release(&mut self, ip: Ipv4Addr) {
        self.used.remove(&ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_fit_skips_gateway_and_runs_out() {
        let mut ipam = BridgeIpam::from_bip("198.18.1.1/29").expect("bip");
        assert_eq!(ipam.gateway(), Ipv4Addr::new(198, 18, 1, 1));
        let got: Vec<_> = (0..5).map(|_| ipam.allocate().expect("ip")).collect();
        assert_eq!(got[0], Ipv4Addr::new(198, 18, 1, 2));
        assert_eq!(got[4], Ipv4Addr::new(198, 18, 1, 6));
        assert_eq!(
            ipam.allocate(),
            Err(IpamError::Exhausted("198.18.1.0/29".parse().expect("net")))
        );
        ipam.release(got[1]);
        assert_eq!(ipam.allocate(), Ok(got[1]));
        let mut ipam = BridgeIpam::from_bip("198.18.1.1/24").expect("bip");
        let a = ipam.allocate().expect("a");
        ipam.release(a);
        assert_ne!(ipam.allocate().expect("b"), a, "not reused at once");
        ipam.reserve(Ipv4Addr::new(198, 18, 1, 4));
        assert_eq!(ipam.allocate(), Ok(Ipv4Addr::new(198, 18, 1, 5)));
    }

    #[test]
    fn bad_bips() {
        for bad in ["198.18.1.0/24", "198.18.1.255/24", "nope", "198.18.1.1/31"] {
            assert!(BridgeIpam::from_bip(bad).is_err(), "{bad}");
        }
    }
}
