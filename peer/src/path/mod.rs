//! Which path a call's packets take, as a plain table (DESIGN §5).
//!
//! A call is one QUIC connection; underneath, its packets go over one of
//! several paths to the other peer: a direct candidate address or the
//! relay. [`PathTable`] holds them for one remote peer, with their state
//! ([`PathState`]: probing, validated with a smoothed RTT, failed) and the
//! chosen one. Like the other decision types ([`crate::call_state`]) it does no I/O and reads
//! no clock: the socket wrapper feeds it events with `now`
//! ([`PathTable::ping_received`], [`PathTable::pong_received`],
//! [`PathTable::candidates_added`], …), does what [`PathTable::poll`] says
//! ([`Action`]) and sleeps until [`PathTable::next_deadline`].
//!
//! The rules:
//!
//! 1. Every candidate and the relay are probed from the first moment; the
//!    call starts on the first path that validates (a pong).
//! 2. Direct over relay, always: a direct path that validates on a relayed
//!    call is switched to at once ([`SwitchReason::Upgrade`]).
//! 3. Among direct paths the lowest smoothed RTT, with hysteresis
//!    ([`PathConfig::switch_gain_percent`] and
//!    [`PathConfig::switch_gain_min`]): no flapping on jitter.
//! 4. The chosen path is pinged every [`PathConfig::liveness_interval`];
//!    after [`PathConfig::fail_after`] without a pong it has failed and the
//!    call moves (direct → best other direct → relay). Failed and
//!    unvalidated paths keep being probed every
//!    [`PathConfig::retry_interval`], so a relayed call moves to direct
//!    when one opens. Every [`Action::Switch`] is followed by
//!    [`Action::Nudge`]: quinn's retransmission timer knows nothing of it.
//! 5. Only vetted addresses are ever sent to: the server's candidates and
//!    those learned over the call pass `common::candidates` vetting. A valid
//!    ping from an unannounced address (a symmetric NAT's fresh mapping)
//!    becomes a peer-reflexive candidate (at most
//!    [`PathConfig::max_reflexive`]) that gets one same-size pong per ping
//!    and nothing else until a ping from it echoes the nonce our pong
//!    carried there; then it is probed and may carry the call.
//! 6. All probes share one bucket ([`PathConfig::probe_rate`],
//!    [`PathConfig::probe_burst`]).
//! 7. [`PathMode::Relay`] has no direct candidates at all (nothing is ever
//!    sent to the other side's addresses, not even a pong);
//!    [`PathMode::Direct`] has no relay and gives up
//!    ([`GiveUpReason::DirectUnreachable`]) when no direct path validated
//!    within [`PathConfig::direct_deadline`].
//!
//! 8. Between a symmetric NAT and a cone, where no candidate can work, a
//!    relayed call makes a bounded birthday attempt ([`birthday`]): the
//!    two sides exchange notes of their NAT mappings over the relay, the
//!    symmetric side opens many sockets, the cone side pings random ports
//!    of the other's observed IP, and the first answered ping is a
//!    validated direct path.
//!
//! Liveness is judged by pongs only, not by QUIC packets arriving: those
//! prove the way in, not the way out.

pub mod birthday;
mod candidate;
mod choice;
mod config;
mod pacing;
mod table;

#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::probe::{Note, Ping, Pong};

pub use birthday::{BirthdayStats, Role};
pub use config::PathConfig;
pub use table::PathTable;

/// Where a packet to the other peer goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Route {
    /// Straight to this address.
    Direct(SocketAddr),
    /// Through the call's relay (wrapped in a relay frame).
    Relay,
}

impl Route {
    /// Direct or relay, as `connected`/`path_changed` report it.
    pub fn kind(self) -> Path {
        match self {
            Self::Direct(_) => Path::Direct,
            Self::Relay => Path::Relay,
        }
    }
}

/// How a call's packets travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// Straight between the two peers.
    Direct,
    /// Through a relay (end-to-end encrypted all the same).
    Relay,
}

