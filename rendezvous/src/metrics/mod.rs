//! Counters the server keeps, and their Prometheus text form.
//!
//! Built on the `prometheus` crate (TiKV's Prometheus client): lock-free
//! integer counters on the hot path, one private [`prometheus::Registry`]
//! per server (so two servers in one process, as in the tests, never share
//! counts), rendered on demand by [`Metrics::render`] in the classic text
//! exposition format for `--metrics ADDR` (see [`crate::http`]).
//!
//! The metric names are an interface: dashboards and alerts use them. They
//! are listed in `rendezvous/OPERATIONS.md`; add new ones freely, do not
//! rename these.

use common::ErrorKind;
use prometheus::{Encoder, IntCounter, IntCounterVec, IntGauge, Opts, TextEncoder};

use crate::registry::Registry;
use crate::relay::driver::SendDrops;
use crate::relay::RelayStats;

mod relay;
mod tcp;

use relay::RelayMetrics;
use tcp::TcpMetrics;

/// Everything the server counts.
#[derive(Clone)]
pub struct Metrics {
    /// Connections that completed the handshake.
    pub connections_total: IntCounter,
    /// Connections refused at a connection limit.
    pub connections_refused: IntCounter,
    /// Handshakes that failed or timed out.
    pub handshakes_failed: IntCounter,
    /// Sources asked to prove their address with a QUIC Retry.
    pub retries: IntCounter,
    /// Connection attempts dropped unanswered: the handshake queue was full
    /// or the source held its share of it.
    pub handshakes_dropped: IntCounter,
    /// Handshakes aborted to give their slot in a full queue to a source
    /// holding fewer.
    pub handshakes_shed: IntCounter,
    /// Successful registrations.
    pub registrations: IntCounter,
    /// Lookups answered.
    pub lookups: IntCounter,
    /// Calls asked for.
    pub calls_requested: IntCounter,
    /// Calls the callee accepted (addresses exchanged).
    pub calls_accepted: IntCounter,
    /// Calls the callee rejected.
    pub calls_rejected: IntCounter,
    /// Calls introduced at once on the callee's standing answer
    /// (`AcceptApproved`), without asking it (also in `calls_accepted`).
    pub calls_preapproved: IntCounter,
    /// Requests refused by a rate limit.
    pub rate_limited: IntCounter,
    /// Calls offered to a callee at another node of the cluster.
    pub cluster_calls: IntCounter,
    /// Malformed or unexpected frames (connection closed).
    pub frames_refused: IntCounter,
    /// One child of `rendezvous_errors_total` per kind, in [`ERROR_KINDS`]
    /// order, so counting an error needs no label lookup.
    errors: Vec<IntCounter>,
    /// Mapping answers sent, `port="main"` then `port="other"` (the
    /// mapping check port).
    mapping_checks: Vec<IntCounter>,
    relay: RelayMetrics,
    tcp: TcpMetrics,
    connected_peers: IntGauge,
    online_names: IntGauge,
    cluster_nodes: IntGauge,
    cluster_names: IntGauge,
    cluster_refused: IntGauge,
    watch_subscriptions: IntGauge,
    watch_streams: IntGauge,
    registry: prometheus::Registry,
}

/// Every error kind, so each has a series (at 0) from the start.
const ERROR_KINDS: [ErrorKind; 18] = [
    ErrorKind::NameTaken,
    ErrorKind::NotFound,
    ErrorKind::Offline,
    ErrorKind::Rejected,
    ErrorKind::Unreachable,
    ErrorKind::BadFingerprint,
    ErrorKind::KeyChanged,
    ErrorKind::InvalidName,
    ErrorKind::VersionMismatch,
    ErrorKind::RateLimited,
    ErrorKind::ServerUnreachable,
    ErrorKind::Protocol,
    ErrorKind::NotRegistered,
    ErrorKind::Replaced,
    ErrorKind::Busy,
    ErrorKind::Internal,
    ErrorKind::TooManyNames,
    ErrorKind::Unavailable,
];

/// Registers a counter in `registry`. Names are fixed and unique, so this
/// cannot fail in practice; if it did, the counter still counts, unexported.
fn counter(registry: &prometheus::Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).unwrap_or_else(|_| unnamed_counter());
    let _ = registry.register(Box::new(c.clone()));
    c
}

fn gauge(registry: &prometheus::Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).unwrap_or_else(|_| unnamed_gauge());
    let _ = registry.register(Box::new(g.clone()));
    g
}

// Valid constant names: these constructors succeed.
#[allow(clippy::expect_used)]
fn unnamed_counter() -> IntCounter {
    IntCounter::new("rendezvous_unnamed_total", "unnamed").expect("valid name")
}

#[allow(clippy::expect_used)]
fn unnamed_gauge() -> IntGauge {
    IntGauge::new("rendezvous_unnamed", "unnamed").expect("valid name")
}

fn errors_vec(registry: &prometheus::Registry) -> Vec<IntCounter> {
    let kinds: Vec<&str> = ERROR_KINDS.iter().map(|k| k.as_str()).collect();
    labelled(
        registry,
        "rendezvous_errors_total",
        "Error answers by kind.",
        "kind",
        &kinds,
    )
}

