//! Error kinds a user can act on, shared by the wire protocol and the CLI.
//!
//! The server sends an [`ErrorKind`] with a message; the peer library maps
//! its own failures onto the same kinds; the CLI prints them as the `kind` of
//! its `error` event (see `CLI.md`). The text form ([`ErrorKind::as_str`]) is
//! part of the command-line contract: do not rename.

use serde::{Deserialize, Serialize};

/// What went wrong, in words a script can match on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The name belongs to another key.
    NameTaken,
    /// No one ever registered the name.
    NotFound,
    /// The name exists but nobody is listening under it now.
    Offline,
    /// The callee refused the call.
    Rejected,
    /// No path to the callee authenticated in time.
    Unreachable,
    /// The server's (or a peer's) key is not the one we pinned.
    BadFingerprint,
    /// A known contact presents a different key than last time.
    KeyChanged,
    /// The name breaks the name rules.
    InvalidName,
    /// The other side speaks another protocol version.
    VersionMismatch,
    /// Too many requests from this source; slow down.
    RateLimited,
    /// The rendezvous server cannot be reached.
    ServerUnreachable,
    /// The other side sent something the protocol does not allow.
    Protocol,
    /// A request that needs a registered name came before registering.
    NotRegistered,
    /// A newer `listen` for the same name took over.
    Replaced,
    /// The server is at a limit (connections, calls) and refuses new work.
    Busy,
    /// Anything else; the message says what.
    Internal,
    /// The known_peers file cannot be read or written, or has a line that is
    /// not `NAME FINGERPRINT`; the call stops and the file is left as it is.
    /// Peer-local: never sent by a server (and last, so the wire indices of
    /// the kinds above do not move).
    KnownPeers,
    /// The key already holds as many names as the server allows
    /// (`--max-names-per-key`); use one of them. (Last: the wire form of a
    /// kind is its index.)
    TooManyNames,
    /// Something the server relies on (its name store, the cluster bus)
    /// cannot answer now; nothing was decided. Retry in a few seconds (a
    /// `listen` does). Never "not found": the name may exist. (Last: the
    /// wire form of a kind is its index.)
    Unavailable,
}

impl ErrorKind {
    /// The stable snake_case name used in `error` events.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NameTaken => "name_taken",
            Self::NotFound => "not_found",
            Self::Offline => "offline",
            Self::Rejected => "rejected",
            Self::Unreachable => "unreachable",
            Self::BadFingerprint => "bad_fingerprint",
            Self::KeyChanged => "key_changed",
            Self::InvalidName => "invalid_name",
            Self::VersionMismatch => "version_mismatch",
            Self::RateLimited => "rate_limited",
            Self::ServerUnreachable => "server_unreachable",
            Self::Protocol => "protocol",
            Self::NotRegistered => "not_registered",
            Self::Replaced => "replaced",
            Self::Busy => "busy",
            Self::Internal => "internal",
            Self::KnownPeers => "known_peers",
            Self::TooManyNames => "too_many_names",
            Self::Unavailable => "unavailable",
        }
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// QUIC application close codes used on rendezvous and peer connections.
pub mod close {
    /// Normal end (a call finished, a one-shot command is done).
    pub const DONE: u32 = 0;
    /// The other side broke the protocol (malformed or unexpected frame).
    pub const PROTOCOL: u32 = 1;
    /// A newer `listen` session for the same name took over.
    pub const REPLACED: u32 = 2;
    /// The server is shutting down.
    pub const SHUTDOWN: u32 = 3;
    /// The server is at a limit.
    pub const BUSY: u32 = 4;

    use std::time::Duration;

    /// The longest reconnect spread a server may ask for; a larger figure in
    /// a close reason (it comes from the network) is cut to this. It keeps
    /// the promise that a `listen` is registered again within 20 s of the
    /// server's return (`CLI.md`).
    pub const MAX_SHUTDOWN_SPREAD: Duration = Duration::from_secs(15);

    /// The reason a server sends with [`SHUTDOWN`]: its peers should spread
    /// their first reconnection uniformly over `spread`, so a restarted
    /// server is not met by all of them in the same second. Plain text, so
    /// older peers and packet captures still read it.
    pub fn shutdown_reason(spread: Duration) -> Vec<u8> {
        format!(
            "server shutting down; reconnect within {} ms",
            spread.min(MAX_SHUTDOWN_SPREAD).as_millis()
        )
        .into_bytes()
    }

    /// The spread in a [`SHUTDOWN`] reason made by [`shutdown_reason`],
    /// at most [`MAX_SHUTDOWN_SPREAD`]; `None` when the reason has none.
    pub fn shutdown_spread(reason: &[u8]) -> Option<Duration> {
        let text = std::str::from_utf8(reason).ok()?;
        let ms = text
            .split_once("reconnect within ")?
            .1
            .strip_suffix(" ms")?;
        let ms: u64 = ms.parse().ok()?;
        Some(Duration::from_millis(ms).min(MAX_SHUTDOWN_SPREAD))
    }

    /// How long a peer spreads its first reconnection over after a
    /// [`SHUTDOWN`] close with `reason`: what the server asked for, or 1 s
    /// from a server that asked nothing.
    pub fn reconnect_spread(reason: &[u8]) -> Duration {
        shutdown_spread(reason).unwrap_or(Duration::from_secs(1))
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn a_shutdown_spread_survives_its_reason() {
            for ms in [0, 3, 8_000] {
                let spread = Duration::from_millis(ms);
                assert_eq!(shutdown_spread(&shutdown_reason(spread)), Some(spread));
            }
        }

        #[test]
        fn a_shutdown_spread_is_capped_and_garbage_has_none() {
            let huge = b"server shutting down; reconnect within 99999999999 ms";
            assert_eq!(shutdown_spread(huge), Some(MAX_SHUTDOWN_SPREAD));
            assert_eq!(
                shutdown_spread(&shutdown_reason(Duration::from_secs(3600))),
                Some(MAX_SHUTDOWN_SPREAD)
            );
            for bad in [
                &b"server shutting down"[..],
                b"reconnect within -5 ms",
                b"reconnect within 5",
                b"reconnect within 1e3 ms",
                b"\xff\xfe",
            ] {
                assert_eq!(shutdown_spread(bad), None, "{bad:?}");
                assert_eq!(reconnect_spread(bad), Duration::from_secs(1));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ErrorKind;

    /// A kind's wire form is its index: appended kinds must not move the
    /// older ones (a peer and a server of different builds still agree).
    #[test]
    fn wire_indices_do_not_move() {
        for (kind, index) in [
            (ErrorKind::NameTaken, 0u8),
            (ErrorKind::Internal, 15),
            (ErrorKind::KnownPeers, 16),
            (ErrorKind::TooManyNames, 17),
            (ErrorKind::Unavailable, 18),
        ] {
            let bytes = postcard::to_allocvec(&kind).expect("encodes");
            assert_eq!(bytes, [index], "{kind}");
            let back: ErrorKind = postcard::from_bytes(&bytes).expect("decodes");
            assert_eq!(back, kind);
        }
        assert_eq!(ErrorKind::Unavailable.as_str(), "unavailable");
    }
}
