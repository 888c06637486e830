//! Every timing and limit of the path table, with its default and its reason.

use std::time::Duration;

/// Timing and limits of one call's [`PathTable`](super::PathTable). The
/// defaults meet issue 10's numbers: a direct path that opens is found
/// within [`PathConfig::retry_interval`] (≤ 2 s to `path_changed`), and a
/// dead chosen path is left after [`PathConfig::fail_after`] (≤ 3 s of
/// interruption).
#[derive(Debug, Clone)]
pub struct PathConfig {
    /// First gap between pings to a path not validated yet; it doubles
    /// with each ping up to [`PathConfig::retry_interval`]. Default 50 ms:
    /// a punch needs a few tries in the first few hundred milliseconds.
    pub probe_interval_min: Duration,
    /// Gap between pings to a path that failed, or is still unvalidated
    /// after the fast phase. On a relayed call this is how soon an opened
    /// direct path is noticed. Default 1 s.
    pub retry_interval: Duration,
    /// Gap between liveness pings on the chosen path. Default 500 ms, so
    /// [`PathConfig::fail_after`] spans four of them (the issue asks for at
    /// least one a second).
    pub liveness_interval: Duration,
    /// Gap between pings on validated paths not chosen (standby direct
    /// paths, the relay while direct): keeps them warm, NAT pinholes and the
    /// relay's allocation open. Default 1 s.
    pub standby_interval: Duration,
    /// A validated path with no pong for this long has failed; if it was
    /// the chosen one, the call moves (direct → relay). Default 2 s.
    pub fail_after: Duration,
    /// A path with no pong this long after its first ping is marked failed
    /// (and still retried every [`PathConfig::retry_interval`]). Default 3 s.
    pub probe_timeout: Duration,
    /// Hysteresis: another direct path replaces a working chosen one only
    /// if its smoothed RTT is at least this many percent lower… Default 20.
    pub switch_gain_percent: u32,
    /// …and at least this much lower. Default 5 ms: jitter on a LAN is
    /// larger than the gain, and every switch costs QUIC a little.
    pub switch_gain_min: Duration,
    /// Probes (pings and pongs together) per second, sustained. Default 50.
    pub probe_rate: u32,
    /// Probes that may go out at once above the sustained rate (the first
    /// round to every candidate). Default 25.
    pub probe_burst: u32,
    /// Most peer-reflexive candidates (addresses nobody announced) per call.
    /// Default 4, as the issue says.
    pub max_reflexive: usize,
    /// Most announced direct candidates (from the server and over the
    /// call). Default 1 + 8, as `common::candidates::targets`.
    pub max_candidates: usize,
    /// Pongs queued for the pacing bucket; more pings than that at once are
    /// left unanswered. Default 16.
    pub max_queued_pongs: usize,
    /// Pings remembered per path while their pong is outstanding. Default 8.
    pub max_inflight: usize,
    /// `--path direct`: give up (`unreachable`) when no direct path has
    /// validated this long after the start. Default 5 s (the fast probing
    /// phase plus a margin).
    pub direct_deadline: Duration,
    /// When the relay validates first while direct candidates are still
    /// being probed, the call waits this long for a direct one before it
    /// settles on the relay (the handshake is not held up: until a path is
    /// chosen its packets go every vetted way). Default 100 ms: a punched
    /// pinhole needs a ping or two of the fast phase; a pair with an open
    /// direct path from the start then starts direct even where the relay
    /// answers first.
    pub relay_grace: Duration,
    /// Any mode: give up when no path has been usable for this long.
    /// Default 10 s.
    pub give_up_after: Duration,
    /// A birthday attempt's hard (symmetric) side: extra sockets opened,
    /// each one NAT mapping toward the other side. Default 256, the
    /// issue's measured figure (odds per guess 257 / 64,512); 0: this side
    /// makes no attempt.
    pub birthday_sockets: usize,
    /// A birthday attempt's easy (cone) side: guessed ports pinged per
    /// second. Default 1,000 (median ~0.2 s to a hit).
    pub birthday_rate: u32,
    /// …and at most this many. Default 3,000 (a miss has odds ~e⁻¹²).
    pub birthday_budget: u32,
    /// …within this long (the hard side keeps its sockets a second
    /// longer). Default 3 s.
    pub birthday_time: Duration,
    /// After an attempt that found nothing, the next one (a new round of
    /// notes) waits this long, while the call stays on the relay. Default
    /// 5 minutes: never a loop.
    pub birthday_retry: Duration,
}

impl Default for PathConfig {
    fn default() -> Self {
        Self {
            probe_interval_min: Duration::from_millis(50),
            retry_interval: Duration::from_secs(1),
            liveness_interval: Duration::from_millis(500),
            standby_interval: Duration::from_secs(1),
            fail_after: Duration::from_secs(2),
            probe_timeout: Duration::from_secs(3),
            switch_gain_percent: 20,
            switch_gain_min: Duration::from_millis(5),
            probe_rate: 50,
            probe_burst: 25,
            max_reflexive: 4,
            max_candidates: 1 + common::candidates::MAX_LOCAL_CANDIDATES,
            max_queued_pongs: 16,
            max_inflight: 8,
            direct_deadline: Duration::from_secs(5),
            relay_grace: Duration::from_millis(100),
            give_up_after: Duration::from_secs(10),
            birthday_sockets: 256,
            birthday_rate: 1_000,
            birthday_budget: 3_000,
            birthday_time: Duration::from_secs(3),
            birthday_retry: Duration::from_secs(300),
        }
    }
}

impl PathConfig {
    /// Whether `new` beats `old` by the hysteresis margin.
    pub(super) fn clearly_better(&self, new: Duration, old: Duration) -> bool {
        let pct = u128::from(self.switch_gain_percent.min(100));
        new + self.switch_gain_min <= old && new.as_nanos() * 100 <= old.as_nanos() * (100 - pct)
    }
}
