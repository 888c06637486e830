//! The NAT lab checks itself (see `tests/LAB.md`): each NAT kind maps and
//! filters as its name says, unsolicited packets are dropped rather than
//! rejected, the link delay is real, and no namespace outlives its test.
//! Plain UDP through the `lab-udp` probe; no product code involved, so a
//! failure here means the lab is wrong, not the peers.
//! Needs root; skips with a reason elsewhere, fails when `CI` is set.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use tests::lab::udp::Probe;
use tests::lab::{
    leftover_namespaces, stale_namespaces, sweep_stale_namespaces, Lab, Nat, PREFIX, STALE_AFTER,
};

const PROBE_PORT: u16 = 40000;

#[test]
fn nat_kinds_map_and_filter_as_their_names_say() {
    let Some(mut lab) = Lab::new("nat_kinds") else {
        return;
    };
    // Two STUN-like servers on public addresses, and a stranger.
    let s1 = lab.site(Nat::Open, 1);
    let s2 = lab.site(Nat::Open, 1);
    let stranger = lab.site(Nat::Open, 1);
    let at = |site: &tests::lab::Site, port: u16| SocketAddr::from((site.public, port));
    let (one, other_port, two) = (at(&s1, 3478), at(&s1, 3479), at(&s2, 3478));
    lab.udp_server(&s1.edge, one, Some(other_port));
    lab.udp_server(&s2.edge, two, None);

    let kinds = [Nat::Open, Nat::Cone, Nat::Symmetric, Nat::Cgnat];
    let sites: Vec<_> = kinds.iter().map(|k| lab.site(*k, 1)).collect();
    let runs: Vec<_> = sites
        .iter()
        .map(|site| {
            let probe = Probe {
                bind: SocketAddr::from(([0, 0, 0, 0], PROBE_PORT)),
                ..Probe::to(&[one, two])
            };
            lab.udp_probe(&site.hosts[0].ns, &probe)
        })
        .collect();
    for (site, run) in sites.iter().zip(runs) {
        let answers = run.answers();
        let kind = site.nat.as_str();
        let seen1 = answers
            .seen_by(one)
            .unwrap_or_else(|| panic!("{kind}: {answers:?}"));
        let seen2 = answers
            .seen_by(two)
            .unwrap_or_else(|| panic!("{kind}: {answers:?}"));
        assert_eq!(seen1.ip(), site.public, "{kind}: the public address");
        assert_eq!(seen2.ip(), site.public, "{kind}: the public address");
        match site.nat {
            Nat::Symmetric => assert_ne!(
                seen1.port(),
                seen2.port(),
                "symmetric: a new port per destination"
            ),
            _ => {
                assert_eq!(seen1, seen2, "{kind}: one mapping for every destination");
                assert_eq!(seen1.port(), PROBE_PORT, "{kind}: the port is kept");
            }
        }
        // The same server host, another port: only an open host hears it.
        assert_eq!(
            answers.got("other-port"),
            site.nat == Nat::Open,
            "{kind}: filtering by address and port: {answers:?}"
        );
    }

    // Unsolicited packets to a NAT's public side vanish: no answer, and no
    // ICMP port-unreachable (which the connected probe would report, as it
    // does for a closed port on an open host).
    let closed = lab.udp_probe(
        &stranger.edge,
        &Probe {
            connect: true,
            ..Probe::to(&[at(&s2, 9)])
        },
    );
    assert!(
        closed.answers().refused,
        "control: a closed port on an open host rejects"
    );
    for site in sites.iter().filter(|s| s.nat != Nat::Open) {
        let answers = lab
            .udp_probe(
                &stranger.edge,
                &Probe {
                    connect: true,
                    ..Probe::to(&[at(site, PROBE_PORT)])
                },
            )
            .answers();
        assert!(
            answers.datagrams.is_empty() && !answers.refused,
            "{}: dropped silently: {answers:?}",
            site.nat.as_str()
        );
    }
}

#[test]
fn the_link_delay_is_real() {
    let Some(mut lab) = Lab::new("delay_is_real") else {
        return;
    };
    let near = lab.site(Nat::Open, 1);
    let plain = lab.site(Nat::Cone, 1);
    lab.with_delay(Duration::from_millis(20));
    let far = lab.site(Nat::Open, 1);
    let behind = lab.site(Nat::Cone, 1);
    // Undelayed links: well under a millisecond or two.
    let fast = lab.rtt_ms(&plain.hosts[0].ns, near.public, 10);
    assert!(fast < 5.0, "no delay where none was asked: {fast} ms");
    // One delayed uplink on the way: 20 ms; two: 40 ms.
    let one = lab.rtt_ms(&plain.hosts[0].ns, far.public, 10);
    assert!((19.0..30.0).contains(&one), "one delayed uplink: {one} ms");
    let two = lab.rtt_ms(&behind.hosts[0].ns, far.public, 10);
    println!("ping RTT: no delayed uplink {fast:.2} ms, one {one:.2} ms, two {two:.2} ms");
    assert!((39.0..55.0).contains(&two), "two delayed uplinks: {two} ms");
}

#[test]
fn no_namespaces_are_left_behind_even_when_a_test_panics() {
    let Some(lab) = Lab::new("cleanup") else {
        return;
    };
    let id = lab.id.clone();
    // A test that panics half way, on a thread of its own.
    let result = std::thread::spawn(move || {
        let mut lab = lab;
        lab.site(Nat::Cone, 1);
        assert_eq!(leftover_namespaces(&lab.id).len(), 3, "inet, router, host");
        panic!("a failing test (on purpose)");
    })
    .join();
    assert!(result.is_err());
    assert_eq!(leftover_namespaces(&id), Vec::<String>::new());
}

/// A test binary killed before its guards ran (a CI timeout, ^C) leaves its
/// namespaces behind. The next lab process finds them by their owner's pid
/// and age, says so and deletes them; namespaces of live processes, and
/// young ones (maybe another pid namespace's live lab), stay.
#[test]
fn namespaces_of_dead_processes_are_swept() {
    let Some(lab) = Lab::new("sweep") else {
        return;
    };
    // No process ever has a pid above the kernel's limit, 2^22.
    let owner = format!("{PREFIX}4194399t");
    let dead = format!("{owner}000000x0-inet");
    assert!(Command::new("ip")
        .args(["netns", "add", &dead])
        .status()
        .unwrap()
        .success());
    // Young: not stale yet (a live lab elsewhere could look like this).
    assert!(stale_namespaces(&owner, STALE_AFTER).is_empty());
    assert!(sweep_stale_namespaces(&owner, STALE_AFTER).is_empty());
    assert_eq!(leftover_namespaces(&dead), vec![dead.clone()]);
    // Old enough (an age of zero stands in for ten minutes here).
    let swept = sweep_stale_namespaces(&owner, Duration::ZERO);
    assert_eq!(swept, vec![dead.clone()]);
    assert!(leftover_namespaces(&dead).is_empty(), "{dead} was deleted");
    // This process's own lab is alive: never stale, whatever its age.
    assert!(!stale_namespaces(PREFIX, Duration::ZERO)
        .iter()
        .any(|ns| ns.starts_with(&lab.id)));
    assert!(!leftover_namespaces(&lab.id).is_empty());
}
