//! One connection's task: the TLS handshake, then one task per request
//! stream (parse → apply → reply, via `handlers/`).
//!
//! A peer that sends something malformed gets an error frame and its
//! connection closed; nobody else notices. A slow request only loses its
//! stream. Every read has a size limit and every write a timeout.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::error::close;
use common::framing::{read_frame, write_frame, FrameError};
use common::tls;
use common::{ErrorKind, Fingerprint, Message};
use tokio::sync::oneshot;
use tracing::{debug, warn};

use crate::admission::Ticket;
use crate::counted::Counted;
use crate::handlers;
use crate::registry::SessionId;
use crate::state::{lock, State};

/// Handshake, then one task per request stream until the connection ends.
pub(crate) async fn serve_connection(
    state: &Arc<State>,
    incoming: Box<quinn::Incoming>,
    counted: &mut Counted,
    ticket: Ticket,
    cancel: oneshot::Receiver<()>,
) {
    let remote = common::candidates::canonical(incoming.remote_address());
    // The handshake's state is large and needed once: keep it on the heap
    // only while it runs, not in this long-lived task.
    let Some(conn) = Box::pin(handshake(state, *incoming, ticket, cancel, remote)).await else {
        return;
    };
    let Some(fingerprint) = peer_fingerprint(&conn) else {
        conn.close(close::PROTOCOL.into(), b"no client certificate");
        return;
    };
    let id = lock(&state.registry).open(fingerprint, remote, conn.clone());
    counted.set_session(id);
    state.metrics.connections_total.inc();
    debug!(%remote, peer = %fingerprint.short(), id, "peer connected");
    while let Ok((send, recv)) = conn.accept_bi().await {
        let (state, conn) = (state.clone(), conn.clone());
        tokio::spawn(async move { serve_stream(&state, id, &conn, send, recv).await });
    }
    // `counted` closes the session (and logs who went offline) when dropped.
    debug!(%remote, id, "peer disconnected: {:?}", conn.close_reason());
}

/// The TLS handshake, bounded by the handshake timeout and ended early when
/// `cancel` fires (shed from a full queue); `None` if it did not complete.
/// (Dropping an unfinished handshake closes its connection.)
async fn handshake(
    state: &State,
    incoming: quinn::Incoming,
    ticket: Ticket,
    cancel: oneshot::Receiver<()>,
    remote: SocketAddr,
) -> Option<quinn::Connection> {
    let handshake = tokio::select! {
        done = tokio::time::timeout(state.limits.handshake_timeout, incoming) => Some(done),
        _ = cancel => None,
    };
    lock(&state.rates).sources.handshake_done(ticket);
    let Some(handshake) = handshake else {
        debug!(%remote, "handshake shed for a source holding fewer");
        state.metrics.handshakes_failed.inc();
        return None;
    };
    match handshake {
        Ok(Ok(conn)) => Some(conn),
        Ok(Err(e)) => {
            if is_version_mismatch(&e) {
                warn!(%remote, "refused a peer speaking another protocol version ({e})");
            } else {
                debug!(%remote, "handshake failed: {e}");
            }
            state.metrics.handshakes_failed.inc();
            None
        }
        Err(_) => {
            debug!(%remote, "handshake timed out");
            state.metrics.handshakes_failed.inc();
            None
        }
    }
}

fn is_version_mismatch(e: &quinn::ConnectionError) -> bool {
    matches!(e, quinn::ConnectionError::TransportError(t) if u64::from(t.code) == tls::NO_APPLICATION_PROTOCOL)
        || matches!(e, quinn::ConnectionError::ConnectionClosed(c) if u64::from(c.error_code) == tls::NO_APPLICATION_PROTOCOL)
}

/// The fingerprint of the key the handshake authenticated.
fn peer_fingerprint(conn: &quinn::Connection) -> Option<Fingerprint> {
    let identity = conn.peer_identity()?;
    let certs = identity
        .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
        .ok()?;
    tls::peer_fingerprint(&certs)
}

