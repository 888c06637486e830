//! Wire messages (serde + postcard), one enum per protocol.
//!
//! # Rendezvous protocol ([`Message`], ALPN [`crate::tls::SERVER_ALPN`])
//!
//! Every exchange is one QUIC bidirectional stream carrying length-prefixed
//! frames ([`crate::framing`]). The peer opens a stream per request:
//!
//! ```text
//! peer                          server
//!  | Register{name,presence} ---> |   claim name for this key (durable), maybe presence
//!  | <--- Registered{..} / Error  |
//!  | Lookup{name} --------------> |
//!  | <--- LookupResult / Error    |   online + fingerprint, never an address
//!  | Call{to,candidates} -------> |   (see below)
//!  | <--- CallAccepted / Error    |
//!  | Approve{fingerprints} -----> |   a listen's pre-approved callers (known
//!  | <--- Approved{count} / Error |   contacts): their calls skip the per-callee limits
//! ```
//!
//! A call, with the callee's `listen` session (server-opened stream):
//!
//! ```text
//! caller A                 server S                     callee B
//!  | Call{to:B,cands} ----> |                             |
//!  |                        | IncomingCall{from:A,fp} --> |  no addresses yet
//!  |                        | <-- Accept{cands} / Reject  |  B decides by policy
//!  | <-- CallAccepted{fp,   |                             |
//!  |     B observed+cands}  | Dial{A observed+cands} ---> |  at the same moment
//!  | probes + one QUIC dial ===> <=== probes from B (candidates and relay)
//! ```
//!
//! Candidates the server forwards are vetted by [`crate::candidates`]: the
//! observed address first, then at most a few private/link-local/ULA ones.
//!
//! # Peer protocol ([`PeerMessage`], ALPN [`crate::tls::PEER_ALPN`])
//!
//! The caller opens a stream and says what it is for with its first frame:
//! `Pipe` (raw bytes follow both ways), `Ping` (then `Ping`/`Pong` frames),
//! or `SendFile` (file bytes follow; the receiver answers `SendResult`).

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::{ErrorKind, Fingerprint};

/// Most keys one [`Message::Approve`] may carry (the server refuses more):
/// 100 × 32 bytes = 3.2 KiB, inside a small (4 KiB) request frame, and the
/// most a server keeps per listening session.
pub const MAX_APPROVED: usize = 100;

/// One party's part of a relayed call ([`crate::relay_frame`]): what it
/// puts in the header of every frame it sends to the relay, which is the
/// server's own address and port. Sent to that party only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayTicket {
    /// The relay-local call id both parties' frames carry.
    pub call_id: u32,
    /// This party's frame key secret (the other party has its own).
    pub secret: [u8; 32],
}

/// A message of the rendezvous protocol.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Message {
    /// Peer → server: claim `name` for this connection's key.
    Register {
        /// The name to claim.
        name: String,
        /// True for a `listen` session: this connection becomes the name's
        /// presence (callable), replacing an older one.
        presence: bool,
    },
    /// Server → peer: the name is yours.
    Registered {
        /// The name.
        name: String,
        /// The key it is bound to (the one that asked).
        fingerprint: Fingerprint,
        /// The address the server sees this connection come from.
        observed_addr: SocketAddr,
    },
    /// Peer → server: is `name` online, and with which key?
    Lookup {
        /// The name.
        name: String,
    },
    /// Server → peer: answer to [`Message::Lookup`]. Never carries an address.
    LookupResult {
        /// The name.
        name: String,
        /// Whether a `listen` session holds it now.
        online: bool,
        /// The key it is bound to.
        fingerprint: Fingerprint,
    },
    /// Caller → server: call `to`.
    Call {
        /// Callee name.
        to: String,
        /// The caller's local addresses (the server keeps only private ones).
        candidates: Vec<SocketAddr>,
        /// `call --path relay`: give the callee none of the caller's
        /// addresses (the call goes through the relay, or not at all).
        hide_addresses: bool,
    },
    /// Server → callee: someone calls you. No addresses yet.
    IncomingCall {
        /// Identifies this call on this server.
        call_id: u64,
        /// The caller's registered name.
        from: String,
        /// The caller's key.
        fingerprint: Fingerprint,
    },
    /// Callee → server: accepted; here are my local addresses.
    Accept {
        /// The callee's local addresses (the server keeps only private ones).
        candidates: Vec<SocketAddr>,
        /// `listen --path relay`: give the caller none of the callee's
        /// addresses, not even the observed one.
        hide_addresses: bool,
    },
    /// Callee → server: refused.
    Reject {
        /// Why, for the caller.
        reason: String,
    },
    /// Server → caller: the callee accepted; dial these.
    CallAccepted {
        /// Identifies this call on this server.
        call_id: u64,
        /// The callee's key, to pin.
        fingerprint: Fingerprint,
        /// The callee's observed address, then its vetted local ones
        /// (none when the callee hides its addresses).
        candidates: Vec<SocketAddr>,
        /// The per-call key of path probes until the peer handshake
        /// ([`crate::probe`]); the callee gets the same one in its `Dial`.
        probe_key: [u8; 32],
        /// The call's relay allocation, for the caller; `None` when the
        /// server runs no relay.
        relay: Option<RelayTicket>,
    },
    /// Server → callee: open your NAT toward these; the caller dials now.
    Dial {
        /// Identifies this call on this server.
        call_id: u64,
        /// The caller's observed address, then its vetted local ones
        /// (none when the caller hides its addresses).
        candidates: Vec<SocketAddr>,
        /// The per-call probe key, as in [`Message::CallAccepted`].
        probe_key: [u8; 32],
        /// The call's relay allocation, for the callee.
        relay: Option<RelayTicket>,
    },
    /// Listener → server, after `Register { presence: true }`: the keys
    /// this listener accepts calls from anyway (its known contacts, its
    /// `--accept-from` names' keys). Their calls are not counted against the
    /// per-callee offer limits, so strangers ringing it cannot lock its
    /// contacts out. At most [`MAX_APPROVED`]; each Approve replaces the
    /// last.
    Approve {
        /// The pre-approved callers' keys.
        fingerprints: Vec<Fingerprint>,
    },
    /// Server → listener: the [`Message::Approve`] list is in force.
    Approved {
        /// How many keys it holds.
        count: u32,
    },
    /// Either way: the request failed.
    Error {
        /// What kind of failure.
        kind: ErrorKind,
        /// Details for a person.
        message: String,
    },
}

