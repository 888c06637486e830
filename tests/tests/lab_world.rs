//! The NAT lab checks itself (see `tests/LAB.md`): each NAT kind maps and
//! filters as its name says, unsolicited packets are dropped rather than
//! rejected, a direct path can be cut and restored, a NAT can be made to
//! rebind, the link delay is real, and no namespace outlives its test.
//! Plain UDP through the `lab-udp` probe; no product code involved, so a
//! failure here means the lab is wrong, not the peers.
//! Needs root; skips with a reason elsewhere, fails when `CI` is set.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use tests::lab::udp::Probe;
use tests::lab::{
    leftover_namespaces, stale_namespaces, sweep_stale_namespaces, Lab, Nat, Site, PREFIX,
    STALE_AFTER,
};

const PROBE_PORT: u16 = 40000;

fn at(site: &Site, port: u16) -> SocketAddr {
    SocketAddr::from((site.public, port))
}

#[test]
fn nat_kinds_map_and_filter_as_their_names_say() {
    let Some(mut lab) = Lab::new("nat_kinds") else {
        return;
    };
    // Two STUN-like servers on public addresses, and a stranger, whom the
    // first server tells to answer each probe too (a host the probe never
    // sent to).
    let s1 = lab.site(Nat::Open, 1);
    let s2 = lab.site(Nat::Open, 1);
    let stranger = lab.site(Nat::Open, 1);
    let (one, other_port, two) = (at(&s1, 3478), at(&s1, 3479), at(&s2, 3478));
    let strange = at(&stranger, 3478);
    lab.udp_server(&stranger.edge, strange, None);
    lab.udp_server_telling(&s1.edge, one, Some(other_port), Some(strange));
    lab.udp_server(&s2.edge, two, None);

    let kinds = [
        Nat::Open,
        Nat::Cone,
        Nat::FullCone,
        Nat::Symmetric,
        Nat::Cgnat,
    ];
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
        // The same server host, another port, and a host never sent to:
        // only an open host and a full cone hear them. A cone filters by
        // address and port (port-restricted), a symmetric NAT too.
        let endpoint_independent = matches!(site.nat, Nat::Open | Nat::FullCone);
        assert_eq!(
            answers.got("other-port"),
            endpoint_independent,
            "{kind}: filtering by port: {answers:?}"
        );
        assert_eq!(
            answers.got("stranger"),
            endpoint_independent,
            "{kind}: filtering by address: {answers:?}"
        );
    }

    // Unsolicited packets to a NAT's public side vanish: no answer, and no
    // ICMP port-unreachable (which the connected probe would report, as it
    // does for a closed port on an open host). The full cone forwards it to
    // its host, where no socket is bound any more, and drops the host's
    // ICMP error.
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

