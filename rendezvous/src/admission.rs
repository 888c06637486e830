//! Who may start a handshake: connection quotas, and when to ask a source to
//! prove its address with a QUIC Retry first.
//!
//! A spoofed Initial packet costs its sender nothing, and before this check
//! each one held a slot of the claimed source's per-IP quota until the
//! handshake timed out — 64 packets could lock a whole household out.
//! Now an unvalidated source may have at most one handshake in flight; a
//! second one (and every one while many handshakes are pending overall) is
//! answered with a Retry, which only a sender that receives packets at that
//! address can answer. Well-behaved peers connect once and pay nothing; the
//! cost, when Retry is asked, is one extra round trip on the server link only
//! (never on a call's setup).
//!
//! A source, proven address or not, holds at most
//! [`Quotas::max_pending_per_source_idle`] handshakes at once (16) at any
//! time, and once the queue is busy (past [`Quotas::retry_above_pending`])
//! only a few ([`Quotas::max_pending_per_source`], 4): a few real hosts
//! stalling their handshakes cannot hold the queue at the busy mark (which
//! would make every newcomer pay a Retry), and can fill half of it at most
//! once it is busy, never all of it. Past either cap the packet is dropped,
//! never refused — many honest users share one carrier-NAT address, and
//! their QUIC stacks send the Initial again a moment later. (The standing
//! cap is higher than the busy one, so twenty users behind one address
//! calling at once while the queue is quiet connect with at most one
//! retransmission round for a few of them.)
//! When the queue is full anyway (many sources), a newcomer takes the slot
//! of the oldest handshake of the source holding the most
//! ([`Admission::Shed`]; asked to prove its address first), so the queue
//! tends to a fair share per source.
//!
//! Every count is per source ([`crate::ratelimit::source_key`]: an IPv6
//! /64 is one source). [`Sources`] keeps the counts and a cancel handle per
//! handshake; it does no I/O, so the server's whole admission path is
//! unit-tested here.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use crate::ratelimit::source_key;

/// What to do with a new connection attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Start the handshake and count it against the source's quota.
    Accept,
    /// Like [`Admission::Accept`], after aborting the oldest handshake of
    /// the source holding the most: the queue is full, and this source holds
    /// fewer than that one would after giving one up.
    Shed,
    /// Ask the source to prove its address first (QUIC Retry).
    Retry,
    /// Refuse: a connection limit is reached.
    Refuse,
    /// Drop the packet without an answer: the handshake queue is full, or
    /// this source holds its share of it. The peer's QUIC stack sends its
    /// Initial again after its retransmission timeout, which doubles each
    /// time (1 s, 2 s, 4 s, …) — backoff for free, with no new handshake to
    /// compute on either side. (Refusing instead makes a peer start over at
    /// once with a fresh key exchange, and a herd of them collapses the
    /// server: measured with 100,000.)
    Drop,
}

/// The numbers a decision needs, read under the server's lock.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    /// Whether the source already proved its address (answered a Retry).
    pub validated: bool,
    /// Connections open or in handshake, all sources.
    pub open: usize,
    /// Handshakes in flight, all sources.
    pub pending: usize,
    /// Connections open or in handshake from this source.
    pub from_ip: usize,
    /// Handshakes in flight from this source.
    pub pending_from_ip: usize,
    /// Handshakes in flight from the source holding the most (0 when not
    /// needed: only read when the queue is full).
    pub most_pending_from_one: usize,
}

/// The limits a decision applies.
#[derive(Debug, Clone, Copy)]
pub struct Quotas {
    /// Most connections at once.
    pub max_connections: usize,
    /// Most connections from one source.
    pub max_per_ip: usize,
    /// Above this many handshakes in flight (the queue is busy), every
    /// unvalidated source is asked to Retry (a flood from many spoofed
    /// addresses), and every source is held to `max_pending_per_source`.
    pub retry_above_pending: usize,
    /// At this many handshakes in flight, new attempts are dropped
    /// unanswered, validated or not ([`Admission::Drop`]), unless one can
    /// take a slot from a bigger holder ([`Admission::Shed`]): a queue
    /// longer than the server drains before the peers' retransmission
    /// timers fire only multiplies the packets.
    pub max_pending: usize,
    /// Most handshakes in flight from one source, validated or not, while
    /// the queue is busy; past it attempts are dropped (the peers send them
    /// again).
    pub max_pending_per_source: usize,
    /// Most handshakes in flight from one source, validated or not, at any
    /// time, busy queue or not; past it attempts are dropped.
    pub max_pending_per_source_idle: usize,
}

impl Quotas {
    /// The most handshakes one source may hold now, `busy` or not (at least one).
    pub fn pending_per_source(&self, busy: bool) -> usize {
        let cap = match busy {
            true => self
                .max_pending_per_source
                .min(self.max_pending_per_source_idle),
            false => self.max_pending_per_source_idle,
        };
        cap.max(1)
    }
}

/// Decides what to do with a connection attempt.
pub fn decide(load: Load, quotas: Quotas) -> Admission {
    if load.open >= quotas.max_connections || load.from_ip >= quotas.max_per_ip {
        return Admission::Refuse;
    }
    let busy = load.pending >= quotas.retry_above_pending;
    if load.pending_from_ip >= quotas.pending_per_source(busy) {
        return Admission::Drop;
    }
    if load.pending >= quotas.max_pending {
        if load.pending_from_ip + 1 < load.most_pending_from_one {
            // Only a proven address may push another out (spoofed Initials
            // must never cost a real source its handshake): prove it first.
            return match load.validated {
                true => Admission::Shed,
                false => Admission::Retry,
            };
        }
        // Everyone holds about as many (a herd): wait for the queue.
        return Admission::Drop;
    }
    if !load.validated && (load.pending_from_ip >= 1 || busy) {
        return Admission::Retry;
    }
    Admission::Accept
}

