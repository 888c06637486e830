//! Being callable: the `listen` side of a [`Peer`].
//!
//! Two tasks:
//! - the **presence loop** keeps a `listen` session on the server: connect,
//!   register, answer call offers by [`Policy`], and when the server goes away,
//!   say so, reconnect at once, starting with the next node of the server
//!   list ([`crate::ServerList`]), with jittered backoff after a round of
//!   nodes that all failed (after a clean server shutdown, first a wait
//!   spread over what the server asked, a tenth of it when another node
//!   is listed) and register again. Errors that retrying cannot fix (name
//!   taken, bad fingerprint, replaced) end it.
//! - the **accept loop** (one per peer, started by [`Peer::new`], in
//!   `crate::accept`) lets in peer connections only from keys of calls we
//!   accepted, a bounded number of handshakes at once, and hands the first
//!   one that opens a stream to the [`Listener`]: one accepted offer is one
//!   call, later connections of that key are refused.
//!
//! Each offer is decided by [`crate::callee_state::CalleeState`]; on `Dial`
//! the call's path task starts probing the caller's vetted candidates and
//! the relay (the probes are the punches: they open our NAT toward the
//! caller). After each registration the listener tells the server whose
//! calls it accepts anyway (`approve`). Every write of the call exchange
//! has [`crate::Timing::write_timeout`].

use std::time::{Duration, Instant};

use common::framing::{read_frame, write_frame, MAX_FRAME};
use common::relay_frame::Party;
use common::{validate_name, Message};
use tokio::sync::mpsc;
use tracing::debug;

use crate::call::Call;
use crate::call_state::Vantage;
use crate::callee_state::{Answer, CalleeState, OfferIgnored};
use crate::endpoint::Expected;
use crate::error::{Error, Result};
use crate::known_peers::Check;
use crate::path::PathMode;
use crate::peer::Peer;
use crate::policy::Policy;
use crate::router::{CallSpec, InitialsHeld};
use crate::server_link::ServerLink;
use crate::Event;

/// Incoming calls of a listening peer.
pub struct Listener {
    calls: mpsc::Receiver<Result<Call>>,
    task: tokio::task::JoinHandle<()>,
}

