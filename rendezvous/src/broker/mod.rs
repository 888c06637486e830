//! The call brokering as a sans-IO state machine: facts and answers in,
//! plain actions out.
//!
//! ```text
//! caller → server   Call { to: "alice", candidates, hide_addresses }
//! server → callee   IncomingCall { call_id, from: "bob", fingerprint }   (new stream, no addresses)
//! callee → server   Accept { candidates, hide_addresses }  |  Reject { reason }
//!    (a caller the callee approved and accepts without asking, `AcceptApproved`:
//!     Preapproved { call_id, from, fingerprint } instead, and its standing
//!     Accept is the answer, with no round trip to the callee)
//! server → caller   CallAccepted { call_id, fingerprint, candidates, probe_key, relay }
//! server → callee   Dial { call_id, candidates, probe_key, relay }  (at the same moment)
//!             or    Error { kind: invalid_name | not_registered | not_found | offline
//!                                 | rate_limited | rejected | unreachable | unavailable
//!                                 | protocol, .. }
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

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::candidates::canonical;
use common::{ErrorKind, Fingerprint, Message};
use tracing::debug;

pub use crate::offers::{Offer, OfferRefused};
use crate::registry::SessionId;
use crate::replies::{check_name, rate_limited};

mod consent;
mod facts;
#[cfg(test)]
mod tests;

use consent::Consent;
pub use consent::{Allocating, Finish};
pub use facts::{BrokerConfig, CallRequest, Callee, Caller, Facts, NoCaller};

/// Action: offer the call to the callee and read its answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ask {
    /// The callee's session: open a new stream on it.
    pub callee: SessionId,
    /// The `IncomingCall` to write on it.
    pub offer: Message,
    /// When to stop waiting for the answer ([`Answer::TimedOut`]).
    pub deadline: Instant,
    /// The callee's standing answer for this caller, which it approved
    /// (`AcceptApproved`): then `offer` is a `Preapproved`, nothing is read
    /// back, and this `Accept` is the answer to feed [`CallBroker::on_answer`].
    pub standing: Option<Message>,
}

/// What came of an [`Ask`] (also carried between nodes, in
/// [`crate::cluster::wire::OfferAnswer`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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
        let checked = Self::check(facts, config, request, now)?;
        let owner = facts.owner(&checked.to);
        checked.offer(owner, facts, now)
    }

    /// The checks before the store is asked (name, caller, call rate,
    /// hidden addresses without a relay): a driver whose store is async
    /// runs this, reads the owner of [`Checked::to`], then
    /// [`Checked::offer`]. `Err` is the caller's reply.
    pub fn check(
        facts: &mut impl Facts,
        config: &BrokerConfig,
        request: CallRequest,
        now: Instant,
    ) -> Result<Checked, Message> {
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
        Ok(Checked {
            to,
            candidates,
            caller_hides,
            caller,
            config: *config,
        })
    }
}

/// A call that passed [`CallBroker::check`], waiting for its callee's owner.
#[derive(Debug)]
pub struct Checked {
    to: String,
    candidates: Vec<SocketAddr>,
    caller_hides: bool,
    caller: Caller,
    config: BrokerConfig,
}

impl Checked {
    /// The name called (whose owner the driver reads).
    pub fn to(&self) -> &str {
        &self.to
    }

    /// Takes the owner of the name (`Err`: the store could not tell) and
    /// checks presence and the offer limits: the offer to make, or the
    /// caller's reply.
    pub fn offer(
        self,
        owner: Result<Option<Fingerprint>, String>,
        facts: &mut impl Facts,
        now: Instant,
    ) -> Result<(CallBroker, Ask), Message> {
        let Self {
            to,
            candidates,
            caller_hides,
            caller,
            config,
        } = self;
        let config = &config;
        let owner = match owner {
            Ok(Some(fp)) => fp,
            Ok(None) => {
                let message = format!("no one has registered {to:?}");
                return Err(Message::error(ErrorKind::NotFound, message));
            }
            // Never `not_found` when the store could not tell (the
            // driver logged why).
            Err(_) => {
                return Err(Message::error(
                    ErrorKind::Unavailable,
                    crate::replies::STORE_UNAVAILABLE,
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
        // A callee at another node: that node holds its offer limits
        // (they are per callee, so they are kept where the callee is).
        if callee.session != crate::registry::REMOTE {
            facts
                .check_offer(offer, now)
                .map_err(|why| offer_refused(why, &to))?;
        }
        let call_id = facts.next_call_id();
        let deadline = deadline(now, config.answer_timeout);
        let (from, fingerprint) = (caller.name.clone(), caller.fingerprint);
        let standing = callee.standing.filter(|_| callee.approved);
        let ask = match standing {
            // Consent given in advance: introduce both sides now.
            Some(standing) => Ask {
                callee: callee.session,
                offer: Message::Preapproved {
                    call_id,
                    from,
                    fingerprint,
                },
                deadline,
                standing: Some(Message::Accept {
                    candidates: standing.candidates,
                    hide_addresses: standing.hide_addresses,
                }),
            },
            None => Ask {
                callee: callee.session,
                offer: Message::IncomingCall {
                    call_id,
                    from,
                    fingerprint,
                },
                deadline,
                standing: None,
            },
        };
        let broker = CallBroker {
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
}

impl CallBroker {
    /// The call's id (in the offer, the `CallAccepted` and the `Dial`).
    pub fn call_id(&self) -> u64 {
        self.call_id
    }

    /// The key that owns the name called.
    pub fn owner(&self) -> Fingerprint {
        self.owner
    }

    /// The caller's observed address (its source for the limits).
    pub fn caller_observed(&self) -> SocketAddr {
        self.caller.observed
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

/// `now + timeout`, or a day from now for a timeout too large to add.
fn deadline(now: Instant, timeout: Duration) -> Instant {
    now.checked_add(timeout)
        .or_else(|| now.checked_add(Duration::from_secs(86_400)))
        .unwrap_or(now)
}

/// The reply for an offer over an offer limit.
pub(crate) fn offer_refused(why: OfferRefused, to: &str) -> Message {
    let message = match why {
        OfferRefused::Source => format!("too many calls to {to} from your address; slow down"),
        OfferRefused::Callee => format!("{to} is getting too many calls; try again later"),
        OfferRefused::Contact => format!("too many calls to {to} from your key; slow down"),
    };
    Message::error(ErrorKind::RateLimited, message)
}
