//! `Call`: broker a consent-first introduction between two peers.
//!
//! ```text
//! caller → server   Call { to: "alice", candidates }
//! server → callee   IncomingCall { call_id, from: "bob", fingerprint }   (new stream, no addresses)
//! callee → server   Accept { candidates }  |  Reject { reason }
//! server → caller   CallAccepted { call_id, fingerprint, candidates: alice observed (+ local) }
//! server → callee   Dial { call_id, candidates: bob observed (+ local) }  (at the same moment)
//!             or    Error { kind: not_registered | not_found | offline | rate_limited
//!                                 | rejected | unreachable, .. }
//! ```
//!
//! **Relay.** At consent (the callee's Accept), with the relay on, the call
//! gets a relay allocation between the two sides' current addresses
//! ([`crate::relay::driver::Relay::allocate`]); each side's message carries
//! its own ticket (call id and its own frame secret). A full relay or a
//! source at its share means no ticket: the call goes on without (counted
//! in `rendezvous_relay_allocations_refused_total`). A side that hides its
//! addresses (`hide_addresses`) can only be reached through the relay:
//! without a ticket both sides get `unreachable` instead of a call that
//! could never connect (the caller before the callee is even asked, when the
//! relay is off).
//!
//! Nobody learns an address before the callee accepts. Offers are limited
//! per caller source, then per (source, callee) and per callee
//! ([`crate::offers`]; the callee's pre-approved contacts skip the
//! per-callee bucket and are held per (caller key, callee) instead).
//! Candidate lists are [`common::candidates::forward`]ed: the observed
//! address first, then at most a few private ones, and those only between
//! two peers behind one public address. Every write has a timeout. After the
//! two frames leave, the server keeps no state about the call but its relay
//! allocation (forgotten when idle).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use common::candidates::forward;
use common::framing::{read_frame, write_frame};
use common::{ErrorKind, Fingerprint, Message};
use tracing::debug;

use crate::offers::{Offer, OfferRefused};
use crate::registry::{RegistryError, SessionId};
use crate::relay::driver::Tickets;
use crate::server::{lock, State};

/// Who calls: name, key, observed address, connection.
struct Caller {
    name: String,
    fingerprint: Fingerprint,
    observed: SocketAddr,
    conn: quinn::Connection,
}

pub(crate) async fn handle(
    state: &Arc<State>,
    id: SessionId,
    to: String,
    candidates: Vec<SocketAddr>,
    caller_hides: bool,
) -> Message {
    state.metrics.calls_requested.inc();
    if let Err(reply) = super::check_name(&to) {
        return reply;
    }
    let caller = match caller(state, id) {
        Ok(caller) => caller,
        Err(reply) => return reply,
    };
    if !state.allow(caller.observed.ip(), |r| &mut r.call) {
        return super::rate_limited("calls");
    }
    if caller_hides && state.relay.is_none() {
        return Message::error(
            ErrorKind::Unreachable,
            "you asked to keep your addresses from the callee, but this server runs no relay (--relay off): such a call could never connect",
        );
    }
    let owner = match state.store.owner(&to) {
        Ok(Some(fp)) => fp,
        Ok(None) => {
            return Message::error(ErrorKind::NotFound, format!("no one has registered {to:?}"))
        }
        Err(e) => return Message::error(ErrorKind::Internal, format!("name store: {e}")),
    };
    let callee = lock(&state.registry).present(&to).map(|(callee_id, s)| {
        let approved = s.approved.contains(&caller.fingerprint);
        (callee_id, s.handle.clone(), approved)
    });
    let Some((callee_id, callee_conn, approved)) = callee else {
        return Message::error(ErrorKind::Offline, format!("{to} is not online"));
    };
    let offer = Offer {
        source: caller.observed.ip(),
        caller: caller.fingerprint,
        callee: owner,
        approved,
    };
    let checked = lock(&state.rates).offers.check(offer, Instant::now());
    if let Err(why) = checked {
        state.metrics.rate_limited.inc();
        return offer_refused(why, &to);
    }
    let call_id = state.next_call_id.fetch_add(1, Ordering::Relaxed);
    let (callee_send, answer) = match ask(state, &callee_conn, call_id, &caller, &to).await {
        Ok(done) => done,
        Err(reply) => return reply,
    };
    let asked = Asked {
        call_id,
        owner,
        candidates,
        caller_hides,
        callee: Callee {
            id: callee_id,
            conn: callee_conn,
            send: callee_send,
        },
    };
    answered(state, id, &caller, asked, answer, &to).await
}

