//! Calls between nodes of a cluster ([`crate::cluster`]): both halves.
//!
//! ```text
//! caller's node (brokers)                 callee's node
//!   Offer{call_id, to, from, fp, source} ─▶ present? offer limits? (here:
//!                                            the callee's limits live here)
//!                                            IncomingCall ─▶ callee ─▶ Accept
//!                                            relay half: caller = that node
//!   ◀─ Answer{answer, observed, tickets}
//!   relay half: callee = this node's peer ◀─▶ the other node's relay address
//!   CallAccepted ─▶ caller
//!   Dial{call_id, message}               ─▶ Dial ─▶ callee (on the offer's stream)
//! ```
//!
//! The caller's node runs the same [`crate::broker`] as for a local
//! callee, so every consent and privacy rule is the one of a single node:
//! no address leaves either node before the callee accepted, and each
//! side's message carries only its own relay ticket. Relay frames then go
//! peer → its node → the other node → the other peer, checked on each
//! node against the party's own key (the two halves share ids and secrets).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::candidates::canonical;
use common::error::close;
use common::{ErrorKind, Message, RelayTicket};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::broker::{offer_refused, Allocating, Answer, Ask, CallBroker, Offer};
use crate::cluster::directory::Found;
use crate::cluster::wire::{Body, OfferAnswer, Online};
use crate::cluster::{BusError, Cluster, Incoming};
use crate::relay::{Allocation, PartySpec, Tickets};
use crate::state::{lock, State};

/// Extra time the caller's node waits past the answer deadline for the
/// callee's node (which answers `TimedOut` itself at the deadline).
const BUS_MARGIN: Duration = Duration::from_secs(3);

/// The reply when the bus cannot carry a call to another node.
fn bus_failed(to: &str, e: &BusError) -> Message {
    debug!(%to, "cross-node call failed: {e}");
    Message::error(
        ErrorKind::Unavailable,
        format!("{to} is online at another node of this cluster, which cannot be reached now; try again in a few seconds"),
    )
}

/// Caller's side: offers the call to the callee's node and waits for what
/// came of it. `Err` is the caller's reply (refused there, or the bus failed).
pub(crate) async fn ask(
    state: &State,
    found: &Found,
    broker: &CallBroker,
    ask: &Ask,
) -> Result<(Answer, SocketAddr, Option<Tickets>), Message> {
    let to = &found.online.name;
    let (
        Some(cluster),
        Message::IncomingCall {
            call_id,
            from,
            fingerprint,
        },
    ) = (state.cluster(), &ask.offer)
    else {
        return Err(Message::error(ErrorKind::Internal, "no cluster"));
    };
    let answer_in = ask.deadline.saturating_duration_since(Instant::now());
    let body = Body::Offer {
        call_id: *call_id,
        to: to.clone(),
        owner: broker.owner(),
        from: from.clone(),
        fingerprint: *fingerprint,
        source: broker.caller_observed().ip(),
        caller_relay: cluster.relay_addr(),
        relay: state.relay.is_some(),
        answer_ms: answer_in.as_millis() as u64,
    };
    state.metrics.cluster_calls.inc();
    match cluster
        .request(&found.node, body, answer_in + BUS_MARGIN)
        .await
    {
        Ok(Body::Answer(OfferAnswer::Asked {
            answer,
            observed,
            relay,
        })) => {
            let tickets = relay.map(|(callee, caller)| Tickets { caller, callee });
            Ok((answer, observed, tickets))
        }
        Ok(Body::Answer(OfferAnswer::Refused(reply))) => Err(reply),
        Ok(_) => Err(bus_failed(to, &BusError::BadAnswer(found.node.clone()))),
        Err(e) => Err(bus_failed(to, &e)),
    }
}

/// Caller's side: this node's half of the relay call the callee's node
/// allocated (same id and secrets; the callee is at that node's relay
/// address). `None` if this node's relay is off or refuses it.
pub(crate) fn mirror(
    state: &State,
    alloc: &Allocating,
    found: &Found,
    callee_observed: SocketAddr,
    tickets: Tickets,
) -> Option<Tickets> {
    let relay = state.relay.as_ref()?;
    let mirror = Allocation {
        call_id: tickets.caller.call_id,
        caller: PartySpec {
            addr: alloc.caller,
            source: state.source_ip(alloc.caller),
            secret: tickets.caller.secret,
        },
        callee: PartySpec {
            addr: found.relay_addr,
            source: callee_observed.ip(),
            secret: tickets.callee.secret,
        },
    };
    match relay.mirror(Instant::now(), mirror) {
        Ok(()) => Some(tickets),
        Err(e) => {
            debug!(call_id = alloc.call_id(), "no relay half here: {e}");
            None
        }
    }
}

