//! The relay as the server runs it: the [`RelayTable`] behind a mutex,
//! shared by the socket wrapper ([`super::socket`], every frame), the call
//! handler (an allocation at consent) and the expiry task.
//!
//! Every critical section is one table operation, never held across an
//! `await` or a send.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use common::RelayTicket;
use tracing::debug;

use super::config::RelayConfig;
use super::stats::RelayStats;
use super::table::{Action, AllocError, Allocation, PartySpec, RelayTable};

/// Tries at a fresh random call id before giving up (a collision in a table
/// of at most 65,536 of 2³² ids is rare; four in a row is a bug).
const ID_TRIES: usize = 4;

/// The relay's shared state.
#[derive(Debug)]
pub(crate) struct Relay {
    table: Mutex<RelayTable>,
    config: RelayConfig,
    /// Forwarded datagrams the socket could not take (send buffer full).
    send_full: AtomicU64,
    /// Forwarded datagrams the OS refused for another reason.
    send_errors: AtomicU64,
}

/// What the socket could not send, for the metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct SendDrops {
    /// Send buffer full.
    pub(crate) buffer_full: u64,
    /// Any other send error.
    pub(crate) error: u64,
}

/// The two tickets of an allocated call, one per party (each goes only to
/// its own party: it holds that party's frame secret).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tickets {
    /// The caller's, sent in its `CallAccepted`.
    pub caller: RelayTicket,
    /// The callee's, sent in its `Dial`.
    pub callee: RelayTicket,
}

impl Relay {
    /// A relay with these limits and no call.
    pub(crate) fn new(config: RelayConfig) -> Self {
        Self {
            table: Mutex::new(RelayTable::new(config.clone())),
            config,
            send_full: AtomicU64::new(0),
            send_errors: AtomicU64::new(0),
        }
    }

    /// The limits it runs with.
    pub(crate) fn config(&self) -> &RelayConfig {
        &self.config
    }

    /// See [`RelayTable::handle_packet`].
    pub(crate) fn handle_packet(&self, now: Instant, from: SocketAddr, bytes: &[u8]) -> Action {
        lock(&self.table).handle_packet(now, from, bytes)
    }

    /// Allocates a call between `caller` and `callee` (their addresses as
    /// this socket sees them, and the IPs they count under: see
    /// [`PartySpec::source`]): a random call id and a fresh secret each.
    pub(crate) fn allocate(
        &self,
        now: Instant,
        caller: SocketAddr,
        callee: SocketAddr,
        sources: [std::net::IpAddr; 2],
    ) -> Result<Tickets, AllocError> {
        let mut last = None;
        for _ in 0..ID_TRIES {
            let call_id: u32 = rand::random();
            let (caller_secret, callee_secret): ([u8; 32], [u8; 32]) =
                (rand::random(), rand::random());
            let alloc = Allocation {
                call_id,
                caller: PartySpec {
                    addr: caller,
                    source: sources[0],
                    secret: caller_secret,
                },
                callee: PartySpec {
                    addr: callee,
                    source: sources[1],
                    secret: callee_secret,
                },
            };
            match lock(&self.table).allocate(now, alloc) {
                Ok(()) => {
                    return Ok(Tickets {
                        caller: RelayTicket {
                            call_id,
                            secret: caller_secret,
                        },
                        callee: RelayTicket {
                            call_id,
                            secret: callee_secret,
                        },
                    })
                }
                Err(e @ AllocError::Duplicate { .. }) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or(AllocError::Duplicate { call_id: 0 }))
    }

    /// Allocates a call whose ids and secrets another node of the cluster
    /// chose: its half of a call between two nodes, one party here and the
    /// other at that node's relay address.
    pub(crate) fn mirror(&self, now: Instant, alloc: Allocation) -> Result<(), AllocError> {
        lock(&self.table).allocate(now, alloc)
    }

    /// Counts a forwarded datagram the send buffer had no room for.
    pub(crate) fn count_send_full(&self) {
        self.send_full.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a forwarded datagram the OS refused.
    pub(crate) fn count_send_error(&self) {
        self.send_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// The table's counters and the socket's send drops.
    pub(crate) fn stats(&self) -> (RelayStats, SendDrops) {
        let stats = *lock(&self.table).stats();
        let drops = SendDrops {
            buffer_full: self.send_full.load(Ordering::Relaxed),
            error: self.send_errors.load(Ordering::Relaxed),
        };
        (stats, drops)
    }
}

/// Locks the table, recovering from a panicked holder (each critical
/// section is one table operation: the table stays consistent).
fn lock(m: &Mutex<RelayTable>) -> MutexGuard<'_, RelayTable> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Forgets idle calls as their deadlines come, until aborted.
///
/// With no call in the table it sleeps one idle timeout: a call allocated
/// meanwhile is due later than that, so no deadline is ever missed.
pub(crate) async fn expire(relay: Arc<Relay>) {
    loop {
        let next = lock(&relay.table).next_deadline();
        let at = next.unwrap_or_else(|| Instant::now() + relay.config.idle_timeout);
        tokio::time::sleep_until(at.into()).await;
        let now = Instant::now();
        let mut table = lock(&relay.table);
        while let Some(call_id) = table.poll_expired(now) {
            debug!(call_id, "relayed call idle past its timeout: forgotten");
        }
    }
}
