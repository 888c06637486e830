//! [`PathTable`]: the events in, the choice, the actions out.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Instant;

use common::candidates::{canonical, is_observed_candidate};
use common::probe::{Nonce, Ping, Pong, TxId};

/// Ping transaction ids remembered (a replay of one gets no second pong).
const SEEN_TX: usize = 64;
use rand::rngs::StdRng;
use rand::RngCore;

use super::candidate::{Candidate, Origin};
use super::pacing::Bucket;
use super::{Action, PathConfig, PathMode, PathParams, PathState, Route};

/// The paths to one remote peer on one call (see the [module docs](super)).
#[derive(Debug)]
pub struct PathTable {
    pub(super) cfg: PathConfig,
    pub(super) call_id: u64,
    pub(super) mode: PathMode,
    loopback_ok: bool,
    pub(super) paths: Vec<Candidate>,
    pub(super) chosen: Option<Route>,
    /// Switches, nudges and the give-up, in order.
    pub(super) actions: VecDeque<Action>,
    pongs: VecDeque<(Route, Pong)>,
    /// The transaction ids of the latest pings answered: a replayed ping
    /// (the MAC does not cover the source address) gets no second pong.
    seen_tx: VecDeque<TxId>,
    bucket: Bucket,
    pub(super) rng: StdRng,
    pub(super) start: Instant,
    /// When a path was last usable (the give-up clock).
    pub(super) last_usable: Instant,
    pub(super) direct_validated: bool,
    /// When the relay first validated (the start of [`PathConfig::relay_grace`]).
    pub(super) relay_validated_at: Option<Instant>,
    observed: Option<SocketAddr>,
    done: bool,
    pub(super) birthday: super::birthday::Birthday,
}

impl PathTable {
    /// A table for one call, starting at `now`. `rng` makes transaction ids
    /// and nonces: seed it from the OS (`StdRng::from_entropy`); tests seed
    /// it with a number.
    pub fn new(params: PathParams, cfg: PathConfig, now: Instant, rng: StdRng) -> Self {
        let mut table = Self {
            bucket: Bucket::new(cfg.probe_rate, cfg.probe_burst, now),
            cfg,
            call_id: params.call_id,
            mode: params.mode,
            loopback_ok: params.loopback_ok,
            paths: Vec::new(),
            chosen: None,
            actions: VecDeque::new(),
            pongs: VecDeque::new(),
            seen_tx: VecDeque::new(),
            rng,
            start: now,
            last_usable: now,
            direct_validated: false,
            relay_validated_at: None,
            observed: None,
            done: false,
            birthday: Default::default(),
        };
        if params.relay && params.mode != PathMode::Direct {
            table.add(Route::Relay, Origin::Vetted, now);
        }
        table.candidates_added(now, &params.candidates);
        table
    }

    /// The other side's candidates (from the server, or told over the call
    /// after it roamed). Only addresses `common::candidates` vetting accepts
    /// are kept, at most [`PathConfig::max_candidates`]; in
    /// [`PathMode::Relay`] none. Returns how many are new.
    pub fn candidates_added(&mut self, now: Instant, addrs: &[SocketAddr]) -> usize {
        let mut added = 0;
        for addr in addrs.iter().copied().map(canonical) {
            let vetted = self.mode != PathMode::Relay && self.vetted(addr);
            let route = Route::Direct(addr);
            if !vetted || self.find(route).is_some() {
                continue;
            }
            let announced = self.count(|c| c.route != Route::Relay && c.origin == Origin::Vetted);
            if announced >= self.cfg.max_candidates && !self.evict_failed() {
                break;
            }
            self.add(route, Origin::Vetted, now);
            added += 1;
        }
        added
    }

