//! Birthday probing: a direct path between a symmetric NAT and a cone NAT
//! (issue 15), as part of the [`PathTable`].
//!
//! A symmetric NAT gives every destination a new public port, so the port
//! the server saw is useless to the other peer, and a port-restricted cone
//! lets nothing in from an address its host never sent to: neither side's
//! pings get through, and the call rides the relay. But the *hard* side
//! (symmetric) can open many mappings toward the *easy* side's one public
//! address, and the easy side can guess: if it pings `N` random ports of
//! the hard side's public IP, each hits one of the `M` open mappings with
//! odds `M / 64,512`. With `M` = 257 and 1,000 pings a second, a pair is
//! found in ~0.17 s at the median; its ping opens the easy side's NAT
//! toward the hard one's port, the hard side answers from the socket that
//! owns the mapping, and that pong is a validated path.
//!
//! The steps, each side's table driving its own:
//!
//! 1. **Notes.** Once a call is on the relay and this side knows its
//!    NAT's mapping ([`PathTable::set_mapping`], from the server's two
//!    check ports), it sends a [`Note`] over the relay every
//!    [`NOTE_INTERVAL`] (at most [`MAX_NOTES`] a round) until the other
//!    side's note says it heard ours. Neither side guesses: both know
//!    which of them is symmetric.
//! 2. **Roles**, once both notes of the round are known: symmetric ↔ cone
//!    only. The hard side asks its driver to open
//!    [`PathConfig::birthday_sockets`] sockets and send one ping from each
//!    to the easy side's observed address ([`Action::OpenSockets`]); the
//!    easy side sends pings to distinct random ports of the hard side's
//!    observed IP — only that IP, the address the server vetted — paced
//!    at [`PathConfig::birthday_rate`], at most
//!    [`PathConfig::birthday_budget`] of them within
//!    [`PathConfig::birthday_time`]. Anything else (cone ↔ cone already
//!    had its chance, symmetric ↔ symmetric would need ~170k probes, an
//!    unknown side) makes no attempt at all.
//! 3. **The end.** The first pong that answers one of those pings (its
//!    MAC checked, its transaction id ours, from the port it went to)
//!    is a validated direct candidate, and the call moves to it
//!    ([`SwitchReason::Birthday`]); on the hard side the first direct
//!    path that validates during the attempt does. Either way, or when the
//!    time is up, [`Action::BirthdayEnded`] reports the numbers and the
//!    driver closes the extra sockets (all but the winner's). A failed
//!    attempt is tried again after [`PathConfig::birthday_retry`] (a new
//!    round of notes), never in a loop.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use common::probe::{Mapping, Note, Ping, Pong, TxId};

use super::candidate::Origin;
use super::{Action, PathMode, PathTable, Route, SwitchReason};

/// Gap between notes of one round.
pub const NOTE_INTERVAL: Duration = Duration::from_millis(250);

/// Most notes one round sends (answers to the other side's included).
pub const MAX_NOTES: u32 = 16;

/// The ports a NAT picks from (Linux `fully-random`, most home routers):
/// the easy side guesses only among these.
const PORTS: std::ops::RangeInclusive<u16> = 1024..=65535;

/// How long the hard side keeps its sockets past the easy side's time: its
/// note and the easy side's first pings take a round trip.
const OPEN_SLACK: Duration = Duration::from_secs(1);

/// How long the easy side waits for pongs after its last ping.
const SPRAY_SLACK: Duration = Duration::from_millis(300);

/// Which side of an attempt this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The symmetric side: opens many sockets, each with one ping out.
    Open,
    /// The cone side: pings random ports of the other side's IP.
    Spray,
}

impl Role {
    /// `open` or `spray`, as in events.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Spray => "spray",
        }
    }
}

impl Birthday {
    /// Round `round` begins: nothing heard of it yet, notes from now.
    fn new_round(&mut self, round: u8, now: Instant) {
        self.round = round;
        self.theirs = None;
        self.they_heard = false;
        self.notes_sent = 0;
        self.answers_sent = 0;
        self.answer_due = false;
        self.retry_at = None;
        self.next_note = Some(now);
    }
}

/// What one attempt cost and what came of it (in `path_changed` and the
/// `birthday` event).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BirthdayStats {
    /// This side's role.
    pub role: Role,
    /// Pings sent to guessed ports (the easy side; 0 on the hard side).
    pub probes: u32,
    /// Extra sockets opened (the hard side; 0 on the easy side).
    pub sockets: u32,
    /// From the attempt's start to its end.
    pub elapsed: Duration,
    /// Whether the call moved to a direct path.
    pub direct: bool,
}

