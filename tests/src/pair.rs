//! Two peers' path tables over a simulated network on a fake clock, in
//! the style of quinn-proto's `Pair`: no sockets, no time passing, every
//! packet accounted for. Each [`Side`] is a [`PathTable`] plus where the
//! other side really reaches it; [`Pair::run`] moves probes between them
//! per [`Net`] (direct open or cut, latencies, a relay between them) and
//! records every switch. The caller's and callee's decisions before the
//! paths (consent through the server) are driven by the test itself with
//! the real state types: `peer::call_state::CallState`,
//! `rendezvous::broker`, `peer::callee_state::CalleeState`.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use std::collections::HashSet;

use common::probe::{Mapping, Note, Ping, Pong};
use peer::path::{
    Action, BirthdayStats, PathConfig, PathMode, PathParams, PathTable, Route, SwitchReason,
};

/// The table parameters of one side of call 7 toward `candidates`.
pub fn params(mode: PathMode, candidates: Vec<SocketAddr>) -> PathParams {
    PathParams {
        call_id: 7,
        mode,
        relay: true,
        candidates,
        loopback_ok: false,
    }
}
use rand::SeedableRng;

/// The simulated network between the two sides.
#[derive(Debug, Clone)]
pub struct Net {
    /// Whether direct packets get through (both ways).
    pub direct_open: bool,
    /// One-way delay of the direct path.
    pub direct: Duration,
    /// One-way delay peer → relay (the relay path is twice that).
    pub to_relay: Duration,
}

impl Default for Net {
    fn default() -> Self {
        Self {
            direct_open: true,
            direct: Duration::from_millis(20),
            to_relay: Duration::from_millis(20),
        }
    }
}

/// One peer of the pair.
pub struct Side {
    pub table: PathTable,
    /// The source address the other side sees our direct packets come
    /// from (a symmetric NAT's fresh port differs from what the server saw).
    pub seen_as: SocketAddr,
    /// The address at which the other side's direct packets reach us
    /// (anything else sent our way is dropped by our NAT).
    pub reachable: SocketAddr,
    /// Every switch, with the time since the start.
    pub switches: Vec<(Duration, Route, SwitchReason)>,
    /// Every datagram sent: (time, where).
    pub sent: Vec<(Duration, Route)>,
    pub gave_up: bool,
    /// When its table started (the server introduced it): before that
    /// nothing reaches it and it sends nothing.
    pub starts: Instant,
    /// A symmetric NAT in front of it, for birthday attempts (`None`:
    /// what `seen_as`/`reachable` say is all).
    pub nat: Option<SymmetricNat>,
    /// A port-restricted cone in front of it: the other side's direct
    /// packets get in only from addresses it sent to (besides
    /// `reachable`'s usual rule).
    pub restricted: bool,
    /// Addresses it sent direct packets to.
    pub sent_to: HashSet<SocketAddr>,
    /// Every `OpenSockets` count and `BirthdayEnded`.
    pub opened: Vec<usize>,
    pub birthdays: Vec<BirthdayStats>,
}

/// A symmetric NAT's mappings toward the other side: the public ports its
/// extra sockets got (each new destination, a new random port), and the
/// port the last packet in came through (where the host answers from).
#[derive(Debug, Clone, Default)]
pub struct SymmetricNat {
    pub ports: Vec<u16>,
    pub via: Option<u16>,
    /// Whether the extra sockets' mappings are dropped (a firewall that
    /// keeps only the first mapping): a birthday attempt can find nothing.
    pub unreachable: bool,
}

impl Side {
    /// A side whose table starts at `now` from `params`; it is seen at
    /// `seen_as` and reached at `reachable` (see the fields).
    pub fn new(
        params: PathParams,
        seen_as: SocketAddr,
        reachable: SocketAddr,
        now: Instant,
        seed: u64,
    ) -> Self {
        let rng = rand::rngs::StdRng::seed_from_u64(seed);
        Self {
            table: PathTable::new(params, PathConfig::default(), now, rng),
            seen_as,
            reachable,
            switches: vec![],
            sent: vec![],
            gave_up: false,
            starts: now,
            nat: None,
            restricted: false,
            sent_to: HashSet::new(),
            opened: vec![],
            birthdays: vec![],
        }
    }

    /// This side's table with `cfg` instead of the defaults.
    pub fn with_config(mut self, params: PathParams, cfg: PathConfig, seed: u64) -> Self {
        let rng = rand::rngs::StdRng::seed_from_u64(seed);
        self.table = PathTable::new(params, cfg, self.starts, rng);
        self
    }

    /// Behind a symmetric NAT that knows it is one.
    pub fn symmetric(mut self) -> Self {
        self.nat = Some(SymmetricNat::default());
        self.table.set_mapping(self.starts, Mapping::Symmetric);
        self.table.notes_ready();
        self
    }

    /// Behind a port-restricted cone that knows it is one.
    pub fn restricted_cone(mut self) -> Self {
        self.restricted = true;
        self.table.set_mapping(self.starts, Mapping::Cone);
        self.table.notes_ready();
        self
    }

    /// The path chosen now, if any.
    pub fn chosen(&self) -> Option<Route> {
        self.table.chosen()
    }
}

enum Probe {
    Ping(Ping),
    Pong(Pong),
    Note(Note),
}

struct InFlight {
    at: Instant,
    /// 0: to the caller, 1: to the callee.
    to: usize,
    from: Route,
    probe: Probe,
}

