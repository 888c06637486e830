//! Postcard decoding of a rendezvous frame body (`common::Message`, every
//! variant), the round trip of what decodes, and the checks a peer applies to
//! what a server sends: names and the candidate addresses it may punch.
#![no_main]

use common::candidates::{is_local_candidate, punch_targets, MAX_LOCAL_CANDIDATES};
use common::framing::decode_body;
use common::{validate_name, Message};
use common_fuzz::check_round_trip;
use libfuzzer_sys::fuzz_target;

fn check_targets(candidates: &[std::net::SocketAddr]) {
    let targets = punch_targets(candidates);
    assert!(targets.len() <= 1 + MAX_LOCAL_CANDIDATES, "{targets:?}");
    for (i, t) in targets.iter().enumerate() {
        assert!(t.port() != 0, "punch target with port 0: {targets:?}");
        assert!(!targets[..i].contains(t), "duplicate target: {targets:?}");
        if i > 0 {
            assert!(
                is_local_candidate(*t),
                "public local candidate: {targets:?}"
            );
        }
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
        | Message::Accept { candidates }
        | Message::CallAccepted { candidates, .. }
        | Message::Dial { candidates, .. } => check_targets(candidates),
        _ => {}
    }
});
