//! The results: a markdown table for people, JSON for programs.

use serde_json::{json, Value};

use crate::phases::{Ramp, Rate, Restart, Stop};

/// Everything one run measured.
pub(crate) struct Report {
    /// Sessions asked for.
    pub(crate) peers: usize,
    /// Source addresses used.
    pub(crate) sources: u8,
    /// Handshake time on an idle server, one at a time: median, p99, count.
    pub(crate) handshake: Option<(std::time::Duration, std::time::Duration, usize)>,
    /// Seconds spent generating keys and TLS configs.
    pub(crate) keygen_s: f64,
    /// The ramp.
    pub(crate) ramp: Ramp,
    /// Server RSS before any peer, KiB.
    pub(crate) rss_idle_kib: u64,
    /// Server RSS with every peer connected, KiB.
    pub(crate) rss_full_kib: u64,
    /// This tool's own RSS with every peer connected, KiB.
    pub(crate) load_rss_kib: u64,
    /// Server CPU (cores) while every peer idles.
    pub(crate) idle_cores: f64,
    /// Lookups, one at a time per session.
    pub(crate) lookups_single: Rate,
    /// Lookups, a batch at once per session.
    pub(crate) lookups_batch: Rate,
    /// Lookups per batch.
    pub(crate) batch: usize,
    /// Calls brokered.
    pub(crate) calls: Rate,
    /// Restart drills.
    pub(crate) restarts: Vec<Restart>,
}

impl Report {
    fn per_peer_kib(&self) -> f64 {
        self.rss_full_kib.saturating_sub(self.rss_idle_kib) as f64
            / self.ramp.registered.max(1) as f64
    }

    fn rate_cell(r: &Rate) -> String {
        let per_core = r.per_second / r.server_cores.max(0.01);
        format!(
            "{:.0} (server {:.2} cores, {per_core:.0} per server core-second; {} failed)",
            r.per_second, r.server_cores, r.failed
        )
    }

    /// The table, in markdown.
    pub(crate) fn table(&self) -> String {
        let n = self.ramp.registered;
        let mut rows: Vec<(String, String, &str)> = vec![
            (
                "peers registered".into(),
                format!("{n} of {}", self.peers),
                "",
            ),
            (
                "server link setup, idle server, one at a time".into(),
                self.handshake.map_or("-".into(), |(m, p, n)| {
                    format!(
                        "median {:.2} ms, p99 {:.2} ms ({n} handshakes)",
                        m.as_secs_f64() * 1e3,
                        p.as_secs_f64() * 1e3
                    )
                }),
                "",
            ),
            (
                "registrations/s (ramp, new names)".into(),
                format!(
                    "{:.0} ({n} in {:.1} s; {} UDP drops)",
                    n as f64 / self.ramp.took.as_secs_f64(),
                    self.ramp.took.as_secs_f64(),
                    self.ramp.drops
                ),
                "",
            ),
            (
                "lookups/s, one at a time per session".into(),
                Self::rate_cell(&self.lookups_single),
                "≥ 50,000",
            ),
            (
                format!("lookups/s, {} at once per session", self.batch),
                Self::rate_cell(&self.lookups_batch),
                "≥ 50,000",
            ),
            ("calls brokered/s".into(), Self::rate_cell(&self.calls), ""),
            (
                "server RSS per peer".into(),
                format!(
                    "{:.1} KiB ({} → {} KiB)",
                    self.per_peer_kib(),
                    self.rss_idle_kib,
                    self.rss_full_kib
                ),
                "≤ 20 KiB",
            ),
            (
                "server CPU, all peers idle (keep-alives every 8 s)".into(),
                format!("{:.3} cores", self.idle_cores),
                "≤ 0.5",
            ),
        ];
        for r in &self.restarts {
            let how = match r.stop {
                Stop::Term => "re-registered after SIGTERM + restart",
                Stop::Kill => "re-registered after SIGKILL + restart",
            };
            let t99 = r.seconds_to(0.99).map_or("-".into(), |s| format!("{s} s"));
            let endings: Vec<String> = r.endings.iter().map(|(k, v)| format!("{v} {k}")).collect();
            rows.push((
                how.into(),
                format!(
                    "{} of {} in {:.1} s; 99 % by {t99} (old links: {}; {} UDP drops; CPU: server {:.1} s, peers {:.1} s)",
                    r.back,
                    r.of,
                    r.took.as_secs_f64(),
                    endings.join(", "),
                    r.drops,
                    r.server_cpu,
                    r.load_cpu
                ),
                "10,000 in ≤ 10 s",
            ));
        }
        rows.push((
            "load tool RSS (both sides on one machine)".into(),
            format!("{} MiB", self.load_rss_kib / 1024),
            "",
        ));
        let mut out = format!(
            "| {} peers over {} sources | value | goal |\n|---|---|---|\n",
            self.peers, self.sources
        );
        for (metric, value, goal) in rows {
            out.push_str(&format!("| {metric} | {value} | {goal} |\n"));
        }
        out
    }

    fn rate_json(r: &Rate) -> Value {
        json!({"per_s": r.per_second, "failed": r.failed, "server_cores": r.server_cores})
    }

    /// The same, as JSON.
    pub(crate) fn json(&self) -> Value {
        let restarts: Vec<Value> = self
            .restarts
            .iter()
            .map(|r| {
                json!({
                    "stop": format!("{:?}", r.stop).to_lowercase(),
                    "back": r.back,
                    "of": r.of,
                    "seconds": r.took.as_secs_f64(),
                    "timeline": r.timeline,
                    "seconds_to_99_percent": r.seconds_to(0.99),
                    "old_links_ended": r.endings.iter().map(|(k, v)| json!({"how": k, "count": v})).collect::<Vec<_>>(),
                    "udp_drops": r.drops,
                    "server_cpu_s": r.server_cpu,
                    "load_tool_cpu_s": r.load_cpu,
                })
            })
            .collect();
        json!({
            "peers": self.peers,
            "sources": self.sources,
            "registered": self.ramp.registered,
            "key_generation_s": self.keygen_s,
            "handshake_median_ms": self.handshake.map(|(m, _, _)| m.as_secs_f64() * 1e3),
            "handshake_p99_ms": self.handshake.map(|(_, p, _)| p.as_secs_f64() * 1e3),
            "ramp_s": self.ramp.took.as_secs_f64(),
            "ramp_udp_drops": self.ramp.drops,
            "registrations_per_s": self.ramp.registered as f64 / self.ramp.took.as_secs_f64(),
            "lookups_single": Self::rate_json(&self.lookups_single),
            "lookups_batch": Self::rate_json(&self.lookups_batch),
            "lookup_batch": self.batch,
            "calls": Self::rate_json(&self.calls),
            "rss_idle_kib": self.rss_idle_kib,
            "rss_full_kib": self.rss_full_kib,
            "rss_per_peer_kib": self.per_peer_kib(),
            "idle_cpu_cores": self.idle_cores,
            "restarts": restarts,
            "load_tool_rss_kib": self.load_rss_kib,
        })
    }
}
