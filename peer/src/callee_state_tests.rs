use super::*;

use common::ErrorKind;

fn a(s: &str) -> SocketAddr {
    s.parse().expect("addr")
}

const AT: Vantage = Vantage {
    server: SocketAddr::new(
        std::net::IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1)),
        7700,
    ),
    observed: Some(SocketAddr::new(
        std::net::IpAddr::V4(std::net::Ipv4Addr::new(198, 51, 100, 1)),
        9,
    )),
};

fn offer(from: &str) -> Message {
    Message::IncomingCall {
        call_id: 3,
        from: from.into(),
        fingerprint: Fingerprint([4; 32]),
    }
}

fn dial() -> Message {
    Message::Dial {
        call_id: 3,
        candidates: vec![a("203.0.113.9:4000"), a("127.0.0.1:1"), a("10.0.0.1:2")],
        probe_key: [5; 32],
        relay: Some(RelayTicket {
            call_id: 7,
            secret: [6; 32],
        }),
    }
}

fn offered(t0: Instant) -> CalleeState {
    CalleeState::on_offer(offer("bob"), t0).expect("offered")
}

#[test]
fn accept_then_dial_then_connected() {
    let t0 = Instant::now();
    let Answer::Accept(state, msg) = offered(t0).decide(
        &Policy::AcceptAll,
        Ok(Check::New),
        vec![a("192.168.1.5:1")],
        PathMode::Auto,
    ) else {
        panic!("accepted")
    };
    assert_eq!(
        msg,
        Message::Accept {
            candidates: vec![a("192.168.1.5:1")],
            hide_addresses: false,
        }
    );
    let (state, plan) = state.on_dial(dial(), AT).expect("dial");
    assert_eq!(plan.call_id, 3);
    assert_eq!(plan.probe_key, [5; 32]);
    assert!(plan.relay.is_some());
    assert_eq!(
        plan.candidates,
        vec![a("203.0.113.9:4000")],
        "vetted: no loopback over a public server, no locals of another network"
    );
    let state = state.on_connected(t0 + Duration::from_millis(90));
    assert_eq!(
        state,
        CalleeState::Connected {
            from: "bob".into(),
            setup: Duration::from_millis(90)
        }
    );
}

#[test]
fn relay_mode_gives_and_takes_no_address_and_direct_mode_no_relay() {
    let t0 = Instant::now();
    let Answer::Accept(state, msg) = offered(t0).decide(
        &Policy::AcceptAll,
        Ok(Check::New),
        vec![a("192.168.1.5:1")],
        PathMode::Relay,
    ) else {
        panic!("accepted")
    };
    assert_eq!(
        msg,
        Message::Accept {
            candidates: vec![],
            hide_addresses: true,
        }
    );
    let (_, plan) = state.on_dial(dial(), AT).expect("dial");
    assert!(plan.candidates.is_empty());
    assert!(plan.relay.is_some());
    let Answer::Accept(state, _) =
        offered(t0).decide(&Policy::AcceptAll, Ok(Check::New), vec![], PathMode::Direct)
    else {
        panic!("accepted")
    };
    let (_, plan) = state.on_dial(dial(), AT).expect("dial");
    assert_eq!(plan.relay, None);
}

#[test]
fn refusals_say_why_and_escape_the_name() {
    let t0 = Instant::now();
    let reason = |answer: Answer| match answer {
        Answer::Reject { reason, .. } => reason,
        Answer::Accept(..) => panic!("accepted"),
    };
    let changed = Ok(Check::Changed(Fingerprint([1; 32])));
    let r = reason(offered(t0).decide(&Policy::AcceptAll, changed, vec![], PathMode::Auto));
    assert!(r.contains("another key"), "{r}");
    let r = reason(offered(t0).decide(
        &Policy::AcceptAll,
        Err("cannot read known_peers".into()),
        vec![],
        PathMode::Auto,
    ));
    assert!(r.contains("known_peers"), "{r}");
    let evil = CalleeState::on_offer(offer("bob\n\u{1b}[2K"), t0).expect("offered");
    match evil.decide(&Policy::AcceptAll, Ok(Check::New), vec![], PathMode::Auto) {
        Answer::Reject { from, reason, .. } => {
            assert!(reason.contains("name rules"), "{reason}");
            assert!(
                !from.chars().any(common::text::is_unsafe_for_terminal),
                "{from:?}"
            );
        }
        Answer::Accept(..) => panic!("an invalid name was accepted"),
    }
    assert!(CalleeState::on_offer(Message::Lookup { name: "x".into() }, t0).is_err());
}

#[test]
fn no_dial_is_no_call() {
    let t0 = Instant::now();
    let Answer::Accept(state, _) =
        offered(t0).decide(&Policy::AcceptAll, Ok(Check::New), vec![], PathMode::Auto)
    else {
        panic!("accepted")
    };
    let err = state
        .clone()
        .on_dial(Message::error(ErrorKind::Unreachable, "no relay"), AT)
        .expect_err("error");
    assert!(err.contains("no relay"), "{err}");
    assert!(state
        .on_dial(Message::Lookup { name: "x".into() }, AT)
        .is_err());
}

#[test]
fn a_preapproved_call_is_decided_by_the_same_policy() {
    let t0 = Instant::now();
    let preapproved = |fp: u8| Message::Preapproved {
        call_id: 3,
        from: "bob".into(),
        fingerprint: Fingerprint([fp; 32]),
    };
    let bob = Policy::AllowList(vec!["bob".into()]);
    let state = CalleeState::on_offer(preapproved(4), t0).expect("offered");
    assert!(matches!(
        state.decide(&bob, Ok(Check::Known), vec![], PathMode::Auto),
        Answer::Accept(CalleeState::Accepted { .. }, _)
    ));
    // Another key than the one pinned for bob: refused, as an offer would be.
    let state = CalleeState::on_offer(preapproved(9), t0).expect("offered");
    let changed = Check::Changed(Fingerprint([4; 32]));
    assert!(matches!(
        state.decide(&bob, Ok(changed), vec![], PathMode::Auto),
        Answer::Reject { .. }
    ));
}
