//! The whole call flow without a network, on a fake clock (quinn-proto's
//! `Pair` style, [`tests::pair`]): the caller's and callee's path tables
//! against each other over a simulated network — direct open or cut,
//! symmetric NATs, a relay between them — checking which path each side
//! takes, and when it moves.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use peer::path::{PathMode, Route, SwitchReason};
use tests::pair::{params, Net, Pair, Side};

fn a(s: &str) -> SocketAddr {
    s.parse().expect("addr")
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// The caller's address as the server saw it, and the callee's.
const A: &str = "198.51.100.1:4000";
const B: &str = "203.0.113.2:5000";

/// A cone ↔ cone pair (each reachable where the server saw it).
fn cone_pair(net: Net, mode: PathMode) -> Pair {
    let t0 = Instant::now();
    let caller = Side::new(params(mode, vec![a(B)]), a(A), a(A), t0, 1);
    let callee = Side::new(params(mode, vec![a(A)]), a(B), a(B), t0, 2);
    Pair::new(caller, callee, net, t0)
}

fn both_on(p: &Pair, route_of: impl Fn(usize) -> Route) -> bool {
    (0..2).all(|i| p.sides[i].chosen() == Some(route_of(i)))
}

fn direct_to(i: usize) -> Route {
    Route::Direct(a(if i == 0 { B } else { A }))
}

#[test]
fn an_open_direct_path_is_taken_first_by_both_sides() {
    let mut p = cone_pair(Net::default(), PathMode::Auto);
    assert!(p.run_until(ms(200), |p| both_on(p, direct_to)));
    for s in &p.sides {
        assert_eq!(s.switches.len(), 1, "{:?}", s.switches);
        assert_eq!(s.switches[0].2, SwitchReason::First);
        assert!(
            s.switches[0].0 <= ms(60),
            "one round trip: {:?}",
            s.switches
        );
    }
}

#[test]
fn with_the_direct_path_cut_both_ride_the_relay_then_move_when_it_opens() {
    let net = Net {
        direct_open: false,
        ..Net::default()
    };
    let mut p = cone_pair(net, PathMode::Auto);
    assert!(p.run_until(ms(500), |p| both_on(p, |_| Route::Relay)));
    p.run(Duration::from_secs(5));
    assert!(both_on(&p, |_| Route::Relay));
    p.net.direct_open = true;
    let opened = p.elapsed();
    assert!(
        p.run_until(Duration::from_secs(2), |p| both_on(p, direct_to)),
        "{:?}",
        p.sides.iter().map(|s| &s.switches).collect::<Vec<_>>()
    );
    let moved = p.elapsed() - opened;
    assert!(moved <= Duration::from_secs(2), "{moved:?}");
    for s in &p.sides {
        assert_eq!(s.switches.last().map(|w| w.2), Some(SwitchReason::Upgrade));
    }
}

#[test]
fn a_direct_path_that_dies_falls_back_to_the_relay_within_three_seconds() {
    let mut p = cone_pair(Net::default(), PathMode::Auto);
    assert!(p.run_until(ms(200), |p| both_on(p, direct_to)));
    p.run(Duration::from_secs(3));
    p.net.direct_open = false;
    let cut = p.elapsed();
    assert!(p.run_until(Duration::from_secs(3), |p| both_on(p, |_| Route::Relay)));
    assert!(p.elapsed() - cut <= Duration::from_secs(3));
    for s in &p.sides {
        assert_eq!(s.switches.last().map(|w| w.2), Some(SwitchReason::Failed));
    }
}

#[test]
fn a_symmetric_caller_meets_a_full_cone_callee_directly_through_its_fresh_port() {
    let t0 = Instant::now();
    // The caller's NAT gives the callee a fresh port: its packets come from
    // there, and only there does it take the callee's.
    let fresh = a("198.51.100.1:61001");
    let caller = Side::new(params(PathMode::Auto, vec![a(B)]), fresh, fresh, t0, 1);
    let callee = Side::new(params(PathMode::Auto, vec![a(A)]), a(B), a(B), t0, 2);
    let mut p = Pair::new(caller, callee, Net::default(), t0);
    let direct = |i: usize| Route::Direct(if i == 0 { a(B) } else { fresh });
    assert!(
        p.run_until(Duration::from_secs(2), |p| both_on(p, direct)),
        "{:?}",
        p.sides.iter().map(|s| &s.switches).collect::<Vec<_>>()
    );
    // The callee sent its data to the fresh port only after it proved to
    // receive there (the nonce echoed); before that, one pong per ping.
    let callee = &p.sides[1];
    let first_ping_to_fresh = callee
        .sent
        .iter()
        .find(|(_, r)| *r == Route::Direct(fresh))
        .map(|(t, _)| *t);
    assert!(first_ping_to_fresh.is_some());
}

#[test]
fn symmetric_to_symmetric_stays_on_the_relay_and_never_gives_up() {
    let t0 = Instant::now();
    let caller = Side::new(
        params(PathMode::Auto, vec![a(B)]),
        a("198.51.100.1:61001"),
        a("198.51.100.1:61001"),
        t0,
        1,
    );
    let callee = Side::new(
        params(PathMode::Auto, vec![a(A)]),
        a("203.0.113.2:62002"),
        a("203.0.113.2:62002"),
        t0,
        2,
    );
    let mut p = Pair::new(caller, callee, Net::default(), t0);
    p.run(Duration::from_secs(30));
    assert!(both_on(&p, |_| Route::Relay));
    assert!(p.sides.iter().all(|s| !s.gave_up));
    assert!(p.sides.iter().all(|s| s.switches.len() == 1), "no flapping");
}

#[test]
fn path_direct_without_a_direct_path_gives_up_and_path_relay_never_sends_direct() {
    let net = Net {
        direct_open: false,
        ..Net::default()
    };
    let mut p = cone_pair(net.clone(), PathMode::Direct);
    p.run(Duration::from_secs(6));
    assert!(p.sides.iter().all(|s| s.gave_up && s.chosen().is_none()));
    let mut p = cone_pair(Net::default(), PathMode::Relay);
    p.run(Duration::from_secs(5));
    assert!(both_on(&p, |_| Route::Relay));
    assert!(p
        .sides
        .iter()
        .all(|s| s.sent.iter().all(|(_, r)| *r == Route::Relay)));
}
