//! The relay: forwards the opaque QUIC packets of accepted calls between
//! their two parties, for pairs with no direct path (DESIGN §6).
//!
//! The core ([`table`], [`config`], [`stats`]) is sans-IO: it owns no socket
//! and reads no clock, so it can run inside `rendezvous` (demultiplexed from
//! QUIC on the same UDP port by the first byte, see [`common::relay_frame`])
//! or alone on another host. Inside `rendezvous` two thin drivers run it:
//! `crate::socket` (quinn's socket with the relay's frames taken out of every
//! receive and forwarded) and `driver` (the table behind a mutex, the
//! allocation at consent, the idle-expiry task). The flow:
//!
//! 1. **Consent.** The callee accepts; the server picks a relay call id and a
//!    32-byte secret per party, sends each party its own, and calls
//!    [`RelayTable::allocate`] with both parties' observed addresses. No
//!    allocation round trip: the first relayed packet can follow at once.
//! 2. **Frames.** A party sends `header ‖ QUIC packet` to the relay; the header
//!    carries the call id, its party, a rising counter and a tag over the
//!    header under its key. [`RelayTable::handle_packet`] checks, in order:
//!    parse, known call, not expired, tag, replay window, byte cap, rate —
//!    and answers [`Action::Forward`] (send the datagram unchanged to the
//!    other party's current address) or [`Action::Drop`] with a
//!    [`DropCause`].
//! 3. **Roaming.** A party's address moves only on a valid tag with a
//!    counter above every one seen from it, so a replayed frame from a
//!    spoofed address neither gets forwarded nor takes the call over.
//! 4. **End.** [`RelayTable::remove`] when the server learns the call ended;
//!    otherwise [`RelayTable::poll_expired`] forgets it after
//!    [`RelayConfig::idle_timeout`] without an authentic packet.
//!
//! What the relay cannot do: read or forge the call (QUIC/TLS is end to end
//! between the peers), or forge a party's frames (only that party holds its
//! key). What a party can do: point its own side at another address with a
//! fresh frame from there (it holds its key); what reaches that address is
//! the other party's QUIC traffic, which stops within a round trip or two
//! without acknowledgements, and never more than the call's rate.
//!
//! Bounded: each call is one fixed-size entry (no heap of its own, under
//! 2 KiB), at most [`RelayConfig::max_allocations`] of them, at most
//! [`RelayConfig::max_per_source`] per source; each direction within
//! [`RelayConfig::rate`], each call within
//! [`RelayConfig::max_bytes_per_call`]. Everything is counted in
//! [`RelayStats`].
//!
//! # Layout
//!
//! - [`config`]: the limits, with defaults.
//! - [`table`]: the allocation table and the per-datagram checks.
//! - [`stats`]: the counters and drop causes for the metrics.
//! - `window`: the replay window and byte bucket.
//! - `driver`: the shared table, allocation with fresh ids and secrets, expiry.
//! - `crate::socket`: the server's `AsyncUdpSocket` wrapper that demultiplexes and forwards.

pub mod config;
pub(crate) mod driver;
pub mod stats;
pub mod table;
mod window;

#[cfg(test)]
mod tests;

pub use config::{ByteRate, ByteRateError, RelayConfig};
pub use driver::Tickets;
pub use stats::{DropCause, DropCounts, RelayStats};
pub use table::{Action, AllocError, Allocation, PartySpec, RelayTable, CALL_ENTRY_SIZE};
