//! Links, NAT routers and LANs: the sites of a [`Lab`].
//!
//! Every site hangs off the internet router on a link of its own
//! (`198.18.i.0/24`). A NAT router's rules are one nftables script
//! ([`nat_rules`]): masquerade out of `wan`, a forward chain that lets only
//! LAN → WAN and established/related traffic through, and an input chain
//! that drops (never rejects) unsolicited packets from the WAN, as a home
//! router does — bare Linux would answer with ICMP port-unreachable.
//!
//! Linux has no full-cone NAT; [`Nat::FullCone`] is emulated for a site of
//! one host: masquerade (which keeps the source port), plus a `dnat` of
//! every UDP datagram arriving on `wan` to that host, same port. A mapping
//! `public:P` so reaches the host's socket on `P` from any outside address,
//! and the host's ICMP errors toward the WAN are dropped, so a datagram to a
//! port nobody uses vanishes as it does at a real NAT.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::net::Ipv4Addr;

use super::{run, sysctl, Lab};

/// The kind of network a site has.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Nat {
    /// A public address, no NAT, no firewall.
    Open,
    /// A *port-restricted* cone, `masquerade`: endpoint-independent mapping
    /// (the port is kept where free), filtering by address and port (a
    /// datagram gets in only from an address and port the host sent to),
    /// unsolicited packets from the WAN dropped silently as a home router
    /// does.
    Cone,
    /// A full cone (one host): endpoint-independent mapping *and*
    /// filtering: any outside host may send to the mapped port, also one
    /// the host never sent to. See the module docs for the emulation.
    FullCone,
    /// `masquerade fully-random`: a new public port per destination.
    Symmetric,
    /// A cone home NAT behind a cone carrier NAT in 100.64.0.0/10.
    Cgnat,
    /// A cone NAT whose router drops every UDP packet it forwards, both
    /// ways (TCP passes): a network without UDP. [`Lab::unblock_udp`]
    /// turns it into a plain cone mid-test.
    UdpBlocked,
}

impl Nat {
    /// The word used in test names and docs.
    pub fn as_str(self) -> &'static str {
        match self {
            Nat::Open => "open",
            Nat::Cone => "cone",
            Nat::FullCone => "full-cone",
            Nat::Symmetric => "symmetric",
            Nat::Cgnat => "cgnat",
            Nat::UdpBlocked => "udp-blocked",
        }
    }
}

/// Where a peer lives: its namespace and its own address.
#[derive(Clone, Debug)]
pub struct Host {
    pub ns: String,
    pub addr: Ipv4Addr,
}

/// A site on link `index`: its public address and its peers.
#[derive(Clone, Debug)]
pub struct Site {
    pub index: u8,
    pub nat: Nat,
    /// The address the internet sees (the outermost NAT's WAN address).
    pub public: Ipv4Addr,
    /// The namespace that owns `public` (the router, or the peer if open).
    pub edge: String,
    /// Every NAT router of the site, outermost first (none when open).
    pub routers: Vec<String>,
    pub hosts: Vec<Host>,
}

/// The nftables script of a NAT router whose internet side is `wan` and
/// whose first LAN host is `192.168.index.2`, for NAT kind `nat`: `Cone`
/// (also each router of a `Cgnat` site), `Symmetric` (`fully-random`),
/// `FullCone` (every UDP datagram from the WAN `dnat`ed to the first LAN
/// host, its ICMP errors to the WAN dropped) or `UdpBlocked` (all UDP it
/// forwards dropped, by a table of its own).
pub fn nat_rules(nat: Nat, index: u8) -> String {
    let masq = if nat == Nat::Symmetric {
        "masquerade fully-random"
    } else {
        "masquerade"
    };
    let pre = if nat == Nat::FullCone {
        format!(
            "chain pre {{ type nat hook prerouting priority dstnat; \
             iifname \"wan\" meta l4proto udp dnat to 192.168.{index}.2; }}"
        )
    } else {
        String::new()
    };
    // Its own table, so `Lab::unblock_udp` can take it away mid-test.
    let udp_block = if nat == Nat::UdpBlocked {
        format!(
            "table inet {UDP_BLOCK_TABLE} {{
  chain forward {{ type filter hook forward priority filter - 1; policy accept; meta l4proto udp drop; }}
}}
"
        )
    } else {
        String::new()
    };
    let forward = match nat {
        Nat::FullCone => {
            "oifname \"wan\" icmp type destination-unreachable drop
    iifname \"wan\" ct status dnat accept"
        }
        _ => "",
    };
    format!(
        r#"table ip nat {{
  {pre}
  chain post {{ type nat hook postrouting priority srcnat; oifname "wan" {masq}; }}
}}
table inet filter {{
  chain forward {{
    type filter hook forward priority filter; policy drop;
    {forward}
    ct state established,related accept
    iifname != "wan" oifname "wan" accept
  }}
  chain input {{
    type filter hook input priority filter; policy accept;
    iifname "wan" ct state established,related accept
    iifname "wan" icmp type echo-request accept
    iifname "wan" drop
  }}
}}
{udp_block}"#
    )
}

