//! `Register`: claim a name for the connection's key.
//!
//! ```text
//! peer → server   Register { name: "alice", presence: true }
//! server → peer   Registered { name, fingerprint, observed_addr }
//!             or  Error { kind: name_taken | invalid_name | rate_limited, .. }
//! ```
//!
//! The binding is committed to the durable store before the answer is sent.
//! With `presence`, this connection becomes the name's `listen` session; an
//! older one is closed with [`common::error::close::REPLACED`].

use common::error::close;
use common::{ErrorKind, Message};
use tracing::{info, warn};

use crate::registry::{RegistryError, SessionId};
use crate::server::{lock, State};
use crate::store::StoreError;

pub(crate) async fn handle(
    state: &std::sync::Arc<State>,
    id: SessionId,
    name: String,
    presence: bool,
) -> Message {
    if let Err(reply) = super::check_name(&name) {
        return reply;
    }
    let Some((fingerprint, observed)) = lock(&state.registry)
        .session(id)
        .map(|s| (s.fingerprint, s.observed))
    else {
        return Message::error(ErrorKind::Internal, "session closed");
    };
    if !state.allow(observed.ip(), |r| &mut r.register) {
        return super::rate_limited("registrations");
    }
    let store = state.store.clone();
    let claim_name = name.clone();
    let claimed = tokio::task::spawn_blocking(move || store.claim(&claim_name, fingerprint)).await;
    match claimed {
        Ok(Ok(_)) => {}
        Ok(Err(StoreError::NameTaken { name })) => {
            return Message::error(
                ErrorKind::NameTaken,
                format!("the name {name:?} belongs to another key; choose another name"),
            );
        }
        Ok(Err(e)) => {
            warn!("name store failed: {e}");
            return Message::error(
                ErrorKind::Internal,
                "the server could not store the name; try again",
            );
        }
        Err(e) => {
            warn!("name store task failed: {e}");
            return Message::error(
                ErrorKind::Internal,
                "the server could not store the name; try again",
            );
        }
    }
    let registered = lock(&state.registry).register(id, &name, presence);
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
                observed_addr: observed,
            }
        }
        Err(RegistryError::OtherName { current }) => Message::error(
            ErrorKind::Protocol,
            format!("this connection is already registered as {current:?}"),
        ),
        Err(e) => Message::error(ErrorKind::Internal, e.to_string()),
    }
}
