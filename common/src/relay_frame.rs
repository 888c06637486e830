//! The relay frame: the small header a peer puts before each QUIC packet it
//! sends through the relay (DESIGN §6).
//!
//! ```text
//! offset  len  field
//!      0    1  type: 0x30 data from the caller, 0x31 data from the callee,
//!                     0x32 / 0x33 the caller's / callee's end of the call (no payload)
//!      1    4  relay call id (u32, big endian), from the consent
//!      5    7  counter (u56, big endian), per sender, starts anywhere, rises
//!     12    8  tag: HMAC-SHA256 over bytes 0..12 under the sender's key, truncated
//!     20    …  payload: one QUIC packet, opaque to the relay
//! ```
//!
//! **Demultiplexing.** The type byte has QUIC's fixed bit (0x40) clear, so a
//! socket that also carries QUIC (the relay shares the server's port; a
//! peer's one socket carries QUIC, probes and relay frames) tells them apart
//! by the first byte: 0x40 set is QUIC (every endpoint turns QUIC-bit
//! greasing off), 0x30–0x3F is a relay frame ([`is_relay_frame`]), anything
//! else with 0x40 clear is someone else's (probes, legacy punches).
//!
//! **What the tag protects.** Only the header: QUIC's own AEAD already
//! protects the payload end to end, so the relay spends one HMAC over 12
//! bytes per packet (two SHA-256 blocks with a precomputed key) and nothing
//! per payload byte. The tag proves the frame came from the party holding
//! the key (only that party and the relay know it), names the call and the
//! counter, so the relay can refuse forgeries, replays and address take-overs
//! without reading the packet. The relay forwards the frame unchanged; the
//! receiving peer demultiplexes by call id and party and leaves the rest to
//! QUIC.
//!
//! **Why these widths.** 20 bytes in all (DESIGN §6's budget): a 56-bit
//! counter never wraps (a million packets a second for 2,000 years), so the
//! replay window needs no epochs; a 32-bit call id is a relay-local handle
//! (the server derives it from its call id), not a secret.
//!
//! **Size.** [`MAX_DATAGRAM`] = 1452 bytes: 1500 (Ethernet MTU) − 40 (IPv6
//! header) − 8 (UDP header); IPv4's header is 20, so the same number is safe
//! on both. A peer caps its QUIC packets at [`MAX_PAYLOAD`] = 1432 on every
//! path, because quinn's path-MTU discovery does not know that the path
//! switched to the relay.
//!
//! No I/O, no clock: [`encode`] and [`decode`] are pure.

use std::fmt;

use ring::hmac;

/// Header length in bytes.
pub const HEADER_LEN: usize = 20;
/// Bytes of the truncated HMAC-SHA256 tag.
pub const TAG_LEN: usize = 8;
/// Bytes the tag covers: type, call id, counter.
pub const SIGNED_LEN: usize = HEADER_LEN - TAG_LEN;
/// Largest relay datagram (header + payload): 1500 − 40 (IPv6) − 8 (UDP).
pub const MAX_DATAGRAM: usize = 1452;
/// Largest payload (a QUIC packet) in one frame: 1432.
pub const MAX_PAYLOAD: usize = MAX_DATAGRAM - HEADER_LEN;
/// Largest counter (56 bits).
pub const MAX_COUNTER: u64 = (1 << 56) - 1;
/// Type byte of a data frame from the caller; the callee's is one more.
pub const TYPE_DATA_CALLER: u8 = 0x30;
/// Type byte of a data frame from the callee.
pub const TYPE_DATA_CALLEE: u8 = 0x31;
/// Type byte of the caller's end-of-call frame (no payload: the call is
/// over, the relay may forget it); the callee's is one more.
pub const TYPE_END_CALLER: u8 = 0x32;
/// Type byte of the callee's end-of-call frame.
pub const TYPE_END_CALLEE: u8 = 0x33;
/// Length of a party's key secret (as sent at consent).
pub const SECRET_LEN: usize = 32;

/// Whether a datagram starting with `first` is a relay frame (0x30–0x3F:
/// QUIC's fixed bit clear, and the range set aside for the relay).
pub fn is_relay_frame(first: u8) -> bool {
    first & 0xF0 == 0x30
}

