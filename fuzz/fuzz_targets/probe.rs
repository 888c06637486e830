//! The probe decoder (`common::probe`): arbitrary datagrams under a fixed
//! key, and the same bytes re-sealed under it so the body parser runs too.
#![no_main]

use common::probe::{peek_call_id, Probe, ProbeError, ProbeKey, PROBE_LEN};
use libfuzzer_sys::fuzz_target;

fn check(bytes: &[u8], key: &ProbeKey) {
    match Probe::decode(bytes, key) {
        Ok(p) => {
            assert_eq!(bytes.len(), PROBE_LEN);
            assert_eq!(peek_call_id(bytes), Some(p.call_id()));
            assert_eq!(&p.encode(key)[..], bytes, "one encoding per probe");
            assert_eq!(Probe::decode(&p.encode(key), key), Ok(p));
        }
        Err(ProbeError::Length { len }) => assert_ne!(len, PROBE_LEN),
        Err(_) => {}
    }
}

fuzz_target!(|data: &[u8]| {
    let key = ProbeKey::new(&[7; 32]);
    check(data, &key);
    // The MAC refuses almost everything: reseal the fuzzer's bytes so the
    // parser behind it runs too.
    if let Ok(bytes) = <[u8; PROBE_LEN]>::try_from(data) {
        let mut sealed = bytes;
        key.seal_raw(&mut sealed);
        check(&sealed, &key);
    }
});
