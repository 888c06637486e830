//! The pure frame decoder (`common::framing::decode`): length prefix checked
//! against each limit in use, then the postcard body, for both protocols.
#![no_main]

use common::framing::{decode, decode_len, FrameError, HEADER_LEN};
use common::{Message, PeerMessage};
use common_fuzz::{check_round_trip, LIMITS};
use libfuzzer_sys::fuzz_target;

fn check<T: common_fuzz::serde_like::RoundTrip>(data: &[u8], max: usize) {
    match decode::<T>(data, max) {
        Ok((msg, used)) => {
            let len = decode_len(data, max).expect("a decoded frame has a length");
            assert_eq!(used, HEADER_LEN + len);
            assert!(used <= data.len() && len <= max);
            check_round_trip(&msg, &data[HEADER_LEN..used]);
        }
        Err(FrameError::Incomplete { needed }) => {
            assert!(needed > 0, "incomplete needs at least a byte");
            assert!(
                data.len() + needed <= HEADER_LEN + max,
                "asks past the limit"
            );
        }
        Err(FrameError::TooLarge { len, max: m }) => assert!(len > max && m == max),
        Err(FrameError::Malformed(_)) => {}
        Err(e) => panic!("pure decoding gave a stream error: {e:?}"),
    }
}

fuzz_target!(|data: &[u8]| {
    for max in LIMITS {
        check::<Message>(data, max);
        check::<PeerMessage>(data, max);
    }
});