    /// A valid ping (its MAC checked) arrived from `from`. Answers it with
    /// one pong (paced); an unknown vetted address becomes a peer-reflexive
    /// candidate; an echo of our nonce proves a peer-reflexive one. Returns
    /// whether it was taken (not a replay, from a path the table keeps).
    pub fn ping_received(&mut self, now: Instant, from: Route, ping: &Ping) -> bool {
        let from = canon(from);
        if self.seen_tx.contains(&ping.tx) {
            return false;
        }
        if self.seen_tx.len() >= SEEN_TX {
            self.seen_tx.pop_front();
        }
        self.seen_tx.push_back(ping.tx);
        let idx = match self.find(from) {
            Some(i) => i,
            None => match self.reflexive(from, now) {
                Some(i) => i,
                None => return false,
            },
        };
        self.paths[idx].nonce_echoed(&ping.nonce, now);
        self.paths[idx].triggered(now);
        if self.pongs.len() >= self.cfg.max_queued_pongs {
            return true;
        }
        let pong = Pong {
            call_id: self.call_id,
            tx: ping.tx,
            observed: match from {
                Route::Direct(addr) => Some(addr),
                Route::Relay => None,
            },
            nonce: self.paths[idx].challenge,
        };
        self.pongs.push_back((from, pong));
        true
    }

    /// A valid pong arrived from `from`. If it answers a ping we sent
    /// there, the path is validated with the RTT measured here, and the
    /// choice is made again. Returns whether it answered one.
    pub fn pong_received(&mut self, now: Instant, from: Route, pong: &Pong) -> bool {
        let from = canon(from);
        if self.birthday_pong(now, from, pong) {
            return true;
        }
        let Some(idx) = self.find(from) else {
            return false;
        };
        if self.paths[idx].pong(&pong.tx, pong.nonce, now).is_none() {
            return false;
        }
        if let (Route::Direct(_), Some(addr)) = (from, pong.observed) {
            self.observed = Some(addr);
        }
        if from == Route::Relay && self.relay_validated_at.is_none() {
            self.relay_validated_at = Some(now);
        }
        self.choose(now);
        true
    }

    /// The next thing to do at `now`, if any; call until `None`, then sleep
    /// until [`PathTable::next_deadline`]. Timers (failed paths, give-up)
    /// are handled here: there is no separate tick.
    pub fn poll(&mut self, now: Instant) -> Option<Action> {
        if self.done {
            return None;
        }
        self.expire(now);
        self.birthday_timers(now);
        if let Some(action) = self.actions.pop_front() {
            self.done = matches!(action, Action::GiveUp { .. });
            return Some(action);
        }
        if let Some(action) = self.birthday_poll(now) {
            return Some(action);
        }
        if !self.pongs.is_empty() && self.bucket.take(now) {
            let (to, pong) = self.pongs.pop_front()?;
            return Some(Action::SendPong { to, pong });
        }
        let idx = self.due(now)?;
        if !self.bucket.take(now) {
            return None;
        }
        Some(self.ping(idx, now))
    }

    /// When [`PathTable::poll`] has something to do next; `None` once given up.
    pub fn next_deadline(&self) -> Option<Instant> {
        if self.done {
            return None;
        }
        let paced = |t: Instant| self.bucket.ready_at().map_or(t, |r| r.max(t));
        let pings = self.paths.iter().filter_map(|c| c.next_ping).map(paced);
        let fails = self.paths.iter().filter_map(|c| c.fail_at(&self.cfg));
        let pongs = (!self.pongs.is_empty()).then(|| paced(self.start));
        let queued = (!self.actions.is_empty()).then_some(self.start);
        pings
            .chain(fails)
            .chain(pongs)
            .chain(queued)
            .chain(self.relay_grace_at())
            .chain(self.birthday_deadline())
            .chain(self.give_up_at())
            .min()
    }

    /// The path the call's packets take now; `None` until one validates.
    pub fn chosen(&self) -> Option<Route> {
        self.chosen
    }

