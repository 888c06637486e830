//! The TCP side's series (`rendezvous_tcp_*`), mirrored from
//! [`TcpStats`] at each scrape.

use std::sync::atomic::Ordering;

use prometheus::{IntCounter, IntGauge};

use super::relay::catch_up;
use super::{counter, gauge, labelled};
use crate::tcp::{TcpStats, CLOSE_REASONS};

/// The TCP side's counters, copied from [`TcpStats`] at each scrape.
#[derive(Clone)]
pub(super) struct TcpMetrics {
    peers: IntGauge,
    accepted: IntCounter,
    refused: IntCounter,
    handshakes_failed: IntCounter,
    bytes_in: IntCounter,
    bytes_out: IntCounter,
    dropped: IntCounter,
    /// In [`CLOSE_REASONS`] order.
    closed: Vec<IntCounter>,
}

impl TcpMetrics {
    pub(super) fn new(r: &prometheus::Registry) -> Self {
        Self {
            peers: gauge(r, "rendezvous_tcp_peers", "TCP tunnels open now."),
            accepted: counter(
                r,
                "rendezvous_tcp_connections_total",
                "TCP tunnels that completed TLS and the WebSocket upgrade.",
            ),
            refused: counter(
                r,
                "rendezvous_tcp_refused_total",
                "TCP connections refused at a connection limit (in all or per IP).",
            ),
            handshakes_failed: counter(
                r,
                "rendezvous_tcp_handshakes_failed_total",
                "TCP connections that failed or did not finish TLS and the upgrade in time.",
            ),
            bytes_in: counter(
                r,
                "rendezvous_tcp_bytes_received_total",
                "Datagram bytes received over TCP tunnels.",
            ),
            bytes_out: counter(
                r,
                "rendezvous_tcp_bytes_sent_total",
                "Datagram bytes queued into TCP tunnels.",
            ),
            dropped: counter(
                r,
                "rendezvous_tcp_dropped_total",
                "Datagrams for a TCP tunnel dropped (queue full or gone), as a full UDP buffer would.",
            ),
            closed: labelled(
                r,
                "rendezvous_tcp_closed_total",
                "TCP tunnels ended, by reason.",
                "reason",
                &CLOSE_REASONS,
            ),
        }
    }

    pub(super) fn set(&self, s: &TcpStats, open: usize) {
        let pairs = [
            (&self.accepted, &s.accepted),
            (&self.refused, &s.refused),
            (&self.handshakes_failed, &s.handshakes_failed),
            (&self.bytes_in, &s.bytes_in),
            (&self.bytes_out, &s.bytes_out),
            (&self.dropped, &s.dropped),
        ];
        for (c, v) in pairs {
            catch_up(c, v.load(Ordering::Relaxed));
        }
        for (c, v) in self.closed.iter().zip(&s.closed) {
            catch_up(c, v.load(Ordering::Relaxed));
        }
        self.peers.set(i64::try_from(open).unwrap_or(i64::MAX));
    }
}