/// Which side of a call sent a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Party {
    /// The side that placed the call.
    Caller,
    /// The side that accepted it.
    Callee,
}

impl Party {
    /// The other side.
    pub fn other(self) -> Self {
        match self {
            Party::Caller => Party::Callee,
            Party::Callee => Party::Caller,
        }
    }

    /// 0 for the caller, 1 for the callee (an index into per-party arrays).
    pub fn index(self) -> usize {
        match self {
            Party::Caller => 0,
            Party::Callee => 1,
        }
    }

    fn type_byte(self, end: bool) -> u8 {
        match (self, end) {
            (Party::Caller, false) => TYPE_DATA_CALLER,
            (Party::Callee, false) => TYPE_DATA_CALLEE,
            (Party::Caller, true) => TYPE_END_CALLER,
            (Party::Callee, true) => TYPE_END_CALLEE,
        }
    }
}

/// The signed part of a frame's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Who sent it.
    pub party: Party,
    /// The relay's handle for the call.
    pub call_id: u32,
    /// The sender's counter (at most [`MAX_COUNTER`]).
    pub counter: u64,
    /// An end-of-call frame ([`TYPE_END_CALLER`]): the sender's call is
    /// over and the relay may forget it. Covered by the tag, like the rest.
    pub end: bool,
}

impl Header {
    /// The 12 bytes the tag covers. The counter is cut to 56 bits.
    pub fn signed_bytes(&self) -> [u8; SIGNED_LEN] {
        let mut out = [0u8; SIGNED_LEN];
        out[0] = self.party.type_byte(self.end);
        out[1..5].copy_from_slice(&self.call_id.to_be_bytes());
        out[5..12].copy_from_slice(&(self.counter & MAX_COUNTER).to_be_bytes()[1..]);
        out
    }
}

/// A party's frame key: HMAC-SHA256, precomputed once per call.
#[derive(Clone)]
pub struct FrameKey(hmac::Key);

impl FrameKey {
    /// The key for a party's secret from the consent.
    pub fn new(secret: &[u8; SECRET_LEN]) -> Self {
        Self(hmac::Key::new(hmac::HMAC_SHA256, secret))
    }

    /// The truncated tag of `header`.
    pub fn tag(&self, header: &Header) -> [u8; TAG_LEN] {
        let full = hmac::sign(&self.0, &header.signed_bytes());
        let mut out = [0u8; TAG_LEN];
        out.copy_from_slice(&full.as_ref()[..TAG_LEN]);
        out
    }
}

impl fmt::Debug for FrameKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FrameKey(..)")
    }
}

/// Why bytes are not a usable relay frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RelayFrameError {
    /// Shorter than the header.
    #[error("relay frame truncated: {len} bytes, the header alone is {HEADER_LEN}")]
    Truncated {
        /// Bytes that arrived.
        len: usize,
    },
    /// The first byte is not in the relay range (QUIC, a probe, or noise).
    #[error("not a relay frame (first byte {first:#04x})")]
    NotRelay {
        /// The first byte.
        first: u8,
    },
    /// In the relay range, but no type this version knows.
    #[error("unknown relay frame type {ty:#04x}")]
    BadType {
        /// The type byte.
        ty: u8,
    },
    /// Header and payload over [`MAX_DATAGRAM`].
    #[error("relay frame of {len} bytes, the limit is {max}")]
    TooLarge {
        /// Bytes that arrived.
        len: usize,
        /// [`MAX_DATAGRAM`].
        max: usize,
    },
    /// The tag does not match the header under the party's key.
    #[error("relay frame tag does not match")]
    BadMac,
}

/// A decoded frame whose tag is not checked yet (the relay needs the call
/// id and party to find the key): call [`Frame::verify`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    /// The header.
    pub header: Header,
    /// The tag as received.
    pub tag: [u8; TAG_LEN],
    /// The QUIC packet inside.
    pub payload: &'a [u8],
}

