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

use common::probe::{Ping, Pong};
use peer::path::{Action, PathConfig, PathMode, PathParams, PathTable, Route, SwitchReason};

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
        }
    }

    /// The path chosen now, if any.
    pub fn chosen(&self) -> Option<Route> {
        self.table.chosen()
    }
}

enum Probe {
    Ping(Ping),
    Pong(Pong),
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
                Probe::Ping(ping) => side.table.ping_received(now, p.from, &ping),
                Probe::Pong(pong) => side.table.pong_received(now, p.from, &pong),
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
        };
        self.sides[i].sent.push((t, to));
        let other = 1 - i;
        let (at, from) = match to {
            Route::Relay => (self.now + self.net.to_relay * 2, Route::Relay),
            Route::Direct(addr) => {
                if !self.net.direct_open || addr != self.sides[other].reachable {
                    return;
                }
                (
                    self.now + self.net.direct,
                    Route::Direct(self.sides[i].seen_as),
                )
            }
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
}
