//! Authenticated path probes: the small non-QUIC datagrams that find, check
//! and re-find a call's paths (DESIGN §5).
//!
//! A probe shares the peer's one UDP socket with QUIC and relay frames. The
//! socket wrapper tells them apart by the first byte: QUIC sets the fixed bit
//! (0x40) on every packet (every endpoint here turns quinn's greasing off), so
//! a datagram whose first byte has it clear is ours. The type bytes are split:
//!
//! | first byte | what |
//! |---|---|
//! | `0x00` | the old 4-byte zero punch ([`is_probe`] is false) |
//! | `0x01`–`0x0f` ([`PROBE_TYPES`]) | probes: [`PING`], [`PONG`], [`NOTE`], the rest reserved |
//! | `0x10`–`0x2f` | unused |
//! | `0x30`–`0x3f` ([`RELAY_TYPES`]) | relay frames ([`crate::relay_frame`]), not decoded here |
//! | `0x20`–`0x3f` | free (fixed bit clear) |
//!
//! Every probe is exactly [`PROBE_LEN`] (60) bytes, the MAC included, so an
//! answer is never larger than what provoked it (no amplification), and quinn
//! never sees one (it would drop it anyway: with greasing off, a packet with
//! the fixed bit clear fails to decode, so no stateless reset is provoked).
//!
//! ```text
//! Ping: type=0x01 | call id u64 BE | tx [8] | nonce [8] | zero [19] | mac [16]
//! Pong: type=0x02 | call id u64 BE | tx [8] | nonce [8] | observed [19] | mac [16]
//!       observed = family (0 none, 4, 6) | IP (4 or 16, zero-padded) | port u16 BE
//! Note: type=0x03 | call id u64 BE | tx [8] | mapping | round | heard | zero [24] | mac [16]
//! ```
//!
//! A [`Note`] tells the other side what this side's NAT does with a
//! mapping ([`Mapping`], learned from the server's two check ports) and
//! whether this side has the other's note: the two sides of a relayed
//! call learn which of them is symmetric, so a birthday attempt is made
//! only where it can pay off. A version older than it drops it
//! ([`ProbeError::UnknownKind`]).
//!
//! The flow, on each candidate path:
//!
//! ```text
//!  A                                         B
//!  | Ping{call, tx, nonce: echo or 0} ------> |  B answers every valid ping,
//!  | <------ Pong{call, tx, observed, nonce}  |  one pong each, same size
//!  | Ping{.., nonce: B's nonce echoed} -----> |  A proves it receives there
//! ```
//!
//! The MAC is HMAC-SHA256 over the first 44 bytes, truncated to [`MAC_LEN`]
//! (16), under a [`ProbeKey`]: until the peer handshake the per-call key both
//! peers got from the server; after it a key exported from the peer
//! connection with [`EXPORT_LABEL`] and [`export_context`], so on a live call
//! not even the server can forge a probe ([`ProbeKeys`] switches between
//! them). The source address is not covered (NATs rewrite it): a replayed
//! probe from a spoofed address is why an unannounced address earns only
//! pongs until it echoes the nonce sent there.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::RangeInclusive;

use ring::hmac;
use thiserror::Error;

/// First byte of a [`Ping`].
pub const PING: u8 = 0x01;
/// First byte of a [`Pong`].
pub const PONG: u8 = 0x02;
/// First byte of a [`Note`].
pub const NOTE: u8 = 0x03;
/// The first bytes reserved for probes (fixed bit clear). Unknown ones in
/// this range are [`ProbeError::UnknownKind`], for later versions.
pub const PROBE_TYPES: RangeInclusive<u8> = 0x01..=0x0f;
/// The first bytes reserved for relay frames; never a probe.
pub const RELAY_TYPES: RangeInclusive<u8> = 0x30..=0x3f;
/// Length of every probe on the wire, in bytes.
pub const PROBE_LEN: usize = 60;
/// Length of the truncated HMAC-SHA256 tag.
pub const MAC_LEN: usize = 16;
/// Length of a [`ProbeKey`]'s secret.
pub const KEY_LEN: usize = 32;
/// The `label` for `quinn::Connection::export_keying_material` (RFC 5705 /
/// RFC 8446 §7.5 exporter) that yields the post-handshake probe key:
/// `conn.export_keying_material(&mut [0; KEY_LEN], EXPORT_LABEL, &export_context(call_id))`.
pub const EXPORT_LABEL: &[u8] = b"rdv probe v1";

