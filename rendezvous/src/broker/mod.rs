//! The call brokering as a sans-IO state machine: facts and answers in,
//! plain actions out.
//!
//! ```text
//! caller → server   Call { to: "alice", candidates, hide_addresses }
//! server → callee   IncomingCall { call_id, from: "bob", fingerprint }   (new stream, no addresses)
//! callee → server   Accept { candidates, hide_addresses }  |  Reject { reason }
//! server → caller   CallAccepted { call_id, fingerprint, candidates, probe_key, relay }
//! server → callee   Dial { call_id, candidates, probe_key, relay }  (at the same moment)
//!             or    Error { kind: invalid_name | not_registered | not_found | offline
//!                                 | rate_limited | rejected | unreachable | protocol, .. }
//! ```
//!
//! One [`CallBroker`] per call, driven in three steps:
//!
//! 1. [`CallBroker::start`] checks the request against the server's books
//!    ([`Facts`]: who calls, its rate, who owns the name, whether the owner
//!    is online, the offer limits of [`crate::offers`]) in that order, and
//!    returns the reply `Err(Message::Error)` or an [`Ask`]: send this
//!    `IncomingCall` to that callee session on a new stream and read its
//!    answer by a deadline.
//! 2. [`CallBroker::on_answer`] takes what came of it ([`Answer`]: the
//!    callee's message, a failed stream, the deadline) and returns a
//!    [`Step`]: the [`Finish`]ed replies, or — on an `Accept` with the relay
//!    on — [`Allocating`]: allocate a relay call between these two addresses.
//! 3. [`Allocating::on_relay`] takes the relay's tickets (or `None`: off,
//!    full, the source at its share) and returns the [`Finish`].
//!
//! A [`Finish`] is the caller's reply and, after a consent, what goes to the
//! callee on the offer's stream (its `Dial`, or an `unreachable` error).
//!
//! Rules it keeps:
//! - Nobody learns an address before the callee accepts. Each side is
//!   introduced where the server sees it *now* ([`Facts::current_address`]:
//!   quinn follows a client whose NAT rebound), and the candidate lists are
//!   [`common::candidates::forward`]ed: the observed address first, then at
//!   most a few private ones, and those only between two peers behind one
//!   public address.
//! - A side that hides its addresses gets none sent to the other side and
//!   can only be reached through the relay: without a relay ticket both
//!   sides get `unreachable` instead of a call that could never connect —
//!   the caller before the callee is even asked when the relay is off.
//! - Each side's message carries only its own relay ticket.
//!
//! No socket, no clock, no randomness of its own: `now`, call ids and probe
//! keys come in from the driver (`handlers/call`), so every branch is
//! unit-tested here, and a test harness can run it on a fake clock.

// `start`'s `Err` is the reply itself (a `Message`): the cold path, once per
// request; boxing it would only add an allocation.
#![allow(clippy::result_large_err)]

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use common::candidates::{canonical, forward};
use common::{ErrorKind, Fingerprint, Message};
use tracing::debug;

pub use crate::offers::{Offer, OfferRefused};
use crate::registry::SessionId;
use crate::relay::Tickets;
use crate::replies::{check_name, rate_limited};

#[cfg(test)]
mod tests;

/// What the broker needs to know of the server it runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BrokerConfig {
    /// Whether the server runs a relay (`--relay`, on by default).
    pub relay: bool,
    /// How long the callee has to answer an offer.
    pub answer_timeout: Duration,
}

/// A `Call` request as the caller sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallRequest {
    /// The name called.
    pub to: String,
    /// The caller's own candidate addresses.
    pub candidates: Vec<SocketAddr>,
    /// Whether the caller keeps its addresses from the callee (relay only).
    pub hide_addresses: bool,
}

/// The calling session, as the registry has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// Its session.
    pub session: SessionId,
    /// The name it registered.
    pub name: String,
    /// Its key.
    pub fingerprint: Fingerprint,
    /// Where the server sees it (its source for the rate limits).
    pub observed: SocketAddr,
}

/// Why a session may not call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoCaller {
    /// It registered no name.
    NotRegistered,
    /// It is gone (closed while its request ran).
    Closed,
}

/// The callee's listening session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Callee {
    /// The session the offer goes to.
    pub session: SessionId,
    /// Whether the callee pre-approved the caller's key.
    pub approved: bool,
}

