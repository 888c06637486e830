//! The server's limits and timings, as one documented struct with defaults.
//!
//! Everything a flood or a slow peer could exhaust has a number here; the
//! drivers read it, nothing else hard-codes a limit. See the README's
//! "Limits" section for how to tune them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use crate::mapping::{MappingPort, MappingPortError};
pub use crate::ratelimit::{Rate, RateError};
use crate::relay::RelayConfig;
pub use crate::store::StoreChoice;
use crate::tcp::TcpConfig;

/// How to run a server.
#[derive(Debug, Clone)]
pub struct Config {
    /// UDP address to listen on.
    pub listen: SocketAddr,
    /// Where the key and the name bindings live.
    pub data_dir: PathBuf,
    /// The server key file (`--identity FILE`), instead of
    /// `<data_dir>/server.key`: nodes of one cluster share one key, so
    /// peers pin one fingerprint. Created there if missing, like the default.
    pub identity: Option<PathBuf>,
    /// Limits and timings.
    pub limits: Limits,
    /// The relay on the same port (default on, with
    /// [`RelayConfig::default`]); `None`: no relay (`--relay off`): relay
    /// frames are not looked at and calls get no relay ticket.
    pub relay: Option<RelayConfig>,
    /// The TCP side for peers without UDP (default on, on the UDP port
    /// number); `None`: UDP only (`--tcp-listen off`).
    pub tcp: Option<TcpConfig>,
    /// Where the name bindings live (default: embedded, `names.redb` in
    /// the data dir; `--store postgres://…`: PostgreSQL, shared by nodes).
    pub store: StoreChoice,
    /// The mapping check port: a second UDP socket answering UDP checks,
    /// so peers learn whether their NAT maps per destination (default
    /// [`MappingPort::Auto`]: the listen port + 1, best effort;
    /// `--mapping-port PORT|off`).
    pub mapping_port: MappingPort,
}

/// Limits and timings (see each field for its default and why).
#[derive(Debug, Clone)]
pub struct Limits {
    /// Most peer connections at once (default 200,000). New ones past it are refused.
    pub max_connections: usize,
    /// Most connections from one source IP (default 64): a household or a
    /// small office shares one address, a flood should not take all slots.
    pub max_connections_per_ip: usize,
    /// Above this many handshakes in flight (all sources), every source
    /// must prove its address with a QUIC Retry first (default 256). A
    /// source with a handshake already in flight always must.
    pub retry_above_pending: usize,
    /// Most handshakes in flight at once, all sources (default 512, about
    /// half a second of handshakes on one core). Beyond it, new attempts
    /// are dropped unanswered and the peers' QUIC stacks send them again
    /// after their doubling retransmission timeouts: a herd of reconnecting
    /// peers (after a restart) is served at the server's pace instead of
    /// swamping it with handshakes that time out half-done. It also bounds
    /// handshake memory under a flood from real addresses. Must be above
    /// `retry_above_pending`, so spoofed sources (which cannot answer a
    /// Retry) never fill it.
    pub max_pending_handshakes: usize,
    /// Largest frame body accepted, in bytes (default 64 KiB; real messages are < 1 KiB).
    pub max_frame: usize,
    /// Most concurrent request streams one connection may have open (default 8).
    pub max_streams_per_connection: u32,
    /// Registrations per source IP: burst and refill per second (default 20, 5/s).
    pub register_rate: Rate,
    /// Lookups per source IP (default 200, 100/s).
    pub lookup_rate: Rate,
    /// Calls per source IP (default 50, 10/s).
    pub call_rate: Rate,
    /// Call offers from one source to one callee (default 30, 2/s): a
    /// person redials a few times, and many honest callers can share one
    /// carrier-NAT address (twenty people calling one popular callee at
    /// once must get through), but one source should not spend the callee's
    /// whole budget below. Checked first.
    pub offer_rate_per_source: Rate,
    /// Call offers to one callee from all sources together (default 60,
    /// 4/s): each offer takes one of the callee's 64 stream slots until it
    /// answers (at most `answer_timeout`), so many sources could otherwise
    /// keep it busy. Twice the per-source budget: one source alone cannot
    /// spend it. Calls from keys the callee pre-approved (its contacts) are
    /// not counted, so a flood cannot lock them out; they are held to
    /// `offer_rate_per_contact` instead.
    pub offer_rate_per_callee: Rate,
    /// Call offers from one pre-approved key to the callee that approved
    /// it (default 30, 2/s, as per source). Approved callers skip the
    /// shared per-callee bucket, and in `AcceptAll` mode every caller a
    /// listener ever accepted is approved, so without this bucket a former
    /// stranger could ring without limit from many sessions and addresses.
    /// The key is authenticated: nobody else can drain its bucket.
    pub offer_rate_per_contact: Rate,
    /// Most time writing the Dial frame to a callee may take (default 5 s):
    /// a callee granting no flow-control credit would otherwise park the
    /// call's task, and its caller, for good.
    pub dial_write_timeout: Duration,
    /// How often token buckets that have filled up again are forgotten
    /// (default 30 s): memory for rate limits is bounded by the sources
    /// active in the last interval.
    pub rate_sweep_interval: Duration,
    /// Time a peer has to send a whole request once its stream is open (default 10 s).
    pub request_timeout: Duration,
    /// Time a callee has to answer an incoming call (default 15 s).
    pub answer_timeout: Duration,
    /// Time a TLS handshake may take (default 5 s). A stalled handshake
    /// holds a slot of the handshake queue this long; an honest one takes
    /// a round trip or two, and a lost flight costs its sender a 1 s
    /// retransmission timeout, so 5 s leaves room for two losses.
    pub handshake_timeout: Duration,
    /// A connection silent this long is dead (default 30 s). Peers send
    /// keep-alives every 10 s or less, so three can be lost.
    pub idle_timeout: Duration,
    /// UDP socket receive and send buffers asked of the kernel, in bytes
    /// (default 4 MiB; Linux grants at most `net.core.rmem_max` /
    /// `wmem_max`). Thousands of peers reconnecting at once after a restart
    /// send bursts of 1,200-byte Initials: the kernel's default (~208 KiB,
    /// ~170 Initials) drops most of a burst, and every dropped Initial costs
    /// its peer a retransmission timeout.
    pub udp_buffer: usize,
    /// Least time between two stateless resets (default 0: none). A
    /// restarted server must tell every old peer at once — keep-alives
    /// arrive in bursts, and a reset suppressed by this interval costs that
    /// peer an idle timeout (20 s) instead of a round trip. Resets cannot
    /// amplify (quinn makes each smaller than the packet that caused it) and
    /// junk connection IDs are dropped before a reset is considered.
    pub min_reset_interval: Duration,
    /// Handshakes per second a restarted server is expected to take
    /// (default 1,500: a handshake and registration cost ~0.7 ms of server
    /// CPU, and the load tool's ramp reaches ~1,750/s on 2 shared cores). On
    /// a clean stop the server asks its peers to spread their first
    /// reconnection over `sessions ÷ this` (see [`Limits::shutdown_spread`]):
    /// 3 peers come back at once, 10,000 over 6.7 s, instead of all in the
    /// first second.
    pub reconnect_rate: u32,

