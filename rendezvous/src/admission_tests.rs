//! Unit tests of [`super`]: quotas, Retry, shedding, spoofed floods.

use super::*;

const Q: Quotas = Quotas {
    max_connections: 100,
    max_per_ip: 40,
    retry_above_pending: 10,
    max_pending: 20,
    max_pending_per_source: 4,
    max_pending_per_source_idle: 16,
};

fn load(validated: bool, from_ip: usize, pending_from_ip: usize, pending: usize) -> Load {
    Load {
        validated,
        open: 50,
        pending,
        from_ip,
        pending_from_ip,
        most_pending_from_one: 0,
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

#[test]
fn a_first_connection_pays_nothing() {
    assert_eq!(decide(load(false, 0, 0, 0), Q), Admission::Accept);
    // Sessions already open (not in handshake) do not trigger Retry.
    assert_eq!(decide(load(false, 3, 0, 0), Q), Admission::Accept);
}

#[test]
fn a_second_concurrent_handshake_must_prove_its_address() {
    assert_eq!(decide(load(false, 1, 1, 1), Q), Admission::Retry);
    assert_eq!(decide(load(true, 1, 1, 1), Q), Admission::Accept);
}

#[test]
fn a_flood_of_handshakes_makes_everyone_unvalidated_retry() {
    assert_eq!(decide(load(false, 0, 0, 10), Q), Admission::Retry);
    assert_eq!(decide(load(true, 0, 0, 10), Q), Admission::Accept);
}

#[test]
fn limits_refuse_even_validated_sources() {
    assert_eq!(decide(load(true, 40, 0, 0), Q), Admission::Refuse);
    let full = Load {
        open: 100,
        ..load(true, 0, 0, 0)
    };
    assert_eq!(decide(full, Q), Admission::Refuse);
}

#[test]
fn in_a_busy_queue_a_source_holds_at_most_its_share_and_is_dropped_past_it() {
    assert_eq!(decide(load(true, 3, 3, 10), Q), Admission::Accept);
    assert_eq!(decide(load(true, 4, 4, 10), Q), Admission::Drop);
    assert_eq!(decide(load(false, 4, 4, 10), Q), Admission::Drop);
    // A quiet queue lets a crowd behind one address in at once.
    assert_eq!(decide(load(true, 8, 8, 9), Q), Admission::Accept);
}

/// Below the busy mark a source still holds at most its standing share:
/// four hosts stalling handshakes cannot hold the queue at the busy mark.
#[test]
fn in_a_quiet_queue_a_source_holds_at_most_its_standing_share() {
    let q = crate::config::Limits::default().quotas();
    assert_eq!(decide(load(true, 15, 15, 15), q), Admission::Accept);
    assert_eq!(decide(load(true, 16, 16, 16), q), Admission::Drop);
    assert_eq!(decide(load(false, 16, 16, 16), q), Admission::Drop);
    // Sessions already open do not count, only handshakes in flight.
    assert_eq!(decide(load(true, 30, 0, 9), q), Admission::Accept);
    // Four hosts each trying 64 handshakes (their connection quota)
    // and stalling them: they would hold 256, the busy mark.
    let mut sources = Sources::default();
    for s in 1..=4 {
        for _ in 0..64 {
            sources.admit(ip(&format!("192.0.2.{s}")), true, 0, q, || ());
        }
    }
    assert_eq!(sources.pending(), 4 * 16, "each stalling host holds 16");
    let newcomer = ip("192.0.2.9");
    assert_eq!(
        sources.admit(newcomer, false, 0, q, || ()).admission,
        Admission::Accept,
        "the queue is not held at the busy mark: a newcomer pays no Retry"
    );
}

#[test]
fn a_herd_beyond_the_handshake_queue_is_dropped_even_validated() {
    assert_eq!(decide(load(true, 0, 0, 19), Q), Admission::Accept);
    assert_eq!(decide(load(true, 0, 0, 20), Q), Admission::Drop);
    assert_eq!(decide(load(false, 0, 0, 20), Q), Admission::Drop);
    // A quota reached is said plainly, queue or not.
    assert_eq!(decide(load(true, 40, 0, 20), Q), Admission::Refuse);
}

#[test]
fn a_full_queue_sheds_from_a_bigger_holder_for_proven_sources_only() {
    let full = |validated, mine, most| Load {
        most_pending_from_one: most,
        ..load(validated, mine, mine, 20)
    };
    assert_eq!(decide(full(true, 0, 4), Q), Admission::Shed);
    assert_eq!(decide(full(true, 2, 4), Q), Admission::Shed);
    // Taking a slot must not make this source the bigger one.
    assert_eq!(decide(full(true, 3, 4), Q), Admission::Drop);
    // A herd (one each): nothing to gain, wait for the queue.
    assert_eq!(decide(full(true, 1, 1), Q), Admission::Drop);
    assert_eq!(decide(full(false, 0, 1), Q), Admission::Drop);
    // An unproven newcomer is asked to prove its address, then sheds.
    assert_eq!(decide(full(false, 0, 4), Q), Admission::Retry);
}

#[test]
fn spoofed_packets_hold_at_most_one_slot_of_a_victims_quota() {
    let mut sources = Sources::default();
    let victim = ip("192.0.2.1");
    let accepted = (0..1000)
        .filter(|_| sources.admit(victim, false, 0, Q, || ()).admission == Admission::Accept)
        .count();
    assert_eq!(accepted, 1);
    assert_eq!(sources.pending(), 1);
    assert_eq!(sources.connections.get(&victim), Some(&1));
}

/// Eight sources each try 64 handshakes (proven addresses) and never
/// finish them; a ninth source is still admitted.
#[test]
fn a_few_stalling_sources_cannot_fill_the_queue() {
    let q = Quotas {
        max_connections: 200_000,
        max_per_ip: 64,
        retry_above_pending: 256,
        max_pending: 512,
        max_pending_per_source: 4,
        max_pending_per_source_idle: 16,
    };
    let mut sources = Sources::default();
    for s in 1..=8 {
        for _ in 0..64 {
            sources.admit(ip(&format!("192.0.2.{s}")), true, 0, q, || ());
        }
    }
    assert!(sources.pending() <= 256 + 8 * 4, "{}", sources.pending());
    assert_eq!(sources.pending(), 8 * 16, "each holds its standing share");
    let ninth = ip("192.0.2.9");
    let first = sources.admit(ninth, false, 0, q, || ()).admission;
    assert_eq!(first, Admission::Accept, "below the busy mark: no Retry");
    let proven = sources.admit(ninth, true, 0, q, || ()).admission;
    assert_eq!(proven, Admission::Accept);
}

#[test]
fn when_full_the_biggest_holder_gives_up_its_oldest_handshake() {
    let q = Quotas {
        max_pending: 6,
        retry_above_pending: 3,
        ..Q
    };
    let mut sources = Sources::default();
    let big = ip("192.0.2.1");
    let mut tickets = vec![];
    for n in 0..4 {
        let a = sources.admit(big, true, 0, q, || n);
        tickets.push(a.ticket.expect("admitted"));
    }
    for _ in 0..2 {
        sources.admit(ip("192.0.2.2"), true, 0, q, || 9);
    }
    assert_eq!(sources.pending(), 6);
    let newcomer = ip("192.0.2.3");
    assert_eq!(
        sources.admit(newcomer, false, 0, q, || 9).admission,
        Admission::Retry,
        "an unproven address never sheds: it must prove itself first"
    );
    let shed = sources.admit(newcomer, true, 0, q, || 9);
    assert_eq!(shed.admission, Admission::Shed);
    assert_eq!(shed.shed, Some(0), "the oldest of the biggest holder");
    assert_eq!(sources.pending(), 6);
    // The shed handshake ends later: it is no longer counted, its
    // connection is until it closes.
    assert!(!sources.handshake_done(tickets[0]));
    assert_eq!(sources.connections.get(&big), Some(&4));
    sources.connection_closed(tickets[0]);
    assert_eq!(sources.connections.get(&big), Some(&3));
    assert!(sources.handshake_done(tickets[1]));
    assert_eq!(sources.pending(), 5);
    for t in &tickets[1..] {
        sources.connection_closed(*t);
    }
    assert_eq!(sources.pending(), 3);
    assert!(!sources.connections.contains_key(&big));
    assert_eq!(sources.most(), 2, "{:?}", sources.holders);
}

#[test]
fn two_addresses_of_one_ipv6_slash64_are_one_source() {
    let (a, b) = (ip("2001:db8:5:6::1"), ip("2001:db8:5:6:aaaa::2"));
    let other = ip("2001:db8:5:7::1");
    // Busy from two handshakes on, so the per-source cap applies.
    let q = Quotas {
        retry_above_pending: 2,
        ..Q
    };
    let mut sources = Sources::default();
    let mut admit = |ip, validated, q| sources.admit(ip, validated, 0, q, || ()).admission;
    assert_eq!(admit(a, false, q), Admission::Accept);
    // The Retry rule: a second handshake of the /64 must prove its address.
    assert_eq!(admit(b, false, q), Admission::Retry);
    assert_eq!(admit(other, false, q), Admission::Accept);
    // The pending cap and the connection count are per /64 too.
    for _ in 0..3 {
        assert_eq!(admit(b, true, q), Admission::Accept);
    }
    assert_eq!(admit(a, true, q), Admission::Drop);
    let q = Quotas { max_per_ip: 4, ..q };
    assert_eq!(admit(a, true, q), Admission::Refuse);
    assert_eq!(sources.sources(), 2);
    assert_eq!(sources.connections.get(&source_key(b)), Some(&4));
}