impl Path {
    /// `direct` or `relay`, as in events.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::Relay => "relay",
        }
    }
}

/// Where a call's packets go, as its path task last decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathStatus {
    /// No path validated yet (the handshake goes every vetted way).
    Pending,
    /// On this path, at this address (the relay's on a relayed call).
    On(Path, SocketAddr),
    /// No path works: the call cannot go on.
    GaveUp(GiveUpReason),
}

/// `--path auto|direct|relay`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PathMode {
    /// Direct when one validates, the relay otherwise.
    #[default]
    Auto,
    /// Never the relay; give up when no direct path validates.
    Direct,
    /// Never send to the other side's addresses.
    Relay,
}

/// The path last reported to the user: set by `connected`, then by each
/// `path_changed` (which is emitted only once `connected` was, and only
/// for a real change).
pub(crate) type Announced = std::sync::Arc<std::sync::Mutex<Option<PathStatus>>>;

/// What is known of one path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathState {
    /// Pinged, no pong yet.
    Probing,
    /// Answered.
    Validated {
        /// Smoothed round trip (7/8 old + 1/8 each new sample).
        rtt: Duration,
        /// When the last pong came.
        last_pong: Instant,
    },
    /// No pong for too long; still retried now and then.
    Failed,
}

/// Why the call moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SwitchReason {
    /// The first path that validated (report it as `connected`'s path, not
    /// as `path_changed`).
    First,
    /// A direct path validated on a relayed call.
    Upgrade,
    /// A direct path clearly faster than the chosen direct one.
    LowerRtt,
    /// The chosen path failed (no pong for [`PathConfig::fail_after`]).
    Failed,
    /// A birthday attempt found a direct path ([`birthday`]).
    Birthday,
}

/// Why the table gave up (the call cannot go on).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GiveUpReason {
    /// `--path direct`, and no direct path validated in time: `unreachable`.
    DirectUnreachable,
    /// No path has worked for [`PathConfig::give_up_after`].
    NoPath,
}

/// What the driver must do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Seal this ping with the call's key and send it (the table already
    /// counts it as sent).
    SendPing {
        /// Where.
        to: Route,
        /// What.
        ping: Ping,
    },
    /// Seal this pong and send it.
    SendPong {
        /// Where (the ping's source).
        to: Route,
        /// What.
        pong: Pong,
    },
    /// From now on send the call's QUIC packets along `to`; emit
    /// `path_changed` (unless [`SwitchReason::First`]).
    Switch {
        /// The new path.
        to: Route,
        /// Why.
        reason: SwitchReason,
    },
    /// Make quinn send at once (e.g. a PING frame), after a switch.
    Nudge,
    /// Seal this note and send it over the relay.
    SendNote {
        /// What.
        note: Note,
    },
    /// A birthday attempt's hard side: open `count` extra sockets for the
    /// call and send `ping` (sealed) once from each to `to`, the other
    /// side's observed address. Packets that come in on them belong to
    /// the call.
    OpenSockets {
        /// How many.
        count: usize,
        /// Where each sends its ping.
        to: SocketAddr,
        /// The ping.
        ping: Ping,
    },
    /// A birthday attempt is over: close its extra sockets (all but the
    /// one the chosen path uses, when it went direct) and report it.
    BirthdayEnded {
        /// What it cost and what came of it.
        stats: BirthdayStats,
    },
    /// The call has no path: close it with this reason. Nothing follows.
    GiveUp {
        /// Why.
        reason: GiveUpReason,
    },
}

/// What a table starts from.
#[derive(Debug, Clone)]
pub struct PathParams {
    /// The call (goes into every probe).
    pub call_id: u64,
    /// `--path`.
    pub mode: PathMode,
    /// Whether the call has a relay (the server offered one).
    pub relay: bool,
    /// The other side's candidates as the server sent them (vetted again
    /// here).
    pub candidates: Vec<SocketAddr>,
    /// Whether loopback addresses may be targets (the server link itself is
    /// over loopback, as in tests).
    pub loopback_ok: bool,
}
