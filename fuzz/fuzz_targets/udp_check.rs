//! The UDP check decoders (`common::tunnel::check`): no panic on anything,
//! a request's answer (plain or mapping) is never larger than the request
//! (no amplification), and whatever decodes round-trips.
#![no_main]

use common::tunnel::check::{
    answer, mapping_answer, parse_answer, parse_mapping_answer, parse_request, request,
    wants_mapping, REQUEST_LEN,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(nonce) = parse_request(data) {
        assert!(data.len() >= REQUEST_LEN);
        assert_eq!(&data[1..17], &nonce);
        let seen = "192.0.2.1:7700".parse().expect("address");
        assert!(answer(nonce, seen).len() < data.len());
        assert!(mapping_answer(nonce, seen, 7701).len() < data.len());
        assert_eq!(parse_request(&request(nonce)), Some(nonce));
    }
    if wants_mapping(data) {
        assert!(parse_request(data).is_some());
    }
    if let Some((nonce, seen)) = parse_answer(data) {
        assert_eq!(parse_answer(&answer(nonce, seen)), Some((nonce, seen)));
    }
    if let Some((nonce, seen, other)) = parse_mapping_answer(data) {
        let again = mapping_answer(nonce, seen, other.unwrap_or(0));
        assert_eq!(parse_mapping_answer(&again), Some((nonce, seen, other)));
    }
});