    // Flood hardening (issue 9: handshakes, names, frames, writes).
    /// Most handshakes in flight from one source at once, proven address
    /// or not, once more than `retry_above_pending` are in flight (default
    /// 4; an IPv6 /64 is one source). Past it new attempts are dropped
    /// unanswered, never refused: a carrier-NAT address shared by many
    /// users gets its connections through a retransmission (~1 s) later,
    /// and hosts stalling handshakes hold about half the queue at most.
    /// When the queue is full, a source holding fewer takes the slot of the
    /// oldest handshake of the source holding the most.
    pub max_pending_handshakes_per_source: usize,
    /// Most handshakes in flight from one source at any time, busy queue
    /// or not (default 16). Without it, four hosts stalling 64 handshakes
    /// each would hold the queue at `retry_above_pending` forever and every
    /// newcomer would pay a Retry. Past it attempts are dropped, never
    /// refused: twenty users behind one carrier-NAT address connecting at
    /// once get the last few through a retransmission (~1 s) later.
    pub max_pending_handshakes_per_source_idle: usize,
    /// Largest request frame a peer may send, in bytes (default 4 KiB; the
    /// largest real request, a `Call` with a 32-byte name and 9 candidate
    /// addresses, is under 300 bytes). A bigger announced length closes the
    /// connection before anything is buffered.
    pub max_request_frame: usize,
    /// Time the server's answer on a request stream may take to be written
    /// (default 5 s): a peer that grants no flow-control credit gets its
    /// stream reset instead of parking the task.
    pub reply_timeout: Duration,
    /// Most names one key may hold (default 4: a person's name or two and
    /// a device or two). Names are never released, so without a cap one
    /// key could claim names without end; past it, `too_many_names`.
    pub max_names_per_key: usize,
}

