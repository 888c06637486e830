//! What a test does to the paths between sites mid-test: cut and restore
//! the direct path between two sites ([`Lab::block_direct`]), make a NAT
//! rebind its mappings to a new public port ([`Lab::rebind`]), and count
//! the packets that reach a site from one address ([`Lab::count_from`]).
//!
//! Each is a table of its own in one namespace's nftables, so adding and
//! removing one never touches the NAT rules of [`super::sites`]:
//! - a block is `table ip <name>` in `inet` (the internet router), a
//!   forward chain dropping UDP between the two sites' public addresses in
//!   both directions; every other flow (each site to the server, to third
//!   sites) passes as before. `inet` does no NAT, so nothing there
//!   remembers the flows: removing the table restores the path at once.
//! - a rebind rewrites the masquerade of the site's outermost NAT router to
//!   `masquerade to :PORT` — one port, so the mapping stays
//!   endpoint-independent (a port *range* would pick a port per flow: a
//!   symmetric NAT) — and then flushes that router's conntrack table, so
//!   the flows that exist get the new port with their next packet, and
//!   packets to the old port are dropped as unsolicited.
//! - a counter is `table ip <name>` in the site's edge namespace, a
//!   prerouting chain that counts what arrives on `wan` from one IP, before
//!   NAT and filtering decide anything.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::net::Ipv4Addr;
use std::process::Command;

use super::{Lab, Nat, Site};

/// The direct path between two sites, cut until [`Blocked::unblock`] (or
/// drop).
#[must_use = "dropping a Blocked restores the path at once"]
pub struct Blocked {
    inet: String,
    table: String,
    active: bool,
}

impl Blocked {
    /// Restores the direct path (deletes the block's table); panics if nft
    /// fails.
    pub fn unblock(mut self) {
        self.active = false;
        super::run(
            "ip",
            &[
                "netns",
                "exec",
                &self.inet,
                "nft",
                "delete",
                "table",
                "ip",
                &self.table,
            ],
        );
    }
}

impl Drop for Blocked {
    fn drop(&mut self) {
        if self.active {
            // The lab may be gone already (its namespaces deleted): quietly.
            let _ = Command::new("ip")
                .args(["netns", "exec", &self.inet, "nft", "delete", "table", "ip"])
                .arg(&self.table)
                .output();
        }
    }
}

/// Packets counted by a [`Lab::count_from`] rule.
pub struct Counter {
    ns: String,
    table: String,
}

impl Counter {
    /// Packets counted so far.
    pub fn packets(&self) -> u64 {
        let out = super::run(
            "ip",
            &[
                "netns",
                "exec",
                &self.ns,
                "nft",
                "list",
                "table",
                "ip",
                &self.table,
            ],
        );
        parse_packets(&out).unwrap_or_else(|| panic!("no counter in:\n{out}"))
    }
}

/// The `packets N` of the first counter in `nft list` output.
fn parse_packets(listing: &str) -> Option<u64> {
    let rest = &listing[listing.find("counter packets ")? + "counter packets ".len()..];
    rest.split_whitespace().next()?.parse().ok()
}

/// The nftables script of a block between `a` and `b`, in table `table`.
pub fn block_rules(table: &str, a: Ipv4Addr, b: Ipv4Addr) -> String {
    format!(
        r#"table ip {table} {{
  chain forward {{
    type filter hook forward priority filter - 10; policy accept;
    ip saddr {a} ip daddr {b} meta l4proto udp drop
    ip saddr {b} ip daddr {a} meta l4proto udp drop
  }}
}}
"#
    )
}

/// The nftables script that moves a router's masquerade to one `port` (the
/// rule set of [`super::sites::nat_rules`] keeps its `post` chain in `ip nat`).
pub fn rebind_rules(port: u16) -> String {
    format!(
        r#"flush chain ip nat post
add rule ip nat post oifname "wan" meta l4proto {{ tcp, udp }} masquerade to :{port}
add rule ip nat post oifname "wan" masquerade
"#
    )
}

impl Lab {
    /// Cuts the direct path between sites `a` and `b`: the internet router
    /// drops UDP between their public addresses, both ways. Their traffic to
    /// the server and to other sites is untouched. Lasts until the guard is
    /// unblocked or dropped.
    pub fn block_direct(&self, a: &Site, b: &Site) -> Blocked {
        assert_ne!(a.public, b.public, "two different sites");
        let table = format!("block_{}_{}", a.index, b.index);
        let rules = block_rules(&table, a.public, b.public);
        self.sh(&self.inet, &format!("nft -f - <<'EOF'\n{rules}EOF"));
        Blocked {
            inet: self.inet.clone(),
            table,
            active: true,
        }
    }

    /// Makes `site`'s outermost NAT rebind: from now on it maps every flow,
    /// also the ones that exist, to public port `port` (one port, so it
    /// stays a cone), and it forgets the old mappings (conntrack flushed).
    /// For NAT kinds whose mapping is a `masquerade` (cone, symmetric, the
    /// carrier of a cgnat site); not for open sites or a full cone (whose
    /// inbound `dnat` keeps the port).
    pub fn rebind(&self, site: &Site, port: u16) {
        assert!(
            !matches!(site.nat, Nat::Open | Nat::FullCone),
            "rebind: {} has no masquerade to move",
            site.nat.as_str()
        );
        let router = &site.routers[0];
        let rules = rebind_rules(port);
        // The rule first, then the flush: a packet in between must not
        // make a mapping with the old port.
        self.sh(
            router,
            &format!("nft -f - <<'EOF'\n{rules}EOF\nconntrack -F"),
        );
    }

    /// Counts the packets that arrive on `site`'s internet side (`wan` of
    /// its edge namespace) from `from`, from now on.
    pub fn count_from(&self, site: &Site, from: Ipv4Addr) -> Counter {
        let table = format!("count_{}", u32::from(from));
        self.sh(
            &site.edge,
            &format!(
                "nft -f - <<'EOF'
table ip {table} {{
  chain pre {{
    type filter hook prerouting priority raw - 10; policy accept;
    iifname \"wan\" ip saddr {from} counter
  }}
}}
EOF"
            ),
        );
        Counter {
            ns: site.edge.clone(),
            table,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_block_drops_udp_both_ways_between_the_two_addresses_only() {
        let a = Ipv4Addr::new(198, 18, 1, 2);
        let b = Ipv4Addr::new(198, 18, 2, 2);
        let rules = block_rules("block_1_2", a, b);
        assert!(rules.contains("ip saddr 198.18.1.2 ip daddr 198.18.2.2 meta l4proto udp drop"));
        assert!(rules.contains("ip saddr 198.18.2.2 ip daddr 198.18.1.2 meta l4proto udp drop"));
        assert!(rules.contains("policy accept"));
        assert_eq!(rules.matches("drop").count(), 2);
    }

    #[test]
    fn a_rebind_moves_the_masquerade_to_one_port_not_a_range() {
        let rules = rebind_rules(41000);
        assert!(rules.contains("masquerade to :41000\n"));
        assert!(!rules.contains('-'), "no port range: {rules}");
        assert!(!rules.contains("random"));
    }

    #[test]
    fn counter_packets_are_read_from_nft_list_output() {
        let listing = "table ip count_1 {\n\tchain pre {\n\t\tiifname \"wan\" ip saddr 198.18.2.2 counter packets 17 bytes 900\n\t}\n}\n";
        assert_eq!(parse_packets(listing), Some(17));
        assert_eq!(parse_packets("table ip x {}"), None);
    }
}
