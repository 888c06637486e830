//! The relay's limits, as one documented struct with defaults (the driver
//! fills it from `--relay-rate` and friends).

use std::time::Duration;

use common::relay_frame::MAX_DATAGRAM;

/// A byte rate: a token bucket of `burst` bytes refilled at `per_second`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRate {
    /// Refill, bytes per second.
    pub per_second: u64,
    /// Bucket size in bytes (at least [`MAX_DATAGRAM`], or nothing passes).
    pub burst: u64,
}

impl ByteRate {
    /// `per_second` with a burst of a tenth of a second (at least 16 full
    /// datagrams): enough for QUIC's paced bursts, not enough to double
    /// the rate.
    pub fn per_second(per_second: u64) -> Self {
        Self {
            per_second,
            burst: (per_second / 10).max(16 * MAX_DATAGRAM as u64),
        }
    }
}

/// Why a text is not a [`ByteRate`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a byte rate per second (e.g. 10MiB, 512KiB, 1GiB, 2000000)")]
pub struct ByteRateError(pub String);

impl std::str::FromStr for ByteRate {
    type Err = ByteRateError;

    /// Bytes per second with an optional binary suffix (`KiB`, `MiB`,
    /// `GiB`); the burst follows from [`ByteRate::per_second`].
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let (digits, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
        let unit: u64 = match unit.trim() {
            "" | "B" => 1,
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            _ => return Err(ByteRateError(s.to_owned())),
        };
        let n: u64 = digits.parse().map_err(|_| ByteRateError(s.to_owned()))?;
        match n.checked_mul(unit) {
            Some(v) if v > 0 => Ok(Self::per_second(v)),
            _ => Err(ByteRateError(s.to_owned())),
        }
    }
}

/// The relay's limits (see each field for its default and why).
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Rate of each direction of a call (default 10 MiB/s, `--relay-rate`;
    /// `None`: unlimited, for the benchmark). Per direction, so a bulk
    /// transfer one way never starves the acknowledgements coming back.
    /// Packets over it are dropped, not queued (QUIC's congestion control
    /// reads the loss and slows down).
    pub rate: Option<ByteRate>,
    /// Most bytes one call may relay, both directions (default 64 GiB:
    /// about 15 hours of 10 Mbit/s video; bounds what one call can cost).
    /// Past it every packet of the call is dropped.
    pub max_bytes_per_call: u64,
    /// A call with no authentic packet for this long is forgotten (default
    /// 60 s). Longer than the peers' QUIC idle timeout (30 s), so a quiet
    /// relayed call ends in QUIC first; a call that went direct keeps its
    /// allocation for fallback only while its peers probe the relay path
    /// more often than this.
    pub idle_timeout: Duration,
    /// When the table is full, the least recently active call may be shed
    /// for a new one if it has been quiet this long (default 5 s: a live
    /// call sends every second at least); otherwise the new one is refused.
    pub shed_idle: Duration,
    /// Most calls at once (default 65,536: at < 1 KiB each, under 64 MiB).
    pub max_allocations: usize,
    /// Most calls at once in which one source ([`crate::ratelimit::source_key`]:
    /// an IPv4 address, an IPv6 /64) is a party (default 64, like
    /// `max_connections_per_ip`: a carrier NAT is many households).
    pub max_per_source: usize,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            rate: Some(ByteRate::per_second(10 << 20)),
            max_bytes_per_call: 64 << 30,
            idle_timeout: Duration::from_secs(60),
            shed_idle: Duration::from_secs(5),
            max_allocations: 65_536,
            max_per_source: 64,
        }
    }
}