impl Listener {
    /// The next call; `Err` when listening ended for a reason retrying cannot
    /// fix (name taken, bad fingerprint, replaced by a newer `listen`).
    pub async fn accept(&mut self) -> Option<Result<Call>> {
        self.calls.recv().await
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Peer {
    /// Registers our name as callable and answers calls by `policy`, until the
    /// [`Listener`] is dropped. Survives the server going away.
    pub fn listen(&self, policy: Policy) -> Result<Listener> {
        let name = self.name()?;
        let (tx, rx) = mpsc::channel(64);
        *self
            .inner
            .incoming
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(tx.clone());
        let task = tokio::spawn(presence_loop(self.clone(), name, policy, tx));
        Ok(Listener { calls: rx, task })
    }
}

/// Jittered exponential backoff, capped.
struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    fn new(max: Duration) -> Self {
        Self {
            next: Duration::from_millis(200),
            max,
        }
    }

    fn step(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        base.mul_f64(rand::random::<f64>() * 0.5 + 0.75)
            .min(self.max)
    }
}

async fn presence_loop(peer: Peer, name: String, policy: Policy, tx: mpsc::Sender<Result<Call>>) {
    let mut backoff = Backoff::new(peer.inner.config.timing.reconnect_max);
    let mut lost = false;
    loop {
        // `_standing` lives as long as this link's standing answer.
        let (link, _standing) = match connect_and_register(&peer, &name, &policy).await {
            Ok(found) => found,
            Err(e) if e.is_transient() => {
                peer.emit(Event::error(&e));
                tokio::time::sleep(backoff.step()).await;
                continue;
            }
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
        };
        if lost {
            peer.emit(Event::RendezvousRestored {
                server: link.server().to_owned(),
            });
        }
        backoff = Backoff::new(peer.inner.config.timing.reconnect_max);
        let ended = loop {
            match link.next_offer().await {
                Ok((send, recv)) => {
                    tokio::spawn(answer_offer(peer.clone(), policy.clone(), send, recv));
                }
                Err(e) => break e,
            }
        };
        if matches!(ended, Error::Replaced) {
            let _ = tx.send(Err(ended)).await;
            return;
        }
        debug!(server = link.server(), "server link lost: {ended}");
        // The next round starts at the next node: no wait after a loss.
        lock_nodes(&peer).lost(link.node());
        peer.emit(Event::RendezvousLost {
            server: link.server().to_owned(),
        });
        lost = true;
        // A clean shutdown reaches every peer at once; coming back in the
        // same second would meet the next server as a herd. With another
        // node listed, most of them go there: a tenth of the spread.
        if let Some(spread) = link.shutdown_spread() {
            let spread = lock_nodes(&peer).shutdown_spread(spread);
            let wait = spread.mul_f64(rand::random::<f64>());
            debug!(
                ?wait,
                ?spread,
                "the server shut down; waiting before reconnecting"
            );
            tokio::time::sleep(wait).await;
        }
    }
}

/// Connects, registers and sends the approvals; returns the link and the
/// guard of its standing answer ([`crate::approve::send`]).
async fn connect_and_register(
    peer: &Peer,
    name: &str,
    policy: &Policy,
) -> Result<(ServerLink, Option<InitialsHeld>)> {
    let inner = &peer.inner;
    let link =
        ServerLink::connect(&inner.socket, &inner.config, &inner.nodes, &inner.events).await?;
    peer.inner.socket.set_server(link.conn.remote_address());
    let invisible = inner.config.invisible;
    let reg = link
        .register_as(name, true, invisible)
        .await
        .inspect_err(|e| {
            // A node that cannot register us now: the next try goes to the next one.
            if e.is_transient() {
                lock_nodes(peer).lost(link.node());
            }
        })?;
    peer.inner.socket.set_observed(reg.observed_addr);
    // Before `Registered`: a contact calling on that event is exempt already.
    let standing = crate::approve::send(peer, &link, policy).await;
    peer.emit(Event::Registered {
        name: name.to_owned(),
        fingerprint: reg.fingerprint.to_string(),
        observed_addr: reg.observed_addr.to_string(),
        transport: link.transport().as_str().to_owned(),
    });
    debug!(server = link.server(), "registered");
    Ok((link, standing))
}

fn lock_nodes(peer: &Peer) -> std::sync::MutexGuard<'_, crate::ServerList> {
    peer.inner.nodes.lock().unwrap_or_else(|p| p.into_inner())
}

/// One offer: decide ([`CalleeState`]), answer, and on `Dial` start the
/// call's path task (its probes toward the caller are the punches).
async fn answer_offer(
    peer: Peer,
    policy: Policy,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let offer = tokio::time::timeout(
        peer.inner.config.timing.offer_timeout,
        read_frame::<Message, _>(&mut recv, MAX_FRAME),
    )
    .await;
    // A caller we approved, introduced without asking us: no answer is
    // read, the Dial follows at once.
    let mut preapproved = false;
    let state = match offer {
        Ok(Ok(msg)) => {
            preapproved = matches!(msg, Message::Preapproved { .. });
            CalleeState::on_offer(msg, Instant::now())
        }
        _ => Err(OfferIgnored::NotAnOffer("nothing")),
    };
    let Ok(state) = state else {
        debug!("ignoring a malformed call offer");
        return;
    };
    let known = check_caller(&peer, &state);
    let mode = peer.inner.config.listen_path;
    let local = match mode {
        PathMode::Relay => vec![],
        _ => peer.inner.socket.local_candidates(),
    };
    match state.decide(&policy, known, local, mode) {
        Answer::Reject {
            message,
            from,
            reason,
        } => {
            if !preapproved {
                let _ = write_answer(&peer, &mut send, &message).await;
            }
            let _ = send.finish();
            peer.emit(Event::CallRefused { from, reason });
        }
        Answer::Accept(state, accept) => {
            let answer = (!preapproved).then_some(accept);
            accepted(&peer, send, recv, state, answer).await;
        }
    }
}

