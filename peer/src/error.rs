//! The peer library's errors, each mapped to an [`ErrorKind`] a user can act on.

use std::path::PathBuf;

use common::ErrorKind;
use thiserror::Error;

/// What went wrong.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Error {
    /// The server answered with an error (name taken, not found, offline, ...).
    #[error("{message}")]
    Server {
        /// The kind the server gave.
        kind: ErrorKind,
        /// The server's words.
        message: String,
    },
    /// The server could not be reached in time.
    #[error("cannot reach the rendezvous server at {server}: {reason}")]
    ServerUnreachable {
        /// The server address.
        server: String,
        /// What happened.
        reason: String,
    },
    /// The server presented another key than `--server-fingerprint`.
    #[error("the server at {server} did not present the key with fingerprint {expected}; check --server-fingerprint (the operator gets it with `rendezvous fingerprint`)")]
    BadServerFingerprint {
        /// The server address.
        server: String,
        /// The pinned fingerprint.
        expected: String,
    },
    /// The server speaks another protocol version.
    #[error("the server at {server} speaks another protocol version than this peer ({version}); upgrade one of them")]
    VersionMismatch {
        /// The server address.
        server: String,
        /// Our protocol identifier.
        version: String,
    },
    /// A newer `listen` for our name took over on the server.
    #[error("another `listen` for this name took over on the server")]
    Replaced,
    /// A known contact presents a different key than the one on record.
    #[error("{name} now has key {new}, but known_peers ({file}) has {old}; if {name} really changed keys, call again with --accept-new-key")]
    KeyChanged {
        /// The contact.
        name: String,
        /// The recorded key.
        old: String,
        /// The key the server vouched for now.
        new: String,
        /// The known_peers file.
        file: PathBuf,
    },
    /// The known_peers file cannot be read or written, or a line of it is
    /// not `NAME FINGERPRINT` (or repeats a name). Fails closed: the call
    /// stops and the file is left untouched.
    #[error("known_peers file {}{}: {reason}", file.display(), line.map(|l| format!(" line {l}")).unwrap_or_default())]
    KnownPeers {
        /// The file.
        file: PathBuf,
        /// The 1-based line at fault, if a line is.
        line: Option<usize>,
        /// What is wrong, and what to do.
        reason: String,
    },
    /// No path to the callee authenticated in time.
    #[error("could not reach {name}: {tried}")]
    Unreachable {
        /// The callee.
        name: String,
        /// What was tried and what happened, for the user.
        tried: String,
    },
    /// The name breaks the name rules.
    #[error(transparent)]
    InvalidName(#[from] common::InvalidName),
    /// The identity file could not be used.
    #[error(transparent)]
    Identity(#[from] common::IdentityError),
    /// The other side broke the protocol.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// A local I/O failure (socket, files).
    #[error("{context}: {source}")]
    Io {
        /// What we were doing.
        context: String,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A required setting is missing.
    #[error("{0}")]
    Usage(String),
}

impl Error {
    /// The kind to report in `error` events.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Server { kind, .. } => *kind,
            Self::ServerUnreachable { .. } => ErrorKind::ServerUnreachable,
            Self::BadServerFingerprint { .. } => ErrorKind::BadFingerprint,
            Self::VersionMismatch { .. } => ErrorKind::VersionMismatch,
            Self::Replaced => ErrorKind::Replaced,
            Self::KeyChanged { .. } => ErrorKind::KeyChanged,
            Self::KnownPeers { .. } => ErrorKind::KnownPeers,
            Self::Unreachable { .. } => ErrorKind::Unreachable,
            Self::InvalidName(_) => ErrorKind::InvalidName,
            Self::Protocol(_) => ErrorKind::Protocol,
            Self::Identity(_) | Self::Io { .. } | Self::Usage(_) => ErrorKind::Internal,
        }
    }

    /// Whether retrying later can help (the server may come back).
    pub fn is_transient(&self) -> bool {
        matches!(
            self.kind(),
            ErrorKind::ServerUnreachable
                | ErrorKind::RateLimited
                | ErrorKind::Internal
                | ErrorKind::Unavailable
        ) && !matches!(self, Self::Identity(_) | Self::Usage(_))
    }

    /// An I/O error with what we were doing.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }
}

/// Shorthand for the library's results.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    /// A store outage on the server (`unavailable`) is retried by a
    /// `listen` and reported under its own kind (CLI `error` event, exit 1).
    #[test]
    fn an_unavailable_store_is_transient() {
        let e = Error::Server {
            kind: ErrorKind::Unavailable,
            message: "the name store is unavailable; try again in a few seconds".into(),
        };
        assert!(e.is_transient());
        let line = crate::Event::error(&e).json_line().expect("json");
        assert!(line.contains(r#""kind":"unavailable""#), "{line}");
        let taken = Error::Server {
            kind: ErrorKind::NameTaken,
            message: "taken".into(),
        };
        assert!(!taken.is_transient());
    }
}
