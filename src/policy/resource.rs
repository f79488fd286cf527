//! Resource policies: which source addresses and hosts may call an API, and which
//! address counts as the client behind trusted proxies.

use std::net::IpAddr;

use ipnet::IpNet;

/// Allow and deny lists, pre-parsed. A deny wins; a non-empty allow list must match.
#[derive(Debug, Default)]
pub struct ResourcePolicy {
    pub allow_cidrs: Box<[IpNet]>,
    pub deny_cidrs: Box<[IpNet]>,
    /// Lower case.
    pub allow_hosts: Box<[Box<str>]>,
    pub deny_hosts: Box<[Box<str>]>,
}

impl ResourcePolicy {
    /// Whether a caller at `ip` reaching the gateway through `host` (port stripped,
    /// any case) may call.
    pub fn allows(&self, ip: IpAddr, host: &[u8]) -> bool {
        let ip = canonical(ip);
        if self.deny_cidrs.iter().any(|n| n.contains(&ip)) {
            return false;
        }
        if !self.allow_cidrs.is_empty() && !self.allow_cidrs.iter().any(|n| n.contains(&ip)) {
            return false;
        }
        if self.allow_hosts.is_empty() && self.deny_hosts.is_empty() {
            return true;
        }
        let host = host_name(host);
        let named =
            |list: &[Box<str>]| list.iter().any(|h| h.as_bytes().eq_ignore_ascii_case(host));
        if named(&self.deny_hosts) {
            return false;
        }
        self.allow_hosts.is_empty() || named(&self.allow_hosts)
    }
}

/// `Host` without its port (`[v6]:port` keeps the brackets' content).
fn host_name(host: &[u8]) -> &[u8] {
    if let Some(rest) = host.strip_prefix(b"[") {
        return rest.split(|&b| b == b']').next().unwrap_or(rest);
    }
    match host.iter().rposition(|&b| b == b':') {
        Some(i) => &host[..i],
        None => host,
    }
}

/// An IPv4-mapped IPv6 address (a dual-stack socket's view of an IPv4 peer) is the
/// IPv4 address, so IPv4 CIDRs match it.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Parses CIDRs (`10.0.0.0/8`, `2001:db8::/32`) or bare addresses (a /32 or /128).
pub fn parse_cidrs(list: &[String]) -> Result<Box<[IpNet]>, String> {
    list.iter()
        .map(|s| {
            let s = s.trim();
            s.parse::<IpNet>()
                .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                .map(|n| n.trunc())
                .map_err(|_| format!("{s:?} is not a CIDR such as 10.0.0.0/8 or 2001:db8::/32"))
        })
        .collect()
}

/// The client's address: the socket peer, or, when the peer is a trusted proxy, the
/// right-most `X-Forwarded-For` hop that is not one (AWS and nginx's
/// `real_ip_recursive`). A malformed hop ends the walk at the last trusted one.
pub fn client_ip(peer: IpAddr, trusted: &[IpNet], headers: &[httparse::Header<'_>]) -> IpAddr {
    let mut ip = canonical(peer);
    if trusted.is_empty() || !trusted.iter().any(|n| n.contains(&ip)) {
        return ip;
    }
    // Later headers are closer to us: walk them last-first, each right to left.
    for h in headers
        .iter()
        .rev()
        .filter(|h| h.name.eq_ignore_ascii_case("x-forwarded-for"))
    {
        for hop in h.value.rsplit(|&b| b == b',') {
            let Some(hop) = std::str::from_utf8(hop)
                .ok()
                .and_then(|s| s.trim().parse::<IpAddr>().ok())
            else {
                return ip;
            };
            ip = canonical(hop);
            if !trusted.iter().any(|n| n.contains(&ip)) {
                return ip;
            }
        }
    }
    ip
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h<'a>(v: &'a [u8]) -> httparse::Header<'a> {
        httparse::Header {
            name: "X-Forwarded-For",
            value: v,
        }
    }

    #[test]
    fn right_most_untrusted_hop_is_the_client() {
        let trusted = parse_cidrs(&["127.0.0.1/32".into(), "10.0.0.0/8".into()]).unwrap();
        let peer: IpAddr = "127.0.0.1".parse().unwrap();
        let hdrs = [h(b"6.6.6.6, 203.0.113.9, 10.1.2.3")];
        assert_eq!(
            client_ip(peer, &trusted, &hdrs),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
        // An untrusted peer's header is ignored.
        let other: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(client_ip(other, &trusted, &hdrs), other);
        // A malformed hop stops at the last trusted one.
        let bad = [h(b"203.0.113.9, junk, 10.1.2.3")];
        assert_eq!(
            client_ip(peer, &trusted, &bad),
            "10.1.2.3".parse::<IpAddr>().unwrap()
        );
        // Mapped IPv4 peers match IPv4 CIDRs.
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        assert_eq!(
            client_ip(mapped, &trusted, &hdrs),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn deny_wins_and_allow_must_match() {
        let p = ResourcePolicy {
            allow_cidrs: parse_cidrs(&["10.0.0.0/8".into(), "2001:db8::/32".into()]).unwrap(),
            deny_cidrs: parse_cidrs(&["10.9.0.0/16".into()]).unwrap(),
            allow_hosts: Box::default(),
            deny_hosts: vec!["internal.example.com".into()].into(),
        };
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(p.allows(ip("10.1.1.1"), b"api.example.com"));
        assert!(!p.allows(ip("10.9.1.1"), b"api.example.com"));
        assert!(!p.allows(ip("192.0.2.1"), b"api.example.com"));
        assert!(p.allows(ip("2001:db8::5"), b"x"));
        assert!(!p.allows(ip("10.1.1.1"), b"Internal.Example.com:8443"));
        assert!(parse_cidrs(&["10.0.0.0/33".into()]).is_err());
    }
}
