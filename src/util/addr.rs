//! Client addresses: who sent a request when proxies stand between (the `[server]
//! trusted_proxies` list and the `X-Forwarded-For` walk), and the network prefixes per-address
//! limits count by (an IPv6 host owns a whole /64, so counting single IPv6 addresses would
//! limit nothing).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

use axum::http::HeaderMap;

/// The default `server.trusted_proxies`: a proxy on this machine.
pub const DEFAULT_TRUSTED_PROXIES: [&str; 2] = ["127.0.0.0/8", "::1/128"];

/// An address block (`203.0.113.0/24`, `2001:db8::/32`); a bare address is a block of one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    /// The first address of the block (host bits zero).
    pub addr: IpAddr,
    /// Prefix length in bits.
    pub len: u8,
}

/// Why a text is not a [`Cidr`].
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not an address block like 10.0.0.0/8 or fd00::/8")]
pub struct BadCidr(String);

impl Cidr {
    /// The block of `len` bits around `ip` (IPv4-mapped IPv6 addresses count as IPv4).
    /// `len` is clamped to the family's width.
    #[must_use]
    pub fn around(ip: IpAddr, len: u8) -> Self {
        match canonical(ip) {
            IpAddr::V4(v4) => {
                let len = len.min(32);
                let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
                Self {
                    addr: IpAddr::V4(Ipv4Addr::from(u32::from(v4) & mask)),
                    len,
                }
            }
            IpAddr::V6(v6) => {
                let len = len.min(128);
                let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
                Self {
                    addr: IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask)),
                    len,
                }
            }
        }
    }

    /// Whether `ip` is in the block (IPv4-mapped IPv6 addresses match IPv4 blocks).
    #[must_use]
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        ip.is_ipv4() == self.addr.is_ipv4() && Self::around(ip, self.len).addr == self.addr
    }
}

impl FromStr for Cidr {
    type Err = BadCidr;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadCidr(s.to_owned());
        let (ip, len) = match s.trim().split_once('/') {
            Some((ip, len)) => (ip, Some(len)),
            None => (s.trim(), None),
        };
        let ip: IpAddr = ip.parse().map_err(|_| bad())?;
        let width = if ip.is_ipv4() { 32 } else { 128 };
        let len = match len {
            Some(l) if !l.is_empty() && l.bytes().all(|b| b.is_ascii_digit()) => {
                l.parse::<u8>().map_err(|_| bad())?
            }
            Some(_) => return Err(bad()),
            None => width,
        };
        if len > width {
            return Err(bad());
        }
        // A mapped address written with an IPv6 prefix length keeps its meaning as IPv4.
        let len = match (ip, canonical(ip)) {
            (IpAddr::V6(_), IpAddr::V4(_)) => len.saturating_sub(96),
            _ => len,
        };
        Ok(Self::around(ip, len))
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// `::ffff:a.b.c.d` as the IPv4 address it is (a dual-stack listener reports IPv4 peers
/// this way); everything else unchanged.
#[must_use]
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The block that stands for one client in per-address limits: the address itself for IPv4,
/// its /64 for IPv6 (the smallest block a provider hands a subscriber).
#[must_use]
pub fn host_prefix(ip: IpAddr) -> Cidr {
    match canonical(ip) {
        v4 @ IpAddr::V4(_) => Cidr::around(v4, 32),
        v6 => Cidr::around(v6, 64),
    }
}

/// The block that stands for one network in per-network limits: /24 for IPv4, /48 for IPv6
/// (a site's allocation; a free tunnel broker hands out /48s).
#[must_use]
pub fn network_prefix(ip: IpAddr) -> Cidr {
    match canonical(ip) {
        v4 @ IpAddr::V4(_) => Cidr::around(v4, 24),
        v6 => Cidr::around(v6, 48),
    }
}

/// Parses `server.trusted_proxies` (validated at load; a block that does not parse trusts
/// nothing).
#[must_use]
pub fn parse_trusted(list: &[String]) -> Vec<Cidr> {
    list.iter().filter_map(|s| s.parse().ok()).collect()
}

/// The client's address. The TCP peer is the client unless it is a trusted proxy; then
/// `X-Forwarded-For` is walked from the right (the hop the proxy itself appended), skipping
/// trusted proxies: the first untrusted hop is the client (anything left of it was written
/// by the client and proves nothing). When every hop is trusted, the leftmost is the
/// client. A hop that is not an address (garbage, `unknown`, an obfuscated name) ends the
/// walk at the last trusted address seen, since nothing beyond it can be believed.
///
/// `X-Real-IP` is used only from a trusted peer and only when there is no
/// `X-Forwarded-For`: it holds one address, so it cannot say which hop wrote it, and a proxy
/// that sets both (nginx as documented) always has its `X-Forwarded-For` walked instead.
#[must_use]
pub fn client_ip(peer: SocketAddr, headers: &HeaderMap, trusted: &[Cidr]) -> IpAddr {
    let peer = canonical(peer.ip());
    let is_trusted = |ip: IpAddr| trusted.iter().any(|c| c.contains(ip));
    if !is_trusted(peer) {
        return peer;
    }
    let mut forwarded = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .peekable();
    if forwarded.peek().is_none() {
        return headers
            .get("x-real-ip")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_hop)
            .unwrap_or(peer);
    }
    // Several header lines are one list, in order.
    let hops: Vec<&str> = forwarded.flat_map(|v| v.split(',')).collect();
    let mut client = peer;
    for hop in hops.iter().rev() {
        let Some(ip) = parse_hop(hop) else {
            return client;
        };
        client = ip;
        if !is_trusted(ip) {
            return ip;
        }
    }
    client
}

