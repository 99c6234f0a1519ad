//! The caller's address, resolved one way for every endpoint: proxied
//! requests, `/oauth/*` and the admin API (docs/RELIABILITY.md, "Hardening
//! catalogue").
//!
//! The TCP peer is the caller unless it is one of `proxy.trusted_proxies`;
//! then `X-Forwarded-For` is walked from the right, skipping trusted hops,
//! and the first untrusted entry is the caller. An entry that is not a bare
//! IP address ends the walk: whoever wrote it is not a proxy we trust to
//! write addresses, so the address is [`ClientAddr::Unknown`] — never the
//! attacker-written entry beyond it, and never the proxy itself.

use std::fmt;
use std::net::IpAddr;

use http::HeaderMap;

use crate::upstream::X_FORWARDED_FOR;

/// Where a request comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAddr {
    Known(IpAddr),
    /// A trusted proxy forwarded it, but its `X-Forwarded-For` names no
    /// address we can believe. Clients with `allowedIps` are refused.
    Unknown,
}

impl ClientAddr {
    pub fn ip(self) -> Option<IpAddr> {
        match self {
            ClientAddr::Known(ip) => Some(ip),
            ClientAddr::Unknown => None,
        }
    }
}

impl fmt::Display for ClientAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientAddr::Known(ip) => ip.fmt(f),
            ClientAddr::Unknown => f.write_str("unknown"),
        }
    }
}

/// A resolved caller: its address, the TCP peer, and whether that peer is a
/// trusted proxy (whose forwarding headers may then pass upstream).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resolved {
    pub addr: ClientAddr,
    pub peer: IpAddr,
    pub peer_trusted: bool,
}

impl Resolved {
    /// The key for per-address throttles: the caller, or the peer when the
    /// caller is unknown (only a trusted proxy's own junk gets there).
    pub fn throttle_key(&self) -> IpAddr {
        self.addr.ip().unwrap_or(self.peer)
    }
}

/// Resolves the caller of a request that arrived from `peer`.
pub fn resolve(peer: IpAddr, headers: &HeaderMap, trusted: &[ipnet::IpNet]) -> Resolved {
    // The common deployment trusts no proxy: no header is looked at.
    if trusted.is_empty() {
        return Resolved {
            addr: ClientAddr::Known(peer),
            peer,
            peer_trusted: false,
        };
    }
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(&canonical(*ip)));
    if !is_trusted(&peer) {
        return Resolved {
            addr: ClientAddr::Known(peer),
            peer,
            peer_trusted: false,
        };
    }
    // Entries right to left, across repeated headers (last header last).
    let mut addr = ClientAddr::Known(peer);
    'walk: for value in headers.get_all(&X_FORWARDED_FOR).iter().rev() {
        for entry in value.as_bytes().rsplit(|b| *b == b',') {
            let parsed = std::str::from_utf8(entry)
                .ok()
                .and_then(|s| s.trim().parse::<IpAddr>().ok());
            match parsed {
                Some(ip) if is_trusted(&ip) => addr = ClientAddr::Known(ip),
                Some(ip) => {
                    addr = ClientAddr::Known(ip);
                    break 'walk;
                }
                None => {
                    addr = ClientAddr::Unknown;
                    break 'walk;
                }
            }
        }
    }
    // Every hop trusted: the left-most trusted hop is the caller; with no
    // header at all, the peer is.
    Resolved {
        addr: match addr {
            ClientAddr::Known(ip) => ClientAddr::Known(canonical(ip)),
            unknown => unknown,
        },
        peer,
        peer_trusted: true,
    }
}

/// IPv4-mapped IPv6 addresses (`::ffff:192.0.2.1`, what a dual-stack socket
/// reports) compare as the IPv4 address they carry.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn xff(values: &[&'static str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(X_FORWARDED_FOR.clone(), HeaderValue::from_static(v));
        }
        h
    }

    fn trusted() -> Vec<ipnet::IpNet> {
        vec!["10.0.0.0/8".parse().unwrap()]
    }

    #[test]
    fn forwarded_for_only_from_trusted_proxies() {
        let h = xff(&["203.0.113.9, 198.51.100.7, 10.1.1.1"]);
        let outside = ip("192.0.2.1");
        let proxy = ip("10.0.0.2");
        let r = resolve(outside, &h, &trusted());
        assert_eq!(
            r.addr,
            ClientAddr::Known(outside),
            "untrusted peer: XFF ignored"
        );
        assert!(!r.peer_trusted);
        let r = resolve(proxy, &h, &trusted());
        assert_eq!(r.addr, ClientAddr::Known(ip("198.51.100.7")));
        assert!(r.peer_trusted);
        assert_eq!(
            resolve(proxy, &HeaderMap::new(), &trusted()).addr,
            ClientAddr::Known(proxy)
        );
        assert_eq!(
            resolve(proxy, &h, &[]).addr,
            ClientAddr::Known(proxy),
            "nothing trusted: the peer"
        );
    }

    #[test]
    fn an_entry_that_is_not_an_ip_ends_the_walk_as_unknown() {
        let proxy = ip("10.0.0.2");
        // Before the fix the junk was skipped and 203.0.113.9, written by the
        // caller, became the address.
        for h in [
            xff(&["203.0.113.9, 198.51.100.7:443, 10.1.1.1"]),
            xff(&["203.0.113.9, unknown"]),
            xff(&["203.0.113.9, "]),
            xff(&["203.0.113.9", "[2001:db8::1]"]),
        ] {
            assert_eq!(resolve(proxy, &h, &trusted()).addr, ClientAddr::Unknown);
        }
        // Junk to the left of the first untrusted hop is never reached.
        let h = xff(&["junk, 198.51.100.7, 10.1.1.1"]);
        assert_eq!(
            resolve(proxy, &h, &trusted()).addr,
            ClientAddr::Known(ip("198.51.100.7"))
        );
    }

    #[test]
    fn repeated_headers_are_one_list_and_trusted_hops_are_skipped() {
        let proxy = ip("10.0.0.2");
        let h = xff(&["198.51.100.7", "10.9.9.9, 10.1.1.1"]);
        assert_eq!(
            resolve(proxy, &h, &trusted()).addr,
            ClientAddr::Known(ip("198.51.100.7"))
        );
        let all_trusted = xff(&["10.3.3.3, 10.1.1.1"]);
        assert_eq!(
            resolve(proxy, &all_trusted, &trusted()).addr,
            ClientAddr::Known(ip("10.3.3.3"))
        );
        let mapped = ip("::ffff:10.0.0.2");
        assert_eq!(
            resolve(mapped, &xff(&["::ffff:198.51.100.7"]), &trusted()).addr,
            ClientAddr::Known(ip("198.51.100.7"))
        );
        assert_eq!(ClientAddr::Unknown.to_string(), "unknown");
    }
}
