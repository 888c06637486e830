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
//!  | AcceptApproved{cands} -----> |   ...and accept their calls without asking
//!  | <--- Approved{count} / Error |   (the server sends Preapproved, then Dial)
//!  | CallAs{from,to,cands} -----> |   a one-shot call's first request: Register
//!  | <--- Registered / Error      |   and Call in one (no round trip between)
//!  | <--- CallAccepted / Error    |
//! ```
//!
//! Presence (`peer watch`), on one stream the peer opens and keeps:
//!
//! ```text
//!  | Watch{names} --------------> |   ≤ MAX_WATCH_BATCH names a frame; repeat to add
//!  | <--- Presence{..} per name   |   each name's state now, then
//!  | <--- Watching{count} / Error |   the frame is in force (or refused, nothing added)
//!  | <--- Presence{..} ...        |   every change, until the stream or connection goes
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

/// Most names one [`Message::Watch`] frame may carry: 100 × (32 + 1) bytes
/// fits a small (4 KiB) request frame. A watch of more names sends several
/// `Watch` frames on its stream.
pub const MAX_WATCH_BATCH: usize = 100;

/// Most names one connection may watch in all (the server refuses more
/// with `too_many_names`).
pub const MAX_WATCHED: usize = 256;

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
    /// Caller → server, as the first request of a one-shot connection:
    /// `Register { name: from, presence: false }` and `Call { to, .. }` in
    /// one, so a fresh `peer call` costs no registration round trip. The
    /// server answers two frames on the stream: `Registered` (or the
    /// `Error` that refused the registration, then nothing more), then the
    /// call's answer, as for [`Message::Call`].
    CallAs {
        /// The caller's name, claimed for its key as `Register` would.
        from: String,
        /// Callee name.
        to: String,
        /// As in [`Message::Call`].
        candidates: Vec<SocketAddr>,
        /// As in [`Message::Call`].
        hide_addresses: bool,
    },
    /// Listener → server, after [`Message::Approve`]: the callers it
    /// approved need not be asked; accept their calls at once with these
    /// (what its `Accept` would say). The server answers `Approved`.
    AcceptApproved {
        /// As in [`Message::Accept`].
        candidates: Vec<SocketAddr>,
        /// As in [`Message::Accept`].
        hide_addresses: bool,
    },
    /// Server → callee, on a new stream: a call from a caller it approved
    /// with [`Message::AcceptApproved`]. No answer is wanted: the call's
    /// `Dial` (or an `Error`) follows on the same stream at once, while the
    /// caller already has its `CallAccepted`. The callee still checks the
    /// caller against its own policy, and lets in only this key.
    Preapproved {
        /// As in [`Message::IncomingCall`].
        call_id: u64,
        /// The caller's registered name.
        from: String,
        /// The caller's key.
        fingerprint: Fingerprint,
    },
    /// Peer → server, first on a stream the peer opens and keeps (then
    /// again on it to add names): tell me these names' presence now and
    /// every change. At most [`MAX_WATCH_BATCH`] names per frame,
    /// [`MAX_WATCHED`] per connection. No registration needed.
    Watch {
        /// The names to watch.
        names: Vec<String>,
    },
    /// Server → watcher, after each [`Message::Watch`] frame's names are
    /// in force (their states were sent before it). A refused frame gets
    /// an [`Message::Error`] instead (`rate_limited`, `too_many_names`,
    /// `invalid_name`) and adds nothing; the stream stays.
    Watching {
        /// How many names this stream watches now.
        count: u32,
    },
    /// Server → watcher: a watched name's state (first its state now, then
    /// each change). As much as a lookup tells: never an address.
    Presence {
        /// The name.
        name: String,
        /// Whether a (visible) `listen` holds it now.
        online: bool,
        /// The key it is bound to; `None`: no one has registered it.
        fingerprint: Option<Fingerprint>,
    },
    /// Peer → server: [`Message::Register`] with `presence: true` for a
    /// `listen --invisible`: callable, but lookups and watchers are told
    /// it is offline (as any offline name: with its key). Answered as
    /// `Register` is. (A server older than this refuses it as malformed.)
    RegisterInvisible {
        /// The name to claim.
        name: String,
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
            Self::CallAs { .. } => "CallAs",
            Self::AcceptApproved { .. } => "AcceptApproved",
            Self::Preapproved { .. } => "Preapproved",
            Self::Watch { .. } => "Watch",
            Self::Watching { .. } => "Watching",
            Self::Presence { .. } => "Presence",
            Self::RegisterInvisible { .. } => "RegisterInvisible",
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

    proptest! {
        #[test]
        fn watch_and_presence_round_trip(
            names in proptest::collection::vec("[a-z0-9-]{1,32}", 0..=MAX_WATCH_BATCH),
            online in any::<bool>(),
            key in proptest::option::of(any::<[u8; 32]>()),
            count in any::<u32>(),
        ) {
            let first = names.first().cloned().unwrap_or_default();
            for msg in [
                Message::Watch { names: names.clone() },
                Message::Watching { count },
                Message::Presence { name: first.clone(), online, fingerprint: key.map(Fingerprint) },
                Message::RegisterInvisible { name: first.clone() },
            ] {
                let bytes = postcard::to_allocvec(&msg).expect("encode");
                let back: Message = postcard::from_bytes(&bytes).expect("decode");
                prop_assert_eq!(back, msg);
            }
        }
    }

    #[test]
    fn a_full_watch_fits_in_a_small_frame() {
        let msg = Message::Watch {
            names: vec!["x".repeat(crate::names::MAX_NAME_LEN); MAX_WATCH_BATCH],
        };
        let len = postcard::to_allocvec(&msg).expect("encode").len();
        assert!(len <= 4 * 1024 - 64, "{len}");
    }

    #[test]
    fn the_older_variants_keep_their_wire_form() {
        // Appended variants must not move the old ones' indices.
        let bytes = postcard::to_allocvec(&Message::Approved { count: 7 }).expect("encode");
        assert_eq!(bytes, [11, 7]);
        let bytes = postcard::to_allocvec(&Message::Watching { count: 7 }).expect("encode");
        assert_eq!(bytes, [17, 7]);
        let call_as = Message::CallAs {
            from: String::new(),
            to: String::new(),
            candidates: vec![],
            hide_addresses: false,
        };
        let bytes = postcard::to_allocvec(&call_as).expect("encode");
        assert_eq!(bytes[0], 13);
        let index = |m: &Message| postcard::to_allocvec(m).expect("encode")[0];
        let standing = Message::AcceptApproved {
            candidates: vec![],
            hide_addresses: false,
        };
        assert_eq!(index(&standing), 14);
        let preapproved = Message::Preapproved {
            call_id: 0,
            from: String::new(),
            fingerprint: Fingerprint([0; 32]),
        };
        assert_eq!(index(&preapproved), 15);
        assert_eq!(index(&Message::Watch { names: vec![] }), 16);
        let presence = Message::Presence {
            name: String::new(),
            online: false,
            fingerprint: None,
        };
        assert_eq!(index(&presence), 18);
        let invisible = Message::RegisterInvisible {
            name: String::new(),
        };
        assert_eq!(index(&invisible), 19);
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
