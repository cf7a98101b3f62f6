//! Where a request comes from, and whether that source may use an identity.

use std::net::{IpAddr, SocketAddr};

use axum::http::HeaderMap;
use ipnet::IpNet;

/// The proxies whose forwarding headers are believed (`TRUSTED_PROXIES`): addresses
/// and networks. Empty, the default, believes no header from anyone.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TrustedProxies(pub Vec<IpNet>);

impl TrustedProxies {
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|n| n.contains(&ip))
    }
}

/// The header a trusted proxy proves itself with, when a proxy token is set.
pub use protocol::actions::traefik::PROXY_TOKEN_HEADER;

/// Who counts as a trusted proxy: its address, and (when set) the token it sends.
#[derive(Clone, Debug, Default)]
pub struct ProxyTrust {
    pub proxies: TrustedProxies,
    /// SHA-256 of the token: compared in constant time, never kept in clear.
    pub token_sha256: Option<[u8; 32]>,
}

impl From<TrustedProxies> for ProxyTrust {
    fn from(proxies: TrustedProxies) -> Self {
        ProxyTrust { proxies, token_sha256: None }
    }
}

impl ProxyTrust {
    pub fn with_token(proxies: TrustedProxies, token: &[u8]) -> Self {
        use sha2::Digest;
        ProxyTrust { proxies, token_sha256: Some(sha2::Sha256::digest(token).into()) }
    }

    fn believes(&self, peer: IpAddr, headers: &HeaderMap) -> bool {
        if !self.proxies.contains(peer) {
            return false;
        }
        let Some(want) = &self.token_sha256 else { return true };
        let Some(sent) = headers.get(PROXY_TOKEN_HEADER) else { return false };
        use sha2::Digest;
        let got: [u8; 32] = sha2::Sha256::digest(sent.as_bytes()).into();
        // Equal digests, compared without an early exit.
        got.iter().zip(want).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    }
}

/// An entry of `TRUSTED_PROXIES` that is not an address or a network.
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not an IP address or CIDR (expected e.g. 127.0.0.1,10.5.4.0/24)")]
pub struct BadProxy(pub String);

impl std::str::FromStr for TrustedProxies {
    type Err = BadProxy;

    /// A comma (or space) separated list of IP addresses and CIDRs.
    fn from_str(s: &str) -> Result<Self, BadProxy> {
        let mut nets = Vec::new();
        for entry in s.split([',', ' ']).map(str::trim).filter(|e| !e.is_empty()) {
            let net = parse_net(entry).ok_or_else(|| BadProxy(entry.to_owned()))?;
            nets.push(net);
        }
        Ok(TrustedProxies(nets))
    }
}

/// The client's address. The TCP peer, unless the peer is a trusted proxy: then the
/// `X-Forwarded-For` list is read from the right (each proxy appends the address it
/// was contacted by), skipping trusted proxies, and the first other address is the
/// client. A hop that is not an IP address ends the walk as the unspecified address
/// (0.0.0.0): an unknown source, allowed nowhere a network is required.
/// `X-Real-IP` and `Forwarded` are never read.
pub fn client_addr(peer: SocketAddr, headers: &HeaderMap, trust: &ProxyTrust) -> IpAddr {
    let peer = canonical(peer.ip());
    if !trust.believes(peer, headers) {
        return peer;
    }
    let trusted = &trust.proxies;
    let hops: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .flat_map(|v| v.to_str().map(|s| s.split(',').collect::<Vec<_>>()).unwrap_or_else(|_| vec!["?"]))
        .map(str::trim)
        .collect();
    let mut client = peer;
    for hop in hops.iter().rev() {
        let Ok(ip) = hop.parse::<IpAddr>().map(canonical) else {
            return IpAddr::from([0, 0, 0, 0]);
        };
        client = ip;
        if !trusted.contains(ip) {
            break;
        }
    }
    client
}

/// `::ffff:1.2.3.4` is 1.2.3.4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// Parse one `allowed_networks` entry: an address or a CIDR.
pub fn parse_net(s: &str) -> Option<IpNet> {
    let s = s.trim();
    s.parse::<IpNet>().ok().or_else(|| s.parse::<IpAddr>().ok().map(IpNet::from))
}

/// A human user's `allowed_networks` (comma list; empty means anywhere). An entry that
/// does not parse allows nothing: a typo must not open the account to the world.
pub fn user_may_connect(allowed_networks: &str, ip: IpAddr) -> bool {
    let entries: Vec<&str> = allowed_networks.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
    entries.is_empty() || entries.iter().filter_map(|e| parse_net(e)).any(|n| n.contains(&ip))
}

