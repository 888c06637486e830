//! Postcard decoding of a peer-to-peer frame body (`common::PeerMessage`,
//! every variant) and the round trip of what decodes.
#![no_main]

use common::framing::decode_body;
use common::PeerMessage;
use common_fuzz::check_round_trip;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    if let Ok(msg) = decode_body::<PeerMessage>(body) {
        check_round_trip(&msg, body);
    }
});
