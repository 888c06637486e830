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
//! Nobody learns an address before the callee accepts. Offers are limited
//! per caller source, then per (source, callee) and per callee
//! ([`crate::offers`]; the callee's pre-approved contacts skip the
//! per-callee bucket and are held per (caller key, callee) instead).
//! Candidate lists are [`common::candidates::forward`]ed: the observed
//! address first, then at most a few private ones, and those only between
//! two peers behind one public address. Every write has a timeout. After the
//! two frames leave, the server keeps no state about the call.

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
use crate::server::{lock, State};

/// Who calls: name, key, observed address.
struct Caller {
    name: String,
    fingerprint: Fingerprint,
    observed: SocketAddr,
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
    let caller = {
        let registry = lock(&state.registry);
        match (registry.name_of(id), registry.session(id)) {
            (Ok(name), Some(s)) => Caller {
                name: name.to_owned(),
                fingerprint: s.fingerprint,
                observed: s.observed,
            },
            (Err(RegistryError::NotRegistered), _) => {
                return Message::error(ErrorKind::NotRegistered, "register a name before calling");
            }
            _ => return Message::error(ErrorKind::Internal, "session closed"),
        }
    };
    if !state.allow(caller.observed.ip(), |r| &mut r.call) {
        return super::rate_limited("calls");
    }
    let owner = match state.store.owner(&to) {
        Ok(Some(fp)) => fp,
        Ok(None) => {
            return Message::error(ErrorKind::NotFound, format!("no one has registered {to:?}"))
        }
        Err(e) => return Message::error(ErrorKind::Internal, format!("name store: {e}")),
    };
    let callee = lock(&state.registry).present(&to).map(|(_, s)| {
        let approved = s.approved.contains(&caller.fingerprint);
        (s.handle.clone(), s.observed, approved)
    });
    let Some((callee_conn, callee_observed, approved)) = callee else {
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
    match answer {
        Message::Accept {
            candidates: callee_candidates,
            hide_addresses: callee_hides,
        } => {
            state.metrics.calls_accepted.inc();
            debug!(call_id, from = %caller.name, %to, "call accepted");
            let probe_key: [u8; 32] = rand::random();
            let dial = Message::Dial {
                call_id,
                candidates: if caller_hides {
                    vec![]
                } else {
                    forward(caller.observed, &candidates, callee_observed)
                },
                probe_key,
                relay: None,
            };
            // The caller's reply is written by the driver right after we return;
            // the callee's Dial leaves now, so both go out at the same moment.
            send_dial(state, callee_send, &dial, call_id).await;
            Message::CallAccepted {
                call_id,
                fingerprint: owner,
                candidates: if callee_hides {
                    vec![]
                } else {
                    forward(callee_observed, &callee_candidates, caller.observed)
                },
                probe_key,
                relay: None,
            }
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
