//! `Approve`: a `listen` session names the callers it accepts anyway.
//!
//! ```text
//! listener → server   Approve { fingerprints }     (after Register { presence: true })
//! server → listener   Approved { count }
//!             or      Error { kind: not_registered | protocol, .. }
//! ```
//!
//! Calls from these keys skip the shared per-callee offer limit
//! ([`crate::offers`]), so strangers ringing a user cannot lock its
//! contacts out; each key is held to its own per-(key, callee) bucket
//! instead. At most [`MAX_APPROVED`] keys; each list replaces the last,
//! and it lives as long as the session.
//!
//! ```text
//! listener → server   AcceptApproved { candidates, hide_addresses }   (after Approve)
//! server → listener   Approved { count }
//!             or      Error { kind: not_registered, .. }
//! ```
//!
//! With it, the approved callers' calls are not offered: the broker takes
//! this standing `Accept` as the callee's answer, introduces both sides at
//! once and tells the callee with `Preapproved` then `Dial` (a round trip to
//! the callee saved). It replaces the last one, and lives as long as the
//! session.

use std::sync::Arc;

use common::messages::MAX_APPROVED;
use common::{ErrorKind, Fingerprint, Message};

use crate::registry::{RegistryError, SessionId, Standing};
use crate::state::{lock, State};

pub(crate) fn handle(state: &Arc<State>, id: SessionId, fingerprints: Vec<Fingerprint>) -> Message {
    if fingerprints.len() > MAX_APPROVED {
        return Message::error(
            ErrorKind::Protocol,
            format!(
                "{} approved keys; at most {MAX_APPROVED}",
                fingerprints.len()
            ),
        );
    }
    let approved = lock(&state.registry).approve(id, fingerprints);
    reply(approved, "approve callers")
}

/// `AcceptApproved`: session `id` accepts its approved callers without
/// being asked.
pub(crate) fn handle_standing(state: &Arc<State>, id: SessionId, standing: Standing) -> Message {
    let standing = lock(&state.registry).accept_approved(id, standing);
    reply(standing, "accept callers without being asked")
}

/// `Approved { count }`, or why not (`what` the session may not do).
fn reply(result: Result<usize, RegistryError>, what: &str) -> Message {
    match result {
        Ok(count) => Message::Approved {
            count: u32::try_from(count).unwrap_or(u32::MAX),
        },
        Err(RegistryError::NotRegistered) => Message::error(
            ErrorKind::NotRegistered,
            format!("only a listen session (Register with presence) may {what}"),
        ),
        Err(e) => Message::error(ErrorKind::Internal, e.to_string()),
    }
}
