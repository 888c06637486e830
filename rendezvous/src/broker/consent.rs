//! After the callee's `Accept`: the relay allocation ([`Allocating`]) and
//! the introductions of both sides ([`Finish`]).

use std::net::SocketAddr;

use common::candidates::forward;
use common::{ErrorKind, Fingerprint, Message};
use tracing::debug;

use crate::relay::Tickets;

/// The call's last action at the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finish {
    /// The caller's reply (`CallAccepted` or `Error`).
    pub reply: Message,
    /// What to write to the callee on the offer's stream before the reply
    /// leaves (its `Dial`, or why the call it accepted cannot connect);
    /// `None`: nothing (the stream just ends).
    pub to_callee: Option<Message>,
}

impl Finish {
    pub(super) fn error(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            reply: Message::error(kind, message),
            to_callee: None,
        }
    }
}

/// Action: allocate a relay call between the two sides, then
/// [`Allocating::on_relay`].
#[derive(Debug)]
pub struct Allocating {
    /// The caller's address as the server's socket sees it.
    pub caller: SocketAddr,
    /// The callee's address as the server's socket sees it.
    pub callee: SocketAddr,
    pub(super) consent: Consent,
}

impl Allocating {
    /// The call's id at the server.
    pub fn call_id(&self) -> u64 {
        self.consent.call_id
    }

    /// Takes the relay's tickets (`None`: no room, or refused) and
    /// introduces the two sides.
    pub fn on_relay(self, tickets: Option<Tickets>) -> Finish {
        self.consent.introduce(tickets)
    }
}

/// What the two sides said yes with, and where they are.
#[derive(Debug)]
pub(super) struct Consent {
    pub(super) call_id: u64,
    pub(super) to: String,
    pub(super) owner: Fingerprint,
    /// Canonical current addresses.
    pub(super) caller_at: SocketAddr,
    pub(super) callee_at: SocketAddr,
    pub(super) caller_candidates: Vec<SocketAddr>,
    pub(super) caller_hides: bool,
    pub(super) callee_candidates: Vec<SocketAddr>,
    pub(super) callee_hides: bool,
    pub(super) relay: bool,
    pub(super) probe_key: [u8; 32],
}

impl Consent {
    /// The callee's Dial and the caller's CallAccepted, each with the
    /// other's addresses (unless hidden) and its own ticket; a hidden side
    /// without a ticket: `unreachable` to both.
    pub(super) fn introduce(self, tickets: Option<Tickets>) -> Finish {
        let call_id = self.call_id;
        if (self.caller_hides || self.callee_hides) && tickets.is_none() {
            let why = match self.relay {
                false => "this server runs no relay (--relay off)",
                true => "the relay has no room for it now; try again later",
            };
            let who = if self.caller_hides { "you" } else { &self.to };
            let message = format!("{who} asked to keep addresses hidden, and {why}");
            debug!(call_id, "hidden call without a relay: {message}");
            return Finish {
                reply: Message::error(ErrorKind::Unreachable, message.clone()),
                to_callee: Some(Message::error(ErrorKind::Unreachable, message)),
            };
        }
        let dial = Message::Dial {
            call_id,
            candidates: match self.caller_hides {
                true => vec![],
                false => forward(self.caller_at, &self.caller_candidates, self.callee_at),
            },
            probe_key: self.probe_key,
            relay: tickets.map(|t| t.callee),
        };
        let reply = Message::CallAccepted {
            call_id,
            fingerprint: self.owner,
            candidates: match self.callee_hides {
                true => vec![],
                false => forward(self.callee_at, &self.callee_candidates, self.caller_at),
            },
            probe_key: self.probe_key,
            relay: tickets.map(|t| t.caller),
        };
        Finish {
            reply,
            to_callee: Some(dial),
        }
    }
}
