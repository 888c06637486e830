//! Postcard decoding of a rendezvous frame body (`common::Message`, every
//! variant), the round trip of what decodes, and the checks a peer applies to
//! what a server sends: names and the candidate addresses it may punch.
#![no_main]

use common::candidates::{
    is_local_candidate, is_observed_candidate, targets, MAX_LOCAL_CANDIDATES,
};
use common::framing::decode_body;
use common::{validate_name, Message};
use common_fuzz::check_round_trip;
use libfuzzer_sys::fuzz_target;

fn check_targets(candidates: &[std::net::SocketAddr]) {
    // A server on loopback (tests) and one on a public address.
    for server in ["127.0.0.1:7700", "198.51.100.1:7700"] {
        let server: std::net::SocketAddr = server.parse().expect("addr");
        let loopback_ok = server.ip().is_loopback();
        // Our observed address unknown: never a local candidate.
        let alone = targets(candidates, server, None);
        assert!(alone.len() <= 1, "{alone:?}");
        check(&alone, loopback_ok);
        // On the first slot's network: locals may follow.
        check(
            &targets(candidates, server, candidates.first().copied()),
            loopback_ok,
        );
    }
}

fn check(targets: &[std::net::SocketAddr], loopback_ok: bool) {
    assert!(targets.len() <= 1 + MAX_LOCAL_CANDIDATES, "{targets:?}");
    for (i, t) in targets.iter().enumerate() {
        assert!(t.port() != 0, "target with port 0: {targets:?}");
        assert!(!targets[..i].contains(t), "duplicate target: {targets:?}");
        assert!(
            is_local_candidate(*t) || (i == 0 && is_observed_candidate(*t, loopback_ok)),
            "target neither observed nor local: {targets:?}"
        );
    }
}

fuzz_target!(|body: &[u8]| {
    let Ok(msg) = decode_body::<Message>(body) else {
        return;
    };
    check_round_trip(&msg, body);
    let _ = msg.kind_name();
    match &msg {
        Message::Register { name, .. }
        | Message::Registered { name, .. }
        | Message::Lookup { name }
        | Message::LookupResult { name, .. }
        | Message::Call { to: name, .. }
        | Message::IncomingCall { from: name, .. } => {
            let _ = validate_name(name);
        }
        _ => {}
    }
    match &msg {
        Message::Call { candidates, .. }
        | Message::Accept { candidates, .. }
        | Message::CallAccepted { candidates, .. }
        | Message::Dial { candidates, .. } => check_targets(candidates),
        _ => {}
    }
});