/// One request: parse → apply → reply. Bad input closes the connection.
async fn serve_stream(
    state: &Arc<State>,
    id: SessionId,
    conn: &quinn::Connection,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let request = match tokio::time::timeout(
        state.limits.request_timeout,
        read_frame::<Message, _>(&mut recv, state.limits.max_request_frame),
    )
    .await
    {
        Ok(Ok(msg)) => msg,
        Ok(Err(FrameError::Closed)) => return,
        // The stream was reset or the connection is gone: nobody to answer,
        // and nothing the peer did wrong.
        Ok(Err(FrameError::Io(e))) => {
            debug!(id, "request stream failed: {e}");
            return;
        }
        Ok(Err(e)) => return refuse(state, conn, &mut send, &format!("bad request: {e}")).await,
        // Slow is not malformed (a congested link, a busy server): give up
        // on this stream only, and say why. The stream cap bounds how many
        // such streams a connection can hold at once.
        Err(_) => return give_up(state, id, &mut send, &mut recv).await,
    };
    debug!(id, request = request.kind_name(), "request");
    let reply = match request {
        Message::Register { name, presence } => {
            handlers::register::handle(state, id, name, presence, false).await
        }
        Message::RegisterInvisible { name } => {
            handlers::register::handle(state, id, name, true, true).await
        }
        Message::Lookup { name } => handlers::lookup::handle(state, id, name).await,
        Message::Call {
            to,
            candidates,
            hide_addresses,
        } => handlers::call::handle(state, id, to, candidates, hide_addresses).await,
        Message::Approve { fingerprints } => handlers::approve::handle(state, id, fingerprints),
        Message::AcceptApproved {
            candidates,
            hide_addresses,
        } => {
            let standing = crate::registry::Standing {
                candidates,
                hide_addresses,
            };
            handlers::approve::handle_standing(state, id, standing)
        }
        Message::CallAs {
            from,
            to,
            candidates,
            hide_addresses,
        } => {
            // Two answers on one stream: the registration's, then (only if
            // it succeeded, and was sent) the call's.
            let registered = handlers::register::handle(state, id, from, false, false).await;
            if !matches!(registered, Message::Registered { .. }) {
                registered
            } else if write_reply(state, id, &mut send, &registered).await {
                handlers::call::handle(state, id, to, candidates, hide_addresses).await
            } else {
                return;
            }
        }
        // A watch keeps its stream: it answers as things change.
        Message::Watch { names } => {
            return handlers::watch::serve(state, id, send, recv, names).await
        }
        other => {
            let reason = format!("unexpected message {} as a request", other.kind_name());
            return refuse(state, conn, &mut send, &reason).await;
        }
    };
    if write_reply(state, id, &mut send, &reply).await {
        let _ = send.finish();
    }
}

/// Writes one answer frame within the reply timeout (a peer that grants no
/// credit must not park this task); false if it was not (the stream reset
/// when it timed out).
async fn write_reply(
    state: &State,
    id: SessionId,
    send: &mut quinn::SendStream,
    reply: &Message,
) -> bool {
    if let Message::Error { kind, .. } = reply {
        state.metrics.error(*kind);
    }
    let max = state.limits.max_frame;
    match tokio::time::timeout(state.limits.reply_timeout, write_frame(send, reply, max)).await {
        Ok(Ok(())) => true,
        // The stream or the connection is gone: nobody to answer.
        Ok(Err(e)) => {
            debug!(id, "reply not written: {e}");
            false
        }
        Err(_) => {
            debug!(
                id,
                "reply not taken within {:?}; resetting the stream", state.limits.reply_timeout
            );
            let _ = send.reset(0u32.into());
            false
        }
    }
}

/// Ends a request stream whose request did not arrive in time, with an
/// error frame; the connection stays up.
async fn give_up(
    state: &State,
    id: SessionId,
    send: &mut quinn::SendStream,
    recv: &mut quinn::RecvStream,
) {
    debug!(id, "request not received in time; ending the stream");
    state.metrics.error(ErrorKind::Protocol);
    let msg = Message::error(
        ErrorKind::Protocol,
        format!(
            "request not received within {:?}",
            state.limits.request_timeout
        ),
    );
    let _ = tokio::time::timeout(
        Duration::from_secs(1),
        write_frame(send, &msg, state.limits.max_frame),
    )
    .await;
    let _ = send.finish();
    let _ = recv.stop(0u32.into());
}

/// Tells the peer what it did wrong, then closes its connection.
async fn refuse(
    state: &State,
    conn: &quinn::Connection,
    send: &mut quinn::SendStream,
    reason: &str,
) {
    warn!(remote = %conn.remote_address(), "closing connection: {reason}");
    state.metrics.frames_refused.inc();
    state.metrics.error(ErrorKind::Protocol);
    let msg = Message::error(ErrorKind::Protocol, reason);
    let _ = tokio::time::timeout(
        Duration::from_secs(1),
        write_frame(send, &msg, state.limits.max_frame),
    )
    .await;
    let _ = send.finish();
    // Let the error frame arrive before the connection goes (close discards unsent data).
    let _ = tokio::time::timeout(Duration::from_secs(1), send.stopped()).await;
    conn.close(close::PROTOCOL.into(), reason.as_bytes());
}