/// `block_direct` cuts UDP between two sites' public addresses in both
/// directions, leaves their paths to a third site (the server's role)
/// alone, and `unblock` restores it. Counters on each site's WAN show the
/// packets never arrived while blocked and do after (so they count).
#[test]
fn a_direct_path_is_cut_both_ways_and_restored_and_other_paths_stay() {
    let Some(mut lab) = Lab::new("block_direct") else {
        return;
    };
    let server = lab.site(Nat::Open, 1);
    let a = lab.site(Nat::Open, 1);
    let b = lab.site(Nat::Open, 1);
    for site in [&server, &a, &b] {
        lab.udp_server(&site.edge, at(site, 3478), None);
    }
    let a_hears_b = lab.count_from(&a, b.public);
    let b_hears_a = lab.count_from(&b, a.public);
    let probe_both = |lab: &Lab| {
        let from_a = lab.udp_probe(&a.edge, &Probe::to(&[at(&b, 3478), at(&server, 3478)]));
        let from_b = lab.udp_probe(&b.edge, &Probe::to(&[at(&a, 3478), at(&server, 3478)]));
        (from_a.answers(), from_b.answers())
    };

    let blocked = lab.block_direct(&a, &b);
    let (from_a, from_b) = probe_both(&lab);
    assert_eq!(from_a.seen_by(at(&b, 3478)), None, "a → b cut: {from_a:?}");
    assert_eq!(from_b.seen_by(at(&a, 3478)), None, "b → a cut: {from_b:?}");
    assert!(
        from_a.seen_by(at(&server, 3478)).is_some(),
        "a → server stays"
    );
    assert!(
        from_b.seen_by(at(&server, 3478)).is_some(),
        "b → server stays"
    );
    assert_eq!(a_hears_b.packets(), 0, "nothing from b reached a");
    assert_eq!(b_hears_a.packets(), 0, "nothing from a reached b");

    blocked.unblock();
    let (from_a, from_b) = probe_both(&lab);
    assert!(
        from_a.seen_by(at(&b, 3478)).is_some(),
        "a → b back: {from_a:?}"
    );
    assert!(
        from_b.seen_by(at(&a, 3478)).is_some(),
        "b → a back: {from_b:?}"
    );
    // b's probe and b's answer to a's probe; and the other way round.
    assert_eq!(a_hears_b.packets(), 2, "the counter counts");
    assert_eq!(b_hears_a.packets(), 2, "the counter counts");
}

/// `rebind` moves a cone NAT's flows to one new public port: the same
/// socket's flow to the same server, which conntrack would otherwise keep on
/// its old port, now shows the new one, toward every destination (still a
/// cone), and a reply to the old mapping no longer gets in. A second cone
/// site, not rebound, is the control: same probes, old port, late reply in.
#[test]
fn a_rebind_moves_a_sites_existing_flows_to_one_new_port() {
    let Some(mut lab) = Lab::new("rebind") else {
        return;
    };
    let s1 = lab.site(Nat::Open, 1);
    let s2 = lab.site(Nat::Open, 1);
    lab.udp_server(&s1.edge, at(&s1, 3478), None);
    lab.udp_server(&s2.edge, at(&s2, 3478), None);
    let moved = lab.site(Nat::Cone, 1);
    let control = lab.site(Nat::Cone, 1);
    const NEW_PORT: u16 = 41234;
    let bind = SocketAddr::from(([0, 0, 0, 0], PROBE_PORT));
    // s1 answers once more, 3 s later, to the mapping it saw first.
    let first = Probe {
        bind,
        late: Some(Duration::from_secs(3)),
        wait: Duration::from_millis(500),
        ..Probe::to(&[at(&s1, 3478)])
    };
    let runs = [&moved, &control].map(|site| lab.udp_probe(&site.hosts[0].ns, &first));
    for (site, run) in [&moved, &control].into_iter().zip(runs) {
        let seen = run.answers().seen_by(at(&s1, 3478));
        assert_eq!(seen, Some(at(site, PROBE_PORT)), "before the rebind");
    }
    lab.rebind(&moved, NEW_PORT);
    // The same local port again, listening past the late answer.
    let second = Probe {
        bind,
        wait: Duration::from_secs(4),
        ..Probe::to(&[at(&s1, 3478), at(&s2, 3478)])
    };
    let runs = [&moved, &control].map(|site| lab.udp_probe(&site.hosts[0].ns, &second));
    let [moved_run, control_run] = runs;
    let (after, kept) = (moved_run.answers(), control_run.answers());
    assert_eq!(kept.seen_by(at(&s1, 3478)), Some(at(&control, PROBE_PORT)));
    assert!(
        kept.got("late 3000"),
        "control: the old flow lives: {kept:?}"
    );
    for server in [&s1, &s2] {
        assert_eq!(
            after.seen_by(at(server, 3478)),
            Some(at(&moved, NEW_PORT)),
            "rebound, one port toward every destination: {after:?}"
        );
    }
    assert!(
        !after.got("late 3000"),
        "the old mapping is gone: {after:?}"
    );
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
