//! What nodes say to each other on the bus, and the seal on every message.
//!
//! Each message is a postcard [`Envelope`] (sender, send time, [`Body`])
//! sealed with ChaCha20-Poly1305 under a key derived from the cluster's
//! shared server key ([`BusKey::derive`]), with the NATS subject as the
//! associated data: a stranger on the bus, even one with bus credentials,
//! can neither read an offer or a candidate list nor forge or move a
//! message (an announcement copied onto another subject fails to open).
//! Replays are bounded by [`MAX_AGE`] and by the receivers' own rules
//! (presence sequence numbers, one answer per call id).
//!
//! Sans-IO: bytes in, bytes out; the driver (`super::bus`) moves them.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use common::{Fingerprint, Message, RelayTicket};
use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey, NONCE_LEN};
use serde::{Deserialize, Serialize};

/// Most bytes of one sealed message a node accepts (NATS' default
/// max_payload is 1 MiB; our biggest, a presence page, stays far below).
pub const MAX_MESSAGE: usize = 256 * 1024;
/// Oldest (or furthest in the future) a message may be: clocks of one
/// cluster are assumed NTP-synced well within this.
pub const MAX_AGE: Duration = Duration::from_secs(30);

/// A name online at a node, as it announces it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Online {
    /// The name.
    pub name: String,
    /// The key that registered it (the store's owner).
    pub fingerprint: Fingerprint,
    /// When its `listen` registered (ms since the Unix epoch): a newer
    /// registration on another node replaces it.
    pub since_ms: u64,
    /// `listen --invisible`: callable, but lookups and watchers are told
    /// it is offline. (Added in issue 13: bus messages are between nodes
    /// of one version, so no older form is read.)
    pub invisible: bool,
}

/// What a callee's node answers to an [`Body::Offer`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum OfferAnswer {
    /// The callee was asked: what it said, where its node sees it now (a
    /// TCP peer's real address), and the relay call that node allocated
    /// (the callee's ticket, then the caller's; `None`: no relay there).
    Asked {
        /// The callee's answer.
        answer: crate::broker::Answer,
        /// Where the callee's node sees it now.
        observed: SocketAddr,
        /// The relay tickets, callee's then caller's.
        relay: Option<(RelayTicket, RelayTicket)>,
    },
    /// The callee's node refused before asking (offline there, an offer
    /// limit): this error goes to the caller.
    Refused(Message),
}

/// One bus message's content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Body {
    /// A node's heartbeat (presence subject): it is alive, where other
    /// nodes send relay frames to it, and its last presence sequence.
    Alive {
        /// Its process's epoch (start time in ms, then random bits: a
        /// restart has a greater one and starts a new sequence).
        epoch: u64,
        /// Its UDP address for node-to-node relay frames.
        relay_addr: SocketAddr,
        /// Its presence sequence number now.
        seq: u64,
    },
    /// A name came online at the sender (presence subject).
    Up {
        /// The sender's epoch.
        epoch: u64,
        /// The sender's presence sequence number for this change.
        seq: u64,
        /// The name.
        online: Online,
    },
    /// A name went offline at the sender (presence subject).
    Down {
        /// The sender's epoch.
        epoch: u64,
        /// The sender's presence sequence number for this change.
        seq: u64,
        /// The name.
        name: String,
    },
    /// Request (node subject): a page of the names online there, in
    /// name order, after a cursor.
    SnapshotRequest {
        /// The last name of the previous page (`None`: from the start).
        after: Option<String>,
    },
    /// Reply: a page of names and the sequence number it is at.
    Snapshot {
        /// The sender's presence sequence number when the page was cut.
        seq: u64,
        /// The names.
        names: Vec<Online>,
        /// Whether more pages follow.
        more: bool,
    },
    /// Request (callee's node subject): offer this call to `to`.
    Offer {
        /// The caller's node's call id.
        call_id: u64,
        /// The callee's name.
        to: String,
        /// The callee's key (from the store): the name's owner.
        owner: Fingerprint,
        /// The caller's name and key.
        from: String,
        /// The caller's key.
        fingerprint: Fingerprint,
        /// The caller's source IP (the per-source offer limit).
        source: IpAddr,
        /// Where the caller's node takes relay frames.
        caller_relay: SocketAddr,
        /// Whether the caller's node runs a relay.
        relay: bool,
        /// How long the callee has to answer, in ms.
        answer_ms: u64,
    },
    /// Reply to an `Offer`.
    Answer(OfferAnswer),
    /// Request (callee's node subject): what to write to the callee on the
    /// offer's stream (its `Dial`, or an error).
    Dial {
        /// The call id of the `Offer`.
        call_id: u64,
        /// The message for the callee.
        message: Message,
    },
    /// Reply to a `Dial`: whether it reached the callee's stream.
    Dialed(bool),
}

