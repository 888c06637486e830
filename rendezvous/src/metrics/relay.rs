//! The relay's series (`rendezvous_relay_*`), mirrored from
//! [`RelayStats`] at each scrape: the table counts on its own hot path.

use prometheus::{IntCounter, IntGauge};

use super::{counter, gauge, labelled};
use crate::relay::driver::SendDrops;
use crate::relay::{DropCause, RelayStats};

/// The relay's counters, copied from [`RelayStats`] at each scrape (the
/// table counts on its own hot path; these only mirror it).
#[derive(Clone)]
pub(super) struct RelayMetrics {
    packets: IntCounter,
    bytes: IntCounter,
    calls: IntCounter,
    allocations: IntCounter,
    expired: IntCounter,
    ended: IntCounter,
    shed: IntCounter,
    roams: IntCounter,
    active: IntGauge,
    /// `source`, `full`.
    refused: Vec<IntCounter>,
    /// In [`DropCause::ALL`] order.
    drops: Vec<IntCounter>,
    /// `buffer_full`, `error`.
    send_dropped: Vec<IntCounter>,
}

impl RelayMetrics {
    pub(super) fn new(r: &prometheus::Registry) -> Self {
        let causes: Vec<&str> = DropCause::ALL.iter().map(|c| c.label()).collect();
        Self {
            packets: counter(r, "rendezvous_relay_packets_total", "Datagrams relayed."),
            bytes: counter(
                r,
                "rendezvous_relay_bytes_total",
                "Bytes relayed (whole datagrams, relay header included).",
            ),
            calls: counter(
                r,
                "rendezvous_relay_calls_total",
                "Calls that relayed at least one datagram.",
            ),
            allocations: counter(
                r,
                "rendezvous_relay_allocations_total",
                "Relay allocations made at consent.",
            ),
            expired: counter(
                r,
                "rendezvous_relay_expired_total",
                "Relayed calls forgotten after their idle timeout.",
            ),
            ended: counter(
                r,
                "rendezvous_relay_ended_total",
                "Relayed calls a party ended with an end-of-call frame.",
            ),
            shed: counter(
                r,
                "rendezvous_relay_shed_total",
                "Quiet relayed calls shed to make room in a full table.",
            ),
            roams: counter(
                r,
                "rendezvous_relay_roams_total",
                "Times a party's relay address moved (on a fresh counter).",
            ),
            active: gauge(
                r,
                "rendezvous_relay_active_calls",
                "Calls in the relay table now.",
            ),
            refused: labelled(
                r,
                "rendezvous_relay_allocations_refused_total",
                "Relay allocations refused (the call went on without relay), by reason.",
                "reason",
                &["source", "full"],
            ),
            drops: labelled(
                r,
                "rendezvous_relay_drops_total",
                "Relay frames dropped, by cause.",
                "cause",
                &causes,
            ),
            send_dropped: labelled(
                r,
                "rendezvous_relay_send_dropped_total",
                "Frames the relay passed but the socket did not send, by reason.",
                "reason",
                &["buffer_full", "error"],
            ),
        }
    }

    pub(super) fn set(&self, s: &RelayStats, send: SendDrops) {
        let pairs = [
            (&self.packets, s.packets_relayed),
            (&self.bytes, s.bytes_relayed),
            (&self.calls, s.calls_relayed),
            (&self.allocations, s.allocations),
            (&self.expired, s.expired),
            (&self.ended, s.ended),
            (&self.shed, s.shed),
            (&self.roams, s.roams),
        ];
        for (c, v) in pairs {
            catch_up(c, v);
        }
        for (c, v) in self.refused.iter().zip([s.refused_source, s.refused_full]) {
            catch_up(c, v);
        }
        for (c, cause) in self.drops.iter().zip(DropCause::ALL) {
            catch_up(c, s.drops.get(cause));
        }
        for (c, v) in self.send_dropped.iter().zip([send.buffer_full, send.error]) {
            catch_up(c, v);
        }
        self.active.set(i64::try_from(s.active).unwrap_or(i64::MAX));
    }
}

/// Moves a mirrored counter up to `value` (the source only rises).
pub(super) fn catch_up(c: &IntCounter, value: u64) {
    let now = c.get();
    if value > now {
        c.inc_by(value - now);
    }
}