impl Message {
    /// The variant's name, for logs and "unexpected message" errors.
    pub fn kind_name(&self) -> &'static str {
        match self {
            Self::Register { .. } => "Register",
            Self::Registered { .. } => "Registered",
            Self::Lookup { .. } => "Lookup",
            Self::LookupResult { .. } => "LookupResult",
            Self::Call { .. } => "Call",
            Self::IncomingCall { .. } => "IncomingCall",
            Self::Accept { .. } => "Accept",
            Self::Reject { .. } => "Reject",
            Self::CallAccepted { .. } => "CallAccepted",
            Self::Dial { .. } => "Dial",
            Self::Approve { .. } => "Approve",
            Self::Approved { .. } => "Approved",
            Self::Error { .. } => "Error",
        }
    }

    /// An error message.
    pub fn error(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self::Error {
            kind,
            message: message.into(),
        }
    }
}

/// A message of the peer ↔ peer protocol.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum PeerMessage {
    /// First frame of a stream: raw bytes follow in both directions.
    Pipe,
    /// First frame of a ping stream, and each ping after it.
    Ping {
        /// Sequence number, echoed in the pong.
        seq: u64,
    },
    /// Answer to a ping.
    Pong {
        /// The ping's sequence number.
        seq: u64,
    },
    /// First frame of a file transfer: `size` bytes of file follow.
    SendFile {
        /// The sender's file name, a hint only: never used as a path as is.
        name: String,
        /// Exact length of the file in bytes.
        size: u64,
        /// SHA-256 of the whole file.
        sha256: [u8; 32],
    },
    /// Receiver → sender: the outcome of a transfer.
    SendResult {
        /// Whether the file was stored (hash matched).
        ok: bool,
        /// Where it was stored, or why not.
        message: String,
    },
    /// First frame of a forwarded TCP connection (`peer forward` →
    /// `listen --forward-to`): the callee connects to its one configured
    /// target (the caller never names one), answers [`PeerMessage::Forwarded`],
    /// then raw bytes follow both ways. A target that refuses or cannot be
    /// reached resets the stream instead (code `FORWARD_REFUSED`). (Last
    /// but one: postcard's wire form of a variant is its index.)
    Forward,
    /// Callee → caller on a `Forward` stream: the target accepted the TCP
    /// connection; bytes follow. (Last: the wire form is the index.)
    Forwarded,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn approve_and_approved_round_trip(
            keys in proptest::collection::vec(any::<[u8; 32]>(), 0..=MAX_APPROVED),
            count in any::<u32>(),
        ) {
            for msg in [
                Message::Approve { fingerprints: keys.iter().copied().map(Fingerprint).collect() },
                Message::Approved { count },
            ] {
                let bytes = postcard::to_allocvec(&msg).expect("encode");
                let back: Message = postcard::from_bytes(&bytes).expect("decode");
                prop_assert_eq!(back, msg);
            }
        }
    }

    /// postcard writes a variant as its index: the forward purposes come
    /// after every older one, so older peers' streams keep their meaning.
    #[test]
    fn forward_purposes_are_the_last_indices() {
        let index = |m: &PeerMessage| postcard::to_allocvec(m).expect("encode")[0];
        assert_eq!(index(&PeerMessage::Pipe), 0);
        assert_eq!(index(&PeerMessage::Forward), 5);
        assert_eq!(index(&PeerMessage::Forwarded), 6);
    }

    #[test]
    fn a_full_approve_fits_in_a_small_frame() {
        let msg = Message::Approve {
            fingerprints: vec![Fingerprint([0xff; 32]); MAX_APPROVED],
        };
        let len = postcard::to_allocvec(&msg).expect("encode").len();
        assert!(len <= 4 * 1024 - 64, "{len}");
    }
}
