//! `common::framing::read_frame` over an in-memory stream that delivers the
//! bytes in fuzzer-chosen chunks (and `Pending`s): it must agree with the
//! pure decoder on every input and never buffer past the limit.
#![no_main]

use common::framing::{decode, read_frame, FrameError};
use common::{Message, PeerMessage};
use common_fuzz::{block_on, Chunked, LIMITS};
use libfuzzer_sys::fuzz_target;

fn check<T>(shape: u8, data: &[u8], max: usize)
where
    T: serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let mut reader = Chunked::new(data, shape);
    let streamed = block_on(read_frame::<T, _>(&mut reader, max));
    match (decode::<T>(data, max), streamed) {
        (Ok((a, _)), Ok(b)) => assert_eq!(a, b, "read_frame and decode disagree"),
        (Err(FrameError::Incomplete { .. }), Err(FrameError::Closed)) => assert!(data.is_empty()),
        (Err(FrameError::Incomplete { .. }), Err(FrameError::Truncated { got, len })) => {
            assert!(got < len && len <= max.max(4), "truncated {got} of {len}");
        }
        (Err(FrameError::TooLarge { len: a, .. }), Err(FrameError::TooLarge { len: b, .. })) => {
            assert_eq!(a, b);
        }
        (Err(FrameError::Malformed(_)), Err(FrameError::Malformed(_))) => {}
        (pure, streamed) => panic!("decode gave {pure:?} but read_frame gave {streamed:?}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&shape, data)) = data.split_first() else {
        return;
    };
    for max in LIMITS {
        check::<Message>(shape, data, max);
        check::<PeerMessage>(shape, data, max);
    }
});