/// A ping's random transaction id, echoed by its pong.
pub type TxId = [u8; 8];
/// A random challenge: sent in a pong, echoed in the next ping on that path.
pub type Nonce = [u8; 8];

const MAC_START: usize = PROBE_LEN - MAC_LEN;
const ADDR_START: usize = 25;

/// The `context` for [`EXPORT_LABEL`]: the call id, big-endian.
pub fn export_context(call_id: u64) -> [u8; 8] {
    call_id.to_be_bytes()
}

/// "Are you there, and how long does it take?" on one path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ping {
    /// The call this probe belongs to (which key to check it with).
    pub call_id: u64,
    /// Random, unique per ping; the pong echoes it (RTT, and proof that the
    /// answer came from where the ping went).
    pub tx: TxId,
    /// The last nonce the other side sent us on this path, echoed (proof
    /// that we receive there); zeros when we have none.
    pub nonce: Nonce,
}

/// The answer to one [`Ping`], sent back to where the ping came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pong {
    /// The call, as in the ping.
    pub call_id: u64,
    /// The ping's transaction id.
    pub tx: TxId,
    /// Where the ping came from, as the answering side saw it: the asker's
    /// reflexive address on this path (`None` over the relay). Flow info and
    /// scope id are not carried.
    pub observed: Option<SocketAddr>,
    /// A fresh challenge for the asker to echo in its next ping here.
    pub nonce: Nonce,
}

/// What a NAT does with a mapping, as a peer learned it by asking the
/// server's two check ports (`crate::tunnel::check`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Mapping {
    /// Not known (no answer, an older server, or the two answers came from
    /// different public addresses).
    #[default]
    Unknown,
    /// One public address and port for every destination: no NAT, a full
    /// cone, or a (port-)restricted cone.
    Cone,
    /// A new public port for every destination (the IP stays).
    Symmetric,
}

impl Mapping {
    /// `unknown`, `cone` or `symmetric`, as in events.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::Cone => "cone",
            Self::Symmetric => "symmetric",
        }
    }

    /// What the two check answers say: the same address both times is a
    /// cone, the same IP with another port symmetric, anything else
    /// unknown.
    pub fn from_answers(first: SocketAddr, second: SocketAddr) -> Self {
        if first.ip() != second.ip() {
            Self::Unknown
        } else if first.port() == second.port() {
            Self::Cone
        } else {
            Self::Symmetric
        }
    }

    fn to_byte(self) -> u8 {
        match self {
            Self::Unknown => 0,
            Self::Cone => 1,
            Self::Symmetric => 2,
        }
    }

    fn from_byte(b: u8) -> Option<Self> {
        match b {
            0 => Some(Self::Unknown),
            1 => Some(Self::Cone),
            2 => Some(Self::Symmetric),
            _ => None,
        }
    }
}

/// "This is my NAT's mapping; I have (or have not) heard yours", sent on a
/// relayed call until the other side says it heard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Note {
    /// The call.
    pub call_id: u64,
    /// Random, unique per note (no two notes are the same bytes).
    pub tx: TxId,
    /// The sender's NAT mapping.
    pub mapping: Mapping,
    /// The sender's birthday round: a new round is a new attempt.
    pub round: u8,
    /// Whether the sender has the other side's note of this round.
    pub heard: bool,
}

/// A decoded, authenticated probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// A [`Ping`].
    Ping(Ping),
    /// A [`Pong`].
    Pong(Pong),
    /// A [`Note`].
    Note(Note),
}