/// One `X-Forwarded-For` hop: an address, possibly with a port (`1.2.3.4:5678`,
/// `[2001:db8::1]:443`), as some proxies write it.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim();
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    hop.parse::<SocketAddr>().ok().map(|s| canonical(s.ip()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn loopback() -> Vec<Cidr> {
        DEFAULT_TRUSTED_PROXIES
            .iter()
            .map(|s| s.parse().unwrap())
            .collect()
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    fn from(peer: &str, h: &[(&str, &str)], trusted: &[Cidr]) -> String {
        client_ip(peer.parse().unwrap(), &headers(h), trusted).to_string()
    }

    #[test]
    fn prefix_math() {
        let c: Cidr = "10.1.2.3/8".parse().unwrap();
        assert_eq!(c.to_string(), "10.0.0.0/8");
        assert!(c.contains(ip("10.255.0.1")));
        assert!(!c.contains(ip("11.0.0.1")));
        assert!(c.contains(ip("::ffff:10.9.9.9")), "mapped IPv4 matches");
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("203.0.113.9")));
        assert!(!all.contains(ip("2001:db8::1")), "families never mix");
        let v6: Cidr = "2001:db8:aa::/48".parse().unwrap();
        assert!(v6.contains(ip("2001:db8:aa:ffff::1")));
        assert!(!v6.contains(ip("2001:db8:ab::1")));
        let one: Cidr = "::1".parse().unwrap();
        assert_eq!(one.len, 128);
        assert_eq!(
            "::ffff:192.0.2.0/120".parse::<Cidr>().unwrap().to_string(),
            "192.0.2.0/24"
        );
        for bad in [
            "",
            "10.0.0.0/33",
            "::/129",
            "10.0.0.0/",
            "10.0.0.0/-1",
            "x/8",
            "10.0.0.0/+8",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }

        assert_eq!(host_prefix(ip("203.0.113.7")).to_string(), "203.0.113.7/32");
        assert_eq!(
            host_prefix(ip("2001:db8:1:2:3:4:5:6")).to_string(),
            "2001:db8:1:2::/64"
        );
        assert_eq!(
            host_prefix(ip("::ffff:203.0.113.7")),
            host_prefix(ip("203.0.113.7"))
        );
        assert_eq!(
            network_prefix(ip("203.0.113.7")).to_string(),
            "203.0.113.0/24"
        );
        assert_eq!(
            network_prefix(ip("2001:db8:1:2:3:4:5:6")).to_string(),
            "2001:db8:1::/48"
        );
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_says() {
        let t = loopback();
        let spoof = [("x-forwarded-for", "1.2.3.4"), ("x-real-ip", "5.6.7.8")];
        assert_eq!(from("198.51.100.1:5000", &spoof, &t), "198.51.100.1");
        assert_eq!(from("[2001:db8::9]:5000", &spoof, &t), "2001:db8::9");
        // An empty list trusts no one, not even loopback.
        assert_eq!(from("127.0.0.1:5000", &spoof, &[]), "127.0.0.1");
    }

    #[test]
    fn forwarded_for_is_walked_from_the_right_past_trusted_hops() {
        let t = loopback();
        let local = "127.0.0.1:5000";
        // nginx appended the real peer; what the client wrote itself is ignored.
        let h = [("x-forwarded-for", "6.6.6.6, 203.0.113.9")];
        assert_eq!(from(local, &h, &t), "203.0.113.9");
        // A chain through two trusted proxies: a CDN range is trusted too.
        let cdn: Vec<Cidr> = vec![
            "127.0.0.0/8".parse().unwrap(),
            "192.0.2.0/24".parse().unwrap(),
        ];
        let h = [("x-forwarded-for", "6.6.6.6, 203.0.113.9, 192.0.2.10")];
        assert_eq!(from(local, &h, &cdn), "203.0.113.9");
        // The same chain without trusting the CDN stops at the CDN.
        assert_eq!(from(local, &h, &t), "192.0.2.10");
        // Every hop trusted: the leftmost.
        let h = [("x-forwarded-for", "192.0.2.1, 192.0.2.10")];
        assert_eq!(from(local, &h, &cdn), "192.0.2.1");
        // Several header lines form one list.
        let h = [
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-for", "203.0.113.9"),
        ];
        assert_eq!(from(local, &h, &t), "203.0.113.9");
        // X-Real-IP does not override X-Forwarded-For.
        let h = [("x-real-ip", "6.6.6.6"), ("x-forwarded-for", "203.0.113.9")];
        assert_eq!(from(local, &h, &t), "203.0.113.9");
        // ...and is used alone when it is all there is.
        assert_eq!(
            from(local, &[("x-real-ip", " 203.0.113.4 ")], &t),
            "203.0.113.4"
        );
        assert_eq!(from(local, &[], &t), "127.0.0.1");
    }

    #[test]
    fn garbage_ports_ipv6_and_mapped_addresses() {
        let t = loopback();
        let local = "127.0.0.1:5000";
        // Garbage at the right end: the peer is all we know.
        assert_eq!(
            from(local, &[("x-forwarded-for", "6.6.6.6, bogus")], &t),
            "127.0.0.1"
        );
        assert_eq!(from(local, &[("x-forwarded-for", "")], &t), "127.0.0.1");
        assert_eq!(from(local, &[("x-real-ip", "unknown")], &t), "127.0.0.1");
        // Garbage left of the client does not matter.
        let h = [("x-forwarded-for", "bogus, 203.0.113.9")];
        assert_eq!(from(local, &h, &t), "203.0.113.9");
        // Ports, IPv6 and mapped IPv4 hops.
        let h = [("x-forwarded-for", "203.0.113.9:4711")];
        assert_eq!(from(local, &h, &t), "203.0.113.9");
        let h = [("x-forwarded-for", "[2001:db8::7]:443")];
        assert_eq!(from(local, &h, &t), "2001:db8::7");
        let h = [("x-forwarded-for", "2001:db8::7, ::ffff:127.0.0.1")];
        assert_eq!(
            from(local, &h, &t),
            "2001:db8::7",
            "a mapped loopback hop is trusted"
        );
        // A mapped loopback peer (dual-stack listener) is the trusted local proxy.
        let h = [("x-forwarded-for", "203.0.113.9")];
        assert_eq!(from("[::ffff:127.0.0.1]:5000", &h, &t), "203.0.113.9");
        assert_eq!(from("[::1]:5000", &h, &t), "203.0.113.9");
        // A mapped untrusted peer is reported as IPv4.
        assert_eq!(from("[::ffff:198.51.100.1]:5000", &h, &t), "198.51.100.1");
    }
}
