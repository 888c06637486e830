//! Call setup across the NAT lab with 20 ms one-way delay on every uplink
//! (40 ms round trips between any two sites): per topology, median and p95
//! `setup_ms` over N calls (default 20), the RTT floor measured in the same
//! run — RTT(A,S) + RTT(S,B) + RTT(A,B) — and median ÷ floor (goal ≤ 1.2).
//!
//! `sudo cargo bench -p tests --bench lab [-- --calls N]`. Needs root and
//! network namespaces (see `tests/LAB.md`); prints why and exits otherwise.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::net::Ipv4Addr;
use std::time::Duration;

use tests::lab::{Host, Lab, Nat};

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

struct Result {
    topology: &'static str,
    median: f64,
    p95: f64,
    floor: f64,
    direct: usize,
    calls: usize,
}

/// `calls` calls from `caller` to a listener on `callee`; `peer_addr` is
/// where the caller pings to measure RTT(A,B) (the callee's public side, or
/// its LAN address when both share a LAN).
fn measure(
    lab: &Lab,
    topology: &'static str,
    callee: &Host,
    caller: &Host,
    peer_addr: Ipv4Addr,
    calls: usize,
) -> Result {
    let server = Ipv4Addr::new(198, 18, 0, 2);
    let floor = lab.rtt_ms(&callee.ns, server, 5)
        + lab.rtt_ms(&caller.ns, server, 5)
        + lab.rtt_ms(&caller.ns, peer_addr, 5);
    let mut l = lab
        .home("alice", callee)
        .spawn("alice", Some("alice"), &["listen", "--echo"]);
    l.wait_for(Duration::from_secs(30), "registered");
    let bob = lab.home("bob", caller);
    let mut setups = vec![];
    let mut direct = 0;
    for _ in 0..calls {
        let out = bob.run(
            Some("bob"),
            &["call", "alice", "--timeout", "5"],
            Duration::from_secs(30),
        );
        if let Some(c) = out.events.iter().find(|e| e["event"] == "connected") {
            setups.push(c["setup_ms"].as_f64().unwrap_or(f64::NAN));
            direct += usize::from(c["path"] == "direct");
        }
    }
    setups.sort_by(f64::total_cmp);
    let (median, p95) = if setups.is_empty() {
        (f64::NAN, f64::NAN)
    } else {
        (percentile(&setups, 0.5), percentile(&setups, 0.95))
    };
    Result {
        topology,
        median,
        p95,
        floor,
        direct,
        calls,
    }
}

/// Two sites of kinds `a` (callee) and `b` (caller), one host each.
fn pair(lab: &mut Lab, a: Nat, b: Nat) -> (Host, Host, Ipv4Addr) {
    let a = lab.site(a, 1);
    let b = lab.site(b, 1);
    (a.hosts[0].clone(), b.hosts[0].clone(), a.public)
}

fn world() -> Option<Lab> {
    let mut lab = Lab::new("lab-bench")?;
    lab.with_delay(Duration::from_millis(20));
    lab.start_server();
    Some(lab)
}

fn main() {
    let mut args = std::env::args().skip_while(|a| a != "--calls").skip(1);
    let calls: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(20);
    let mut results = vec![];

    // Each topology: (name, build it, return (callee, caller, where the
    // caller pings to measure RTT(A,B))).
    type Build = fn(&mut Lab) -> (Host, Host, Ipv4Addr);
    let topologies: [(&'static str, Build); 4] = [
        ("open ↔ open", |lab| pair(lab, Nat::Open, Nat::Open)),
        ("cone ↔ cone", |lab| pair(lab, Nat::Cone, Nat::Cone)),
        ("cgnat ↔ cone", |lab| pair(lab, Nat::Cgnat, Nat::Cone)),
        ("same LAN behind one cone NAT", |lab| {
            let s = lab.site(Nat::Cone, 2);
            (s.hosts[0].clone(), s.hosts[1].clone(), s.hosts[0].addr)
        }),
    ];
    for (topology, build) in topologies {
        let Some(mut lab) = world() else { return };
        let (callee, caller, ping_to) = build(&mut lab);
        results.push(measure(&lab, topology, &callee, &caller, ping_to, calls));
    }

    println!(
        "\n| topology (20 ms one-way per uplink) | calls direct | median setup_ms | p95 setup_ms | RTT floor ms | median ÷ floor | goal ≤ 1.2 |"
    );
    println!("|---|---|---|---|---|---|---|");
    for r in results {
        let ratio = r.median / r.floor;
        println!(
            "| {} | {}/{} | {:.1} | {:.1} | {:.1} | {:.2} | {} |",
            r.topology,
            r.direct,
            r.calls,
            r.median,
            r.p95,
            r.floor,
            ratio,
            if ratio <= 1.2 { "met" } else { "missed" }
        );
    }
}
