//! `Lookup`: is a name online, and with which key?
//!
//! ```text
//! peer → server   Lookup { name: "alice" }
//! server → peer   LookupResult { name, online, fingerprint }
//!             or  Error { kind: not_found | invalid_name | rate_limited | unavailable, .. }
//! ```
//!
//! Never an address: addresses go only to the two parties of a call the
//! callee accepted (see [`super::call`]). A `listen --invisible` is
//! looked up as offline (with its key), though calls to it ring.

use common::{ErrorKind, Message};
use tracing::warn;

use crate::registry::SessionId;
use crate::state::{lock, State};

pub(crate) async fn handle(state: &State, id: SessionId, name: String) -> Message {
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
    // An online name's key (here or at another node) is its presence's
    // (the store confirmed it at registration): answered without the
    // store, so lookups of online peers still work while the store is
    // down. Only an offline name is read from the store.
    // An invisible listen (`listen --invisible`) is offline to lookups,
    // with its key, as any offline name: callable all the same.
    let visible = state.visible_owner(&lock(&state.registry), &name);
    let (online, fingerprint) = match (visible, state.online_owner(&name)) {
        (Some(fp), _) => (true, fp),
        (None, Some(fp)) => (false, fp),
        (None, None) => match state.store.owner(&name).await {
            Ok(Some(fp)) => (false, fp),
            Ok(None) => {
                return Message::error(
                    ErrorKind::NotFound,
                    format!("no one has registered {name:?}"),
                )
            }
            Err(e) => {
                // Never `not_found` for a name the store could not look up.
                warn!("name store failed: {e}");
                return super::store_failed(&e);
            }
        },
    };
    state.metrics.lookups.inc();
    Message::LookupResult {
        name,
        online,
        fingerprint,
    }
}