/// A sealed message's content and who sent it when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// The sender's node id.
    pub from: String,
    /// When it was sealed, ms since the Unix epoch.
    pub sent_ms: u64,
    /// What it says.
    pub body: Body,
}

/// Why a bus message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// Longer than [`MAX_MESSAGE`], or shorter than a nonce and a tag.
    #[error("bad length {0}")]
    Length(usize),
    /// The tag does not verify: another key, or altered, or another subject.
    #[error("not sealed with the cluster's key for this subject")]
    Seal,
    /// It opened but does not decode.
    #[error("does not decode: {0}")]
    Decode(String),
    /// Sent more than [`MAX_AGE`] ago (or ahead).
    #[error("stale by {0:?}")]
    Stale(Duration),
}

/// The cluster's bus key (ChaCha20-Poly1305), derived from the server key
/// every node of one cluster shares.
pub struct BusKey(LessSafeKey);

impl std::fmt::Debug for BusKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BusKey(..)")
    }
}

impl BusKey {
    /// The key from 32 secret bytes (`Identity::derive_secret("rdv cluster bus v1")`).
    pub fn derive(secret: [u8; 32]) -> Self {
        // 32 bytes is exactly CHACHA20_POLY1305's key length.
        let unbound = UnboundKey::new(&aead::CHACHA20_POLY1305, &secret)
            .unwrap_or_else(|_| unreachable!("a 32-byte key is valid for ChaCha20-Poly1305"));
        Self(LessSafeKey::new(unbound))
    }

    /// Seals `envelope` for `subject`: random nonce ‖ ciphertext ‖ tag.
    pub fn seal(&self, subject: &str, envelope: &Envelope) -> Vec<u8> {
        let nonce: [u8; NONCE_LEN] = rand::random();
        let mut out = nonce.to_vec();
        let mut body = postcard::to_stdvec(envelope).unwrap_or_default();
        // Sealing in place cannot fail for a message this size.
        let _ = self.0.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(subject.as_bytes()),
            &mut body,
        );
        out.extend_from_slice(&body);
        out
    }

    /// Opens a message that arrived on `subject`, checking its age against `now_ms`.
    pub fn open(&self, subject: &str, bytes: &[u8], now_ms: u64) -> Result<Envelope, OpenError> {
        let tag_len = aead::CHACHA20_POLY1305.tag_len();
        if bytes.len() > MAX_MESSAGE || bytes.len() < NONCE_LEN + tag_len {
            return Err(OpenError::Length(bytes.len()));
        }
        let (nonce, sealed) = bytes.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| OpenError::Seal)?;
        let mut sealed = sealed.to_vec();
        let plain = self
            .0
            .open_in_place(nonce, Aad::from(subject.as_bytes()), &mut sealed)
            .map_err(|_| OpenError::Seal)?;
        let envelope: Envelope =
            postcard::from_bytes(plain).map_err(|e| OpenError::Decode(e.to_string()))?;
        let age = now_ms.abs_diff(envelope.sent_ms);
        if age > MAX_AGE.as_millis() as u64 {
            return Err(OpenError::Stale(Duration::from_millis(age)));
        }
        Ok(envelope)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(sent_ms: u64) -> Envelope {
        Envelope {
            from: "n1".into(),
            sent_ms,
            body: Body::Down {
                epoch: 1,
                seq: 7,
                name: "alice".into(),
            },
        }
    }

    #[test]
    fn a_sealed_message_opens_only_with_the_key_on_its_subject_while_fresh() {
        let key = BusKey::derive([1; 32]);
        let sealed = key.seal("rdv.c.presence", &envelope(1_000_000));
        assert_eq!(
            key.open("rdv.c.presence", &sealed, 1_000_500),
            Ok(envelope(1_000_000))
        );
        assert_eq!(
            key.open("rdv.c.node.n2", &sealed, 1_000_500),
            Err(OpenError::Seal),
            "moved to another subject"
        );
        assert_eq!(
            BusKey::derive([2; 32]).open("rdv.c.presence", &sealed, 1_000_500),
            Err(OpenError::Seal),
            "another cluster's key"
        );
        let mut flipped = sealed.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert_eq!(
            key.open("rdv.c.presence", &flipped, 1_000_500),
            Err(OpenError::Seal)
        );
        assert!(matches!(
            key.open("rdv.c.presence", &sealed, 1_000_000 + 31_000),
            Err(OpenError::Stale(_))
        ));
        assert!(matches!(
            key.open("rdv.c.presence", &sealed[..20], 1_000_000),
            Err(OpenError::Length(20))
        ));
        assert!(
            !sealed.windows(5).any(|w| w == b"alice"),
            "the name is not readable on the bus"
        );
    }
}