    /// Before a path is chosen, where the handshake's packets may go: the
    /// vetted candidates and the relay (never an unproven peer-reflexive
    /// address). Empty once a path is chosen.
    pub fn unconfirmed_routes(&self) -> impl Iterator<Item = Route> + '_ {
        let open = self.chosen.is_none();
        self.paths
            .iter()
            .filter(move |c| open && c.origin == Origin::Vetted)
            .map(|c| c.route)
    }

    /// Forgets a direct candidate that proved to be someone else (a
    /// stranger's key answered the handshake there). Returns whether it was
    /// one.
    pub fn forget(&mut self, route: Route) -> bool {
        let route = canon(route);
        match self.find(route) {
            Some(i) if route != Route::Relay => {
                self.paths.remove(i);
                if self.chosen == Some(route) {
                    self.chosen = None;
                }
                true
            }
            _ => false,
        }
    }

    /// Every candidate path, the relay included (peer-reflexive ones too,
    /// proven or not: packets *from* them belong to this call).
    pub fn routes(&self) -> impl Iterator<Item = Route> + '_ {
        self.paths.iter().map(|c| c.route)
    }

    /// The candidate paths packets may come in on: announced ones, the relay,
    /// and peer-reflexive ones that proved they receive there (an
    /// unproven one could be a spoofed source).
    pub fn proven_routes(&self) -> impl Iterator<Item = Route> + '_ {
        self.paths.iter().filter(|c| c.verified()).map(|c| c.route)
    }

    /// What is known of `route`, if it is a candidate.
    pub fn state(&self, route: Route) -> Option<PathState> {
        self.find(canon(route)).map(|i| self.paths[i].state)
    }

    /// Our own address as the other peer last saw it on a direct path (a
    /// change means our NAT rebound: re-register and tell the other side).
    pub fn observed(&self) -> Option<SocketAddr> {
        self.observed
    }

    fn vetted(&self, addr: SocketAddr) -> bool {
        is_observed_candidate(addr, self.loopback_ok)
    }

    fn find(&self, route: Route) -> Option<usize> {
        self.paths.iter().position(|c| c.route == route)
    }

    fn count(&self, f: impl Fn(&Candidate) -> bool) -> usize {
        self.paths.iter().filter(|c| f(c)).count()
    }

    /// Eight fresh random bytes (a transaction id or a challenge).
    pub(super) fn nonce(&mut self) -> Nonce {
        let mut n = [0; 8];
        self.rng.fill_bytes(&mut n);
        n
    }

    fn add(&mut self, route: Route, origin: Origin, now: Instant) -> usize {
        let challenge = self.nonce();
        self.paths
            .push(Candidate::new(route, origin, challenge, now));
        self.paths.len() - 1
    }

    /// Drops one failed, unchosen announced candidate to make room.
    fn evict_failed(&mut self) -> bool {
        let chosen = self.chosen;
        let victim = self.paths.iter().position(|c| {
            c.state == PathState::Failed && c.origin == Origin::Vetted && Some(c.route) != chosen
        });
        victim.map(|i| self.paths.remove(i)).is_some()
    }

    /// A new peer-reflexive candidate for a ping from `from`, if allowed.
    fn reflexive(&mut self, from: Route, now: Instant) -> Option<usize> {
        let Route::Direct(addr) = from else {
            return None;
        };
        if self.mode == PathMode::Relay || !self.vetted(addr) {
            return None;
        }
        // A replayed ping from spoofed sources cannot fill these slots: its
        // transaction id was seen (`seen_tx`); a fresh valid ping needs the
        // call's key.
        let known = self.count(|c| matches!(c.origin, Origin::Reflexive { .. }));
        if known >= self.cfg.max_reflexive {
            return None;
        }
        Some(self.add(from, Origin::Reflexive { verified: false }, now))
    }

    fn due(&self, now: Instant) -> Option<usize> {
        (0..self.paths.len())
            .filter(|&i| self.paths[i].next_ping.is_some_and(|t| t <= now))
            .min_by_key(|&i| self.paths[i].next_ping)
    }

    fn ping(&mut self, idx: usize, now: Instant) -> Action {
        let tx = self.nonce();
        let chosen = self.chosen == Some(self.paths[idx].route);
        let c = &mut self.paths[idx];
        c.ping_sent(tx, now, chosen, &self.cfg);
        Action::SendPing {
            to: c.route,
            ping: Ping {
                call_id: self.call_id,
                tx,
                nonce: c.echo,
            },
        }
    }
}

fn canon(route: Route) -> Route {
    match route {
        Route::Direct(addr) => Route::Direct(canonical(addr)),
        Route::Relay => Route::Relay,
    }
}
