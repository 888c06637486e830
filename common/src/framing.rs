//! Length-prefixed postcard frames with a hard size limit.
//!
//! A frame is a 4-byte big-endian length followed by that many bytes of
//! postcard. The length is checked against the limit **before** anything is
//! buffered, so a peer announcing 4 GiB costs us nothing, and the body's
//! buffer grows with the bytes that arrive ([`grown_capacity`]: from
//! [`READ_CHUNK`], doubling), so a header announcing the limit and then
//! silence costs little more than the header. Decoding is a pure
//! function ([`decode`]) so it can be property-tested; [`read_frame`] and
//! [`write_frame`] drive it over any tokio byte stream (quinn streams are
//! ones). Timeouts are the caller's business.

use serde::de::DeserializeOwned;
use serde::Serialize;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Default largest frame body, in bytes.
pub const MAX_FRAME: usize = 64 * 1024;
/// Bytes of the length prefix.
pub const HEADER_LEN: usize = 4;

/// Why a frame could not be read or written.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum FrameError {
    /// More bytes are needed (pure decoding only).
    #[error("incomplete frame: {needed} more bytes needed")]
    Incomplete {
        /// How many more bytes, at least.
        needed: usize,
    },
    /// The announced (or encoded) length is over the limit.
    #[error("frame of {len} bytes is over the limit of {max}")]
    TooLarge {
        /// Announced length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The body is not a valid message.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// The stream ended cleanly before a frame began.
    #[error("stream closed")]
    Closed,
    /// The stream ended in the middle of a frame.
    #[error("stream ended inside a frame ({got} of {len} bytes)")]
    Truncated {
        /// Bytes of the frame received.
        got: usize,
        /// Bytes announced.
        len: usize,
    },
    /// The stream failed.
    #[error("stream error: {0}")]
    Io(#[from] std::io::Error),
}

/// Encodes `msg` as one frame (length prefix included).
pub fn encode<T: Serialize>(msg: &T, max: usize) -> Result<Vec<u8>, FrameError> {
    let mut out = vec![0u8; HEADER_LEN];
    out = postcard::to_extend(msg, out).map_err(|e| FrameError::Malformed(e.to_string()))?;
    let len = out.len() - HEADER_LEN;
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    let prefix = u32::try_from(len).map_err(|_| FrameError::TooLarge { len, max })?;
    out[..HEADER_LEN].copy_from_slice(&prefix.to_be_bytes());
    Ok(out)
}

/// Reads the length prefix at the start of `buf`, checking it against `max`.
pub fn decode_len(buf: &[u8], max: usize) -> Result<usize, FrameError> {
    let Some(head) = buf.get(..HEADER_LEN) else {
        return Err(FrameError::Incomplete {
            needed: HEADER_LEN - buf.len(),
        });
    };
    let mut b = [0u8; HEADER_LEN];
    b.copy_from_slice(head);
    let len = u32::from_be_bytes(b) as usize;
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    Ok(len)
}

/// Decodes one message body (no prefix). Trailing bytes are malformed.
pub fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, FrameError> {
    match postcard::take_from_bytes::<T>(body) {
        Ok((msg, [])) => Ok(msg),
        Ok((_, rest)) => Err(FrameError::Malformed(format!(
            "{} trailing bytes after the message",
            rest.len()
        ))),
        Err(e) => Err(FrameError::Malformed(e.to_string())),
    }
}

/// Decodes the frame at the start of `buf`: the message and the bytes used.
pub fn decode<T: DeserializeOwned>(buf: &[u8], max: usize) -> Result<(T, usize), FrameError> {
    let len = decode_len(buf, max)?;
    let total = HEADER_LEN + len;
    let Some(body) = buf.get(HEADER_LEN..total) else {
        return Err(FrameError::Incomplete {
            needed: total - buf.len(),
        });
    };
    Ok((decode_body(body)?, total))
}

/// Reads one frame from `r`.
pub async fn read_frame<T, R>(r: &mut R, max: usize) -> Result<T, FrameError>
where
    T: DeserializeOwned,
    R: AsyncRead + Unpin,
{
    let mut head = [0u8; HEADER_LEN];
    let mut got = 0;
    while got < HEADER_LEN {
        match r.read(&mut head[got..]).await? {
            0 if got == 0 => return Err(FrameError::Closed),
            0 => {
                return Err(FrameError::Truncated {
                    got,
                    len: HEADER_LEN,
                })
            }
            n => got += n,
        }
    }
    let len = decode_len(&head, max)?;
    decode_body(&read_body(r, len).await?)
}

/// The first size of a frame body's buffer, and the least it grows by.
pub const READ_CHUNK: usize = 4096;

/// The capacity a body buffer of a `len`-byte frame grows to once it is
/// full with `got` bytes: doubled, by [`READ_CHUNK`] at least, never past
/// `len`. So a buffer is never more than `max(2 × got, got + READ_CHUNK)`
/// for the bytes that arrived (memory follows what a peer sent, not what
/// it announced), and a frame costs a few reallocations (5 for 64 KiB),
/// not one per [`READ_CHUNK`].
pub fn grown_capacity(got: usize, len: usize) -> usize {
    got.saturating_mul(2)
        .max(got.saturating_add(READ_CHUNK))
        .min(len)
}

/// Reads a body of `len` bytes into a buffer that grows as bytes arrive
/// ([`grown_capacity`]): a header announcing a large frame that never
/// comes costs what was sent, not what was announced. Never reads past
/// the body (the next frame stays in the stream), and never zeroes memory
/// the stream then fills.
async fn read_body<R: AsyncRead + Unpin>(r: &mut R, len: usize) -> Result<Vec<u8>, FrameError> {
    let mut body = Vec::new();
    while body.len() < len {
        let got = body.len();
        if body.capacity() <= got {
            body.reserve_exact(grown_capacity(got, len) - got);
        }
        let rest = u64::try_from(len - got).unwrap_or(u64::MAX);
        let n = (&mut *r).take(rest).read_buf(&mut body).await?;
        if n == 0 {
            return Err(FrameError::Truncated { got, len });
        }
    }
    Ok(body)
}

/// Writes one frame to `w`.
pub async fn write_frame<T, W>(w: &mut W, msg: &T, max: usize) -> Result<(), FrameError>
where
    T: Serialize,
    W: AsyncWrite + Unpin,
{
    let buf = encode(msg, max)?;
    w.write_all(&buf).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ErrorKind, Fingerprint, Message, PeerMessage};
    use proptest::prelude::*;

    fn arb_addr() -> impl Strategy<Value = std::net::SocketAddr> + Clone {
        prop_oneof![
            (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, port)| (ip, port).into()),
            (any::<[u16; 8]>(), any::<u16>()).prop_map(|(ip, port)| (ip, port).into()),
        ]
    }

    fn arb_fp() -> impl Strategy<Value = Fingerprint> {
        any::<[u8; 32]>().prop_map(Fingerprint)
    }

    fn arb_ticket() -> impl Strategy<Value = Option<crate::RelayTicket>> {
        proptest::option::of(
            (any::<u32>(), any::<[u8; 32]>())
                .prop_map(|(call_id, secret)| crate::RelayTicket { call_id, secret }),
        )
    }

    fn arb_message() -> impl Strategy<Value = Message> {
        let s = ".{0,40}";
        let addrs = proptest::collection::vec(arb_addr(), 0..10);
        prop_oneof![
            (s, any::<bool>()).prop_map(|(name, presence)| Message::Register { name, presence }),
            (s, arb_fp(), arb_addr()).prop_map(|(name, fingerprint, observed_addr)| {
                Message::Registered {
                    name,
                    fingerprint,
                    observed_addr,
                }
            }),
            s.prop_map(|name| Message::Lookup { name }),
            (s, any::<bool>(), arb_fp()).prop_map(|(name, online, fingerprint)| {
                Message::LookupResult {
                    name,
                    online,
                    fingerprint,
                }
            }),
            (s, addrs.clone(), any::<bool>()).prop_map(|(to, candidates, hide_addresses)| {
                Message::Call {
                    to,
                    candidates,
                    hide_addresses,
                }
            }),
            (any::<u64>(), s, arb_fp()).prop_map(|(call_id, from, fingerprint)| {
                Message::IncomingCall {
                    call_id,
                    from,
                    fingerprint,
                }
            }),
            (addrs.clone(), any::<bool>()).prop_map(|(candidates, hide_addresses)| {
                Message::Accept {
                    candidates,
                    hide_addresses,
                }
            }),
            s.prop_map(|reason| Message::Reject { reason }),
            (
                any::<u64>(),
                arb_fp(),
                addrs.clone(),
                any::<[u8; 32]>(),
                arb_ticket()
            )
                .prop_map(|(call_id, fingerprint, candidates, probe_key, relay)| {
                    Message::CallAccepted {
                        call_id,
                        fingerprint,
                        candidates,
                        probe_key,
                        relay,
                    }
                }),
            (any::<u64>(), addrs, any::<[u8; 32]>(), arb_ticket()).prop_map(
                |(call_id, candidates, probe_key, relay)| Message::Dial {
                    call_id,
                    candidates,
                    probe_key,
                    relay,
                }
            ),
            s.prop_map(|m| Message::error(ErrorKind::Offline, m)),
        ]
    }

    fn arb_peer_message() -> impl Strategy<Value = PeerMessage> {
        prop_oneof![
            Just(PeerMessage::Pipe),
            any::<u64>().prop_map(|seq| PeerMessage::Ping { seq }),
            any::<u64>().prop_map(|seq| PeerMessage::Pong { seq }),
            (".{0,40}", any::<u64>(), any::<[u8; 32]>())
                .prop_map(|(name, size, sha256)| PeerMessage::SendFile { name, size, sha256 }),
            (any::<bool>(), ".{0,40}")
                .prop_map(|(ok, message)| PeerMessage::SendResult { ok, message }),
            Just(PeerMessage::Forward),
            Just(PeerMessage::Forwarded),
        ]
    }

    proptest! {
        #[test]
        fn message_round_trip(msg in arb_message()) {
            let buf = encode(&msg, MAX_FRAME).expect("encode");
            let (back, used) = decode::<Message>(&buf, MAX_FRAME).expect("decode");
            prop_assert_eq!(back, msg);
            prop_assert_eq!(used, buf.len());
        }

        #[test]
        fn peer_message_round_trip(msg in arb_peer_message()) {
            let buf = encode(&msg, MAX_FRAME).expect("encode");
            let (back, used) = decode::<PeerMessage>(&buf, MAX_FRAME).expect("decode");
            prop_assert_eq!(back, msg);
            prop_assert_eq!(used, buf.len());
        }

        #[test]
        fn every_prefix_is_incomplete(msg in arb_message()) {
            let buf = encode(&msg, MAX_FRAME).expect("encode");
            for cut in 0..buf.len() {
                let r = decode::<Message>(&buf[..cut], MAX_FRAME);
                prop_assert!(matches!(r, Err(FrameError::Incomplete { .. })), "cut {}: {:?}", cut, r);
            }
        }
    }

    /// 100,000+ random and mutated frames: every one decodes or gives a typed error, none panics.
    #[test]
    fn fuzz_decoders_never_panic() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
        let samples = [
            Message::Register {
                name: "alice".into(),
                presence: true,
            },
            Message::Call {
                to: "bob".into(),
                candidates: vec!["192.168.1.2:7000".parse().expect("addr")],
                hide_addresses: false,
            },
            Message::CallAccepted {
                call_id: 7,
                fingerprint: Fingerprint([9; 32]),
                candidates: vec![],
                probe_key: [3; 32],
                relay: Some(crate::RelayTicket {
                    call_id: 9,
                    secret: [4; 32],
                }),
            },
            Message::error(ErrorKind::NameTaken, "taken"),
        ];
        let (mut ok, mut errs) = (0u32, 0u32);
        for i in 0..120_000u32 {
            let mut buf = if i % 3 == 0 {
                let n = rng.gen_range(0..64);
                (0..n).map(|_| rng.gen()).collect::<Vec<u8>>()
            } else {
                let mut b =
                    encode(&samples[i as usize % samples.len()], MAX_FRAME).expect("encode");
                for _ in 0..rng.gen_range(1..4) {
                    let at = rng.gen_range(0..b.len());
                    match rng.gen_range(0..3) {
                        0 => b[at] = rng.gen(),
                        1 => b.truncate(at),
                        _ => b.insert(at, rng.gen()),
                    }
                    if b.is_empty() {
                        break;
                    }
                }
                b
            };
            if i % 7 == 0 && buf.len() >= 4 {
                buf[..4].copy_from_slice(&u32::MAX.to_be_bytes());
            }
            match decode::<Message>(&buf, MAX_FRAME) {
                Ok(_) => ok += 1,
                Err(
                    FrameError::Incomplete { .. }
                    | FrameError::TooLarge { .. }
                    | FrameError::Malformed(_),
                ) => errs += 1,
                Err(e) => panic!("unexpected error kind {e:?}"),
            }
            let _ = decode::<PeerMessage>(&buf, MAX_FRAME);
        }
        assert_eq!(ok + errs, 120_000);
        assert!(
            errs > 1000 && ok > 100,
            "ok {ok} errs {errs}: the mutations should produce both"
        );
    }

    #[test]
    fn too_large_is_refused_before_buffering() {
        let mut buf = (u32::try_from(MAX_FRAME).expect("fits") + 1)
            .to_be_bytes()
            .to_vec();
        buf.push(0);
        assert!(matches!(
            decode::<Message>(&buf, MAX_FRAME),
            Err(FrameError::TooLarge { len, max }) if len == MAX_FRAME + 1 && max == MAX_FRAME
        ));
        let big = Message::Lookup {
            name: "x".repeat(MAX_FRAME),
        };
        assert!(matches!(
            encode(&big, MAX_FRAME),
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[tokio::test]
    async fn async_read_write() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        let msg = Message::Lookup {
            name: "alice".into(),
        };
        write_frame(&mut a, &msg, MAX_FRAME).await.expect("write");
        drop(a);
        let back: Message = read_frame(&mut b, MAX_FRAME).await.expect("read");
        assert_eq!(back, msg);
        assert!(matches!(
            read_frame::<Message, _>(&mut b, MAX_FRAME).await,
            Err(FrameError::Closed)
        ));
    }

    #[tokio::test]
    async fn async_truncated() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        let buf = encode(
            &Message::Lookup {
                name: "alice".into(),
            },
            MAX_FRAME,
        )
        .expect("encode");
        tokio::io::AsyncWriteExt::write_all(&mut a, &buf[..buf.len() - 1])
            .await
            .expect("write");
        drop(a);
        assert!(matches!(
            read_frame::<Message, _>(&mut b, MAX_FRAME).await,
            Err(FrameError::Truncated { .. })
        ));
    }

    /// A stream that hands out `data` a few bytes at a time, then fails
    /// (a peer gone silent), noting the largest buffer it was offered.
    struct Stall {
        data: Vec<u8>,
        offered: usize,
    }

    impl tokio::io::AsyncRead for Stall {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            self.offered = self.offered.max(buf.remaining());
            if self.data.is_empty() {
                let stalled = std::io::Error::new(std::io::ErrorKind::TimedOut, "stalled");
                return std::task::Poll::Ready(Err(stalled));
            }
            let n = self.data.len().min(buf.remaining()).min(3);
            buf.put_slice(&self.data[..n]);
            self.data.drain(..n);
            std::task::Poll::Ready(Ok(()))
        }
    }

    /// A stream that fills every buffer it is offered from `data`, noting
    /// each read's (bytes before it, buffer offered).
    struct Eager {
        data: Vec<u8>,
        given: usize,
        reads: Vec<(usize, usize)>,
    }

    impl tokio::io::AsyncRead for Eager {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            let (given, offered) = (self.given, buf.remaining());
            self.reads.push((given, offered));
            let n = (self.data.len() - given).min(offered);
            buf.put_slice(&self.data[given..given + n]);
            self.given += n;
            std::task::Poll::Ready(Ok(()))
        }
    }

    /// A 64 KiB frame from a fast stream: the buffer doubles (a handful of
    /// reads and reallocations, not one per 4 KiB), stays within twice what
    /// arrived, and nothing past the frame is read.
    #[tokio::test]
    async fn a_large_frame_grows_its_buffer_geometrically() {
        let big = Message::Lookup {
            name: "y".repeat(MAX_FRAME - 16),
        };
        let mut data = encode(&big, MAX_FRAME).expect("encode");
        let frame_len = data.len();
        data.extend_from_slice(b"next frame");
        let mut r = Eager {
            data,
            given: 0,
            reads: vec![],
        };
        let back: Message = read_frame(&mut r, MAX_FRAME).await.expect("read");
        assert_eq!(back, big);
        assert_eq!(r.given, frame_len, "read past the frame");
        let body_reads: Vec<_> = r.reads.iter().filter(|(at, _)| *at >= HEADER_LEN).collect();
        assert!(
            body_reads.len() <= 6,
            "{} reads for one 64 KiB body: {body_reads:?}",
            body_reads.len()
        );
        for (at, offered) in body_reads {
            let got = at - HEADER_LEN;
            assert!(
                got + offered <= (2 * got).max(got + READ_CHUNK),
                "a buffer of {} for {got} bytes received",
                got + offered
            );
        }
        assert_eq!(grown_capacity(0, MAX_FRAME), READ_CHUNK);
        assert_eq!(grown_capacity(READ_CHUNK, MAX_FRAME), 2 * READ_CHUNK);
        assert_eq!(grown_capacity(40_000, MAX_FRAME), MAX_FRAME);
        assert_eq!(grown_capacity(0, 10), 10);
    }

    #[tokio::test]
    async fn a_large_announced_frame_buffers_only_what_arrives() {
        let announced = u32::try_from(MAX_FRAME).expect("fits");
        let mut data = announced.to_be_bytes().to_vec();
        data.extend_from_slice(&[7; 10]);
        let mut r = Stall { data, offered: 0 };
        let read = read_frame::<Message, _>(&mut r, MAX_FRAME).await;
        assert!(matches!(read, Err(FrameError::Io(_))), "{read:?}");
        assert!(
            r.offered <= READ_CHUNK,
            "a buffer of {} bytes for 10 bytes of a {MAX_FRAME}-byte frame",
            r.offered
        );
        // And a whole large frame still arrives.
        let big = Message::Lookup {
            name: "x".repeat(3 * READ_CHUNK + 5),
        };
        let (mut a, mut b) = tokio::io::duplex(1024);
        let writer = tokio::spawn(async move { write_frame(&mut a, &big, MAX_FRAME).await });
        let back: Message = read_frame(&mut b, MAX_FRAME).await.expect("read");
        assert!(matches!(back, Message::Lookup { name } if name.len() == 3 * READ_CHUNK + 5));
        writer.await.expect("join").expect("write");
    }
}