/// Agent identities only from loopback or the cluster VPN network.
pub fn agent_may_connect(cluster_network: &str, ip: IpAddr) -> bool {
    ip.is_loopback() || parse_net(cluster_network).is_some_and(|n| n.contains(&ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(xff: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in xff {
            h.append("x-forwarded-for", v.parse().unwrap());
        }
        h.insert("x-real-ip", "203.0.113.99".parse().unwrap());
        h.insert("forwarded", "for=203.0.113.98".parse().unwrap());
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn forwarded_headers_only_from_trusted_proxies() {
        let local: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let remote: SocketAddr = "192.0.2.1:5000".parse().unwrap();
        let h = headers(&["203.0.113.9, 198.51.100.7"]);
        // Nobody is trusted by default, loopback included.
        let none = ProxyTrust::default();
        assert_eq!(client_addr(local, &h, &none), ip("127.0.0.1"));
        assert_eq!(client_addr(remote, &h, &none), ip("192.0.2.1"));
        let lo = ProxyTrust::from("127.0.0.1".parse::<TrustedProxies>().unwrap());
        assert_eq!(client_addr(local, &h, &lo), ip("198.51.100.7"), "the hop the proxy appended");
        assert_eq!(client_addr(remote, &h, &lo), ip("192.0.2.1"), "an untrusted peer's header is ignored");
        assert_eq!(client_addr(local, &HeaderMap::new(), &lo), ip("127.0.0.1"));
        // A chain of trusted proxies is walked through; the client cannot pose as one
        // of them by writing the left part itself.
        let chain = ProxyTrust::from("127.0.0.1, 10.0.0.0/8".parse::<TrustedProxies>().unwrap());
        let h = headers(&["127.0.0.1, 198.51.100.7", "10.1.1.1"]);
        assert_eq!(client_addr(local, &h, &chain), ip("198.51.100.7"));
        let h = headers(&["10.2.2.2, 10.1.1.1"]);
        assert_eq!(client_addr(local, &h, &chain), ip("10.2.2.2"), "all hops trusted: the leftmost");
        let h = headers(&["198.51.100.7, garbage"]);
        assert_eq!(client_addr(local, &h, &lo), ip("0.0.0.0"), "a malformed hop is an unknown source");
        let v6: SocketAddr = "[::ffff:127.0.0.1]:5000".parse().unwrap();
        assert_eq!(client_addr(v6, &headers(&["2001:db8::1"]), &lo), ip("2001:db8::1"));
    }

    #[test]
    fn with_a_token_the_address_is_not_enough() {
        let local: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let trust = ProxyTrust::with_token("127.0.0.1".parse().unwrap(), b"s3cret-token");
        let mut h = headers(&["198.51.100.7"]);
        assert_eq!(client_addr(local, &h, &trust), ip("127.0.0.1"), "a local process without the token");
        h.insert(PROXY_TOKEN_HEADER, "wrong".parse().unwrap());
        assert_eq!(client_addr(local, &h, &trust), ip("127.0.0.1"));
        h.insert(PROXY_TOKEN_HEADER, "s3cret-token".parse().unwrap());
        assert_eq!(client_addr(local, &h, &trust), ip("198.51.100.7"), "the proxy");
        let remote: SocketAddr = "192.0.2.1:5000".parse().unwrap();
        assert_eq!(client_addr(remote, &h, &trust), ip("192.0.2.1"), "the token from an untrusted address");
    }

    #[test]
    fn trusted_proxy_lists() {
        assert_eq!("".parse::<TrustedProxies>().unwrap(), TrustedProxies::default());
        let t: TrustedProxies = " 127.0.0.1 ,::1, 10.5.4.0/24".parse().unwrap();
        assert_eq!(t.0.len(), 3);
        assert!(t.contains(ip("10.5.4.9")) && t.contains(ip("::1")) && !t.contains(ip("10.5.5.1")));
        let e = "127.0.0.1,localhost".parse::<TrustedProxies>().unwrap_err().to_string();
        assert!(e.contains("\"localhost\" is not an IP address or CIDR"), "{e}");
    }

    #[test]
    fn networks() {
        let ip: IpAddr = "10.5.4.2".parse().unwrap();
        assert!(user_may_connect("", ip));
        assert!(user_may_connect("192.168.1.0/24, 10.5.4.0/24", ip));
        assert!(user_may_connect("10.5.4.2", ip));
        assert!(!user_may_connect("192.168.1.0/24", ip));
        assert!(!user_may_connect("bogus", ip));
        assert!(agent_may_connect("10.5.4.0/24", ip));
        assert!(agent_may_connect("", "127.0.0.1".parse().unwrap()));
        assert!(!agent_may_connect("", ip));
    }
}
