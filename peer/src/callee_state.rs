//! The callee's side of a call as a state machine without I/O, the
//! counterpart of [`crate::call_state::CallState`].
//!
//! ```text
//! IncomingCall --offer--> Offered --decide: accept--> Accepted --Dial--> Expecting --connection--> Connected
//!                            \--decide: reject--> (Reject sent, done)     \--no Dial / error--> Err
//! ```
//!
//! Each transition consumes the state and returns the next one (and what
//! to send), so an old state cannot be used by mistake. The driver in
//! `listener` reads the frames, asks known_peers, writes the answers and
//! starts the call's path task with the [`DialPlan`].

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::candidates::targets;
use common::{validate_name, Fingerprint, Message, RelayTicket};

use crate::call_state::Vantage;
use crate::known_peers::Check;
use crate::path::PathMode;
use crate::policy::{Decision, Policy};

/// A call offered to this peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CalleeState {
    /// The server offered a call; not decided yet.
    Offered {
        /// The caller's name (checked against the name rules).
        from: String,
        /// The caller's key.
        fingerprint: Fingerprint,
        /// When the offer came.
        at: Instant,
    },
    /// Accepted; waiting for the server's `Dial`.
    Accepted {
        /// The caller.
        from: String,
        /// Its key.
        fingerprint: Fingerprint,
        /// The caller's known_peers entry when the offer was checked.
        seen: Option<Fingerprint>,
        /// When the offer came.
        at: Instant,
        /// `listen --path`.
        mode: PathMode,
    },
    /// `Dial` came: the call's paths are being probed; waiting for the
    /// caller's connection.
    Expecting {
        /// The caller.
        from: String,
        /// Its key.
        fingerprint: Fingerprint,
        /// As in [`CalleeState::Accepted`].
        seen: Option<Fingerprint>,
        /// When the offer came.
        at: Instant,
    },
    /// The caller's connection is up.
    Connected {
        /// The caller.
        from: String,
        /// From the offer to the connection.
        setup: Duration,
    },
}

/// Why an offer is not even answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OfferIgnored {
    /// Not an `IncomingCall`.
    NotAnOffer(&'static str),
}

/// What the path task of an accepted call starts from (from `Dial`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DialPlan {
    /// The server's call id.
    pub call_id: u64,
    /// The per-call probe key.
    pub probe_key: [u8; 32],
    /// Our relay ticket, unless `--path direct` or the server runs none.
    pub relay: Option<RelayTicket>,
    /// The caller's candidates, vetted from where we stand (none in
    /// relay mode).
    pub candidates: Vec<SocketAddr>,
    /// `listen --path`.
    pub mode: PathMode,
}

/// The outcome of [`CalleeState::decide`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Accepted: send this `Accept`; the state waits for `Dial`.
    Accept(CalleeState, Message),
    /// Refused: send this `Reject`; done.
    Reject {
        /// The `Reject` frame.
        message: Message,
        /// The caller's name, cut and escaped for a terminal.
        from: String,
        /// Why.
        reason: String,
    },
}

impl CalleeState {
    /// The server's offer: an `IncomingCall`, or a `Preapproved` (a caller
    /// we approved, introduced without asking: decided the same way, but
    /// the answer is not sent). Anything else is ignored.
    pub fn on_offer(offer: Message, now: Instant) -> Result<Self, OfferIgnored> {
        match offer {
            Message::IncomingCall {
                from, fingerprint, ..
            }
            | Message::Preapproved {
                from, fingerprint, ..
            } => Ok(Self::Offered {
                from,
                fingerprint,
                at: now,
            }),
            other => Err(OfferIgnored::NotAnOffer(other.kind_name())),
        }
    }

    /// Decides by `policy`. `known` is what known_peers says of the caller
    /// (`Err`: the file cannot be read: refuse, fail closed). A name that
    /// breaks the name rules is refused before anything else (a lying
    /// server could forge a known_peers line with one). `local` are our
    /// candidates, sent unless `mode` is [`PathMode::Relay`] (then the
    /// server is told to give the caller none of our addresses).
    pub fn decide(
        self,
        policy: &Policy,
        known: Result<Check, String>,
        local: Vec<SocketAddr>,
        mode: PathMode,
    ) -> Answer {
        let Self::Offered {
            from,
            fingerprint,
            at,
        } = self
        else {
            return reject(String::new(), "the callee was not asked".into());
        };
        if validate_name(&from).is_err() {
            return reject(from, "the caller's name breaks the name rules".into());
        }
        let known = match known {
            Ok(k) => k,
            Err(reason) => return reject(from, reason),
        };
        if let Decision::Reject(reason) = policy.decide(&from, &fingerprint, known) {
            return reject(from, reason);
        }
        let hide = mode == PathMode::Relay;
        let accept = Message::Accept {
            candidates: if hide { vec![] } else { local },
            hide_addresses: hide,
        };
        let seen = (known == Check::Known).then_some(fingerprint);
        let state = Self::Accepted {
            from,
            fingerprint,
            seen,
            at,
            mode,
        };
        Answer::Accept(state, accept)
    }

    /// The server's `Dial`: what the call's paths start from, vetted from
    /// `at` like the caller vets ours ([`common::candidates::targets`]).
    /// `Err` is why there is no call (another frame, or the server's error).
    pub fn on_dial(self, dial: Message, at: Vantage) -> Result<(Self, DialPlan), String> {
        let Self::Accepted {
            from,
            fingerprint,
            seen,
            at: offered,
            mode,
        } = self
        else {
            return Err("a Dial in the wrong state".into());
        };
        match dial {
            Message::Dial {
                call_id,
                candidates,
                probe_key,
                relay,
            } => {
                let plan = DialPlan {
                    call_id,
                    probe_key,
                    relay: relay.filter(|_| mode != PathMode::Direct),
                    candidates: match mode {
                        PathMode::Relay => vec![],
                        _ => targets(&candidates, at.server, at.observed),
                    },
                    mode,
                };
                let state = Self::Expecting {
                    from,
                    fingerprint,
                    seen,
                    at: offered,
                };
                Ok((state, plan))
            }
            Message::Error { kind, message } => {
                Err(format!("the server ended the call ({kind:?}): {message}"))
            }
            other => Err(format!(
                "the server sent {} instead of Dial",
                other.kind_name()
            )),
        }
    }

    /// The caller's connection is up at `now`.
    pub fn on_connected(self, now: Instant) -> Self {
        match self {
            Self::Expecting { from, at, .. } => Self::Connected {
                from,
                setup: now.saturating_duration_since(at),
            },
            other => other,
        }
    }
}

fn reject(from: String, reason: String) -> Answer {
    // A refused name may be anything a server sent: cut and escape it.
    let cut: String = from.chars().take(64).collect();
    Answer::Reject {
        message: Message::Reject {
            reason: reason.clone(),
        },
        from: common::escape_for_terminal(&cut).into_owned(),
        reason,
    }
}

#[cfg(test)]
#[path = "callee_state_tests.rs"]
mod tests;
