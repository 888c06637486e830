//! Letting callers in: the accept loop of a [`crate::Peer`]'s one socket.
//!
//! Only keys of calls we accepted pass the handshake (the TLS verifier asks
//! [`crate::endpoint::ExpectedCalls`]); nothing is let in while no call is
//! expected. Strangers can still send Initials while one is, so:
//! - at most [`crate::Limits::max_peer_handshakes`] handshakes run at once,
//!   each for at most [`crate::Timing::peer_handshake_timeout`]; attempts
//!   past it are dropped unanswered (the caller's QUIC stack sends again);
//! - once more than half of them are in use, a source that has not proved
//!   its address is asked for a Retry first: a spoofed source never comes
//!   back, so it cannot hold a slot. In the common case (few handshakes) no
//!   Retry is asked, and direct call setup keeps its speed;
//! - the slot is released as soon as the handshake is done: the wait for
//!   the first stream holds none;
//! - a key has at most [`MAX_UNCLAIMED_PER_CALL`] authenticated connections
//!   waiting for their first stream per expected call (a caller dials at
//!   most 1 + 8 candidates); more are closed at once.
//!
//! The first connection of the key that opens a stream becomes the call
//! ([`crate::endpoint::ExpectedCalls::claim`]): one accepted offer is one
//! call, later connections of that key are refused.

use std::sync::Weak;

use common::candidates::canonical;
use tokio::sync::mpsc;
use tracing::debug;

use crate::call::{Call, CallPaths};
use crate::endpoint::{remote_fingerprint, Expected};
use crate::error::Error;
use crate::shared::Inner;
use crate::Event;

/// Most authenticated connections of one key that may wait for their first
/// stream, per call expected from it: a caller dials at most 1 observed + 8
/// local candidates at once.
pub(crate) const MAX_UNCLAIMED_PER_CALL: usize = 1 + common::candidates::MAX_LOCAL_CANDIDATES;

/// How long a connected call waits for its path table's first choice
/// before `connected` names the path its packets came in on.
const SETTLE_WAIT: std::time::Duration = std::time::Duration::from_millis(300);

/// The close code for a connection no accepted call is waiting for.
const NOT_EXPECTED: u32 = common::error::close::PROTOCOL;

/// Lets in peer connections for calls we accepted; refuses the rest (see
/// the module docs for the limits).
pub(crate) async fn accept_loop(inner: Weak<Inner>) {
    loop {
        let Some(endpoint) = inner.upgrade().map(|i| i.socket.endpoint.clone()) else {
            return;
        };
        let Some(incoming) = endpoint.accept().await else {
            return;
        };
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let remote = incoming.remote_address();
        if strong.socket.expected.is_empty() {
            debug!(%remote, "refusing a connection: no call expected");
            incoming.refuse();
            continue;
        }
        let handshakes = &strong.socket.handshakes;
        let in_use = strong
            .config
            .limits
            .max_peer_handshakes
            .saturating_sub(handshakes.available_permits());
        if scarce(in_use, strong.config.limits.max_peer_handshakes)
            && !incoming.remote_address_validated()
            && incoming.may_retry()
        {
            debug!(%remote, in_use, "handshake slots are scarce: asking for a Retry");
            if let Err(e) = incoming.retry() {
                e.into_incoming().ignore();
            }
            continue;
        }
        let Ok(permit) = handshakes.clone().try_acquire_owned() else {
            debug!(%remote, "dropping a connection attempt: too many handshakes");
            incoming.ignore();
            continue;
        };
        tokio::spawn(async move {
            let conn = handshake(&strong, incoming).await;
            // The slot is for the handshake only, not the first-stream wait.
            drop(permit);
            let Some(conn) = conn else {
                return;
            };
            if let Some((call, expected)) = first_stream(&strong, conn).await {
                hand_over(&strong, call, &expected).await;
            }
        });
    }
}

/// Whether `in_use` of `max` handshake slots is so many that unproven
/// sources are asked for a Retry: more than half.
fn scarce(in_use: usize, max: usize) -> bool {
    in_use * 2 > max
}

