//! `Call`: the driver of the call broker ([`crate::broker`], which has the
//! protocol and every decision).
//!
//! It gathers the broker's facts from the shared state (the registry, the
//! name store, the rate limiters, each connection's current address) and
//! performs its actions: the offer on a new stream to the callee within the
//! answer deadline, the relay allocation at consent
//! ([`crate::relay::driver::Relay::allocate`]; a refusal is counted in
//! `rendezvous_relay_allocations_refused_total`), and the callee's `Dial`
//! within `dial_write_timeout`. The caller's reply is written by the
//! connection driver right after [`handle`] returns, so both go out at the
//! same moment. After that the server keeps no state about the call but its
//! relay allocation (forgotten when idle).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use common::candidates::canonical;
use common::framing::{read_frame, write_frame};
use common::{Fingerprint, Message};
use tracing::debug;

use crate::broker::{
    Allocating, Answer, Ask, BrokerConfig, CallBroker, CallRequest, Callee, Caller, Facts,
    NoCaller, Offer, OfferRefused, Step,
};
use crate::cluster::directory::Found;
use crate::registry::{RegistryError, SessionId, REMOTE};
use crate::relay::Tickets;
use crate::state::{lock, State};

/// Brokers one `Call` from session `id`; returns the caller's reply.
pub(crate) async fn handle(
    state: &Arc<State>,
    id: SessionId,
    to: String,
    candidates: Vec<SocketAddr>,
    hide_addresses: bool,
) -> Message {
    state.metrics.calls_requested.inc();
    let config = BrokerConfig {
        relay: state.relay.is_some(),
        answer_timeout: state.limits.answer_timeout,
    };
    let mut facts = ServerFacts {
        state,
        id,
        conns: HashMap::new(),
        remote: None,
        remote_answer: None,
    };
    let request = CallRequest {
        to,
        candidates,
        hide_addresses,
    };
    // The cheap checks first, then the (async) owner, then the offer: a
    // refused request costs no store read.
    let checked = match CallBroker::check(&mut facts, &config, request, Instant::now()) {
        Ok(checked) => checked,
        Err(reply) => return reply,
    };
    let owner = owner_of(state, checked.to()).await;
    let (broker, ask) = match checked.offer(owner, &mut facts, Instant::now()) {
        Ok(started) => started,
        Err(reply) => return reply,
    };
    let call_id = broker.call_id();
    // Set by `Facts::callee` only for a callee at another node.
    let remote = facts.remote.clone();
    let (send, answer) = match (&remote, facts.conns.get(&ask.callee)) {
        (Some(found), _) => match super::remote::ask(state, found, &broker, &ask).await {
            Ok((answer, observed, tickets)) => {
                facts.remote_answer = Some((observed, tickets));
                (None, answer)
            }
            Err(reply) => return reply,
        },
        (None, Some(callee)) => offer(state, callee, &ask).await,
        (None, None) => (None, Answer::Failed("session closed".into())),
    };
    match &answer {
        Answer::Reply(Message::Accept { .. }) if ask.standing.is_some() => {
            state.metrics.calls_accepted.inc();
            state.metrics.calls_preapproved.inc();
        }
        Answer::Reply(Message::Accept { .. }) => state.metrics.calls_accepted.inc(),
        Answer::Reply(Message::Reject { .. }) => state.metrics.calls_rejected.inc(),
        _ => {}
    }
    let finish = match broker.on_answer(answer, &mut facts) {
        Step::Finish(finish) => finish,
        Step::AllocateRelay(alloc) => {
            let tickets = match (&remote, facts.remote_answer) {
                (Some(found), Some((observed, Some(tickets)))) => {
                    super::remote::mirror(state, &alloc, found, observed, tickets)
                }
                (Some(_), _) => None,
                (None, _) => allocate(state, &alloc),
            };
            alloc.on_relay(tickets)
        }
    };
    match (&finish.to_callee, send, &remote) {
        (Some(to_callee), Some(send), _) => send_dial(state, send, to_callee, call_id).await,
        (Some(to_callee), None, Some(found)) => {
            super::remote::dial(state, found, call_id, to_callee.clone()).await;
        }
        _ => {}
    }
    finish.reply
}

/// The key that owns `name`: an online name's from its presence (no store
/// read, so calls to online peers work while the store is down), else the
/// store's (`Err`: it could not tell; logged).
async fn owner_of(state: &State, name: &str) -> Result<Option<Fingerprint>, String> {
    if let Some(fingerprint) = state.online_owner(name) {
        return Ok(Some(fingerprint));
    }
    state.store.owner(name).await.map_err(|e| {
        tracing::warn!("name store failed: {e}");
        e.to_string()
    })
}

/// The broker's view of the server, for one request of session `id`; it
/// keeps the connections it found, for the driver's actions.
struct ServerFacts<'a> {
    state: &'a State,
    id: SessionId,
    conns: HashMap<SessionId, quinn::Connection>,
    /// The callee's node, when it is online at another one.
    remote: Option<Found>,
    /// What that node said of it: where it is, and its relay tickets.
    remote_answer: Option<(SocketAddr, Option<Tickets>)>,
}