/// The nftables table of a [`Nat::UdpBlocked`] router that drops UDP.
pub const UDP_BLOCK_TABLE: &str = "udp_block";

impl Lab {
    /// A veth pair `a_if` (in `a`, with `a_addr/24`) ↔ `b_if` (in `b`, `b_addr/24`).
    fn link(&self, a: &str, a_if: &str, a_addr: Ipv4Addr, b: &str, b_if: &str, b_addr: Ipv4Addr) {
        run(
            "ip",
            &[
                "link", "add", a_if, "netns", a, "type", "veth", "peer", "name", b_if, "netns", b,
            ],
        );
        for (ns, iface, addr) in [(a, a_if, a_addr), (b, b_if, b_addr)] {
            self.sh(
                ns,
                &format!("ip addr add {addr}/24 dev {iface}; ip link set {iface} up"),
            );
        }
    }

    /// Connects namespace `ns` to the internet on a new link, as `wan`
    /// with `198.18.i.2`, default route via `inet`. Returns (i, address).
    fn uplink(&mut self, ns: &str) -> (u8, Ipv4Addr) {
        let i = self.next_link;
        assert!(i < 100, "at most 99 sites per lab");
        self.next_link += 1;
        self.uplink_at(ns, i)
    }

    /// [`Lab::uplink`] on link `i`; delayed when the lab has a delay.
    pub(super) fn uplink_at(&mut self, ns: &str, i: u8) -> (u8, Ipv4Addr) {
        let public = Ipv4Addr::new(198, 18, i, 2);
        let inet = self.inet.clone();
        let inet_side = Ipv4Addr::new(198, 18, i, 1);
        self.link(ns, "wan", public, &inet, &format!("s{i}"), inet_side);
        self.sh(ns, &format!("ip route add default via {inet_side}"));
        if let Some(d) = self.delay {
            self.delay_egress(ns, "wan", d);
        }
        (i, public)
    }

    /// Loads [`nat_rules`] into `router`.
    fn nat_router(&self, router: &str, nat: Nat, index: u8) {
        let rules = nat_rules(nat, index);
        self.sh(
            router,
            &format!(
                "{}\nnft -f - <<'EOF'\n{rules}EOF",
                sysctl("net.ipv4.ip_forward", 1)
            ),
        );
    }

    /// Lets UDP through `site`'s [`Nat::UdpBlocked`] router from now on
    /// (it is a plain cone NAT after this).
    pub fn unblock_udp(&self, site: &Site) {
        assert_eq!(
            site.nat,
            Nat::UdpBlocked,
            "unblock_udp: not a UDP-blocked site"
        );
        self.sh(
            &site.routers[0],
            &format!("nft delete table inet {UDP_BLOCK_TABLE}"),
        );
    }

    /// Sets the UDP conntrack timeouts (seconds) of a NAT router: how long
    /// it remembers a mapping without traffic.
    pub fn udp_timeout(&self, router: &str, secs: u32) {
        self.sh(
            router,
            &format!(
                "{}; {}",
                sysctl("net.netfilter.nf_conntrack_udp_timeout", secs),
                sysctl("net.netfilter.nf_conntrack_udp_timeout_stream", secs)
            ),
        );
    }

    /// A LAN `lan_if` in `router` with `192.168.net.1/24` and `hosts` peers
    /// (`.2`, `.3`, …) on a bridge. Frames within the LAN are switched, not
    /// filtered (bridge netfilter off where `br_netfilter` is loaded), as in
    /// a home switch.
    fn lan(&mut self, router: &str, lan_if: &str, net: u8, hosts: usize) -> Vec<Host> {
        let gw = Ipv4Addr::new(192, 168, net, 1);
        self.sh(
            router,
            &format!(
                "ip link add {lan_if} type bridge; ip addr add {gw}/24 dev {lan_if}; ip link set {lan_if} up
                 if [ -e /proc/sys/net/bridge ]; then {}; fi",
                sysctl("net.bridge.bridge-nf-call-iptables", 0)
            ),
        );
        (0..hosts)
            .map(|h| {
                let ns = format!("{}p{net}{}", self.id, (b'a' + h as u8) as char);
                self.add_ns(&ns);
                let addr = Ipv4Addr::new(192, 168, net, 2 + h as u8);
                let port = format!("{lan_if}{h}");
                run(
                    "ip",
                    &[
                        "link", "add", "eth0", "netns", &ns, "type", "veth", "peer", "name", &port,
                        "netns", router,
                    ],
                );
                self.sh(
                    router,
                    &format!("ip link set {port} master {lan_if}; ip link set {port} up"),
                );
                self.sh(
                    &ns,
                    &format!(
                        "ip addr add {addr}/24 dev eth0; ip link set eth0 up; ip route add default via {gw}"
                    ),
                );
                Host { ns, addr }
            })
            .collect()
    }