/// Caller's side: hands the callee's `Dial` (or error) to its node.
pub(crate) async fn dial(state: &State, found: &Found, call_id: u64, message: Message) {
    let Some(cluster) = state.cluster() else {
        return;
    };
    let timeout = state.limits.dial_write_timeout + BUS_MARGIN;
    match cluster
        .request(&found.node, Body::Dial { call_id, message }, timeout)
        .await
    {
        Ok(Body::Dialed(true)) => {}
        other => {
            debug!(call_id, node = %found.node, "the Dial did not reach the callee: {other:?}")
        }
    }
}

/// Callee's side: serves what the bus brings until it closes.
pub(crate) async fn serve(
    state: Arc<State>,
    cluster: Arc<Cluster>,
    mut incoming: mpsc::Receiver<Incoming>,
) {
    while let Some(message) = incoming.recv().await {
        match message {
            Incoming::Came { node, online } => replace_older(&state, &cluster, &node, &online),
            Incoming::Request { from, body, reply } => {
                let (state, cluster) = (state.clone(), cluster.clone());
                tokio::spawn(async move {
                    let answer = match *body {
                        body @ Body::Offer { .. } => {
                            Body::Answer(offered(&state, &from, body).await)
                        }
                        Body::Dial { call_id, message } => {
                            Body::Dialed(dialed(&state, &from, call_id, message).await)
                        }
                        _ => return,
                    };
                    cluster.reply(reply, answer).await;
                });
            }
        }
    }
}

/// A newer `listen` for a name at another node replaces this node's
/// (the same rule as on one node; ties go to the higher node id).
fn replace_older(state: &State, cluster: &Cluster, node: &str, online: &Online) {
    let Some(since) = cluster.local_since(&online.name) else {
        return;
    };
    if (since, cluster.node_id()) >= (online.since_ms, node) {
        return;
    }
    let registry = lock(&state.registry);
    if let Some((_, session)) = registry.present(&online.name) {
        info!(name = %online.name, %node, "a newer listen at another node replaces this one");
        session.handle.close(
            close::REPLACED.into(),
            b"replaced by a newer listen session for this name",
        );
    }
}

/// Callee's side of an `Offer`: the checks that belong to the callee's
/// node, the offer to the callee, and the relay half.
async fn offered(state: &Arc<State>, from_node: &str, body: Body) -> OfferAnswer {
    let Body::Offer {
        call_id,
        to,
        owner,
        from,
        fingerprint,
        source,
        caller_relay,
        relay,
        answer_ms,
    } = body
    else {
        return OfferAnswer::Refused(Message::error(ErrorKind::Protocol, "not an offer"));
    };
    if !first_offer(state, from_node, call_id) {
        return OfferAnswer::Refused(Message::error(
            ErrorKind::Protocol,
            "this offer was already made",
        ));
    }
    let present = lock(&state.registry)
        .present(&to)
        .map(|(id, s)| (id, s.handle.clone(), s.approved.contains(&fingerprint)));
    let Some((session, conn, approved)) = present else {
        return OfferAnswer::Refused(Message::error(
            ErrorKind::Offline,
            format!("{to} is not online"),
        ));
    };
    let now = Instant::now();
    let offer = Offer {
        source,
        caller: fingerprint,
        callee: owner,
        approved,
    };
    if let Err(why) = lock(&state.rates).offers.check(offer, now) {
        state.metrics.rate_limited.inc();
        return OfferAnswer::Refused(offer_refused(why, &to));
    }
    let answer_in = Duration::from_millis(answer_ms).min(state.limits.answer_timeout);
    let ask = Ask {
        callee: session,
        offer: Message::IncomingCall {
            call_id,
            from,
            fingerprint,
        },
        deadline: now + answer_in,
        // Callers at other nodes are always asked (a standing answer is
        // kept by the callee's own node for its own callers).
        standing: None,
    };
    let (send, answer) = super::call::offer(state, &conn, &ask).await;
    let raw = conn.remote_address();
    let observed = state.real_addr(canonical(raw));
    let accepted = matches!(answer, Answer::Reply(Message::Accept { .. }));
    let tickets = match (accepted, relay, &state.relay) {
        (true, true, Some(r)) => {
            let sources = [source, state.source_ip(raw)];
            r.allocate(Instant::now(), caller_relay, raw, sources)
                .map_err(|e| debug!(call_id, "no relay half here: {e}"))
                .ok()
        }
        _ => None,
    };
    if let (true, Some(send)) = (accepted, send) {
        keep_for_dial(state, from_node, call_id, send);
    }
    OfferAnswer::Asked {
        answer,
        observed,
        relay: tickets.map(|t: Tickets| -> (RelayTicket, RelayTicket) { (t.callee, t.caller) }),
    }
}

