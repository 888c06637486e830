//! `Lookup`: is a name online, and with which key?
//!
//! ```text
//! peer → server   Lookup { name: "alice" }
//! server → peer   LookupResult { name, online, fingerprint }
//!             or  Error { kind: not_found | invalid_name | rate_limited, .. }
//! ```
//!
//! Never an address: addresses go only to the two parties of a call the
//! callee accepted (see [`super::call`]).

use common::{ErrorKind, Message};
use tracing::warn;

use crate::registry::SessionId;
use crate::state::{lock, State};

pub(crate) fn handle(state: &State, id: SessionId, name: String) -> Message {
    if let Err(reply) = super::check_name(&name) {
        return reply;
    }
    // Where the connection is now (quinn follows a migration, e.g. a TCP
    // peer back on UDP), not where it registered.
    let observed = lock(&state.registry)
        .session(id)
        .map(|s| common::candidates::canonical(s.handle.remote_address()));
    let ip = observed.map(|a| state.source_ip(a));
    if let Some(ip) = ip {
        if !state.allow(ip, |r| &mut r.lookup) {
            return super::rate_limited("lookups");
        }
    }
    // An online name's key is known without the store (see `online_owner`).
    if let Some(fingerprint) = state.online_owner(&name) {
        state.metrics.lookups.inc();
        return Message::LookupResult {
            name,
            online: true,
            fingerprint,
        };
    }
    let fingerprint = match state.store.owner(&name) {
        Ok(Some(fp)) => fp,
        Ok(None) => {
            return Message::error(
                ErrorKind::NotFound,
                format!("no one has registered {name:?}"),
            )
        }
        Err(e) => {
            warn!("name store failed: {e}");
            return Message::error(
                ErrorKind::Internal,
                "the server could not read its names; try again",
            );
        }
    };
    let online = false;
    state.metrics.lookups.inc();
    Message::LookupResult {
        name,
        online,
        fingerprint,
    }
}