impl Limits {
    /// How long the peers of a server with `sessions` open should spread
    /// their first reconnection after a clean stop: `sessions ÷
    /// reconnect_rate`, at most [`common::error::close::MAX_SHUTDOWN_SPREAD`].
    pub fn shutdown_spread(&self, sessions: usize) -> Duration {
        let rate = f64::from(self.reconnect_rate.max(1));
        Duration::from_secs_f64(sessions as f64 / rate)
            .min(common::error::close::MAX_SHUTDOWN_SPREAD)
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 200_000,
            max_connections_per_ip: 64,
            retry_above_pending: 256,
            max_pending_handshakes: 512,
            max_frame: common::framing::MAX_FRAME,
            max_streams_per_connection: 8,
            register_rate: Rate {
                burst: 20,
                per_second: 5.0,
            },
            lookup_rate: Rate {
                burst: 200,
                per_second: 100.0,
            },
            call_rate: Rate {
                burst: 50,
                per_second: 10.0,
            },
            offer_rate_per_source: Rate {
                burst: 30,
                per_second: 2.0,
            },
            offer_rate_per_callee: Rate {
                burst: 60,
                per_second: 4.0,
            },
            offer_rate_per_contact: Rate {
                burst: 30,
                per_second: 2.0,
            },
            dial_write_timeout: Duration::from_secs(5),
            rate_sweep_interval: Duration::from_secs(30),
            request_timeout: Duration::from_secs(10),
            answer_timeout: Duration::from_secs(15),
            handshake_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(30),
            udp_buffer: 4 << 20,
            min_reset_interval: Duration::ZERO,
            reconnect_rate: 1_500,
            max_pending_handshakes_per_source: 4,
            max_pending_handshakes_per_source_idle: 16,
            max_request_frame: 4096,
            reply_timeout: Duration::from_secs(5),
            max_names_per_key: 4,
        }
    }
}

impl Config {
    /// A config with default limits.
    pub fn new(listen: SocketAddr, data_dir: PathBuf) -> Self {
        Self {
            listen,
            data_dir,
            identity: None,
            limits: Limits::default(),
            relay: Some(RelayConfig::default()),
            tcp: Some(TcpConfig::default()),
            store: StoreChoice::Embedded,
            mapping_port: MappingPort::Auto,
        }
    }
}

impl Config {
    /// The server key file: [`Config::identity`], else `server.key` in the data dir.
    pub fn key_path(&self) -> PathBuf {
        self.identity
            .clone()
            .unwrap_or_else(|| crate::server::key_path(&self.data_dir))
    }
}

impl Limits {
    /// The connection quotas the admission check applies.
    pub fn quotas(&self) -> crate::admission::Quotas {
        crate::admission::Quotas {
            max_connections: self.max_connections,
            max_per_ip: self.max_connections_per_ip,
            retry_above_pending: self.retry_above_pending,
            max_pending: self.max_pending_handshakes,
            max_pending_per_source: self.max_pending_handshakes_per_source,
            max_pending_per_source_idle: self.max_pending_handshakes_per_source_idle,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shutdown_spread_follows_the_sessions_and_is_capped() {
        let limits = Limits::default();
        assert_eq!(limits.shutdown_spread(0), Duration::ZERO);
        assert_eq!(limits.shutdown_spread(3), Duration::from_millis(2));
        assert_eq!(limits.shutdown_spread(15_000), Duration::from_secs(10));
        assert_eq!(
            limits.shutdown_spread(10_000_000),
            common::error::close::MAX_SHUTDOWN_SPREAD
        );
        let zero = Limits {
            reconnect_rate: 0,
            ..Limits::default()
        };
        assert_eq!(zero.shutdown_spread(5), Duration::from_secs(5));
    }

    #[test]
    fn a_rate_that_never_refills_is_refused() {
        assert_eq!(
            "20/5".parse::<Rate>(),
            Ok(Rate {
                burst: 20,
                per_second: 5.0
            })
        );
        assert_eq!(" 3 / 0.5 ".parse::<Rate>().map(|r| r.per_second), Ok(0.5));
        for bad in ["0/5", "5/0", "5/0.0", "5/-1", "5/NaN", "5/inf", "5/1e400"] {
            assert!(
                matches!(bad.parse::<Rate>(), Err(RateError::NotPositive(_))),
                "{bad} was taken"
            );
        }
        for bad in ["5", "a/b", "-1/5", "5/", "/5", "5/5/5"] {
            assert!(
                matches!(bad.parse::<Rate>(), Err(RateError::Syntax(_))),
                "{bad} was taken"
            );
        }
        let message = "5/0".parse::<Rate>().expect_err("refused").to_string();
        assert!(message.contains("positive"), "{message}");
    }

    #[test]
    fn every_default_rate_reads_back_from_its_text() {
        let l = Limits::default();
        for rate in [
            l.register_rate,
            l.lookup_rate,
            l.call_rate,
            l.offer_rate_per_source,
            l.offer_rate_per_callee,
            l.offer_rate_per_contact,
        ] {
            assert_eq!(rate.to_string().parse::<Rate>(), Ok(rate));
        }
    }
}
