//! Links, NAT routers and LANs: the sites of a [`Lab`].
//!
//! Every site hangs off the internet router on a link of its own
//! (`198.18.i.0/24`). A NAT router's rules are one nftables script
//! ([`nat_rules`]): masquerade out of `wan`, a forward chain that lets only
//! LAN → WAN and established/related traffic through, and an input chain
//! that drops (never rejects) unsolicited packets from the WAN, as a home
//! router does — bare Linux would answer with ICMP port-unreachable.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::net::Ipv4Addr;

use super::{run, sysctl, Lab};

/// The kind of network a site has.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Nat {
    /// A public address, no NAT, no firewall.
    Open,
    /// `masquerade`: endpoint-independent mapping (the port is kept where
    /// free), filtering by address and port, unsolicited packets from the
    /// WAN dropped silently as a home router does.
    Cone,
    /// `masquerade fully-random`: a new public port per destination.
    Symmetric,
    /// A cone home NAT behind a cone carrier NAT in 100.64.0.0/10.
    Cgnat,
    /// A cone NAT whose router drops every UDP packet its LAN sends out.
    UdpBlocked,
}

impl Nat {
    /// The word used in test names and docs.
    pub fn as_str(self) -> &'static str {
        match self {
            Nat::Open => "open",
            Nat::Cone => "cone",
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

/// The nftables script of a NAT router whose internet side is `wan`:
/// `fully_random` makes it symmetric, `drop_udp` drops all UDP the LAN
/// sends out.
pub fn nat_rules(fully_random: bool, drop_udp: bool) -> String {
    let masq = if fully_random {
        "masquerade fully-random"
    } else {
        "masquerade"
    };
    let udp = if drop_udp {
        "meta l4proto udp drop"
    } else {
        ""
    };
    format!(
        r#"table ip nat {{
  chain post {{ type nat hook postrouting priority srcnat; oifname "wan" {masq}; }}
}}
table inet filter {{
  chain forward {{
    type filter hook forward priority filter; policy drop;
    {udp}
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
"#
    )
}

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
    fn nat_router(&self, router: &str, fully_random: bool, drop_udp: bool) {
        let rules = nat_rules(fully_random, drop_udp);
        self.sh(
            router,
            &format!(
                "{}\nnft -f - <<'EOF'\n{rules}EOF",
                sysctl("net.ipv4.ip_forward", 1)
            ),
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
            Nat::Cone | Nat::Symmetric | Nat::UdpBlocked => {
                let router = format!("{}r{i}", self.id);
                self.add_ns(&router);
                let (index, public) = self.uplink(&router);
                self.nat_router(&router, nat == Nat::Symmetric, nat == Nat::UdpBlocked);
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
                self.nat_router(&carrier, false, false);
                self.nat_router(&home, false, false);
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
        self.nat_router(&router, true, false);
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
        let cone = nat_rules(false, false);
        assert!(cone.contains("oifname \"wan\" masquerade;"));
        assert!(!cone.contains("fully-random"));
        assert!(!cone.contains("reject"));
        assert!(cone.contains("iifname \"wan\" drop"));
        assert!(nat_rules(true, false).contains("masquerade fully-random"));
        assert!(nat_rules(false, true).contains("meta l4proto udp drop"));
        assert!(!cone.contains("udp drop"));
    }
}
