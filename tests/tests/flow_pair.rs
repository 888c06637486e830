//! The whole call flow without a network, on a fake clock (quinn-proto's
//! `Pair` style, [`tests::pair`]): the caller's and callee's path tables
//! against each other over a simulated network — direct open or cut,
//! symmetric NATs, a relay between them — checking which path each side
//! takes, and when it moves; then the whole flow: the caller's
//! `CallState`, the server's `CallBroker` and the callee's `CalleeState`
//! exchanging the real messages on the fake clock, into the two tables.

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

// The whole flow: consent through the real broker, then the paths.

use common::{Fingerprint, Message};
use peer::call_state::{CallState, Vantage};
use peer::callee_state::{Answer as CalleeAnswer, CalleeState};
use peer::known_peers::Check;
use peer::Policy;
use rendezvous::broker::{
    Answer, BrokerConfig, CallBroker, CallRequest, Callee, Caller, Facts, NoCaller, Offer,
    OfferRefused, Step,
};
use rendezvous::relay::Tickets;

const SERVER: &str = "192.0.2.1:7700";
const BOB: Fingerprint = Fingerprint([1; 32]);
const ALICE: Fingerprint = Fingerprint([2; 32]);

/// A server with a relay.
const CONFIG: BrokerConfig = BrokerConfig {
    relay: true,
    answer_timeout: Duration::from_secs(10),
};

/// The relay's tickets for the call: one secret per side.
fn tickets() -> Tickets {
    let ticket = |secret| common::RelayTicket {
        call_id: 1,
        secret: [secret; 32],
    };
    Tickets {
        caller: ticket(3),
        callee: ticket(4),
    }
}

/// A server's books with bob calling alice, both online, no limits hit.
struct Books;

impl Facts for Books {
    fn caller(&mut self) -> Result<Caller, NoCaller> {
        Ok(Caller {
            session: 1,
            name: "bob".into(),
            fingerprint: BOB,
            observed: a(A),
        })
    }
    fn allow_call(&mut self, _: std::net::IpAddr, _: Instant) -> bool {
        true
    }
    fn owner(&mut self, _: &str) -> Result<Option<Fingerprint>, String> {
        Ok(Some(ALICE))
    }
    fn callee(&mut self, _: &str, _: Fingerprint) -> Option<Callee> {
        Some(Callee {
            session: 2,
            approved: false,
            standing: None,
        })
    }
    fn check_offer(&mut self, _: Offer, _: Instant) -> Result<(), OfferRefused> {
        Ok(())
    }
    fn next_call_id(&mut self) -> u64 {
        7
    }
    fn current_address(&mut self, session: u64) -> SocketAddr {
        a(if session == 1 { A } else { B })
    }
    fn probe_key(&mut self) -> [u8; 32] {
        [9; 32]
    }
}

/// Runs the consent on a fake clock (each leg `leg` one way: A→S, S→B,
/// B→S, S→A and S→B at once), then starts both sides' tables where the
/// answers land. Returns the pair, started at the request.
fn introduced(caller_mode: PathMode, callee_mode: PathMode, net: Net, leg: Duration) -> Pair {
    let t0 = Instant::now();
    let state = CallState::start_with("alice", t0, caller_mode);
    let request = CallRequest {
        to: "alice".into(),
        candidates: vec![],
        hide_addresses: caller_mode == PathMode::Relay,
    };
    let (broker, ask) = CallBroker::start(&mut Books, &CONFIG, request, t0 + leg).expect("asked");
    let offered = CalleeState::on_offer(ask.offer, t0 + leg * 2).expect("an offer");
    let CalleeAnswer::Accept(callee, accept) =
        offered.decide(&Policy::AcceptAll, Ok(Check::New), vec![], callee_mode)
    else {
        panic!("refused")
    };
    let finish = match broker.on_answer(Answer::Reply(accept), &mut Books) {
        Step::AllocateRelay(alloc) => alloc.on_relay(Some(tickets())),
        Step::Finish(f) => f,
    };
    let (reply, dial) = (finish.reply, finish.to_callee.expect("a Dial"));
    let at_a = t0 + leg * 4;
    let at_b = t0 + leg * 4;
    let vantage = |me: &str| Vantage {
        server: a(SERVER),
        observed: Some(a(me)),
    };
    let CallState::Dialing { pending, .. } = state
        .on_answer(reply, |_| Check::New, false, vantage(A))
        .expect("dialing")
    else {
        panic!("not dialing")
    };
    let (_, plan) = callee.on_dial(dial, vantage(B)).expect("planned");
    let caller = Side::new(params(caller_mode, pending), a(A), a(A), at_a, 1);
    let callee = Side::new(params(callee_mode, plan.candidates), a(B), a(B), at_b, 2);
    Pair::new(caller, callee, net, t0)
}

#[test]
fn a_consented_cone_pair_is_direct_at_the_round_trip_floor() {
    let leg = ms(20);
    let net = Net {
        direct: leg,
        ..Net::default()
    };
    let mut p = introduced(PathMode::Auto, PathMode::Auto, net, leg);
    assert!(p.run_until(ms(400), |p| both_on(p, direct_to)));
    // Floor: RTT(A,S) + RTT(S,B) for the consent, RTT(A,B) for the path.
    let floor = leg * 6;
    let at = p.switch_at(0, 0).expect("the caller's choice");
    assert!(
        at >= floor && at <= floor + ms(10),
        "{at:?} vs floor {floor:?}"
    );
}

#[test]
fn hidden_sides_get_no_address_of_the_other_and_meet_on_the_relay() {
    for (caller, callee) in [
        (PathMode::Relay, PathMode::Auto),
        (PathMode::Auto, PathMode::Relay),
    ] {
        let mut p = introduced(caller, callee, Net::default(), ms(20));
        assert!(p.run_until(Duration::from_secs(1), |p| both_on(p, |_| Route::Relay)));
        p.run(Duration::from_secs(5));
        for s in &p.sides {
            assert!(
                s.sent.iter().all(|(_, r)| *r == Route::Relay),
                "{caller:?}/{callee:?}: sent direct: {:?}",
                s.sent
            );
        }
    }
}

#[test]
fn the_broker_gives_each_side_its_own_ticket() {
    let request = CallRequest {
        to: "alice".into(),
        candidates: vec![],
        hide_addresses: false,
    };
    let (broker, _) =
        CallBroker::start(&mut Books, &CONFIG, request, Instant::now()).expect("asked");
    let accept = Message::Accept {
        candidates: vec![],
        hide_addresses: false,
    };
    let Step::AllocateRelay(alloc) = broker.on_answer(Answer::Reply(accept), &mut Books) else {
        panic!("the relay is on")
    };
    let finish = alloc.on_relay(Some(tickets()));
    match (finish.reply, finish.to_callee) {
        (
            Message::CallAccepted {
                relay: Some(mine),
                probe_key: k1,
                ..
            },
            Some(Message::Dial {
                relay: Some(theirs),
                probe_key: k2,
                ..
            }),
        ) => {
            assert_eq!(mine.secret, [3; 32]);
            assert_eq!(theirs.secret, [4; 32]);
            assert_eq!(k1, k2, "one probe key for both sides");
        }
        other => panic!("{other:?}"),
    }
}