impl Frame<'_> {
    /// Checks the tag under `key`, in constant time.
    pub fn verify(&self, key: &FrameKey) -> Result<(), RelayFrameError> {
        // ring::hmac::verify compares whole 32-byte tags only, so compare
        // the truncated one here: no early exit, no data-dependent branch.
        let expected = key.tag(&self.header);
        let diff = expected
            .iter()
            .zip(self.tag.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        match std::hint::black_box(diff) {
            0 => Ok(()),
            _ => Err(RelayFrameError::BadMac),
        }
    }
}

/// Parses a relay frame (without checking its tag).
pub fn decode(bytes: &[u8]) -> Result<Frame<'_>, RelayFrameError> {
    let first = *bytes.first().ok_or(RelayFrameError::Truncated { len: 0 })?;
    if !is_relay_frame(first) {
        return Err(RelayFrameError::NotRelay { first });
    }
    let (party, end) = match first {
        TYPE_DATA_CALLER => (Party::Caller, false),
        TYPE_DATA_CALLEE => (Party::Callee, false),
        TYPE_END_CALLER => (Party::Caller, true),
        TYPE_END_CALLEE => (Party::Callee, true),
        ty => return Err(RelayFrameError::BadType { ty }),
    };
    if bytes.len() < HEADER_LEN {
        return Err(RelayFrameError::Truncated { len: bytes.len() });
    }
    if bytes.len() > MAX_DATAGRAM {
        return Err(RelayFrameError::TooLarge {
            len: bytes.len(),
            max: MAX_DATAGRAM,
        });
    }
    let mut id = [0u8; 4];
    id.copy_from_slice(&bytes[1..5]);
    let mut counter = [0u8; 8];
    counter[1..].copy_from_slice(&bytes[5..12]);
    let mut tag = [0u8; TAG_LEN];
    tag.copy_from_slice(&bytes[SIGNED_LEN..HEADER_LEN]);
    Ok(Frame {
        header: Header {
            party,
            call_id: u32::from_be_bytes(id),
            counter: u64::from_be_bytes(counter),
            end,
        },
        tag,
        payload: &bytes[HEADER_LEN..],
    })
}

/// The header for `header` under `key` (the sender's own); the payload
/// follows it in the datagram.
pub fn encode_header(header: &Header, key: &FrameKey) -> [u8; HEADER_LEN] {
    let mut out = [0u8; HEADER_LEN];
    out[..SIGNED_LEN].copy_from_slice(&header.signed_bytes());
    out[SIGNED_LEN..].copy_from_slice(&key.tag(header));
    out
}

