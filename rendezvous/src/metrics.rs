//! Counters the server keeps, and their Prometheus text form.
//!
//! Plain atomics: cheap on the hot path, rendered on demand by
//! [`Metrics::render`] for `--metrics ADDR` (see [`crate::http`]).

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use common::ErrorKind;

use crate::registry::Registry;

/// A monotonically increasing counter.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Everything the server counts.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Connections that completed the handshake.
    pub connections_total: Counter,
    /// Connections refused at a connection limit.
    pub connections_refused: Counter,
    /// Handshakes that failed or timed out.
    pub handshakes_failed: Counter,
    /// Sources asked to prove their address with a QUIC Retry.
    pub retries: Counter,
    /// Successful registrations.
    pub registrations: Counter,
    /// Lookups answered.
    pub lookups: Counter,
    /// Calls asked for.
    pub calls_requested: Counter,
    /// Calls the callee accepted (addresses exchanged).
    pub calls_accepted: Counter,
    /// Calls the callee rejected.
    pub calls_rejected: Counter,
    /// Requests refused by a rate limit.
    pub rate_limited: Counter,
    /// Malformed or unexpected frames (connection closed).
    pub frames_refused: Counter,
    errors: [Counter; ERROR_KINDS.len()],
}

const ERROR_KINDS: [ErrorKind; 16] = [
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
];

impl Metrics {
    /// Counts an error answer of `kind`.
    pub fn error(&self, kind: ErrorKind) {
        if let Some(i) = ERROR_KINDS.iter().position(|k| *k == kind) {
            self.errors[i].inc();
        }
    }

    /// Prometheus text exposition, with gauges read from the registry.
    pub fn render<H: Clone>(&self, registry: &Registry<H>) -> String {
        let mut out = String::new();
        let mut gauge = |name: &str, help: &str, v: usize| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        gauge(
            "rendezvous_connected_peers",
            "Peer connections open now.",
            registry.sessions(),
        );
        gauge(
            "rendezvous_online_names",
            "Names with a listen session now.",
            registry.online(),
        );
        let counters: [(&str, &str, &Counter); 11] = [
            (
                "rendezvous_connections_total",
                "Connections that completed the handshake.",
                &self.connections_total,
            ),
            (
                "rendezvous_connections_refused_total",
                "Connections refused at a limit.",
                &self.connections_refused,
            ),
            (
                "rendezvous_handshakes_failed_total",
                "Handshakes that failed or timed out.",
                &self.handshakes_failed,
            ),
            (
                "rendezvous_retries_total",
                "Sources asked to prove their address with a QUIC Retry.",
                &self.retries,
            ),
            (
                "rendezvous_registrations_total",
                "Successful registrations.",
                &self.registrations,
            ),
            (
                "rendezvous_lookups_total",
                "Lookups answered.",
                &self.lookups,
            ),
            (
                "rendezvous_calls_requested_total",
                "Calls asked for.",
                &self.calls_requested,
            ),
            (
                "rendezvous_calls_accepted_total",
                "Calls accepted by the callee.",
                &self.calls_accepted,
            ),
            (
                "rendezvous_calls_rejected_total",
                "Calls rejected by the callee.",
                &self.calls_rejected,
            ),
            (
                "rendezvous_rate_limited_total",
                "Requests refused by a rate limit.",
                &self.rate_limited,
            ),
            (
                "rendezvous_frames_refused_total",
                "Malformed or unexpected frames.",
                &self.frames_refused,
            ),
        ];
        for (name, help, c) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                c.get()
            );
        }
        let name = "rendezvous_errors_total";
        let _ = writeln!(
            out,
            "# HELP {name} Error answers by kind.\n# TYPE {name} counter"
        );
        for (kind, c) in ERROR_KINDS.iter().zip(&self.errors) {
            let _ = writeln!(out, "{name}{{kind=\"{kind}\"}} {}", c.get());
        }
        out
    }
}