/// Offers remembered (past it the oldest are forgotten first).
const SEEN_OFFERS: usize = 100_000;

/// The offers other nodes made lately, by (node, call id), oldest first.
#[derive(Debug, Default)]
pub(crate) struct SeenOffers {
    order: std::collections::VecDeque<(Instant, (String, u64))>,
    keys: std::collections::HashSet<(String, u64)>,
}

impl SeenOffers {
    /// Notes an offer; false if it was seen within the bus's message
    /// lifetime (a replay). Entries older than twice that are forgotten;
    /// when full, the oldest goes first.
    fn first(&mut self, key: (String, u64), now: Instant) -> bool {
        let keep = crate::cluster::wire::MAX_AGE * 2;
        while let Some((at, _)) = self.order.front() {
            if now.duration_since(*at) < keep && self.order.len() < SEEN_OFFERS {
                break;
            }
            if let Some((_, old)) = self.order.pop_front() {
                self.keys.remove(&old);
            }
        }
        if !self.keys.insert(key.clone()) {
            return false;
        }
        self.order.push_back((now, key));
        true
    }
}

/// Whether this is the first time `node` offers `call_id` within the bus's
/// message lifetime ([`crate::cluster::wire::MAX_AGE`]): a replay of a
/// sealed offer rings the callee again otherwise.
fn first_offer(state: &State, node: &str, call_id: u64) -> bool {
    lock(&state.seen_offers).first((node.to_owned(), call_id), Instant::now())
}

/// Keeps an accepted offer's stream for the `Dial`, for a while.
fn keep_for_dial(state: &Arc<State>, node: &str, call_id: u64, send: quinn::SendStream) {
    let key = (node.to_owned(), call_id);
    let mut dials = lock(&state.remote_dials);
    if dials.len() >= state.limits.max_connections {
        warn!("too many accepted offers waiting for their Dial; dropping this one");
        return;
    }
    dials.insert(key.clone(), send);
    drop(dials);
    let wait = state.limits.dial_write_timeout + BUS_MARGIN * 2;
    let state = Arc::downgrade(state);
    tokio::spawn(async move {
        tokio::time::sleep(wait).await;
        if let Some(state) = state.upgrade() {
            lock(&state.remote_dials).remove(&key);
        }
    });
}

/// Callee's side of a `Dial`: writes it on the offer's stream.
async fn dialed(state: &State, from_node: &str, call_id: u64, message: Message) -> bool {
    let send = lock(&state.remote_dials).remove(&(from_node.to_owned(), call_id));
    let Some(send) = send else {
        return false;
    };
    super::call::send_dial(state, send, &message, call_id).await;
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_offer_replayed_from_the_bus_rings_nobody_twice() {
        let store = Arc::new(crate::store::MemoryStore::default());
        let state = State::new(crate::Limits::default(), store);
        assert!(first_offer(&state, "n1", 7));
        assert!(!first_offer(&state, "n1", 7), "the replay");
        assert!(first_offer(&state, "n2", 7), "another node's call 7");
    }

    #[test]
    fn the_memory_of_offers_is_bounded_and_forgets_the_oldest_first() {
        let mut seen = SeenOffers::default();
        let start = Instant::now();
        for i in 0..SEEN_OFFERS as u64 + 10 {
            assert!(seen.first(("n".into(), i), start));
        }
        assert_eq!(seen.order.len(), SEEN_OFFERS, "bounded");
        assert!(
            seen.first(("n".into(), 0), start),
            "the oldest was forgotten"
        );
        assert!(
            !seen.first(("n".into(), SEEN_OFFERS as u64), start),
            "a recent one is kept"
        );
        let later = start + crate::cluster::wire::MAX_AGE * 2;
        assert!(seen.first(("m".into(), 1), later));
        assert_eq!(seen.order.len(), 1, "old entries expire");
    }
}
