//! Fingerprint extraction from the certificate a peer presents in its TLS
//! handshake (`Fingerprint::of_cert`, the X.509 parse behind the pins).
#![no_main]

use common::Fingerprint;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|der: &[u8]| {
    if let Ok(fp) = Fingerprint::of_cert(der) {
        assert_eq!(
            Fingerprint::of_cert(der),
            Ok(fp),
            "the same bytes, the same key"
        );
    }
});
