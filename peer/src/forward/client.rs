//! The forward side (`peer forward`): one call to NAME, kept and called
//! again when lost; one stream of it per accepted TCP connection.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use common::framing::{read_frame, FrameError, MAX_FRAME};
use common::PeerMessage;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Mutex, Semaphore};
use tokio::task::JoinSet;
use tracing::{debug, warn};

use super::{bridge, prepare_call, verdict, ForwardConfig, Opening, Redial, Turns, Verdict};
use crate::{Call, Event, Peer};

type Streams = (quinn::SendStream, quinn::RecvStream);

/// Forwards TCP connections to one name over one kept call. Cheap to
/// clone. Reports on the peer's event channel ([`Peer::events`]):
/// `connected` for each call, `error` when a call cannot be made,
/// `forward_failed` for each TCP connection closed without being served.
#[derive(Clone)]
pub struct Forwarder {
    inner: Arc<Inner>,
}

struct Inner {
    peer: Peer,
    name: String,
    config: ForwardConfig,
    slot: Mutex<Slot>,
    /// Call attempts started so far: a connection that waited for another
    /// one's attempt takes its outcome instead of calling again at once.
    attempts: AtomicU64,
    admission: Arc<Semaphore>,
}

/// The kept call and the turns its streams take at its send buffer.
type Kept = (Arc<Call>, Turns);

struct Slot {
    call: Option<Kept>,
    redial: Redial,
    last_error: Option<String>,
}

impl Forwarder {
    /// A forwarder to `name` (no call is made yet: see [`Forwarder::connect`]).
    pub fn new(peer: Peer, name: &str, config: ForwardConfig) -> Self {
        let slot = Slot {
            call: None,
            redial: Redial::new(config.redial_min, config.redial_max),
            last_error: None,
        };
        Self {
            inner: Arc::new(Inner {
                peer,
                name: name.to_owned(),
                admission: Arc::new(Semaphore::new(config.max_connections)),
                config,
                slot: Mutex::new(slot),
                attempts: AtomicU64::new(0),
            }),
        }
    }

    /// The call to use now: the kept one if it is up, else a new one
    /// (after the backoff), with the [`Turns`] its streams share. A
    /// failure is reported as an `error` event and returned as its message.
    pub async fn connect(&self) -> Result<(Arc<Call>, Turns), String> {
        let inner = &self.inner;
        let seen = inner.attempts.load(Ordering::SeqCst);
        let mut slot = inner.slot.lock().await;
        if let Some((call, turns)) = &slot.call {
            if call.connection.close_reason().is_none() {
                return Ok((call.clone(), turns.clone()));
            }
            debug!(peer = %inner.name, "the forwarded call ended; calling again");
            slot.call = None;
        }
        if inner.attempts.load(Ordering::SeqCst) != seen {
            if let Some(e) = &slot.last_error {
                return Err(e.clone());
            }
        }
        tokio::time::sleep(slot.redial.wait(Instant::now())).await;
        inner.attempts.fetch_add(1, Ordering::SeqCst);
        match inner
            .peer
            .call(&inner.name, inner.config.call.clone())
            .await
        {
            Ok(call) => {
                let turns = prepare_call(&call);
                slot.redial.connected();
                slot.last_error = None;
                let call = Arc::new(call);
                slot.call = Some((call.clone(), turns.clone()));
                Ok((call, turns))
            }
            Err(e) => {
                warn!(peer = %inner.name, "calling for forwarding failed: {e}");
                inner.peer.emit(Event::error(&e));
                slot.redial.failed(Instant::now());
                let message = e.to_string();
                slot.last_error = Some(message.clone());
                Err(message)
            }
        }
    }

    /// Drops `call` if it is still the kept one, so the next connection calls again.
    async fn lost(&self, call: &Arc<Call>) {
        let mut slot = self.inner.slot.lock().await;
        if slot
            .call
            .as_ref()
            .is_some_and(|(c, _)| Arc::ptr_eq(c, call))
        {
            slot.call = None;
        }
        call.close();
        warn!(peer = %self.inner.name, "the call stopped answering; calling again");
    }