/// The notes exchanged so far and the attempt running, if any.
#[derive(Debug, Default)]
pub(super) struct Birthday {
    /// This side's NAT mapping, as this side will announce it.
    mine: Mapping,
    /// The current round (a new round is a new attempt); 0: none yet.
    round: u8,
    /// The other side's mapping in this round, once its note came.
    theirs: Option<Mapping>,
    /// Whether the other side said it has our note of this round.
    they_heard: bool,
    /// Notes sent of our own this round, and answers to theirs.
    notes_sent: u32,
    answers_sent: u32,
    next_note: Option<Instant>,
    /// A note of theirs wants an answer (it did not say it heard ours, or
    /// it was their first): sent even when our own notes ran out.
    answer_due: bool,
    /// Whether notes may go out: they are sealed with the key exported
    /// from the peer connection, which the server never sees (a note under
    /// the server's per-call key is refused, so a lying server cannot
    /// start an attempt toward an IP of its choosing).
    notes_ready: bool,
    /// The round whose attempt was made or skipped.
    done_round: u8,
    attempt: Option<Attempt>,
    /// When the next round may start (after an attempt, failed or not: a
    /// call that falls back to the relay later tries again).
    retry_at: Option<Instant>,
    /// The last attempt's numbers.
    pub(super) last: Option<BirthdayStats>,
}

#[derive(Debug)]
struct Attempt {
    role: Role,
    started: Instant,
    deadline: Instant,
    sockets: u32,
    /// The easy side: the hard side's IP and the ports still to try.
    ip: Option<IpAddr>,
    ports: Vec<u16>,
    sent: u32,
    /// Pings to guessed ports whose pong is outstanding: port, sent at.
    inflight: HashMap<TxId, (u16, Instant)>,
}

impl PathTable {
    /// This side's NAT mapping, once the server's check ports told it
    /// (`Unknown`: no attempt from this side). Notes go out from now on
    /// while the call is on the relay.
    pub fn set_mapping(&mut self, now: Instant, mapping: Mapping) {
        let usable = match mapping {
            Mapping::Symmetric => self.cfg.birthday_sockets > 0,
            Mapping::Cone => self.cfg.birthday_budget > 0 && self.cfg.birthday_rate > 0,
            Mapping::Unknown => false,
        };
        let b = &mut self.birthday;
        b.mine = if usable { mapping } else { Mapping::Unknown };
        if b.mine != Mapping::Unknown && b.next_note.is_none() {
            b.next_note = Some(now);
        }
    }

    /// Notes may go out from now on: this side seals its probes with the
    /// key exported from the peer connection (the router says when).
    pub fn notes_ready(&mut self) {
        self.birthday.notes_ready = true;
    }

    /// A valid note arrived (over any path), under the key exported from
    /// the peer connection (the router refuses one under the server's).
    pub fn note_received(&mut self, now: Instant, note: &Note) {
        let running = self.birthday.attempt.is_some();
        let b = &mut self.birthday;
        // A new round from the other side only when ours may start too:
        // notes cannot make this side attempt more often than its retry
        // interval allows.
        let may_start = b.retry_at.is_none_or(|t| t <= now);
        if note.round > b.round && !running && may_start {
            b.new_round(note.round, now);
        }
        if note.round == b.round {
            let new = b.theirs.is_none();
            b.theirs = Some(note.mapping);
            b.they_heard |= note.heard;
            if new || !note.heard {
                b.answer_due = true;
            }
        } else if note.round < b.round {
            // It missed our round: tell it again.
            b.answer_due = true;
        }
        self.maybe_start(now);
    }

    /// A valid probe came in on one of the hard side's extra sockets: a
    /// guess hit, and the attempt lasts at least until the path it opened
    /// could validate.
    pub fn birthday_heard(&mut self, now: Instant) {
        if let Some(a) = self.birthday.attempt.as_mut() {
            if a.role == Role::Open {
                a.deadline = a.deadline.max(now + OPEN_SLACK);
            }
        }
    }

    /// The last birthday attempt's numbers, if one was made.
    pub fn birthday(&self) -> Option<BirthdayStats> {
        self.birthday.last
    }

    /// Whether the call is on the relay with no usable direct path (the
    /// only time notes and attempts make sense).
    fn relayed(&self) -> bool {
        self.mode == PathMode::Auto
            && self.chosen == Some(Route::Relay)
            && !self
                .paths
                .iter()
                .any(|c| c.route != Route::Relay && c.usable())
    }

    /// The birthday's next probe at `now`: a note or a guessed ping (its
    /// timers ran first, [`PathTable::birthday_timers`]).
    pub(super) fn birthday_poll(&mut self, now: Instant) -> Option<Action> {
        if let Some(note) = self.due_note(now) {
            return Some(Action::SendNote { note });
        }
        self.spray(now)
    }

