//! Which addresses a peer may be told to send packets to.
//!
//! The server must never make a peer send packets at an arbitrary host. So a
//! call's candidate list is: first the address the **server observed** (never
//! the peer's claim), then at most [`MAX_LOCAL_CANDIDATES`] of the addresses
//! the peer claims for itself, and only if they are private (RFC 1918),
//! link-local or unique-local (IPv6 fc00::/7) — addresses that stay inside the
//! sender's own network — and only when both peers sit behind one public
//! address ([`same_network`]): a stranger's LAN addresses would otherwise
//! make the callee probe hosts of its own LAN. The server applies
//! [`forward`]. Both peers apply [`targets`] to what they receive, caller and
//! callee alike, so a buggy or hostile server still cannot make them send
//! packets to loopback, multicast, broadcast, or more than 1 + 8 addresses.

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

/// Whether `addr` is in 240.0.0.0/4 (plain or IPv4-mapped): reserved, never
/// a real source, and where both the peers' path layer (a call's virtual
/// address, DESIGN §5) and the server's TCP side (a TCP peer's) place their
/// virtual addresses. No candidate may be one ([`is_observed_candidate`]).
pub fn is_virtual(addr: SocketAddr) -> bool {
    match canonical(addr).ip() {
        IpAddr::V4(ip) => ip.octets()[0] >= 240,
        IpAddr::V6(_) => false,
    }
}

/// Whether `addr` may be the first (server-observed) candidate: a unicast
/// address with a port. Loopback only when `loopback_ok` (the server link
/// itself runs over loopback, as in tests); multicast, broadcast, the
/// unspecified address and the reserved 240.0.0.0/4 never (that range holds
/// the peers' virtual per-peer addresses, DESIGN §5, so no candidate may
/// alias one).
pub fn is_observed_candidate(addr: SocketAddr, loopback_ok: bool) -> bool {
    if addr.port() == 0 {
        return false;
    }
    match canonical(addr).ip() {
        IpAddr::V4(ip) => {
            // 240.0.0.0/4, broadcast included.
            !(ip.is_multicast() || is_virtual(addr) || ip.is_unspecified())
                && (loopback_ok || !ip.is_loopback())
        }
        IpAddr::V6(ip) => {
            !(ip.is_multicast() || ip.is_unspecified()) && (loopback_ok || !ip.is_loopback())
        }
    }
}