/// A call offered to the callee, waiting on its answer.
struct Asked {
    call_id: u64,
    owner: Fingerprint,
    /// The caller's own candidates.
    candidates: Vec<SocketAddr>,
    caller_hides: bool,
    callee: Callee,
}

/// The caller's reply once the callee answered (`Accept` introduces both).
async fn answered(
    state: &State,
    id: SessionId,
    caller: &Caller,
    asked: Asked,
    answer: Message,
    to: &str,
) -> Message {
    match answer {
        Message::Accept {
            candidates: callee_candidates,
            hide_addresses: callee_hides,
        } => {
            state.metrics.calls_accepted.inc();
            debug!(call_id = asked.call_id, from = %caller.name, %to, "call accepted");
            let consent = Consent {
                call_id: asked.call_id,
                owner: asked.owner,
                caller_candidates: asked.candidates,
                caller_hides: asked.caller_hides,
                callee_candidates,
                callee_hides,
            };
            introduce(state, id, caller, asked.callee, consent, to).await
        }
        Message::Reject { reason } => {
            state.metrics.calls_rejected.inc();
            Message::error(
                ErrorKind::Rejected,
                format!("{to} rejected the call: {reason}"),
            )
        }
        other => Message::error(
            ErrorKind::Protocol,
            format!(
                "{to} answered with {} instead of Accept or Reject",
                other.kind_name()
            ),
        ),
    }
}

/// The calling session, or the reply when it may not call.
fn caller(state: &State, id: SessionId) -> Result<Caller, Message> {
    let registry = lock(&state.registry);
    match (registry.name_of(id), registry.session(id)) {
        (Ok(name), Some(s)) => Ok(Caller {
            name: name.to_owned(),
            fingerprint: s.fingerprint,
            observed: s.observed,
            conn: s.handle.clone(),
        }),
        (Err(RegistryError::NotRegistered), _) => Err(Message::error(
            ErrorKind::NotRegistered,
            "register a name before calling",
        )),
        _ => Err(Message::error(ErrorKind::Internal, "session closed")),
    }
}

/// What the two sides said yes with.
struct Consent {
    call_id: u64,
    owner: Fingerprint,
    caller_candidates: Vec<SocketAddr>,
    caller_hides: bool,
    callee_candidates: Vec<SocketAddr>,
    callee_hides: bool,
}

/// The callee's session and the stream its Dial goes out on.
struct Callee {
    id: SessionId,
    conn: quinn::Connection,
    send: quinn::SendStream,
}

/// Both sides consented: sends the callee its Dial and returns the
/// caller's CallAccepted, each with the other's addresses as the server
/// sees them now, and each with its own relay ticket when the relay has
/// room. A side that hides its addresses needs the relay; without one both
/// are told the call cannot connect.
async fn introduce(
    state: &State,
    caller_id: SessionId,
    caller: &Caller,
    callee: Callee,
    c: Consent,
    to: &str,
) -> Message {
    let call_id = c.call_id;
    // quinn follows a client whose address changed (a NAT rebinding):
    // introduce each side where it is now, not where it registered.
    let caller_at = current_address(state, caller_id, &caller.conn);
    let callee_at = current_address(state, callee.id, &callee.conn);
    let tickets = relay_tickets(state, call_id, &caller.conn, &callee.conn);
    if (c.caller_hides || c.callee_hides) && tickets.is_none() {
        let why = match state.relay {
            None => "this server runs no relay (--relay off)",
            Some(_) => "the relay has no room for it now; try again later",
        };
        let who = if c.caller_hides { "you" } else { to };
        let message = format!("{who} asked to keep addresses hidden, and {why}");
        debug!(call_id, "hidden call without a relay: {message}");
        let refusal = Message::error(ErrorKind::Unreachable, message.clone());
        send_dial(state, callee.send, &refusal, call_id).await;
        return Message::error(ErrorKind::Unreachable, message);
    }
    let probe_key: [u8; 32] = rand::random();
    let dial = Message::Dial {
        call_id,
        candidates: if c.caller_hides {
            vec![]
        } else {
            forward(caller_at, &c.caller_candidates, callee_at)
        },
        probe_key,
        relay: tickets.map(|t| t.callee),
    };
    // The caller's reply is written by the driver right after we return;
    // the callee's Dial leaves now, so both go out at the same moment.
    send_dial(state, callee.send, &dial, call_id).await;
    Message::CallAccepted {
        call_id,
        fingerprint: c.owner,
        candidates: if c.callee_hides {
            vec![]
        } else {
            forward(callee_at, &c.callee_candidates, caller_at)
        },
        probe_key,
        relay: tickets.map(|t| t.caller),
    }
}