/// Appends a whole frame (header, then `payload`) to `out`.
pub fn encode(
    header: &Header,
    key: &FrameKey,
    payload: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), RelayFrameError> {
    let len = HEADER_LEN + payload.len();
    if len > MAX_DATAGRAM {
        return Err(RelayFrameError::TooLarge {
            len,
            max: MAX_DATAGRAM,
        });
    }
    out.extend_from_slice(&encode_header(header, key));
    out.extend_from_slice(payload);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(b: u8) -> FrameKey {
        FrameKey::new(&[b; SECRET_LEN])
    }

    fn header() -> Header {
        Header {
            party: Party::Callee,
            call_id: 0xDEAD_BEEF,
            counter: 0x0012_3456_789A_BCDE,
            end: false,
        }
    }

    fn frame(payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode(&header(), &key(7), payload, &mut out).expect("fits");
        out
    }

    #[test]
    fn layout_is_as_documented() {
        let bytes = frame(b"quic");
        assert_eq!(bytes.len(), HEADER_LEN + 4);
        assert_eq!(bytes[0], TYPE_DATA_CALLEE);
        assert_eq!(bytes[0] & 0x40, 0, "QUIC's fixed bit is clear");
        assert_eq!(&bytes[1..5], &[0xDE, 0xAD, 0xBE, 0xEF]);
        assert_eq!(&bytes[5..12], &[0x12, 0x34, 0x56, 0x78, 0x9A, 0xBC, 0xDE]);
        assert_eq!(&bytes[HEADER_LEN..], b"quic");
        assert_eq!(MAX_PAYLOAD, 1432);
    }

    #[test]
    fn typed_errors() {
        let bytes = frame(b"");
        assert_eq!(
            decode(&bytes[..HEADER_LEN - 1]),
            Err(RelayFrameError::Truncated {
                len: HEADER_LEN - 1
            })
        );
        assert_eq!(decode(&[]), Err(RelayFrameError::Truncated { len: 0 }));
        let mut quic = bytes.clone();
        quic[0] = 0xC0;
        assert_eq!(
            decode(&quic),
            Err(RelayFrameError::NotRelay { first: 0xC0 })
        );
        assert_eq!(
            decode(&[0, 0, 0, 0]),
            Err(RelayFrameError::NotRelay { first: 0 }),
            "a legacy punch is not a relay frame"
        );
        let mut odd = bytes.clone();
        odd[0] = 0x3F;
        assert_eq!(decode(&odd), Err(RelayFrameError::BadType { ty: 0x3F }));
        let big = vec![TYPE_DATA_CALLER; MAX_DATAGRAM + 1];
        assert_eq!(
            decode(&big),
            Err(RelayFrameError::TooLarge {
                len: MAX_DATAGRAM + 1,
                max: MAX_DATAGRAM
            })
        );
        let mut out = Vec::new();
        assert!(encode(&header(), &key(1), &[0; MAX_PAYLOAD + 1], &mut out).is_err());
        assert!(out.is_empty(), "nothing written on error");
        assert!(encode(&header(), &key(1), &[0; MAX_PAYLOAD], &mut out).is_ok());
    }

    #[test]
    fn wrong_key_fails_the_tag() {
        let bytes = frame(b"x");
        let f = decode(&bytes).expect("decodes");
        assert_eq!(f.verify(&key(7)), Ok(()));
        assert_eq!(f.verify(&key(8)), Err(RelayFrameError::BadMac));
    }

    /// Any one flipped bit in the 20 header bytes is refused: by the type
    /// check (byte 0) or by the tag. Payload bits are not covered (QUIC's
    /// AEAD is).
    #[test]
    fn every_single_bit_flip_in_the_header_is_refused() {
        let bytes = frame(b"payload");
        for bit in 0..HEADER_LEN * 8 {
            let mut b = bytes.clone();
            b[bit / 8] ^= 1 << (bit % 8);
            let ok = decode(&b).and_then(|f| f.verify(&key(7)));
            assert!(ok.is_err(), "bit {bit} flipped and still accepted");
        }
        let mut b = bytes.clone();
        b[HEADER_LEN] ^= 1;
        assert!(decode(&b).and_then(|f| f.verify(&key(7))).is_ok());
    }

    fn any_header() -> impl Strategy<Value = Header> {
        (any::<bool>(), any::<u32>(), 0..=MAX_COUNTER, any::<bool>()).prop_map(
            |(callee, call_id, counter, end)| Header {
                party: if callee { Party::Callee } else { Party::Caller },
                call_id,
                counter,
                end,
            },
        )
    }

    proptest! {
        #[test]
        fn round_trip(h in any_header(), secret in any::<[u8; 32]>(),
                      payload in proptest::collection::vec(any::<u8>(), 0..=MAX_PAYLOAD)) {
            let k = FrameKey::new(&secret);
            let mut out = Vec::new();
            encode(&h, &k, &payload, &mut out).expect("fits");
            let f = decode(&out).expect("decodes");
            prop_assert_eq!(f.header, h);
            prop_assert_eq!(f.payload, &payload[..]);
            prop_assert_eq!(f.verify(&k), Ok(()));
            prop_assert_eq!(encode_header(&f.header, &k), <[u8; HEADER_LEN]>::try_from(&out[..HEADER_LEN]).expect("20"));
        }

        #[test]
        fn decode_never_panics_and_whatever_decodes_is_canonical(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(f) = decode(&bytes) {
                prop_assert_eq!(&f.header.signed_bytes()[..], &bytes[..SIGNED_LEN]);
                prop_assert!(is_relay_frame(bytes[0]) && bytes[0] & 0x40 == 0);
            }
        }
    }
}