    /// When the birthday has something to do next.
    pub(super) fn birthday_deadline(&self) -> Option<Instant> {
        let b = &self.birthday;
        let note = b.next_note.filter(|_| self.notes_wanted());
        let attempt = b.attempt.as_ref().map(|a| {
            a.next_guess_at(self.cfg.birthday_rate)
                .map_or(a.deadline, |t| t.min(a.deadline))
        });
        // An answer is due at once (the start is in the past).
        let answer = self.answer_wanted().then_some(self.start);
        // A retry only matters while on the relay (a direct call's past
        // retry time must not wake the task again and again).
        let retry = b.retry_at.filter(|_| b.attempt.is_none() && self.relayed());
        note.into_iter()
            .chain(answer)
            .chain(attempt)
            .chain(retry)
            .min()
    }

    /// A pong from `from` answering one of our guessed pings: the path is
    /// validated (a new candidate if it was not one). Returns whether it
    /// was one.
    pub(super) fn birthday_pong(&mut self, now: Instant, from: Route, pong: &Pong) -> bool {
        let Route::Direct(addr) = from else {
            return false;
        };
        let Some(attempt) = self.birthday.attempt.as_mut() else {
            return false;
        };
        if attempt.ip != Some(addr.ip()) {
            return false;
        }
        let sent = match attempt.inflight.get(&pong.tx) {
            Some(&(port, sent)) if port == addr.port() => sent,
            _ => return false,
        };
        attempt.inflight.remove(&pong.tx);
        let rtt = now.saturating_duration_since(sent);
        let idx = match self.paths.iter().position(|c| c.route == from) {
            Some(i) => i,
            None => {
                let challenge = self.nonce();
                self.paths.push(super::candidate::Candidate::new(
                    from,
                    Origin::Birthday,
                    challenge,
                    now,
                ));
                self.paths.len() - 1
            }
        };
        self.paths[idx].validated_by(rtt, pong.nonce, now);
        self.choose(now);
        true
    }

    /// The reason for a switch to `to` now: a direct path during an
    /// attempt is the attempt's.
    pub(super) fn birthday_reason(&self, to: Route, reason: SwitchReason) -> SwitchReason {
        let direct = matches!(to, Route::Direct(_));
        if direct && self.birthday.attempt.is_some() && reason != SwitchReason::First {
            SwitchReason::Birthday
        } else {
            reason
        }
    }

    /// After a switch: an attempt whose call went direct is over.
    pub(super) fn birthday_switched(&mut self, to: Route, now: Instant) {
        if matches!(to, Route::Direct(_)) && self.birthday.attempt.is_some() {
            self.end_attempt(now, true);
        }
    }

    /// Whether a note may go out at all: our mapping known, a round
    /// begun, the exported key in use, on the relay (or attempting).
    fn may_note(&self) -> bool {
        let b = &self.birthday;
        b.mine != Mapping::Unknown
            && b.round > 0
            && b.notes_ready
            && (self.relayed() || b.attempt.is_some())
    }

    /// Whether a note of our own is wanted: until both sides know of
    /// each other's, at most [`MAX_NOTES`] a round.
    fn notes_wanted(&self) -> bool {
        let b = &self.birthday;
        let settled = b.theirs.is_some() && b.they_heard;
        self.may_note() && !settled && b.notes_sent < MAX_NOTES
    }

    /// Whether an answer to a note of theirs is wanted (its own budget
    /// of [`MAX_NOTES`] a round).
    fn answer_wanted(&self) -> bool {
        let b = &self.birthday;
        b.answer_due && b.answers_sent < MAX_NOTES && self.may_note()
    }

    fn due_note(&mut self, now: Instant) -> Option<Note> {
        let answer = self.answer_wanted();
        let own = self.notes_wanted() && self.birthday.next_note.is_some_and(|t| t <= now);
        if !answer && !own {
            return None;
        }
        let tx = self.nonce();
        let b = &mut self.birthday;
        if answer {
            b.answer_due = false;
            b.answers_sent += 1;
        } else {
            b.notes_sent += 1;
            b.next_note = Some(now + NOTE_INTERVAL);
            if b.notes_sent >= MAX_NOTES && b.theirs.is_none() {
                // Nobody answered this round: another one later.
                b.retry_at = Some(now + self.cfg.birthday_retry);
            }
        }
        Some(Note {
            call_id: self.call_id,
            tx,
            mapping: b.mine,
            round: b.round,
            heard: b.theirs.is_some(),
        })
    }