impl Facts for ServerFacts<'_> {
    fn caller(&mut self) -> Result<Caller, NoCaller> {
        let registry = lock(&self.state.registry);
        match (registry.name_of(self.id), registry.session(self.id)) {
            (Ok(name), Some(s)) => {
                self.conns.insert(self.id, s.handle.clone());
                Ok(Caller {
                    session: self.id,
                    name: name.to_owned(),
                    fingerprint: s.fingerprint,
                    // Where the connection is now (quinn follows a
                    // migration), a TCP peer under its real address.
                    observed: self.state.real_addr(canonical(s.handle.remote_address())),
                })
            }
            (Err(RegistryError::NotRegistered), _) => Err(NoCaller::NotRegistered),
            _ => Err(NoCaller::Closed),
        }
    }

    fn allow_call(&mut self, source: IpAddr, _now: Instant) -> bool {
        self.state.allow(source, |r| &mut r.call)
    }

    /// Only `CallBroker::start` asks this; `handle` reads the owner
    /// between `check` and `offer` ([`owner_of`]), as the store is async.
    fn owner(&mut self, name: &str) -> Result<Option<Fingerprint>, String> {
        self.state
            .online_owner(name)
            .map(Some)
            .ok_or_else(|| "owner not read".to_owned())
    }

    fn callee(&mut self, name: &str, caller: Fingerprint) -> Option<Callee> {
        let registry = lock(&self.state.registry);
        if let Some((session, s)) = registry.present(name) {
            self.conns.insert(session, s.handle.clone());
            let approved = s.approved.contains(&caller);
            return Some(Callee {
                session,
                approved,
                standing: s.standing.clone().filter(|_| approved),
            });
        }
        drop(registry);
        // Online at another node: that node knows whom it approved.
        self.remote = Some(self.state.presence().find(name)?);
        Some(Callee {
            session: REMOTE,
            approved: false,
            standing: None,
        })
    }

    fn check_offer(&mut self, offer: Offer, now: Instant) -> Result<(), OfferRefused> {
        let checked = lock(&self.state.rates).offers.check(offer, now);
        if checked.is_err() {
            self.state.metrics.rate_limited.inc();
        }
        checked
    }

    fn next_call_id(&mut self) -> u64 {
        self.state.next_call_id.fetch_add(1, Ordering::Relaxed)
    }

    /// The connection's remote address (quinn moves it when the client
    /// migrates), noted in the registry.
    fn current_address(&mut self, session: SessionId) -> SocketAddr {
        if session == REMOTE {
            // Where the callee's node saw it when it accepted.
            return self
                .remote_answer
                .map_or(SocketAddr::from(([0, 0, 0, 0], 0)), |(at, _)| at);
        }
        let mut registry = lock(&self.state.registry);
        match self.conns.get(&session) {
            Some(conn) => {
                let now = conn.remote_address();
                registry.observe(session, canonical(now));
                now
            }
            // Not reached: both sessions' connections were kept above.
            None => registry
                .session(session)
                .map_or(SocketAddr::from(([0, 0, 0, 0], 0)), |s| s.observed),
        }
    }

    fn probe_key(&mut self) -> [u8; 32] {
        rand::random()
    }
}

/// Performs an [`Ask`]: opens a stream to the callee, writes the offer and
/// reads the answer (or takes its standing one), all by the ask's
/// deadline. The stream is kept for the Dial.
pub(crate) async fn offer(
    state: &State,
    callee: &quinn::Connection,
    ask: &Ask,
) -> (Option<quinn::SendStream>, Answer) {
    let max = state.limits.max_frame;
    let exchange = async {
        let (mut send, mut recv) = callee.open_bi().await.map_err(|e| e.to_string())?;
        write_frame(&mut send, &ask.offer, max)
            .await
            .map_err(|e| e.to_string())?;
        // A `Preapproved` is not answered: the callee's standing answer is.
        if let Some(standing) = &ask.standing {
            let _ = recv.stop(0u32.into());
            return Ok((send, standing.clone()));
        }
        let answer: Message = read_frame(&mut recv, max)
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>((send, answer))
    };
    let deadline = tokio::time::Instant::from_std(ask.deadline);
    match tokio::time::timeout_at(deadline, exchange).await {
        Ok(Ok((send, answer))) => (Some(send), Answer::Reply(answer)),
        Ok(Err(e)) => (None, Answer::Failed(e)),
        Err(_) => (None, Answer::TimedOut),
    }
}

/// Performs an [`Allocating`]: the call's relay allocation, one ticket per
/// side; `None` when the relay is off or refused it (the call goes on
/// without: a direct path may work).
fn allocate(state: &State, alloc: &Allocating) -> Option<Tickets> {
    let relay = state.relay.as_ref()?;
    let sources = [state.source_ip(alloc.caller), state.source_ip(alloc.callee)];
    match relay.allocate(Instant::now(), alloc.caller, alloc.callee, sources) {
        Ok(tickets) => Some(tickets),
        Err(e) => {
            debug!(call_id = alloc.call_id(), "no relay for this call: {e}");
            None
        }
    }
}

/// Writes the Dial to the callee within `dial_write_timeout`: a callee that
/// grants no flow-control credit cannot hold the call (and its caller).
pub(crate) async fn send_dial(
    state: &State,
    mut send: quinn::SendStream,
    dial: &Message,
    call_id: u64,
) {
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