/// Why a datagram is not a valid probe. All are the sender's fault (or an
/// attacker's): log and drop, never answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ProbeError {
    /// The first byte is not in [`PROBE_TYPES`] (QUIC, relay, or junk).
    #[error("not a probe (first byte {first:#04x})")]
    NotAProbe {
        /// The first byte (0 for an empty datagram).
        first: u8,
    },
    /// A probe type byte this version does not know.
    #[error("unknown probe kind {kind:#04x}")]
    UnknownKind {
        /// The type byte.
        kind: u8,
    },
    /// Not [`PROBE_LEN`] bytes long.
    #[error("probe of {len} bytes, expected {PROBE_LEN}")]
    Length {
        /// Its length.
        len: usize,
    },
    /// The MAC does not verify under the key: forged, corrupted, or sent
    /// under the other key (before or after the peer handshake).
    #[error("probe MAC does not verify")]
    BadMac,
    /// A note's mapping byte is not 0, 1 or 2, or its heard byte not 0 or 1.
    #[error("bad note field {value} at byte {at}")]
    BadNote {
        /// The byte.
        value: u8,
        /// Its offset.
        at: usize,
    },
    /// A pong's address family byte is not 0, 4 or 6.
    #[error("bad address family {family} in pong")]
    BadAddressFamily {
        /// The family byte.
        family: u8,
    },
    /// A byte that must be zero is not (only one encoding per probe).
    #[error("non-zero padding at byte {at}")]
    NonZeroPadding {
        /// Its offset.
        at: usize,
    },
}

/// The key probes of one call are authenticated with.
#[derive(Debug, Clone)]
pub struct ProbeKey(hmac::Key);

impl ProbeKey {
    /// A key from a 32-byte secret: the per-call key from the server, or the
    /// output of the exporter ([`EXPORT_LABEL`]).
    pub fn new(secret: &[u8; KEY_LEN]) -> Self {
        Self(hmac::Key::new(hmac::HMAC_SHA256, secret))
    }

    /// Writes the MAC of raw probe bytes into their last [`MAC_LEN`] bytes,
    /// whatever the rest holds ([`Probe::encode`] does this; fuzzing and
    /// tests use it to reach the parser behind the MAC).
    pub fn seal_raw(&self, bytes: &mut [u8; PROBE_LEN]) {
        let tag = self.tag(&bytes[..MAC_START]);
        bytes[MAC_START..].copy_from_slice(&tag);
    }

    fn tag(&self, data: &[u8]) -> [u8; MAC_LEN] {
        let full = hmac::sign(&self.0, data);
        let mut out = [0; MAC_LEN];
        out.copy_from_slice(&full.as_ref()[..MAC_LEN]);
        out
    }

    fn verify(&self, data: &[u8], tag: &[u8]) -> bool {
        let expected = self.tag(data);
        // Constant time: fold every byte's difference before looking.
        let diff = expected
            .iter()
            .zip(tag)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        std::hint::black_box(diff) == 0
    }
}

/// The probe keys of one call over its life: the server's until the peer
/// handshake, then the exported one, with an overlap so neither side drops
/// the other's probes while they switch.
///
/// The two sides finish the handshake at different moments: the QUIC
/// client (the caller) first, the server (the callee) a moment later, once
/// the caller's last flight arrived — which may itself wait for a probe to
/// open the way. So the side that finishes first keeps *sealing* with the
/// server's key ([`ProbeKeys::set_exported`] with `seal_now` false) until a
/// probe under the exported key arrives (the other side has it too); the
/// side that finishes last seals with the exported key at once. Both
/// accept both keys until then.
#[derive(Debug, Clone)]
pub struct ProbeKeys {
    /// The server's per-call key.
    server: ProbeKey,
    /// Whether probes under `server` are still accepted.
    server_accepted: bool,
    /// The key exported from the peer connection, once it is up.
    exported: Option<ProbeKey>,
    /// Whether outgoing probes are sealed with `exported`.
    seal_exported: bool,
}

impl ProbeKeys {
    /// Keys for a call that has only the server's per-call key so far.
    pub fn new(server: ProbeKey) -> Self {
        Self {
            server,
            server_accepted: true,
            exported: None,
            seal_exported: false,
        }
    }