/// The two sides and what is on the wire between them.
pub struct Pair {
    pub sides: [Side; 2],
    pub net: Net,
    pub t0: Instant,
    pub now: Instant,
    wire: Vec<InFlight>,
}

/// The simulation's step.
const STEP: Duration = Duration::from_millis(1);

impl Pair {
    pub fn new(caller: Side, callee: Side, net: Net, t0: Instant) -> Self {
        Self {
            sides: [caller, callee],
            net,
            t0,
            now: t0,
            wire: vec![],
        }
    }

    /// Time since the start of `side`'s switch `i`, from `t0`.
    pub fn switch_at(&self, side: usize, i: usize) -> Option<Duration> {
        self.sides[side].switches.get(i).map(|w| w.0)
    }

    /// Time since the start.
    pub fn elapsed(&self) -> Duration {
        self.now - self.t0
    }

    /// Runs both tables for `dur`.
    pub fn run(&mut self, dur: Duration) {
        let end = self.now + dur;
        while self.now < end {
            self.deliver();
            for i in 0..2 {
                if self.now < self.sides[i].starts {
                    continue;
                }
                while let Some(action) = self.sides[i].table.poll(self.now) {
                    self.act(i, action);
                }
            }
            self.now += STEP;
        }
    }

    /// Runs until `done` holds or `limit` passes; returns whether it held.
    pub fn run_until(&mut self, limit: Duration, done: impl Fn(&Pair) -> bool) -> bool {
        let end = self.now + limit;
        while self.now < end {
            if done(self) {
                return true;
            }
            self.run(STEP);
        }
        done(self)
    }

    fn deliver(&mut self) {
        let now = self.now;
        let (due, rest): (Vec<_>, Vec<_>) = self.wire.drain(..).partition(|p| p.at <= now);
        self.wire = rest;
        for p in due {
            let side = &mut self.sides[p.to];
            if now < side.starts {
                continue;
            }
            match p.probe {
                Probe::Ping(ping) => {
                    side.table.ping_received(now, p.from, &ping);
                }
                Probe::Pong(pong) => {
                    side.table.pong_received(now, p.from, &pong);
                }
                Probe::Note(note) => side.table.note_received(now, &note),
            }
        }
    }

    fn act(&mut self, i: usize, action: Action) {
        let t = self.elapsed();
        let (to, probe) = match action {
            Action::SendPing { to, ping } => (to, Probe::Ping(ping)),
            Action::SendPong { to, pong } => (to, Probe::Pong(pong)),
            Action::Switch { to, reason } => {
                self.sides[i].switches.push((t, to, reason));
                return;
            }
            Action::GiveUp { .. } => {
                self.sides[i].gave_up = true;
                return;
            }
            Action::Nudge => return,
            Action::SendNote { note } => (Route::Relay, Probe::Note(note)),
            Action::OpenSockets { count, .. } => {
                self.open_sockets(i, count);
                return;
            }
            Action::BirthdayEnded { stats } => {
                self.sides[i].birthdays.push(stats);
                return;
            }
        };
        self.sides[i].sent.push((t, to));
        let other = 1 - i;
        let (at, from) = match to {
            Route::Relay => (self.now + self.net.to_relay * 2, Route::Relay),
            Route::Direct(addr) => match self.direct_from(i, addr) {
                Some(from) => (self.now + self.net.direct, Route::Direct(from)),
                None => return,
            },
        };
        // A pong tells the asker where its ping came from.
        let probe = match probe {
            Probe::Pong(mut pong) => {
                pong.observed = match from {
                    Route::Direct(_) => Some(self.sides[other].seen_as),
                    Route::Relay => None,
                };
                Probe::Pong(pong)
            }
            p => p,
        };
        self.wire.push(InFlight {
            at,
            to: other,
            from,
            probe,
        });
    }

    /// Side `i`'s NAT opens `count` mappings toward the other side, each
    /// on a random public port (a symmetric NAT's).
    fn open_sockets(&mut self, i: usize, count: usize) {
        use rand::Rng;
        let mut rng = rand::rngs::StdRng::seed_from_u64(99 + i as u64);
        self.sides[i].opened.push(count);
        if let Some(nat) = &mut self.sides[i].nat {
            if !nat.unreachable {
                nat.ports
                    .extend((0..count).map(|_| rng.gen_range(1024..=65535)));
            }
        }
    }

    /// Where a direct packet from side `i` to `addr` seems to come from,
    /// if it gets through both NATs at all.
    fn direct_from(&mut self, i: usize, addr: SocketAddr) -> Option<SocketAddr> {
        let other = 1 - i;
        self.sides[i].sent_to.insert(addr);
        if !self.net.direct_open {
            return None;
        }
        // Out through our NAT: a symmetric one answers from the mapping
        // the other side's last packet came in on.
        let from = match &self.sides[i].nat {
            Some(nat) => match nat.via {
                Some(port) => SocketAddr::new(self.sides[i].seen_as.ip(), port),
                None => self.sides[i].seen_as,
            },
            None => self.sides[i].seen_as,
        };
        // In through theirs.
        let dest = &mut self.sides[other];
        let admitted = match &mut dest.nat {
            Some(nat) if addr.ip() == dest.reachable.ip() && nat.ports.contains(&addr.port()) => {
                nat.via = Some(addr.port());
                true
            }
            _ => addr == dest.reachable,
        };
        if !admitted || (dest.restricted && !dest.sent_to.contains(&from)) {
            return None;
        }
        Some(from)
    }
}
