//! The UDP check decoders (`common::tunnel::check`): no panic on anything,
//! a request's answer is never larger than the request (no amplification),
//! and whatever decodes round-trips.
#![no_main]

use common::tunnel::check::{answer, parse_answer, parse_request, request, REQUEST_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(nonce) = parse_request(data) {
        assert!(data.len() >= REQUEST_LEN);
        assert_eq!(&data[1..17], &nonce);
        let seen = "192.0.2.1:7700".parse().expect("address");
        assert!(answer(nonce, seen).len() < data.len());
        assert_eq!(parse_request(&request(nonce)), Some(nonce));
    }
    if let Some((nonce, seen)) = parse_answer(data) {
        assert_eq!(parse_answer(&answer(nonce, seen)), Some((nonce, seen)));
    }
});