/// The server's books, as the broker asks them (in this order, each only
/// if the checks before it passed, so a refused request costs no store
/// read). The server's implementation reads its registry, store and rate
/// limiters under their locks; a test's is a few maps.
pub trait Facts {
    /// The session that sent the request.
    fn caller(&mut self) -> Result<Caller, NoCaller>;
    /// Takes a call token for `source` (false: over its call rate).
    fn allow_call(&mut self, source: IpAddr, now: Instant) -> bool;
    /// The key that owns `name`: `Ok(None)` if nobody registered it,
    /// `Err` (what went wrong) if the store could not be read.
    fn owner(&mut self, name: &str) -> Result<Option<Fingerprint>, String>;
    /// The listening session of `name`, if online, and whether it
    /// pre-approved `caller`.
    fn callee(&mut self, name: &str, caller: Fingerprint) -> Option<Callee>;
    /// Takes a token of the offer limits ([`crate::offers::OfferLimits`]).
    fn check_offer(&mut self, offer: Offer, now: Instant) -> Result<(), OfferRefused>;
    /// A fresh call id.
    fn next_call_id(&mut self) -> u64;
    /// Where `session` is now, as the server's socket sees it (not
    /// canonicalised: relay frames arrive from exactly this address).
    fn current_address(&mut self, session: SessionId) -> SocketAddr;
    /// A fresh random probe key for the two sides.
    fn probe_key(&mut self) -> [u8; 32];
}

/// Action: offer the call to the callee and read its answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ask {
    /// The callee's session: open a new stream on it.
    pub callee: SessionId,
    /// The `IncomingCall` to write on it.
    pub offer: Message,
    /// When to stop waiting for the answer ([`Answer::TimedOut`]).
    pub deadline: Instant,
}

/// What came of an [`Ask`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// The callee's answer frame.
    Reply(Message),
    /// The stream could not be opened, written or read (what failed).
    Failed(String),
    /// No answer by the deadline.
    TimedOut,
}

/// What the driver does after the answer.
#[derive(Debug)]
pub enum Step {
    /// Allocate a relay call, then [`Allocating::on_relay`].
    AllocateRelay(Allocating),
    /// Send these and forget the call.
    Finish(Finish),
}

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
    fn error(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            reply: Message::error(kind, message),
            to_callee: None,
        }
    }
}

/// A call offered to its callee, waiting on the answer.
#[derive(Debug)]
pub struct CallBroker {
    call_id: u64,
    to: String,
    owner: Fingerprint,
    caller: Caller,
    callee: SessionId,
    candidates: Vec<SocketAddr>,
    caller_hides: bool,
    config: BrokerConfig,
    deadline: Instant,
}

impl CallBroker {
    /// Checks `request` (name, caller, call rate, hidden addresses without
    /// a relay, owner, presence, offer limits) and offers the call: `Err` is
    /// the caller's reply.
    pub fn start(
        facts: &mut impl Facts,
        config: &BrokerConfig,
        request: CallRequest,
        now: Instant,
    ) -> Result<(Self, Ask), Message> {
        let CallRequest {
            to,
            candidates,
            hide_addresses: caller_hides,
        } = request;
        check_name(&to)?;
        let caller = facts.caller().map_err(|e| match e {
            NoCaller::NotRegistered => {
                Message::error(ErrorKind::NotRegistered, "register a name before calling")
            }
            NoCaller::Closed => Message::error(ErrorKind::Internal, "session closed"),
        })?;
        if !facts.allow_call(caller.observed.ip(), now) {
            return Err(rate_limited("calls"));
        }
        if caller_hides && !config.relay {
            return Err(Message::error(
                ErrorKind::Unreachable,
                "you asked to keep your addresses from the callee, but this server runs no relay (--relay off): such a call could never connect",
            ));
        }
        let owner = match facts.owner(&to) {
            Ok(Some(fp)) => fp,
            Ok(None) => {
                let message = format!("no one has registered {to:?}");
                return Err(Message::error(ErrorKind::NotFound, message));
            }
            Err(e) => {
                return Err(Message::error(
                    ErrorKind::Internal,
                    format!("name store: {e}"),
                ))
            }
        };
        let Some(callee) = facts.callee(&to, caller.fingerprint) else {
            return Err(Message::error(
                ErrorKind::Offline,
                format!("{to} is not online"),
            ));
        };
        let offer = Offer {
            source: caller.observed.ip(),
            caller: caller.fingerprint,
            callee: owner,
            approved: callee.approved,
        };
        facts
            .check_offer(offer, now)
            .map_err(|why| offer_refused(why, &to))?;
        let call_id = facts.next_call_id();
        let deadline = deadline(now, config.answer_timeout);
        let ask = Ask {
            callee: callee.session,
            offer: Message::IncomingCall {
                call_id,
                from: caller.name.clone(),
                fingerprint: caller.fingerprint,
            },
            deadline,
        };
        let broker = Self {
            call_id,
            to,
            owner,
            caller,
            callee: callee.session,
            candidates,
            caller_hides,
            config: *config,
            deadline,
        };
        Ok((broker, ask))
    }

