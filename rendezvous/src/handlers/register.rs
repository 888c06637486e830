//! `Register`: claim a name for the connection's key.
//!
//! ```text
//! peer → server   Register { name: "alice", presence: true }
//! server → peer   Registered { name, fingerprint, observed_addr }
//!             or  Error { kind: name_taken | invalid_name | rate_limited
//!                              | too_many_names | unavailable | protocol, .. }
//! ```
//!
//! Everything that can refuse a registration is checked before the durable
//! claim, so a refused registration never binds a name: the name rules, one
//! name per connection (and one registration in flight per connection), the
//! source's registration rate. The store then checks the name is free and
//! the key holds fewer than [`crate::Limits::max_names_per_key`] names, in
//! the claim's own transaction, and commits it before the answer is sent.
//! A store that cannot answer (PostgreSQL down) gives `unavailable`: the
//! peer tries again in a few seconds.
//! With `presence`, this connection becomes the name's `listen` session; an
//! older one is closed with [`common::error::close::REPLACED`].
//! `RegisterInvisible { name }` is `Register { name, presence: true }` for
//! a `listen --invisible`: callable, shown offline to lookups and watchers.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use common::error::close;
use common::{ErrorKind, Message};
use tracing::{info, warn};

use crate::registry::{RegistryError, SessionId};
use crate::state::{lock, State};
use crate::store::StoreError;

pub(crate) async fn handle(
    state: &Arc<State>,
    id: SessionId,
    name: String,
    presence: bool,
    invisible: bool,
) -> Message {
    if let Err(reply) = super::check_name(&name) {
        return reply;
    }
    // Where the connection is now: a re-registration after a NAT rebinding
    // (quinn followed the peer) learns its new address, and calls to it use it.
    let session = {
        let mut registry = lock(&state.registry);
        let found = registry.session(id).map(|s| {
            let now = common::candidates::canonical(s.handle.remote_address());
            (s.fingerprint, now, s.name.clone())
        });
        if let Some((_, now, _)) = found {
            registry.observe(id, now);
        }
        found
    };
    let Some((fingerprint, observed, current)) = session else {
        return Message::error(ErrorKind::Internal, "session closed");
    };
    if let Some(current) = current.filter(|c| *c != name) {
        return already_registered(&current);
    }
    let Some(_claiming) = Claiming::start(&state.claiming, id) else {
        return Message::error(
            ErrorKind::Protocol,
            "a registration is already in progress on this connection",
        );
    };
    if !state.allow(state.source_ip(observed), |r| &mut r.register) {
        return super::rate_limited("registrations");
    }
    if let Err(reply) = claim(state, &name, fingerprint).await {
        return reply;
    }
    let registered = {
        let mut registry = lock(&state.registry);
        let registered = registry.register(id, &name, presence);
        if registered.is_ok() {
            registry.set_invisible(id, invisible);
        }
        // Announced under the registry lock, as `Counted` announces the
        // departure: a session closing meanwhile cannot leave the name
        // announced online after its Down.
        if let (Ok(_), true) = (&registered, presence) {
            state.presence().went_online(&name, fingerprint, invisible);
            // A newer listen of the same key changes nothing a watcher sees.
            state.touch(&registry, Some(std::slice::from_ref(&name)));
        }
        if registered.is_ok() {
            // Watched as "not registered"? It is now (with its key).
            let wake = lock(&state.watchers).bound(&name, fingerprint);
            wake.into_iter().for_each(|n| n.notify_one());
        }
        registered
    };
    match registered {
        Ok(reg) => {
            if let Some((_, old)) = reg.replaced {
                info!(%name, old = %old.remote_address(), new = %observed, "a newer listen session replaces an older one");
                old.close(
                    close::REPLACED.into(),
                    b"replaced by a newer listen session for this name",
                );
            }
            state.metrics.registrations.inc();
            Message::Registered {
                name,
                fingerprint,
                // A TCP peer is told its real address, not the virtual one.
                observed_addr: state.real_addr(observed),
            }
        }
        Err(RegistryError::OtherName { current }) => already_registered(&current),
        Err(e) => Message::error(ErrorKind::Internal, e.to_string()),
    }
}

fn already_registered(current: &str) -> Message {
    Message::error(
        ErrorKind::Protocol,
        format!("this connection is already registered as {current:?}"),
    )
}

/// The durable claim; `Err(reply)` when the store refuses or fails.
async fn claim(state: &State, name: &str, fingerprint: common::Fingerprint) -> Result<(), Message> {
    let max = state.limits.max_names_per_key;
    match state.store.claim(name, fingerprint, max).await {
        Ok(_) => Ok(()),
        Err(StoreError::NameTaken { name }) => Err(Message::error(
            ErrorKind::NameTaken,
            format!("the name {name:?} belongs to another key; choose another name"),
        )),
        Err(StoreError::TooManyNames { max }) => Err(Message::error(
            ErrorKind::TooManyNames,
            format!("this key already holds {max} names, the most this server allows; register one of them"),
        )),
        Err(e) => {
            warn!("name store failed: {e}");
            Err(super::store_failed(&e))
        }
    }
}

/// Marks a session as having a registration in flight, until dropped: two
/// concurrent `Register`s on one connection cannot both claim a name.
struct Claiming<'a> {
    set: &'a Mutex<HashSet<SessionId>>,
    id: SessionId,
}

impl<'a> Claiming<'a> {
    fn start(set: &'a Mutex<HashSet<SessionId>>, id: SessionId) -> Option<Self> {
        lock(set).insert(id).then_some(Self { set, id })
    }
}

impl Drop for Claiming<'_> {
    fn drop(&mut self) {
        lock(self.set).remove(&self.id);
    }
}
