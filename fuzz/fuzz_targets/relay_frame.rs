//! The relay frame decoder (`common::relay_frame::decode`): typed errors on
//! anything, and whatever decodes is canonical and round-trips.
#![no_main]

use common::relay_frame::{
    decode, encode, encode_header, is_relay_frame, FrameKey, RelayFrameError, HEADER_LEN,
    MAX_DATAGRAM, SIGNED_LEN,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let frame = match decode(data) {
        Ok(frame) => frame,
        Err(RelayFrameError::Truncated { len }) => return assert!(len < HEADER_LEN),
        Err(RelayFrameError::NotRelay { first }) => return assert!(!is_relay_frame(first)),
        Err(RelayFrameError::BadType { ty }) => return assert!(is_relay_frame(ty)),
        Err(RelayFrameError::TooLarge { len, max }) => {
            return assert!(len > max && max == MAX_DATAGRAM)
        }
        Err(e) => panic!("decode gave a verification error: {e:?}"),
    };
    assert!(data.len() >= HEADER_LEN && data.len() <= MAX_DATAGRAM);
    assert_eq!(data[0] & 0x40, 0, "QUIC's fixed bit is clear");
    // The signed part is canonical: re-encoding gives the same bytes.
    assert_eq!(&frame.header.signed_bytes()[..], &data[..SIGNED_LEN]);
    assert_eq!(frame.payload, &data[HEADER_LEN..]);
    // A key the fuzzer cannot know: a random tag does not verify (2^-64).
    let key = FrameKey::new(&[0x5A; 32]);
    assert!(frame.verify(&key).is_err() || frame.tag == key.tag(&frame.header));
    // Re-signed, it decodes to the same header and verifies.
    let mut out = Vec::new();
    encode(&frame.header, &key, frame.payload, &mut out).expect("it fitted before");
    assert_eq!(&out[..HEADER_LEN], &encode_header(&frame.header, &key)[..]);
    let again = decode(&out).expect("round trip");
    assert_eq!(again.header, frame.header);
    assert_eq!(again.payload, frame.payload);
    assert_eq!(again.verify(&key), Ok(()));
});