    /// Rounds and attempts that start or end with time.
    pub(super) fn birthday_timers(&mut self, now: Instant) {
        if self
            .birthday
            .attempt
            .as_ref()
            .is_some_and(|a| a.deadline <= now)
        {
            self.end_attempt(now, false);
        }
        let relayed = self.relayed();
        let b = &mut self.birthday;
        let first = b.round == 0 && b.mine != Mapping::Unknown;
        let retry = b.attempt.is_none() && b.retry_at.is_some_and(|t| t <= now);
        if relayed && (first || retry) && b.round < u8::MAX {
            // (After 255 rounds, a day of failed attempts, no more.)
            b.new_round(b.round + 1, now);
        }
        self.maybe_start(now);
    }

    /// Starts this round's attempt once both notes are known (or skips a
    /// round where it cannot pay off).
    fn maybe_start(&mut self, now: Instant) {
        let b = &self.birthday;
        let Some(theirs) = b.theirs else { return };
        // Our own mapping not known yet: wait for it (the round is not
        // given up; `set_mapping` may come in a moment).
        if b.mine == Mapping::Unknown {
            return;
        }
        if b.attempt.is_some() || b.done_round == b.round || b.round == 0 || !self.relayed() {
            return;
        }
        // This round's attempt is made now or not at all.
        let mine = b.mine;
        self.birthday.done_round = self.birthday.round;
        let role = match (mine, theirs) {
            (Mapping::Symmetric, Mapping::Cone) => Role::Open,
            (Mapping::Cone, Mapping::Symmetric) => Role::Spray,
            _ => return,
        };
        // The other side's observed address: the first one the server gave.
        let Some(target) = self.paths.iter().find_map(|c| match (c.route, c.origin) {
            (Route::Direct(a), Origin::Vetted) => Some(a),
            _ => None,
        }) else {
            return;
        };
        let mut attempt = Attempt {
            role,
            started: now,
            deadline: now + self.cfg.birthday_time,
            sockets: 0,
            ip: None,
            ports: vec![],
            sent: 0,
            inflight: HashMap::new(),
        };
        match role {
            Role::Open => {
                attempt.deadline += OPEN_SLACK;
                attempt.sockets = u32::try_from(self.cfg.birthday_sockets).unwrap_or(u32::MAX);
                let ping = Ping {
                    call_id: self.call_id,
                    tx: self.nonce(),
                    nonce: [0; 8],
                };
                self.actions.push_back(Action::OpenSockets {
                    count: self.cfg.birthday_sockets,
                    to: target,
                    ping,
                });
            }
            Role::Spray => {
                attempt.deadline += SPRAY_SLACK;
                // Distinct random ports, the one the server saw left out
                // (it is the hard side's mapping toward the server).
                let span = usize::from(PORTS.end() - PORTS.start()) + 1;
                let want = (self.cfg.birthday_budget as usize + 1).min(span);
                let ports: Vec<u16> = rand::seq::index::sample(&mut self.rng, span, want)
                    .into_iter()
                    .filter_map(|i| u16::try_from(i).ok())
                    .map(|i| PORTS.start() + i)
                    .filter(|p| *p != target.port())
                    .take(self.cfg.birthday_budget as usize)
                    .collect();
                attempt.ip = Some(target.ip());
                attempt.ports = ports;
            }
        }
        self.birthday.attempt = Some(attempt);
    }

    /// The next guessed ping, when one is due.
    fn spray(&mut self, now: Instant) -> Option<Action> {
        let a = self.birthday.attempt.as_ref()?;
        if a.next_guess_at(self.cfg.birthday_rate)? > now {
            return None;
        }
        let (ip, port) = (a.ip?, a.ports[a.sent as usize]);
        let tx = self.nonce();
        let a = self.birthday.attempt.as_mut()?;
        a.sent += 1;
        a.inflight.insert(tx, (port, now));
        Some(Action::SendPing {
            to: Route::Direct(SocketAddr::new(ip, port)),
            ping: Ping {
                call_id: self.call_id,
                tx,
                nonce: [0; 8],
            },
        })
    }

    fn end_attempt(&mut self, now: Instant, direct: bool) {
        let Some(a) = self.birthday.attempt.take() else {
            return;
        };
        let stats = BirthdayStats {
            role: a.role,
            probes: a.sent,
            sockets: a.sockets,
            elapsed: now.saturating_duration_since(a.started),
            direct,
        };
        self.birthday.last = Some(stats);
        self.birthday.retry_at = Some(now + self.cfg.birthday_retry);
        self.actions.push_back(Action::BirthdayEnded { stats });
    }
}

impl Attempt {
    /// When the easy side's next guess is due at `rate` a second; `None`
    /// on the hard side or once every port was tried.
    fn next_guess_at(&self, rate: u32) -> Option<Instant> {
        if self.ip.is_none() || self.sent as usize >= self.ports.len() {
            return None;
        }
        let per = Duration::from_secs(1) / rate.max(1);
        Some(
            self.started
                .checked_add(per * self.sent)
                .unwrap_or(self.deadline),
        )
    }
}