    /// The call's id (in the offer, the `CallAccepted` and the `Dial`).
    pub fn call_id(&self) -> u64 {
        self.call_id
    }

    /// The callee's session.
    pub fn callee(&self) -> SessionId {
        self.callee
    }

    /// When the callee's answer is due (feed [`Answer::TimedOut`] then).
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Takes the callee's answer: an `Accept` introduces both sides (after a
    /// relay allocation when the relay is on), anything else ends the call
    /// with an error for the caller.
    pub fn on_answer(self, answer: Answer, facts: &mut impl Facts) -> Step {
        let (call_id, to) = (self.call_id, &self.to);
        let finish = match answer {
            Answer::Reply(Message::Accept {
                candidates,
                hide_addresses,
            }) => {
                debug!(call_id, from = %self.caller.name, %to, "call accepted");
                return self.consent(candidates, hide_addresses, facts);
            }
            Answer::Reply(Message::Reject { reason }) => Finish::error(
                ErrorKind::Rejected,
                format!("{to} rejected the call: {reason}"),
            ),
            Answer::Reply(other) => Finish::error(
                ErrorKind::Protocol,
                format!(
                    "{to} answered with {} instead of Accept or Reject",
                    other.kind_name()
                ),
            ),
            Answer::Failed(e) => {
                debug!(call_id, "callee {to} could not be asked: {e}");
                Finish::error(
                    ErrorKind::Offline,
                    format!("{to} went offline before answering"),
                )
            }
            Answer::TimedOut => Finish::error(
                ErrorKind::Unreachable,
                format!(
                    "{to} did not answer within {:?}",
                    self.config.answer_timeout
                ),
            ),
        };
        Step::Finish(finish)
    }

    /// Both sides said yes: where they are now, and a relay when there is one.
    fn consent(
        self,
        callee_candidates: Vec<SocketAddr>,
        callee_hides: bool,
        facts: &mut impl Facts,
    ) -> Step {
        let caller_raw = facts.current_address(self.caller.session);
        let callee_raw = facts.current_address(self.callee);
        let consent = Consent {
            call_id: self.call_id,
            to: self.to,
            owner: self.owner,
            caller_at: canonical(caller_raw),
            callee_at: canonical(callee_raw),
            caller_candidates: self.candidates,
            caller_hides: self.caller_hides,
            callee_candidates,
            callee_hides,
            relay: self.config.relay,
            probe_key: facts.probe_key(),
        };
        if consent.relay {
            Step::AllocateRelay(Allocating {
                caller: caller_raw,
                callee: callee_raw,
                consent,
            })
        } else {
            Step::Finish(consent.introduce(None))
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
    consent: Consent,
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
struct Consent {
    call_id: u64,
    to: String,
    owner: Fingerprint,
    /// Canonical current addresses.
    caller_at: SocketAddr,
    callee_at: SocketAddr,
    caller_candidates: Vec<SocketAddr>,
    caller_hides: bool,
    callee_candidates: Vec<SocketAddr>,
    callee_hides: bool,
    relay: bool,
    probe_key: [u8; 32],
}

impl Consent {
    /// The callee's Dial and the caller's CallAccepted, each with the
    /// other's addresses (unless hidden) and its own ticket; a hidden side
    /// without a ticket: `unreachable` to both.
    fn introduce(self, tickets: Option<Tickets>) -> Finish {
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

/// `now + timeout`, or a day from now for a timeout too large to add.
fn deadline(now: Instant, timeout: Duration) -> Instant {
    now.checked_add(timeout)
        .or_else(|| now.checked_add(Duration::from_secs(86_400)))
        .unwrap_or(now)
}

/// The reply for an offer over an offer limit.
fn offer_refused(why: OfferRefused, to: &str) -> Message {
    let message = match why {
        OfferRefused::Source => format!("too many calls to {to} from your address; slow down"),
        OfferRefused::Callee => format!("{to} is getting too many calls; try again later"),
        OfferRefused::Contact => format!("too many calls to {to} from your key; slow down"),
    };
    Message::error(ErrorKind::RateLimited, message)
}
