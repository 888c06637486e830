//! `Call`: broker a consent-first introduction between two peers.
//!
//! ```text
//! caller → server   Call { to: "alice", candidates }
//! server → callee   IncomingCall { call_id, from: "bob", fingerprint }   (new stream, no addresses)
//! callee → server   Accept { candidates }  |  Reject { reason }
//! server → caller   CallAccepted { call_id, fingerprint, candidates: alice observed + vetted }
//! server → callee   Dial { call_id, candidates: bob observed + vetted }  (at the same moment)
//!             or    Error { kind: not_registered | not_found | offline | rejected | unreachable, .. }
//! ```
//!
//! Nobody learns an address before the callee accepts. Candidate lists are
//! vetted by [`common::candidates::vet`]: the observed address first, then
//! at most a few private ones. After the two frames leave, the server keeps
//! no state about the call.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use common::candidates::{vet, MAX_LOCAL_CANDIDATES};
use common::framing::{read_frame, write_frame};
use common::{ErrorKind, Message};
use tracing::debug;

use crate::registry::{RegistryError, SessionId};
use crate::server::{lock, State};

pub(crate) async fn handle(
    state: &Arc<State>,
    id: SessionId,
    to: String,
    candidates: Vec<SocketAddr>,
) -> Message {
    state.metrics.calls_requested.inc();
    if let Err(reply) = super::check_name(&to) {
        return reply;
    }
    let caller = {
        let registry = lock(&state.registry);
        match (registry.name_of(id), registry.session(id)) {
            (Ok(name), Some(s)) => (name.to_owned(), s.fingerprint, s.observed),
            (Err(RegistryError::NotRegistered), _) => {
                return Message::error(ErrorKind::NotRegistered, "register a name before calling");
            }
            _ => return Message::error(ErrorKind::Internal, "session closed"),
        }
    };
    let (caller_name, caller_fp, caller_observed) = caller;
    if !state.allow(caller_observed.ip(), |r| &mut r.call) {
        return super::rate_limited("calls");
    }
    let owner = match state.store.owner(&to) {
        Ok(Some(fp)) => fp,
        Ok(None) => {
            return Message::error(ErrorKind::NotFound, format!("no one has registered {to:?}"))
        }
        Err(e) => return Message::error(ErrorKind::Internal, format!("name store: {e}")),
    };
    let callee = lock(&state.registry)
        .present(&to)
        .map(|(_, s)| (s.handle.clone(), s.observed));
    let Some((callee_conn, callee_observed)) = callee else {
        return Message::error(ErrorKind::Offline, format!("{to} is not online"));
    };
    let call_id = state.next_call_id.fetch_add(1, Ordering::Relaxed);
    let offer = Message::IncomingCall {
        call_id,
        from: caller_name.clone(),
        fingerprint: caller_fp,
    };
    let max = state.limits.max_frame;
    let exchange = async {
        let (mut send, mut recv) = callee_conn.open_bi().await.map_err(|e| e.to_string())?;
        write_frame(&mut send, &offer, max)
            .await
            .map_err(|e| e.to_string())?;
        let answer: Message = read_frame(&mut recv, max)
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>((send, answer))
    };
    let (mut callee_send, answer) =
        match tokio::time::timeout(state.limits.answer_timeout, exchange).await {
            Ok(Ok(done)) => done,
            Ok(Err(e)) => {
                debug!(call_id, "callee {to} could not be asked: {e}");
                return Message::error(
                    ErrorKind::Offline,
                    format!("{to} went offline before answering"),
                );
            }
            Err(_) => {
                return Message::error(
                    ErrorKind::Unreachable,
                    format!(
                        "{to} did not answer within {:?}",
                        state.limits.answer_timeout
                    ),
                );
            }
        };
    match answer {
        Message::Accept {
            candidates: callee_candidates,
        } => {
            state.metrics.calls_accepted.inc();
            debug!(call_id, from = %caller_name, %to, "call accepted");
            let dial = Message::Dial {
                call_id,
                candidates: vet(caller_observed, &candidates, MAX_LOCAL_CANDIDATES),
            };
            // The caller's reply is written by the driver right after we return;
            // the callee's Dial leaves now, so both go out at the same moment.
            let _ = write_frame(&mut callee_send, &dial, max).await;
            let _ = callee_send.finish();
            Message::CallAccepted {
                call_id,
                fingerprint: owner,
                candidates: vet(callee_observed, &callee_candidates, MAX_LOCAL_CANDIDATES),
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