/// The handshake, within [`crate::Timing::peer_handshake_timeout`].
async fn handshake(inner: &Inner, incoming: quinn::Incoming) -> Option<quinn::Connection> {
    let remote = canonical(incoming.remote_address());
    let connecting = incoming.accept().ok()?;
    match tokio::time::timeout(inner.config.timing.peer_handshake_timeout, connecting).await {
        Ok(Ok(conn)) => Some(conn),
        Ok(Err(e)) => {
            debug!(%remote, "peer handshake failed: {e}");
            None
        }
        Err(_) => {
            debug!(%remote, "peer handshake timed out");
            None
        }
    }
}

/// Waits for the first stream, which makes this connection the call its
/// key was expected for ([`crate::endpoint::ExpectedCalls::claim`]).
async fn first_stream(inner: &Inner, conn: quinn::Connection) -> Option<(Call, Expected)> {
    let remote = canonical(conn.remote_address());
    let fp = remote_fingerprint(&conn)?;
    let expected_calls = &inner.socket.expected;
    let Some(found) = expected_calls.find(&fp, remote) else {
        conn.close(NOT_EXPECTED.into(), b"no call expected from this key");
        return None;
    };
    // The handshake is done: the call's probes switch to the connection's
    // own key now, as the caller's do (not only once a stream came).
    if let Some(handle) = &found.path {
        if handle.virtual_addr_is(remote) {
            handle.attach(conn.clone());
        }
    }
    let Some(_unclaimed) = expected_calls.hold_unclaimed(&fp, MAX_UNCLAIMED_PER_CALL) else {
        debug!(%remote, "refusing a connection: too many unclaimed ones of this key");
        conn.close(NOT_EXPECTED.into(), b"too many connections for this call");
        return None;
    };
    // A caller dials all candidates at once and keeps the first that
    // authenticates; the others close without opening a stream.
    let timeout = inner.config.timing.first_stream_timeout;
    let first = match tokio::time::timeout(timeout, conn.accept_bi()).await {
        Ok(Ok(stream)) => stream,
        _ => {
            debug!(%remote, "peer connection closed before use (a duplicate path)");
            return None;
        }
    };
    // One accepted offer is one call: a second connection of this key
    // (the call already up, or its window spent) finds nothing left.
    let Some(expected) = expected_calls.claim(&fp, remote) else {
        debug!(%remote, "refusing a second connection for one accepted call");
        conn.close(NOT_EXPECTED.into(), b"this call is already connected");
        return None;
    };
    let setup = expected.offered_at.elapsed();
    let paths = match &expected.path {
        Some(handle) => {
            handle.attach(conn.clone());
            let mut handle = handle.clone();
            let settled = handle.settled(&inner.socket.router, SETTLE_WAIT).await;
            handle.call_paths(&inner.socket.router, settled)
        }
        // Not at a virtual address: an old-style direct connection.
        None => CallPaths::fixed(remote),
    };
    let call = Call::new(conn, expected.name.clone(), fp, setup, paths).with_first_stream(first);
    Some((call, expected))
}

/// Records the caller's key and hands the call to the [`crate::Listener`].
/// If another process pinned another key for the caller's name since the
/// offer was checked, the call is refused (`key_changed`), not recorded
/// over it.
async fn hand_over(inner: &Inner, call: Call, expected: &Expected) {
    let recorded = inner
        .known
        .record_if_async(&expected.name, expected.seen, &expected.fingerprint)
        .await;
    match recorded {
        Ok(()) => {}
        Err(e @ Error::KeyChanged { .. }) => {
            debug!("refusing the call of {}: {e}", expected.name);
            let _ = inner.events.send(Event::error(&e));
            call.close();
            return;
        }
        Err(e) => debug!("cannot record {} in known_peers: {e}", expected.name),
    }
    let _ = inner.events.send(call.connected_event());
    let tx = inner
        .incoming
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    match tx {
        Some(tx) => {
            if let Err(mpsc::error::SendError(Ok(call))) = tx.send(Ok(call)).await {
                call.close();
            }
        }
        None => call.close(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_only_past_half_the_slots() {
        assert!(!scarce(0, 16));
        assert!(!scarce(8, 16));
        assert!(scarce(9, 16));
        assert!(scarce(16, 16));
        assert!(!scarce(0, 1));
        assert!(scarce(1, 1));
    }
}