/// One counter per label value, in `values` order.
#[allow(clippy::expect_used)]
fn labelled(
    registry: &prometheus::Registry,
    name: &str,
    help: &str,
    label: &str,
    values: &[&str],
) -> Vec<IntCounter> {
    // A constant name and one label: construction cannot fail.
    let v = IntCounterVec::new(Opts::new(name, help), &[label]).expect("valid metric");
    let _ = registry.register(Box::new(v.clone()));
    values.iter().map(|l| v.with_label_values(&[l])).collect()
}

impl Default for Metrics {
    fn default() -> Self {
        let r = prometheus::Registry::new();
        Self {
            connected_peers: gauge(
                &r,
                "rendezvous_connected_peers",
                "Peer connections open now.",
            ),
            online_names: gauge(
                &r,
                "rendezvous_online_names",
                "Names with a listen session now.",
            ),
            cluster_nodes: gauge(
                &r,
                "rendezvous_cluster_nodes",
                "Other nodes of the cluster alive now.",
            ),
            cluster_names: gauge(
                &r,
                "rendezvous_cluster_remote_names",
                "Names online at the other nodes.",
            ),
            watch_subscriptions: gauge(
                &r,
                "rendezvous_watch_subscriptions",
                "Names watched now (`peer watch`), one per watch stream and name.",
            ),
            watch_streams: gauge(
                &r,
                "rendezvous_watch_streams",
                "Watch streams open now.",
            ),
            cluster_refused: gauge(
                &r,
                "rendezvous_cluster_refused_messages",
                "Bus messages refused since start (not sealed with the cluster key, stale).",
            ),
            connections_total: counter(
                &r,
                "rendezvous_connections_total",
                "Connections that completed the handshake.",
            ),
            connections_refused: counter(
                &r,
                "rendezvous_connections_refused_total",
                "Connections refused at a limit.",
            ),
            handshakes_failed: counter(
                &r,
                "rendezvous_handshakes_failed_total",
                "Handshakes that failed or timed out.",
            ),
            retries: counter(
                &r,
                "rendezvous_retries_total",
                "Sources asked to prove their address with a QUIC Retry.",
            ),
            handshakes_dropped: counter(
                &r,
                "rendezvous_handshakes_dropped_total",
                "Connection attempts dropped unanswered: the handshake queue was full or the source held its share.",
            ),
            handshakes_shed: counter(
                &r,
                "rendezvous_handshakes_shed_total",
                "Handshakes aborted to give their slot in a full queue to a source holding fewer.",
            ),
            registrations: counter(
                &r,
                "rendezvous_registrations_total",
                "Successful registrations.",
            ),
            lookups: counter(&r, "rendezvous_lookups_total", "Lookups answered."),
            calls_requested: counter(&r, "rendezvous_calls_requested_total", "Calls asked for."),
            calls_accepted: counter(
                &r,
                "rendezvous_calls_accepted_total",
                "Calls accepted by the callee.",
            ),
            calls_preapproved: counter(
                &r,
                "rendezvous_calls_preapproved_total",
                "Calls from approved callers introduced without asking the callee.",
            ),
            calls_rejected: counter(
                &r,
                "rendezvous_calls_rejected_total",
                "Calls rejected by the callee.",
            ),
            rate_limited: counter(
                &r,
                "rendezvous_rate_limited_total",
                "Requests refused by a rate limit.",
            ),
            cluster_calls: counter(
                &r,
                "rendezvous_cluster_calls_total",
                "Calls offered to a callee at another node of the cluster.",
            ),
            frames_refused: counter(
                &r,
                "rendezvous_frames_refused_total",
                "Malformed or unexpected frames.",
            ),
            errors: errors_vec(&r),
            mapping_checks: labelled(
                &r,
                "rendezvous_mapping_checks_total",
                "Mapping check answers sent (UDP checks asking whether the NAT maps per destination), by the port that answered: main, or other (the mapping check port).",
                "port",
                &["main", "other"],
            ),
            relay: RelayMetrics::new(&r),
            tcp: TcpMetrics::new(&r),
            registry: r,
        }
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("registrations", &self.registrations.get())
            .field("lookups", &self.lookups.get())
            .finish_non_exhaustive()
    }
}

impl Metrics {
    /// Counts an error answer of `kind`.
    pub fn error(&self, kind: ErrorKind) {
        if let Some(c) = self.error_counter(kind) {
            c.inc();
        }
    }

    /// Error answers of `kind` so far.
    pub fn errors(&self, kind: ErrorKind) -> u64 {
        self.error_counter(kind).map_or(0, IntCounter::get)
    }

    fn error_counter(&self, kind: ErrorKind) -> Option<&IntCounter> {
        let i = ERROR_KINDS.iter().position(|k| *k == kind)?;
        self.errors.get(i)
    }

    /// The counter of mapping answers the main port (`other: false`) or
    /// the mapping check port (`other: true`) sends.
    pub(crate) fn mapping_checks(&self, other: bool) -> IntCounter {
        self.mapping_checks
            .get(usize::from(other))
            .cloned()
            .unwrap_or_else(unnamed_counter)
    }

