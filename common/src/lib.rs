//! What the rendezvous server and the peers share: wire messages, framing,
//! identities, fingerprints, TLS verifiers, name and candidate rules, and the
//! error kinds users see.
//!
//! A leaf crate: no runtime of its own. The async code is
//! [`framing::read_frame`]/[`framing::write_frame`], generic over any tokio
//! byte stream, and [`tunnel`], the TCP transport both ends run (its one
//! reader and one writer task per connection).
//!
//! # Layout
//!
//! - [`names`]: the name rules.
//! - [`fingerprint`]: SHA-256 of a key's SPKI and its one text form.
//! - [`identity`]: the Ed25519 key file and the self-signed certificate.
//! - [`tls`]: TLS 1.3 configs and the fingerprint-pinning verifiers.
//! - [`messages`]: the rendezvous and peer protocol messages, with the flows.
//! - [`framing`]: length-prefixed postcard frames with a size limit.
//! - [`candidates`]: which addresses a peer may be told to send to.
//! - [`probe`]: the authenticated path probes (ping/pong) and their keys.
//! - [`relay_frame`]: the relay frame header (type, call id, counter, tag).
//! - [`tunnel`]: datagrams over TLS/WebSocket on TCP, for networks without UDP.
//! - [`error`]: the error kinds of the command-line contract.
//! - [`text`]: remote text made safe to print on a terminal.

pub mod candidates;
pub mod error;
pub mod fingerprint;
pub mod framing;
pub mod identity;
pub mod messages;
pub mod names;
pub mod probe;
pub mod relay_frame;
pub mod text;
pub mod tls;
pub mod tunnel;

pub use error::ErrorKind;
pub use fingerprint::Fingerprint;
pub use identity::{Identity, IdentityError};
pub use messages::{Message, PeerMessage, RelayTicket};
pub use names::{validate_name, InvalidName};
pub use text::escape_for_terminal;