/// Writes the answer to an offer, within [`crate::Timing::write_timeout`]:
/// a server that grants no flow-control credit cannot park the task. Past
/// the timeout the offer stream is reset with [`ANSWER_NOT_TAKEN`] (the
/// answer is given up, never delivered late).
async fn write_answer(peer: &Peer, send: &mut quinn::SendStream, msg: &Message) -> Result<()> {
    let timeout = peer.inner.config.timing.write_timeout;
    match tokio::time::timeout(timeout, write_frame(send, msg, MAX_FRAME)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(Error::Protocol(format!("writing {}: {e}", msg.kind_name()))),
        Err(_) => {
            debug!("the server took no {} within {timeout:?}", msg.kind_name());
            let _ = send.reset(ANSWER_NOT_TAKEN.into());
            Err(Error::Protocol(format!(
                "{} not written within {timeout:?}",
                msg.kind_name()
            )))
        }
    }
}

/// An offer we accept: expect the caller, answer (`None`: a `Preapproved`
/// call, not answered), then start the call's path task on `Dial`. The
/// caller's key is recorded in known_peers only if its entry is still what
/// the check saw ([`crate::KnownPeers::record_if`]).
async fn accepted(
    peer: &Peer,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    state: CalleeState,
    accept: Option<Message>,
) {
    let CalleeState::Accepted {
        from,
        fingerprint,
        seen,
        at,
        ..
    } = &state
    else {
        return;
    };
    let socket = &peer.inner.socket;
    let timing = &peer.inner.config.timing;
    let expected = Expected {
        id: socket.expected.next_id(),
        name: from.clone(),
        fingerprint: *fingerprint,
        seen: *seen,
        candidates: vec![],
        path: None,
        offered_at: *at,
        expires: *at + timing.accept_window,
    };
    socket.expected.add(expected.clone());
    let _held = socket.router.hold_initials();
    if let Some(accept) = accept {
        if write_answer(peer, &mut send, &accept).await.is_err() {
            return;
        }
    }
    let _ = send.finish();
    let dial = tokio::time::timeout(
        timing.offer_timeout,
        read_frame::<Message, _>(&mut recv, MAX_FRAME),
    )
    .await;
    let Ok(Ok(dial)) = dial else {
        debug!("no Dial after accepting a call");
        return;
    };
    let server = socket.server();
    let vantage = Vantage {
        server,
        observed: socket.observed(),
    };
    let plan = match state.on_dial(dial, vantage) {
        Ok((_, plan)) => plan,
        Err(why) => {
            debug!("no call after accepting: {why}");
            return;
        }
    };
    let spec = CallSpec {
        call_id: plan.call_id,
        party: Party::Callee,
        probe_key: plan.probe_key,
        relay: plan.relay.map(|t| (server, t)),
        candidates: plan.candidates,
        mode: plan.mode,
        loopback_ok: server.ip().is_loopback(),
    };
    let within = expected.expires.saturating_duration_since(Instant::now());
    let handle = crate::path_task::start(&peer.path_context(), spec, expected.name.clone(), within);
    socket.expected.update(Expected {
        candidates: vec![common::candidates::canonical(handle.virtual_addr)],
        path: Some(handle),
        ..expected
    });
}

/// What known_peers says of an offer's caller, for [`CalleeState::decide`];
/// emits `incoming_call` for a caller whose name keeps the rules (one that
/// breaks them is refused without a word, see `decide`). `Err` is the
/// reason to refuse with: a file that cannot be read never makes a caller
/// "new" (fail closed).
fn check_caller(peer: &Peer, state: &CalleeState) -> Result<Check, String> {
    let CalleeState::Offered {
        from, fingerprint, ..
    } = state
    else {
        return Err("no offer".into());
    };
    if validate_name(from).is_err() {
        return Ok(Check::New);
    }
    peer.emit(Event::IncomingCall {
        from: from.clone(),
        fingerprint: fingerprint.to_string(),
    });
    peer.inner.known.check(from, fingerprint).map_err(|e| {
        peer.emit(Event::error(&e));
        "the callee cannot read its known_peers file".to_owned()
    })
}

/// The reset code of an offer stream whose answer the server did not take
/// within [`crate::Timing::write_timeout`].
const ANSWER_NOT_TAKEN: u32 = common::error::close::PROTOCOL;