/// A handshake counted in [`Sources`]; hand it back with
/// [`Sources::handshake_done`] when the handshake ends, whatever the outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    source: IpAddr,
    id: u64,
}

impl Ticket {
    /// The source the handshake counts against ([`source_key`] of its IP).
    pub fn source(&self) -> IpAddr {
        self.source
    }
}

/// What [`Sources::admit`] decided, and what the caller must do about it.
#[derive(Debug)]
pub struct Admitted<H> {
    /// The decision.
    pub admission: Admission,
    /// For [`Admission::Accept`] and [`Admission::Shed`]: the handshake's ticket.
    pub ticket: Option<Ticket>,
    /// For [`Admission::Shed`]: the cancel handle of the handshake that
    /// gave up its slot. It is no longer counted as pending; abort it.
    pub shed: Option<H>,
}

/// Connections and handshakes in flight per source, with a cancel handle
/// (`H`) per handshake so one can be shed. Pure bookkeeping, no I/O.
#[derive(Debug)]
pub struct Sources<H> {
    /// Connections open or in handshake, per source.
    connections: HashMap<IpAddr, usize>,
    /// Handshakes in flight per source, oldest first.
    pending: HashMap<IpAddr, BTreeMap<u64, H>>,
    /// How many sources hold each (non-zero) number of handshakes: the
    /// biggest holder's count without a scan per packet.
    holders: BTreeMap<usize, usize>,
    pending_total: usize,
    next_id: u64,
}

impl<H> Default for Sources<H> {
    fn default() -> Self {
        Self {
            connections: HashMap::new(),
            pending: HashMap::new(),
            holders: BTreeMap::new(),
            pending_total: 0,
            next_id: 0,
        }
    }
}

impl<H> Sources<H> {
    /// Decides on an attempt from `ip` while `sessions` connections are
    /// established, and counts it when admitted (`handle` makes its cancel
    /// handle; called only then).
    pub fn admit(
        &mut self,
        ip: IpAddr,
        validated: bool,
        sessions: usize,
        quotas: Quotas,
        handle: impl FnOnce() -> H,
    ) -> Admitted<H> {
        let source = source_key(ip);
        let pending_from_ip = self.pending.get(&source).map_or(0, BTreeMap::len);
        let full = self.pending_total >= quotas.max_pending;
        let load = Load {
            validated,
            open: sessions + self.pending_total,
            pending: self.pending_total,
            from_ip: self.connections.get(&source).copied().unwrap_or(0),
            pending_from_ip,
            most_pending_from_one: if full { self.most() } else { 0 },
        };
        let admission = decide(load, quotas);
        let shed = match admission {
            Admission::Shed => self.shed_from_biggest(),
            _ => None,
        };
        let ticket = match admission {
            Admission::Accept | Admission::Shed => {
                let id = self.next_id;
                self.next_id += 1;
                *self.connections.entry(source).or_default() += 1;
                let handshakes = self.pending.entry(source).or_default();
                handshakes.insert(id, handle());
                let n = handshakes.len();
                self.moved(n - 1, n);
                self.pending_total += 1;
                Some(Ticket { source, id })
            }
            Admission::Retry | Admission::Refuse | Admission::Drop => None,
        };
        Admitted {
            admission,
            ticket,
            shed,
        }
    }

    /// Takes the oldest handshake of the source holding the most out of
    /// the pending count; its connection stays counted until it closes.
    /// (A scan of the sources, once per shed: sheds are admitted
    /// handshakes, so they come at the server's handshake pace at most.)
    fn shed_from_biggest(&mut self) -> Option<H> {
        let (&source, _) = self.pending.iter().max_by_key(|(_, h)| h.len())?;
        let handshakes = self.pending.get_mut(&source)?;
        let (_, handle) = handshakes.pop_first()?;
        let n = handshakes.len();
        if n == 0 {
            self.pending.remove(&source);
        }
        self.moved(n + 1, n);
        self.pending_total -= 1;
        Some(handle)
    }

    /// The most handshakes one source holds.
    fn most(&self) -> usize {
        self.holders.keys().next_back().copied().unwrap_or(0)
    }

    /// A source's count went from `from` to `to`.
    fn moved(&mut self, from: usize, to: usize) {
        if from > 0 {
            if let Some(k) = self.holders.get_mut(&from) {
                *k -= 1;
                if *k == 0 {
                    self.holders.remove(&from);
                }
            }
        }
        if to > 0 {
            *self.holders.entry(to).or_default() += 1;
        }
    }

    /// The handshake of `ticket` ended (connected, failed, or shed); false
    /// when it was no longer counted (it was shed).
    pub fn handshake_done(&mut self, ticket: Ticket) -> bool {
        let Some(handshakes) = self.pending.get_mut(&ticket.source) else {
            return false;
        };
        let was = handshakes.remove(&ticket.id).is_some();
        let n = handshakes.len();
        if n == 0 {
            self.pending.remove(&ticket.source);
        }
        if was {
            self.moved(n + 1, n);
            self.pending_total -= 1;
        }
        was
    }

    /// The connection of `ticket` is gone (after its handshake ended).
    pub fn connection_closed(&mut self, ticket: Ticket) {
        self.handshake_done(ticket);
        if let Some(n) = self.connections.get_mut(&ticket.source) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.connections.remove(&ticket.source);
            }
        }
    }

    /// Sources with a connection or handshake counted.
    pub fn sources(&self) -> usize {
        self.connections.len()
    }

    /// Handshakes in flight, all sources.
    pub fn pending(&self) -> usize {
        self.pending_total
    }
}

#[cfg(test)]
#[path = "admission_tests.rs"]
mod tests;