    /// Adds a site of kind `nat` with `hosts` peers on one LAN.
    pub fn site(&mut self, nat: Nat, hosts: usize) -> Site {
        let i = self.next_link;
        match nat {
            Nat::Open => {
                assert_eq!(hosts, 1, "an open site is one host");
                let ns = format!("{}p{i}", self.id);
                self.add_ns(&ns);
                let (index, public) = self.uplink(&ns);
                Site {
                    index,
                    nat,
                    public,
                    edge: ns.clone(),
                    routers: vec![],
                    hosts: vec![Host { ns, addr: public }],
                }
            }
            Nat::Cone | Nat::FullCone | Nat::Symmetric | Nat::UdpBlocked => {
                assert!(
                    nat != Nat::FullCone || hosts == 1,
                    "a full-cone site is one host (its dnat has one target)"
                );
                let router = format!("{}r{i}", self.id);
                self.add_ns(&router);
                let (index, public) = self.uplink(&router);
                self.nat_router(&router, nat, index);
                let hosts = self.lan(&router, "lan", index, hosts);
                Site {
                    index,
                    nat,
                    public,
                    edge: router.clone(),
                    routers: vec![router],
                    hosts,
                }
            }
            Nat::Cgnat => {
                let carrier = format!("{}c{i}", self.id);
                let home = format!("{}r{i}", self.id);
                self.add_ns(&carrier);
                self.add_ns(&home);
                let (index, public) = self.uplink(&carrier);
                // The carrier's inside is the home router's "wan".
                let (home_wan, carrier_in) = (
                    Ipv4Addr::new(100, 64, index, 2),
                    Ipv4Addr::new(100, 64, index, 1),
                );
                self.link(&home, "wan", home_wan, &carrier, "cgn", carrier_in);
                self.sh(&home, &format!("ip route add default via {carrier_in}"));
                self.nat_router(&carrier, Nat::Cone, index);
                self.nat_router(&home, Nat::Cone, index);
                let hosts = self.lan(&home, "lan", index, hosts);
                Site {
                    index,
                    nat,
                    public,
                    edge: carrier.clone(),
                    routers: vec![carrier, home],
                    hosts,
                }
            }
        }
    }

    /// One symmetric NAT with two LAN segments (one peer each) that cannot
    /// reach each other, and no hairpinning: the two peers have no path.
    pub fn split_symmetric_site(&mut self) -> Site {
        let i = self.next_link;
        let router = format!("{}r{i}", self.id);
        self.add_ns(&router);
        let (index, public) = self.uplink(&router);
        self.nat_router(&router, Nat::Symmetric, index);
        let mut hosts = self.lan(&router, "lan", index, 1);
        hosts.extend(self.lan(&router, "lanb", 100 + index, 1));
        // The forward chain only lets LAN → wan out; between the segments
        // nothing passes (policy drop), and packets to the router's own
        // public address are not mapped back in (no hairpin).
        Site {
            index,
            nat: Nat::Symmetric,
            public,
            edge: router.clone(),
            routers: vec![router],
            hosts,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nat_rules_name_the_kind_and_drop_rather_than_reject() {
        let cone = nat_rules(Nat::Cone, 3);
        assert!(cone.contains("oifname \"wan\" masquerade;"));
        assert!(!cone.contains("fully-random"));
        assert!(!cone.contains("reject"));
        assert!(cone.contains("iifname \"wan\" drop"));
        assert!(!cone.contains("dnat"));
        assert!(nat_rules(Nat::Symmetric, 3).contains("masquerade fully-random"));
        assert!(nat_rules(Nat::UdpBlocked, 3).contains("meta l4proto udp drop"));
        assert!(!cone.contains("udp drop"));
        let full = nat_rules(Nat::FullCone, 3);
        assert!(full.contains("oifname \"wan\" masquerade;"));
        assert!(full.contains("meta l4proto udp dnat to 192.168.3.2;"));
        assert!(full.contains("icmp type destination-unreachable drop"));
    }
}