    /// The peer handshake completed here. `seal_now`: seal with the
    /// exported key at once (this side finished last: the other has it);
    /// otherwise only once a probe under it arrives.
    pub fn set_exported(&mut self, key: ProbeKey, seal_now: bool) {
        self.exported = Some(key);
        self.seal_exported = seal_now;
    }

    /// Stops accepting (and sealing with) the server's key once the
    /// exported one is there: the other side had time enough to switch.
    pub fn forget_server_key(&mut self) {
        if self.exported.is_some() {
            self.server_accepted = false;
            self.seal_exported = true;
        }
    }

    /// The key to seal outgoing probes with.
    pub fn sealing(&self) -> &ProbeKey {
        match &self.exported {
            Some(e) if self.seal_exported => e,
            _ => &self.server,
        }
    }

    /// Decodes `bytes` under the exported key, else under the server's
    /// while it is still accepted. The first probe that verifies under the
    /// exported key drops the server's for good (and from then on this
    /// side seals with the exported one too).
    pub fn open(&mut self, bytes: &[u8]) -> Result<Probe, ProbeError> {
        self.open_keyed(bytes).map(|(p, _)| p)
    }

    /// [`ProbeKeys::open`], and whether the probe was under the exported
    /// key (a [`Note`] counts only then: the server never has that key).
    pub fn open_keyed(&mut self, bytes: &[u8]) -> Result<(Probe, bool), ProbeError> {
        if let Some(exported) = &self.exported {
            match Probe::decode(bytes, exported) {
                Ok(p) => {
                    self.server_accepted = false;
                    self.seal_exported = true;
                    return Ok((p, true));
                }
                Err(ProbeError::BadMac) => {}
                Err(e) => return Err(e),
            }
        }
        if !self.server_accepted {
            return Err(ProbeError::BadMac);
        }
        Probe::decode(bytes, &self.server).map(|p| (p, false))
    }

    /// Whether outgoing probes are sealed with the exported key now.
    pub fn seals_exported(&self) -> bool {
        self.exported.is_some() && self.seal_exported
    }
}

/// Whether a datagram's first byte marks it as a probe (the socket
/// wrapper's demultiplexing test; the MAC is checked by [`Probe::decode`]).
pub fn is_probe(datagram: &[u8]) -> bool {
    datagram.first().is_some_and(|b| PROBE_TYPES.contains(b))
}

/// The call id of something that looks like a probe, before its MAC is
/// checked: which call's key to check it with. Never trust it further.
pub fn peek_call_id(datagram: &[u8]) -> Option<u64> {
    if !is_probe(datagram) || datagram.len() != PROBE_LEN {
        return None;
    }
    let id: [u8; 8] = datagram[1..9].try_into().ok()?;
    Some(u64::from_be_bytes(id))
}

impl Probe {
    /// The call id.
    pub fn call_id(&self) -> u64 {
        match self {
            Self::Ping(p) => p.call_id,
            Self::Pong(p) => p.call_id,
            Self::Note(n) => n.call_id,
        }
    }

    /// The probe on the wire, sealed with `key`.
    pub fn encode(&self, key: &ProbeKey) -> [u8; PROBE_LEN] {
        let mut out = [0u8; PROBE_LEN];
        let (kind, call_id, tx, nonce) = match self {
            Self::Ping(p) => (PING, p.call_id, p.tx, p.nonce),
            Self::Pong(p) => (PONG, p.call_id, p.tx, p.nonce),
            Self::Note(n) => {
                let mut fields = [0; 8];
                fields[0] = n.mapping.to_byte();
                fields[1] = n.round;
                fields[2] = u8::from(n.heard);
                (NOTE, n.call_id, n.tx, fields)
            }
        };
        out[0] = kind;
        out[1..9].copy_from_slice(&call_id.to_be_bytes());
        out[9..17].copy_from_slice(&tx);
        out[17..25].copy_from_slice(&nonce);
        if let Self::Pong(Pong {
            observed: Some(addr),
            ..
        }) = self
        {
            encode_addr(*addr, &mut out[ADDR_START..MAC_START]);
        }
        key.seal_raw(&mut out);
        out
    }

