//! Which addresses a peer may be told to send packets to.
//!
//! The server must never make a peer send packets at an arbitrary host. So a
//! call's candidate list is: first the address the **server observed** (never
//! the peer's claim), then at most [`MAX_LOCAL_CANDIDATES`] of the addresses
//! the peer claims for itself, and only if they are private (RFC 1918),
//! link-local or unique-local (IPv6 fc00::/7) — addresses that stay inside the
//! sender's own network. The server applies [`vet`]; peers apply
//! [`is_local_candidate`] again to what they receive, as a second lock.

use std::net::{IpAddr, SocketAddr};

/// Most local (claimed) candidates kept per side.
pub const MAX_LOCAL_CANDIDATES: usize = 8;

/// `addr` with an IPv4-mapped IPv6 address turned into plain IPv4.
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), addr.port()),
            None => addr,
        },
        IpAddr::V4(_) => addr,
    }
}

/// Whether a claimed address may be used as a local candidate.
pub fn is_local_candidate(addr: SocketAddr) -> bool {
    if addr.port() == 0 {
        return false;
    }
    match canonical(addr).ip() {
        IpAddr::V4(ip) => ip.is_private() || ip.is_link_local(),
        IpAddr::V6(ip) => {
            let first = ip.segments()[0];
            (first & 0xfe00) == 0xfc00 || (first & 0xffc0) == 0xfe80
        }
    }
}

/// The candidate list to hand the other side: `observed` first, then the
/// acceptable claimed ones, deduplicated, at most `max_local` of them.
pub fn vet(observed: SocketAddr, claimed: &[SocketAddr], max_local: usize) -> Vec<SocketAddr> {
    let observed = canonical(observed);
    let mut out = vec![observed];
    for addr in claimed.iter().copied().map(canonical) {
        if out.len() > max_local {
            break;
        }
        if is_local_candidate(addr) && !out.contains(&addr) {
            out.push(addr);
        }
    }
    out
}

/// The addresses a callee may send punch datagrams to, from the caller's
/// candidates as the server sent them: the first (the address the server
/// observed) and at most [`MAX_LOCAL_CANDIDATES`] private, link-local or
/// unique-local ones. The callee's own check behind the server's [`vet`]:
/// even a buggy or hostile server cannot make a listener send packets to an
/// arbitrary public host.
pub fn punch_targets(candidates: &[SocketAddr]) -> Vec<SocketAddr> {
    let mut targets: Vec<SocketAddr> = Vec::new();
    let (observed, rest) = match candidates.split_first() {
        Some((first, rest)) if first.port() != 0 => (Some(canonical(*first)), rest),
        Some((_, rest)) => (None, rest),
        None => (None, candidates),
    };
    targets.extend(observed);
    for addr in rest.iter().copied().filter(|a| is_local_candidate(*a)) {
        let addr = canonical(addr);
        if targets.len() > MAX_LOCAL_CANDIDATES {
            break;
        }
        if !targets.contains(&addr) {
            targets.push(addr);
        }
    }
    targets
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().expect("addr")
    }

    #[test]
    fn keeps_only_private_link_local_ula() {
        for ok in [
            "10.1.2.3:5",
            "172.16.0.1:5",
            "192.168.1.1:5",
            "169.254.1.1:5",
            "[fd00::1]:5",
            "[fe80::1]:5",
        ] {
            assert!(is_local_candidate(a(ok)), "{ok}");
        }
        for bad in [
            "8.8.8.8:53",
            "203.0.113.5:1",
            "127.0.0.1:5",
            "100.64.0.1:5",
            "[2001:db8::1]:5",
            "[::1]:5",
            "0.0.0.0:5",
            "192.168.1.1:0",
            "255.255.255.255:5",
            "224.0.0.1:5",
        ] {
            assert!(!is_local_candidate(a(bad)), "{bad}");
        }
    }

    #[test]
    fn observed_first_then_vetted_and_capped() {
        let observed = a("[::ffff:198.51.100.7]:4000");
        let mut claimed = vec![
            a("8.8.8.8:53"),
            a("192.168.1.2:4000"),
            a("192.168.1.2:4000"),
        ];
        claimed.extend((1..20).map(|i| SocketAddr::from(([10, 0, 0, i], 4000))));
        let out = vet(observed, &claimed, MAX_LOCAL_CANDIDATES);
        assert_eq!(out[0], a("198.51.100.7:4000"));
        assert_eq!(out[1], a("192.168.1.2:4000"));
        assert_eq!(out.len(), 1 + MAX_LOCAL_CANDIDATES);
        assert!(!out.contains(&a("8.8.8.8:53")));
    }

    #[test]
    fn a_listener_punches_only_the_observed_address_and_private_ones() {
        let from_server = [
            a("198.51.100.7:4000"), // observed: public, allowed
            a("203.0.113.9:53"),    // a public "local" candidate: never
            a("192.168.1.20:4000"), // private: allowed
            a("[fd00::1]:4000"),    // unique-local: allowed
            a("8.8.8.8:53"),        // never
            a("192.168.1.20:4000"), // duplicate
            a("10.0.0.1:0"),        // port 0: never
        ];
        assert_eq!(
            punch_targets(&from_server),
            vec![
                a("198.51.100.7:4000"),
                a("192.168.1.20:4000"),
                a("[fd00::1]:4000")
            ]
        );
        let many: Vec<_> = std::iter::once(a("198.51.100.7:1"))
            .chain((1..=40).map(|i| a(&format!("10.0.0.{i}:9"))))
            .collect();
        assert_eq!(punch_targets(&many).len(), 1 + MAX_LOCAL_CANDIDATES);
        assert!(punch_targets(&[]).is_empty());
    }
}
