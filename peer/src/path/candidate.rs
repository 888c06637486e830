//! One candidate path of a call: its state, its pings in flight, its
//! challenge nonce, and when it is next pinged.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use common::probe::{Nonce, TxId};

use super::{PathConfig, PathState, Route};

/// Where a candidate came from, which decides what may be sent to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Origin {
    /// The relay, or an address vetted like the server's candidates.
    Vetted,
    /// A valid ping from an address nobody announced. Until `verified` (it
    /// echoed the nonce we sent there) it gets one pong per ping and nothing
    /// else, and carries no data.
    Reflexive {
        /// Whether it echoed our nonce.
        verified: bool,
    },
    /// A guessed port of the other side's IP that answered our ping there
    /// (a birthday attempt, [`super::birthday`]): proven by that pong.
    Birthday,
}

#[derive(Debug, Clone)]
pub(super) struct Candidate {
    pub(super) route: Route,
    pub(super) origin: Origin,
    pub(super) state: PathState,
    /// The nonce our pongs on this path carry (the challenge).
    pub(super) challenge: Nonce,
    /// The last nonce the other side's pongs here carried; our pings echo it.
    pub(super) echo: Nonce,
    /// Pings whose pong is outstanding, oldest first.
    inflight: VecDeque<(TxId, Instant)>,
    /// When it is pinged next; `None`: never (unverified reflexive).
    pub(super) next_ping: Option<Instant>,
    /// The gap after the next ping while probing (doubles).
    gap: Duration,
    /// Since when it has been probed without an answer.
    probing_since: Instant,
}

impl Candidate {
    pub(super) fn new(route: Route, origin: Origin, challenge: Nonce, now: Instant) -> Self {
        let pinged = !matches!(origin, Origin::Reflexive { verified: false });
        Self {
            route,
            origin,
            state: PathState::Probing,
            challenge,
            echo: [0; 8],
            inflight: VecDeque::new(),
            next_ping: pinged.then_some(now),
            gap: Duration::ZERO,
            probing_since: now,
        }
    }

    /// Whether data (QUIC) may be sent here: validated, and if peer-reflexive
    /// proven to receive here.
    pub(super) fn usable(&self) -> bool {
        matches!(self.state, PathState::Validated { .. }) && self.verified()
    }

    pub(super) fn verified(&self) -> bool {
        self.origin != Origin::Reflexive { verified: false }
    }

    pub(super) fn rtt(&self) -> Option<Duration> {
        match self.state {
            PathState::Validated { rtt, .. } => Some(rtt),
            _ => None,
        }
    }

    /// The echoed nonce in a ping from here matches our challenge: a
    /// peer-reflexive candidate is proven and gets pinged from now on.
    pub(super) fn nonce_echoed(&mut self, nonce: &Nonce, now: Instant) -> bool {
        if self.verified() || *nonce != self.challenge {
            return false;
        }
        self.origin = Origin::Reflexive { verified: true };
        self.probing_since = now;
        self.next_ping = Some(now);
        true
    }

    /// A valid ping came in on this path while ours have not been answered
    /// yet: ping back at once (ICE's triggered check). The other side's
    /// ping has just opened its NAT toward us, so ours gets through now,
    /// where the next scheduled one might come only after the relay won.
    pub(super) fn triggered(&mut self, now: Instant) {
        let waiting = !matches!(self.state, PathState::Validated { .. });
        if self.verified() && waiting && self.next_ping.is_some_and(|t| t > now) {
            self.next_ping = Some(now);
        }
    }

    /// A ping goes out now: remember it and schedule the next one.
    pub(super) fn ping_sent(&mut self, tx: TxId, now: Instant, chosen: bool, cfg: &PathConfig) {
        if self.inflight.len() >= cfg.max_inflight.max(1) {
            self.inflight.pop_front();
        }
        self.inflight.push_back((tx, now));
        let gap = match self.state {
            PathState::Probing => {
                self.gap = (self.gap * 2)
                    .max(cfg.probe_interval_min)
                    .min(cfg.retry_interval);
                self.gap
            }
            PathState::Validated { .. } if chosen => cfg.liveness_interval,
            PathState::Validated { .. } => cfg.standby_interval,
            PathState::Failed => cfg.retry_interval,
        };
        self.next_ping = Some(now + gap);
    }

    /// A pong for `tx` came from here; returns the RTT sample if it
    /// answers a ping we sent here.
    pub(super) fn pong(&mut self, tx: &TxId, nonce: Nonce, now: Instant) -> Option<Duration> {
        let i = self.inflight.iter().position(|(t, _)| t == tx)?;
        let (_, sent) = self.inflight.remove(i)?;
        let sample = now.saturating_duration_since(sent);
        let rtt = match self.state {
            // Smoothed like TCP's SRTT (7/8 old + 1/8 new): jitter alone
            // moves it little, so hysteresis holds.
            PathState::Validated { rtt, .. } => (rtt * 7 + sample) / 8,
            _ => sample,
        };
        self.state = PathState::Validated {
            rtt,
            last_pong: now,
        };
        if nonce != self.echo {
            // A new challenge: echo it at once, so the other side, which
            // may know this path only as a peer-reflexive address, can
            // prove it and start taking our data here.
            self.echo = nonce;
            self.next_ping = Some(now);
        }
        Some(sample)
    }

    /// A pong to a guessed ping came from here: validated with this RTT.
    pub(super) fn validated_by(&mut self, rtt: Duration, nonce: Nonce, now: Instant) {
        if matches!(self.origin, Origin::Reflexive { .. }) {
            self.origin = Origin::Birthday;
        }
        self.state = PathState::Validated {
            rtt,
            last_pong: now,
        };
        self.echo = nonce;
        self.next_ping = Some(now);
    }

    /// When this path fails if no pong comes first.
    pub(super) fn fail_at(&self, cfg: &PathConfig) -> Option<Instant> {
        match self.state {
            PathState::Validated { last_pong, .. } => Some(last_pong + cfg.fail_after),
            PathState::Probing if self.next_ping.is_some() => {
                Some(self.probing_since + cfg.probe_timeout)
            }
            _ => None,
        }
    }

    /// Marks the path failed if its deadline passed; returns whether it did.
    pub(super) fn expire(&mut self, now: Instant, cfg: &PathConfig) -> bool {
        if self.fail_at(cfg).is_some_and(|t| t <= now) {
            self.state = PathState::Failed;
            self.inflight
                .retain(|(_, sent)| *sent + cfg.fail_after > now);
            return true;
        }
        false
    }
}