    /// Says `forwarding`, then accepts TCP connections on `listener` and
    /// forwards each, until the returned future is dropped (which closes
    /// them all).
    pub async fn serve(&self, listener: TcpListener) {
        let local_addr = listener
            .local_addr()
            .map(|a| common::candidates::canonical(a).to_string())
            .unwrap_or_default();
        self.inner.peer.emit(Event::Forwarding {
            local_addr,
            peer: self.inner.name.clone(),
        });
        let mut tasks = JoinSet::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((tcp, _)) => {
                        let me = self.clone();
                        tasks.spawn(async move { me.handle(tcp).await });
                    }
                    Err(e) => {
                        // Out of file descriptors, say: wait, do not spin.
                        warn!("accepting a TCP connection: {e}");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    }
                },
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            }
        }
    }

    /// Forwards one TCP connection to its end. Returns the bytes
    /// `(sent, received)` when it was served; `None` when it was closed
    /// unserved (with a `forward_failed` event).
    pub async fn handle(&self, tcp: TcpStream) -> Option<(u64, u64)> {
        let client = tcp.peer_addr().map(|a| a.to_string()).unwrap_or_default();
        let Ok(_permit) = self.inner.admission.clone().try_acquire_owned() else {
            let max = self.inner.config.max_connections;
            self.fail(
                &client,
                "busy",
                format!("{max} connections are forwarded already (the most at once)"),
            );
            return None;
        };
        for _ in 0..2 {
            let (call, turns) = match self.connect().await {
                Ok(kept) => kept,
                Err(why) => {
                    self.fail(&client, "no_call", why);
                    return None;
                }
            };
            let (opening, streams) = open(&call, self.inner.config.answer_timeout).await;
            match (verdict(opening), streams) {
                (Verdict::Serve, Some((send, recv))) => {
                    return match bridge(send, recv, tcp, &turns).await {
                        Ok(bytes) => Some(bytes),
                        Err(e) => {
                            debug!(%client, "forwarded connection cut: {e}");
                            None
                        }
                    };
                }
                (Verdict::TargetRefused, _) => {
                    let name = &self.inner.name;
                    self.fail(
                        &client,
                        "target_refused",
                        format!("{name}'s forward target refused the connection or did not answer"),
                    );
                    return None;
                }
                (Verdict::CallLost, _) => self.lost(&call).await,
                _ => {
                    let name = &self.inner.name;
                    self.fail(&client, "not_forwarding", format!("{name} does not forward TCP connections (it is not a `listen --forward-to`)"));
                    return None;
                }
            }
        }
        self.fail(
            &client,
            "call_lost",
            "the call stopped answering, and so did a new one".into(),
        );
        None
    }

    fn fail(&self, client: &str, reason: &str, message: String) {
        warn!(%client, reason, "forwarded connection closed: {message}");
        self.inner.peer.emit(Event::ForwardFailed {
            peer: self.inner.name.clone(),
            client: client.to_owned(),
            reason: reason.to_owned(),
            message,
        });
    }
}

/// Opens a forward stream on `call` and waits (up to `timeout`) for the answer.
async fn open(call: &Call, timeout: std::time::Duration) -> (Opening, Option<Streams>) {
    let attempt = async {
        let Ok((send, mut recv)) = call.open(&PeerMessage::Forward).await else {
            return (Opening::ConnectionLost, None);
        };
        match read_frame::<PeerMessage, _>(&mut recv, MAX_FRAME).await {
            Ok(PeerMessage::Forwarded) => (Opening::Answered, Some((send, recv))),
            Ok(_) => (Opening::Misanswered, None),
            Err(FrameError::Io(e)) => {
                let inner = e
                    .get_ref()
                    .and_then(|i| i.downcast_ref::<quinn::ReadError>());
                match inner {
                    Some(quinn::ReadError::Reset(code)) => (
                        Opening::Reset(u32::try_from(code.into_inner()).unwrap_or(u32::MAX)),
                        None,
                    ),
                    Some(quinn::ReadError::ConnectionLost(_)) => (Opening::ConnectionLost, None),
                    _ => (Opening::Misanswered, None),
                }
            }
            Err(_) => (Opening::Misanswered, None),
        }
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or((Opening::Unanswered, None))
}