    /// Copies the TCP side's counters in (before [`Metrics::render`]).
    pub(crate) fn set_tcp(&self, stats: &crate::tcp::TcpStats, open: usize) {
        self.tcp.set(stats, open);
    }

    /// Copies the relay's counters in (before [`Metrics::render`]).
    pub(crate) fn set_relay(&self, stats: &RelayStats, send: SendDrops) {
        self.relay.set(stats, send);
    }

    /// Copies in the cluster's figures: other nodes alive, names online
    /// there, bus messages refused.
    pub fn set_cluster(&self, nodes: usize, names: usize, refused: u64) {
        self.cluster_nodes.set(gauge_value(nodes));
        self.cluster_names.set(gauge_value(names));
        self.cluster_refused
            .set(i64::try_from(refused).unwrap_or(i64::MAX));
    }

    /// Copies in the watchers' figures: subscriptions and streams.
    pub fn set_watch(&self, subscriptions: usize, streams: usize) {
        self.watch_subscriptions.set(gauge_value(subscriptions));
        self.watch_streams.set(gauge_value(streams));
    }

    /// Prometheus text exposition, with gauges read from the registry.
    pub fn render<H: Clone>(&self, registry: &Registry<H>) -> String {
        self.connected_peers.set(gauge_value(registry.sessions()));
        self.online_names.set(gauge_value(registry.online()));
        let mut out = Vec::new();
        // Encoding into a Vec fails only on invalid metric families,
        // which fixed names cannot produce; an empty scrape says so.
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            return format!("# metrics encoding failed: {e}\n");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

fn gauge_value(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_stable_and_every_error_kind_has_a_series() {
        let m = Metrics::default();
        m.registrations.inc();
        m.error(ErrorKind::NotFound);
        let text = m.render(&Registry::<()>::default());
        assert!(text.contains("# TYPE rendezvous_registrations_total counter"));
        assert!(text.contains("rendezvous_registrations_total 1"));
        assert!(text.contains("rendezvous_connected_peers 0"));
        assert!(text.contains("rendezvous_errors_total{kind=\"not_found\"} 1"));
        assert!(text.contains("rendezvous_errors_total{kind=\"rate_limited\"} 0"));
        m.mapping_checks(true).inc();
        let text = m.render(&Registry::<()>::default());
        assert!(text.contains("rendezvous_mapping_checks_total{port=\"main\"} 0"));
        assert!(text.contains("rendezvous_mapping_checks_total{port=\"other\"} 1"));
        for name in [
            "rendezvous_online_names",
            "rendezvous_connections_total",
            "rendezvous_connections_refused_total",
            "rendezvous_handshakes_failed_total",
            "rendezvous_retries_total",
            "rendezvous_handshakes_dropped_total",
            "rendezvous_handshakes_shed_total",
            "rendezvous_lookups_total",
            "rendezvous_calls_requested_total",
            "rendezvous_calls_accepted_total",
            "rendezvous_calls_preapproved_total",
            "rendezvous_calls_rejected_total",
            "rendezvous_rate_limited_total",
            "rendezvous_frames_refused_total",
            "rendezvous_watch_subscriptions",
            "rendezvous_watch_streams",
        ] {
            assert!(text.contains(&format!("\n{name} ")), "{name} missing");
        }
    }

    #[test]
    fn relay_counters_mirror_the_table_and_never_go_back() {
        let m = Metrics::default();
        let mut stats = RelayStats {
            packets_relayed: 7,
            bytes_relayed: 700,
            active: 2,
            refused_full: 1,
            ..RelayStats::default()
        };
        let send = SendDrops {
            buffer_full: 3,
            error: 0,
        };
        m.set_relay(&stats, send);
        m.set_relay(&stats, send);
        let text = m.render(&Registry::<()>::default());
        for line in [
            "rendezvous_relay_packets_total 7",
            "rendezvous_relay_bytes_total 700",
            "rendezvous_relay_active_calls 2",
            "rendezvous_relay_calls_total 0",
            "rendezvous_relay_allocations_refused_total{reason=\"full\"} 1",
            "rendezvous_relay_allocations_refused_total{reason=\"source\"} 0",
            "rendezvous_relay_drops_total{cause=\"bad_mac\"} 0",
            "rendezvous_relay_drops_total{cause=\"replayed_elsewhere\"} 0",
            "rendezvous_relay_send_dropped_total{reason=\"buffer_full\"} 3",
        ] {
            assert!(text.contains(line), "{line} missing in\n{text}");
        }
        stats.active = 0;
        stats.packets_relayed = 9;
        m.set_relay(&stats, send);
        let text = m.render(&Registry::<()>::default());
        assert!(text.contains("rendezvous_relay_packets_total 9"));
        assert!(text.contains("rendezvous_relay_active_calls 0"));
    }

    #[test]
    fn two_servers_count_apart() {
        let (a, b) = (Metrics::default(), Metrics::default());
        a.lookups.inc();
        assert_eq!((a.lookups.get(), b.lookups.get()), (1, 0));
    }
}