/// Where session `id` is now (its connection's remote address, which quinn
/// moves when the client migrates), noted in the registry.
fn current_address(state: &State, id: SessionId, conn: &quinn::Connection) -> SocketAddr {
    let now = common::candidates::canonical(conn.remote_address());
    lock(&state.registry).observe(id, now);
    now
}

/// The call's relay allocation, one ticket per side; `None` when the relay
/// is off or refused it (the call goes on without: a direct path may work).
fn relay_tickets(
    state: &State,
    call_id: u64,
    caller: &quinn::Connection,
    callee: &quinn::Connection,
) -> Option<Tickets> {
    let relay = state.relay.as_ref()?;
    // The socket's own view of the addresses (not canonicalised): relay
    // frames arrive from exactly these.
    match relay.allocate(
        Instant::now(),
        caller.remote_address(),
        callee.remote_address(),
    ) {
        Ok(tickets) => Some(tickets),
        Err(e) => {
            debug!(call_id, "no relay for this call: {e}");
            None
        }
    }
}

/// The reply for an offer over a per-callee limit.
fn offer_refused(why: OfferRefused, to: &str) -> Message {
    let message = match why {
        OfferRefused::Source => format!("too many calls to {to} from your address; slow down"),
        OfferRefused::Callee => format!("{to} is getting too many calls; try again later"),
        OfferRefused::Contact => format!("too many calls to {to} from your key; slow down"),
    };
    Message::error(ErrorKind::RateLimited, message)
}

/// Offers the call to the callee and reads its answer, all within
/// `answer_timeout`. `Err` is the reply for the caller.
async fn ask(
    state: &State,
    callee: &quinn::Connection,
    call_id: u64,
    caller: &Caller,
    to: &str,
) -> Result<(quinn::SendStream, Message), Message> {
    let offer = Message::IncomingCall {
        call_id,
        from: caller.name.clone(),
        fingerprint: caller.fingerprint,
    };
    let max = state.limits.max_frame;
    let exchange = async {
        let (mut send, mut recv) = callee.open_bi().await.map_err(|e| e.to_string())?;
        write_frame(&mut send, &offer, max)
            .await
            .map_err(|e| e.to_string())?;
        let answer: Message = read_frame(&mut recv, max)
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>((send, answer))
    };
    match tokio::time::timeout(state.limits.answer_timeout, exchange).await {
        Ok(Ok(done)) => Ok(done),
        Ok(Err(e)) => {
            debug!(call_id, "callee {to} could not be asked: {e}");
            Err(Message::error(
                ErrorKind::Offline,
                format!("{to} went offline before answering"),
            ))
        }
        Err(_) => Err(Message::error(
            ErrorKind::Unreachable,
            format!(
                "{to} did not answer within {:?}",
                state.limits.answer_timeout
            ),
        )),
    }
}

/// Writes the Dial to the callee within `dial_write_timeout`: a callee that
/// grants no flow-control credit cannot hold the call (and its caller).
async fn send_dial(state: &State, mut send: quinn::SendStream, dial: &Message, call_id: u64) {
    let timeout = state.limits.dial_write_timeout;
    match tokio::time::timeout(
        timeout,
        write_frame(&mut send, dial, state.limits.max_frame),
    )
    .await
    {
        Ok(Ok(())) => {
            let _ = send.finish();
        }
        Ok(Err(e)) => debug!(call_id, "Dial not sent: {e}"),
        Err(_) => {
            debug!(
                call_id,
                "Dial not taken within {timeout:?}; giving up on it"
            );
            let _ = send.reset(common::error::close::PROTOCOL.into());
        }
    }
}
