//! Shared pieces of the fuzz targets: the frame limits the server and the
//! peers use, a tiny executor for `read_frame` over in-memory bytes, and the
//! round-trip checks every decoded message must pass.

use std::future::Future;
use std::pin::{pin, Pin};
use std::task::{Context, Poll, Waker};

use common::framing::{self, MAX_FRAME};
use serde_like::RoundTrip;

/// The frame limits in use: the peers' and the server's default
/// ([`MAX_FRAME`]) and a small request limit (4 KiB) for the server.
pub const LIMITS: [usize; 2] = [4 * 1024, MAX_FRAME];

/// Runs `fut` to completion by polling it in a loop. Everything the targets
/// await is in memory, so a `Pending` only means "poll again".
pub fn block_on<F: Future>(fut: F) -> F::Output {
    let mut fut = pin!(fut);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(out) = fut.as_mut().poll(&mut cx) {
            return out;
        }
    }
}

/// An in-memory stream that hands out `chunk` bytes per read and, when
/// `stall` is set, answers every other poll with `Pending` (as a network
/// stream does), so the partial-read paths of `read_frame` run.
pub struct Chunked<'a> {
    data: &'a [u8],
    chunk: usize,
    stall: bool,
    stalled: bool,
}

impl<'a> Chunked<'a> {
    /// A reader over `data`, shaped by `shape` (one fuzzer-chosen byte).
    pub fn new(data: &'a [u8], shape: u8) -> Self {
        Self {
            data,
            chunk: usize::from(shape & 0x3f) + 1,
            stall: shape & 0x40 != 0,
            stalled: false,
        }
    }
}

impl tokio::io::AsyncRead for Chunked<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.stall && !self.stalled {
            self.stalled = true;
            return Poll::Pending;
        }
        self.stalled = false;
        let n = self.chunk.min(buf.remaining()).min(self.data.len());
        let (now, rest) = self.data.split_at(n);
        buf.put_slice(now);
        self.data = rest;
        Poll::Ready(Ok(()))
    }
}

/// Checks that a message decoded from `body` re-encodes to a frame that
/// decodes to the same message, that encoding is stable (encode ∘ decode ∘
/// encode = encode), and that the canonical encoding is no longer than the
/// bytes it was decoded from.
pub fn check_round_trip<T: RoundTrip>(msg: &T, body: &[u8]) {
    let frame = framing::encode(msg, usize::MAX).expect("a decoded message re-encodes");
    let (back, used) = framing::decode::<T>(&frame, usize::MAX).expect("re-encoded decodes");
    assert_eq!(&back, msg, "round trip changed the message");
    assert_eq!(used, frame.len(), "the whole frame is used");
    let again = framing::encode(&back, usize::MAX).expect("encodes again");
    assert_eq!(again, frame, "encoding is not stable");
    assert!(
        frame.len() - framing::HEADER_LEN <= body.len(),
        "canonical encoding ({} bytes) longer than the input ({} bytes)",
        frame.len() - framing::HEADER_LEN,
        body.len()
    );
}

/// The bounds a message type needs for [`check_round_trip`].
pub mod serde_like {
    /// Decodable, encodable and comparable.
    pub trait RoundTrip:
        serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug
    {
    }
    impl<T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug> RoundTrip
        for T
    {
    }
}