    /// Checks and decodes one datagram. The MAC is checked before anything
    /// after the type byte is read.
    pub fn decode(bytes: &[u8], key: &ProbeKey) -> Result<Self, ProbeError> {
        let first = bytes.first().copied().unwrap_or(0);
        if !PROBE_TYPES.contains(&first) {
            return Err(ProbeError::NotAProbe { first });
        }
        if first != PING && first != PONG && first != NOTE {
            return Err(ProbeError::UnknownKind { kind: first });
        }
        if bytes.len() != PROBE_LEN {
            return Err(ProbeError::Length { len: bytes.len() });
        }
        if !key.verify(&bytes[..MAC_START], &bytes[MAC_START..]) {
            return Err(ProbeError::BadMac);
        }
        let field = |r: std::ops::Range<usize>| -> [u8; 8] {
            let mut out = [0; 8];
            out.copy_from_slice(&bytes[r]);
            out
        };
        let call_id = u64::from_be_bytes(field(1..9));
        let (tx, nonce) = (field(9..17), field(17..25));
        let tail = &bytes[ADDR_START..MAC_START];
        if first == PING {
            zero_from(tail, 0)?;
            return Ok(Self::Ping(Ping { call_id, tx, nonce }));
        }
        if first == NOTE {
            return decode_note(call_id, tx, nonce, tail).map(Self::Note);
        }
        let observed = decode_addr(tail)?;
        Ok(Self::Pong(Pong {
            call_id,
            tx,
            observed,
            nonce,
        }))
    }
}

/// A note's fields (the nonce bytes: mapping, round, heard, zeros).
fn decode_note(call_id: u64, tx: TxId, fields: [u8; 8], tail: &[u8]) -> Result<Note, ProbeError> {
    let bad = |at: usize| ProbeError::BadNote {
        value: fields[at],
        at: 17 + at,
    };
    let mapping = Mapping::from_byte(fields[0]).ok_or_else(|| bad(0))?;
    let heard = match fields[2] {
        0 => false,
        1 => true,
        _ => return Err(bad(2)),
    };
    if let Some(i) = fields[3..].iter().position(|b| *b != 0) {
        return Err(ProbeError::NonZeroPadding { at: 20 + i });
    }
    zero_from(tail, 0)?;
    Ok(Note {
        call_id,
        tx,
        mapping,
        round: fields[1],
        heard,
    })
}

fn encode_addr(addr: SocketAddr, out: &mut [u8]) {
    match addr.ip() {
        IpAddr::V4(ip) => {
            out[0] = 4;
            out[1..5].copy_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            out[0] = 6;
            out[1..17].copy_from_slice(&ip.octets());
        }
    }
    out[17..19].copy_from_slice(&addr.port().to_be_bytes());
}

fn decode_addr(tail: &[u8]) -> Result<Option<SocketAddr>, ProbeError> {
    let port = u16::from_be_bytes([tail[17], tail[18]]);
    let ip = match tail[0] {
        0 => return zero_from(tail, 1).map(|()| None),
        4 => {
            zero_from(&tail[..17], 5)?;
            IpAddr::V4(Ipv4Addr::new(tail[1], tail[2], tail[3], tail[4]))
        }
        6 => {
            let mut octets = [0; 16];
            octets.copy_from_slice(&tail[1..17]);
            IpAddr::V6(Ipv6Addr::from(octets))
        }
        family => return Err(ProbeError::BadAddressFamily { family }),
    };
    Ok(Some(SocketAddr::new(ip, port)))
}

/// `Ok` if `tail[from..]` is all zero; offsets reported from the datagram start.
fn zero_from(tail: &[u8], from: usize) -> Result<(), ProbeError> {
    match tail[from..].iter().position(|b| *b != 0) {
        Some(i) => Err(ProbeError::NonZeroPadding {
            at: ADDR_START + from + i,
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests;
