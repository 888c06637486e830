//! A connection's place in the server's books, handed back however its task ends.
//!
//! Admission counts each connection and handshake against its source
//! ([`crate::admission::Sources`]); the registry holds its session. If the
//! connection's task only gave them back after a normal return, a panic
//! anywhere in it would leak them, and a source that leaked its
//! connection quota would be refused forever. [`Counted`] gives both back
//! when it is dropped: on return, on cancellation, and while unwinding.

use std::sync::Arc;

use tracing::debug;

use crate::admission::Ticket;
use crate::registry::SessionId;
use crate::state::{lock, State};

/// Owns one admitted connection's counts until dropped.
pub(crate) struct Counted {
    state: Arc<State>,
    ticket: Ticket,
    session: Option<SessionId>,
}

impl Counted {
    /// Takes charge of the counts of `ticket` (from [`crate::admission::Sources::admit`]).
    pub(crate) fn new(state: Arc<State>, ticket: Ticket) -> Self {
        Self {
            state,
            ticket,
            session: None,
        }
    }

    /// The registry session opened for the connection, closed on drop too.
    pub(crate) fn set_session(&mut self, id: SessionId) {
        self.session = Some(id);
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        if let Some(id) = self.session.take() {
            // The departure is announced under the registry lock, as the
            // arrival is (`handlers::register`), so the two keep their order.
            let mut registry = lock(&self.state.registry);
            if let Some(name) = registry.close(id) {
                debug!(%name, "went offline");
                self.state.presence().went_offline(&name);
                // Still online if it moved to another node meanwhile.
                self.state
                    .touch(&registry, Some(std::slice::from_ref(&name)));
            }
        }
        lock(&self.state.rates)
            .sources
            .connection_closed(self.ticket);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admission::Admission;
    use crate::config::Limits;
    use crate::store::MemoryStore;

    /// A connection's task that panics (in its handshake or any handler on
    /// its task) still gives back its handshake and connection counts.
    #[tokio::test]
    async fn a_panicking_connection_task_gives_its_counts_back() {
        let limits = Limits {
            max_connections_per_ip: 1,
            ..Limits::default()
        };
        let state = Arc::new(State::new(limits, Arc::new(MemoryStore::default())));
        let ip = "192.0.2.1".parse().expect("ip");
        let admit = |state: &State| {
            let quotas = state.limits.quotas();
            let (abort, _aborted) = tokio::sync::oneshot::channel();
            lock(&state.rates)
                .sources
                .admit(ip, true, 0, quotas, || abort)
        };
        let first = admit(&state);
        assert_eq!(first.admission, Admission::Accept);
        let ticket = first.ticket.expect("ticket");
        let task_state = state.clone();
        let task = tokio::spawn(async move {
            let _counted = Counted::new(task_state, ticket);
            panic!("a bug in a handler");
        });
        assert!(task.await.expect_err("the task panicked").is_panic());
        {
            let rates = lock(&state.rates);
            assert_eq!(rates.sources.pending(), 0, "the handshake leaked");
            assert_eq!(rates.sources.sources(), 0, "the connection leaked");
        }
        assert_eq!(
            admit(&state).admission,
            Admission::Accept,
            "the source is not refused for a connection that is gone"
        );
    }
}
