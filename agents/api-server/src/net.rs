//! Where a request comes from, and whether that source may use an identity.

use std::net::{IpAddr, SocketAddr};

use axum::http::HeaderMap;
use ipnet::IpNet;

/// The client's address: the peer, or, when the peer is a local reverse proxy (the
/// edge Traefik), the last address it appended to `X-Forwarded-For`. Only loopback
/// peers are trusted with that header, as NS8.
pub fn client_addr(peer: SocketAddr, headers: &HeaderMap) -> IpAddr {
    let peer = canonical(peer.ip());
    if !peer.is_loopback() {
        return peer;
    }
    headers
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.rsplit(',').next())
        .and_then(|last| last.trim().parse::<IpAddr>().ok())
        .map(canonical)
        .unwrap_or(peer)
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

    #[test]
    fn forwarded_only_from_loopback() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", "203.0.113.9, 198.51.100.7".parse().unwrap());
        let local: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let remote: SocketAddr = "192.0.2.1:5000".parse().unwrap();
        assert_eq!(client_addr(local, &h), "198.51.100.7".parse::<IpAddr>().unwrap());
        assert_eq!(client_addr(remote, &h), "192.0.2.1".parse::<IpAddr>().unwrap());
        assert_eq!(client_addr(local, &HeaderMap::new()), "127.0.0.1".parse::<IpAddr>().unwrap());
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