/// Whether two observed addresses are one network: the same IPv4 address
/// (one NAT) or the same IPv6 /64 (one LAN).
pub fn same_network(a: SocketAddr, b: SocketAddr) -> bool {
    match (canonical(a).ip(), canonical(b).ip()) {
        (IpAddr::V4(x), IpAddr::V4(y)) => x == y,
        (IpAddr::V6(x), IpAddr::V6(y)) => (u128::from(x) >> 64) == (u128::from(y) >> 64),
        _ => false,
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

/// What the server forwards of one side's candidates to the other: `from`'s
/// observed address, and its vetted local ones only when `from` and `to`
/// are one network ([`same_network`]). Across networks a private address
/// names a host in the *receiver's* LAN, not the sender's.
pub fn forward(
    from_observed: SocketAddr,
    from_claimed: &[SocketAddr],
    to_observed: SocketAddr,
) -> Vec<SocketAddr> {
    let max_local = if same_network(from_observed, to_observed) {
        MAX_LOCAL_CANDIDATES
    } else {
        0
    };
    vet(from_observed, from_claimed, max_local)
}

/// The addresses a peer may send packets to (the caller dials them, the
/// callee punches them), from the other side's candidates as the server
/// sent them: the first (the address the server observed) if
/// [`is_observed_candidate`] accepts it, then at most
/// [`MAX_LOCAL_CANDIDATES`] private, link-local or unique-local ones,
/// deduplicated — those only when the first slot and `ours` (our own
/// address as the server observed it at registration) are one network
/// ([`same_network`]); with `ours` unknown, none. So a lying server cannot
/// make a peer probe hosts of its own LAN for a stranger elsewhere.
/// `server` is the server link's remote address: loopback is accepted in
/// the first slot only when it is loopback too.
pub fn targets(
    candidates: &[SocketAddr],
    server: SocketAddr,
    ours: Option<SocketAddr>,
) -> Vec<SocketAddr> {
    let loopback_ok = canonical(server).ip().is_loopback();
    let Some((&first, rest)) = candidates.split_first() else {
        return vec![];
    };
    let first = canonical(first);
    if !is_observed_candidate(first, loopback_ok) {
        // No trustworthy observed address: nothing says the other side
        // shares our network, so no local candidate either.
        return vec![];
    }
    let max_local = if ours.is_some_and(|ours| same_network(first, ours)) {
        MAX_LOCAL_CANDIDATES
    } else {
        0
    };
    vet(first, rest, max_local)
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

    const PUBLIC_SERVER: &str = "192.0.2.1:7700";

    /// Our own observed address: behind the same NAT as 198.51.100.7.
    fn same_nat() -> Option<SocketAddr> {
        Some(a("198.51.100.7:6000"))
    }

    #[test]
    fn a_peer_sends_only_to_the_observed_address_and_private_ones() {
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
            targets(&from_server, a(PUBLIC_SERVER), same_nat()),
            vec![
                a("198.51.100.7:4000"),
                a("192.168.1.20:4000"),
                a("[fd00::1]:4000")
            ]
        );
        let many: Vec<_> = std::iter::once(a("198.51.100.7:1"))
            .chain((1..=40).map(|i| a(&format!("10.0.0.{i}:9"))))
            .collect();
        assert_eq!(
            targets(&many, a(PUBLIC_SERVER), same_nat()).len(),
            1 + MAX_LOCAL_CANDIDATES
        );
        assert!(targets(&[], a(PUBLIC_SERVER), same_nat()).is_empty());
    }

    #[test]
    fn thousands_of_candidates_become_at_most_nine() {
        let flood: Vec<SocketAddr> = std::iter::once(a("198.51.100.7:1"))
            .chain(
                (0..9_000u32)
                    .map(|i| SocketAddr::from(([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 9))),
            )
            .collect();
        let out = targets(&flood, a(PUBLIC_SERVER), same_nat());
        assert_eq!(out.len(), 1 + MAX_LOCAL_CANDIDATES);
        let public: Vec<SocketAddr> = (0..9_000u32)
            .map(|i| SocketAddr::from(([203, 0, (i >> 8) as u8, i as u8], 9)))
            .collect();
        assert_eq!(
            targets(&public, a(PUBLIC_SERVER), same_nat()),
            vec![public[0]]
        );
    }

    #[test]
    fn the_first_slot_is_never_loopback_multicast_broadcast_or_unspecified() {
        for bad in [
            "127.0.0.1:5",
            "[::1]:5",
            "224.0.0.1:5",
            "[ff02::1]:5",
            "255.255.255.255:5",
            "0.0.0.0:5",
            "[::]:5",
            "[::ffff:127.0.0.1]:5",
            "198.51.100.7:0",
            "240.0.0.1:5",
            "[::ffff:250.1.2.3]:5",
        ] {
            // Without a trustworthy first slot, nothing says the other
            // side is on our network: its local candidates go too.
            let out = targets(&[a(bad), a("192.168.1.2:5")], a(PUBLIC_SERVER), same_nat());
            assert!(out.is_empty(), "{bad}: {out:?}");
        }
        // Over a loopback server link (tests, one machine), loopback is fine;
        // multicast, broadcast and unspecified still are not.
        let lo = a("127.0.0.1:7700");
        let ours = Some(a("127.0.0.1:6000"));
        assert_eq!(
            targets(&[a("127.0.0.1:5")], lo, ours),
            vec![a("127.0.0.1:5")]
        );
        assert_eq!(
            targets(&[a("[::1]:5")], a("[::1]:7700"), None),
            vec![a("[::1]:5")]
        );
        for bad in ["224.0.0.1:5", "255.255.255.255:5", "0.0.0.0:5"] {
            assert!(targets(&[a(bad)], lo, ours).is_empty(), "{bad}");
        }
    }

    #[test]
    fn local_candidates_are_forwarded_only_within_one_network() {
        let claimed = [a("192.168.1.2:4000"), a("[fd00::2]:4000")];
        let bob = a("198.51.100.7:4000");
        let same_nat = a("198.51.100.7:5123");
        let elsewhere = a("203.0.113.9:4000");
        assert_eq!(
            forward(bob, &claimed, same_nat),
            vec![bob, a("192.168.1.2:4000"), a("[fd00::2]:4000")]
        );
        assert_eq!(forward(bob, &claimed, elsewhere), vec![bob]);
        assert_eq!(
            forward(a("[::ffff:198.51.100.7]:1"), &claimed, same_nat).len(),
            3,
            "an IPv4-mapped observed address is the same IPv4 address"
        );
        let v6 = a("[2001:db8:1:2::1]:4000");
        assert_eq!(forward(v6, &claimed, a("[2001:db8:1:2::9]:1")).len(), 3);
        assert_eq!(forward(v6, &claimed, a("[2001:db8:1:3::1]:1")), vec![v6]);
        assert_eq!(forward(v6, &claimed, bob), vec![v6]);
        assert!(same_network(a("127.0.0.1:1"), a("127.0.0.1:2")));
        assert!(!same_network(a("127.0.0.1:1"), a("127.0.0.2:1")));
    }

    #[test]
    fn a_peer_keeps_local_candidates_only_from_its_own_network() {
        // What a lying server sends: a public first slot elsewhere and eight
        // hosts of *our* LAN to probe.
        let lan: Vec<SocketAddr> = (1..=8).map(|i| a(&format!("192.168.1.{i}:22"))).collect();
        let lie: Vec<SocketAddr> = std::iter::once(a("203.0.113.9:4000"))
            .chain(lan.iter().copied())
            .collect();
        let server = a(PUBLIC_SERVER);
        assert_eq!(
            targets(&lie, server, same_nat()),
            vec![a("203.0.113.9:4000")]
        );
        // Our observed address unknown (never registered): no locals either.
        assert_eq!(targets(&lie, server, None), vec![a("203.0.113.9:4000")]);
        // Truly behind our NAT (same IPv4; or one IPv6 /64): locals kept.
        let honest: Vec<SocketAddr> = std::iter::once(a("198.51.100.7:4000"))
            .chain(lan.iter().copied())
            .collect();
        assert_eq!(targets(&honest, server, same_nat()).len(), 9);
        assert_eq!(
            targets(&honest, server, Some(a("[::ffff:198.51.100.7]:1"))).len(),
            9
        );
        let v6 = [a("[2001:db8:1:2::1]:4000"), a("[fd00::2]:4000")];
        assert_eq!(
            targets(&v6, server, Some(a("[2001:db8:1:2::9]:1"))).len(),
            2
        );
        assert_eq!(
            targets(&v6, server, Some(a("[2001:db8:1:3::9]:1"))).len(),
            1
        );
        // Both on loopback (tests on one machine): one network.
        let lo = [a("127.0.0.1:5000"), a("192.168.1.2:5000")];
        assert_eq!(
            targets(&lo, a("127.0.0.1:7700"), Some(a("127.0.0.1:6000"))),
            lo.to_vec()
        );
    }
}
