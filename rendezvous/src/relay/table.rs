//! The allocation table: every relayed call's two parties, and the checks
//! each datagram passes before it is forwarded.
//!
//! No sockets, no clock: [`RelayTable::handle_packet`] takes `now`, the
//! source address and the bytes, and says where to send them (or why not);
//! [`RelayTable::poll_expired`] and [`RelayTable::next_deadline`] drive idle
//! expiry. The driver owns the socket and the timer.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use common::relay_frame::{self, FrameKey, Party, SECRET_LEN};

use super::config::RelayConfig;
use super::stats::{DropCause, RelayStats};
use super::window::{ByteBucket, Freshness, ReplayWindow};
use crate::ratelimit::source_key;

/// One party of a new allocation, as the server saw it at consent.
#[derive(Debug, Clone, Copy)]
pub struct PartySpec {
    /// The address the server observed the party at (its rendezvous
    /// connection's remote address: the same socket sends relay frames).
    pub addr: SocketAddr,
    /// The IP its per-source count is kept under: `addr`'s own, or a TCP
    /// peer's real IP when `addr` is its virtual one.
    pub source: IpAddr,
    /// The party's frame key secret, sent to that party only.
    pub secret: [u8; SECRET_LEN],
}

/// A call to relay, created when the callee accepts.
#[derive(Debug, Clone, Copy)]
pub struct Allocation {
    /// The relay call id both parties put in their frames.
    pub call_id: u32,
    /// The caller.
    pub caller: PartySpec,
    /// The callee.
    pub callee: PartySpec,
}

/// Why an allocation was not made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AllocError {
    /// The id is in use (the driver picks another).
    #[error("relay call id {call_id} is in use")]
    Duplicate {
        /// The id asked for.
        call_id: u32,
    },
    /// A party's source is in as many relayed calls as it may be.
    #[error("source {ip} is already in {max} relayed calls")]
    SourceBusy {
        /// The source ([`source_key`] of the party's address).
        ip: IpAddr,
        /// [`RelayConfig::max_per_source`].
        max: usize,
    },
    /// The table is full and no call in it is quiet enough to shed.
    #[error("the relay holds {max} calls, all active")]
    Full {
        /// [`RelayConfig::max_allocations`].
        max: usize,
    },
}

/// What to do with a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Send the datagram unchanged (header included: the receiver needs
    /// the call id and party) to `to`, the other party's current address.
    Forward {
        /// Where.
        to: SocketAddr,
    },
    /// Drop it; counted under the cause.
    Drop(DropCause),
    /// An authentic, fresh end-of-call frame: the call is forgotten (its
    /// later frames are [`DropCause::UnknownCall`]); nothing to forward.
    Ended,
}

#[derive(Debug)]
struct PartyState {
    addr: SocketAddr,
    key: FrameKey,
    window: ReplayWindow,
    bucket: Option<ByteBucket>,
}

/// One relayed call. Fixed size, no heap of its own (≤ 2 KiB, tested).
#[derive(Debug)]
pub(super) struct Call {
    parties: [PartyState; 2],
    /// Bytes relayed, both directions.
    bytes: u64,
    /// The last authentic, fresh datagram (or the allocation).
    last_active: Instant,
    /// The deadline this call is filed under in `RelayTable::expiry`
    /// (at most `last_active + idle_timeout`: filed lazily).
    filed: Instant,
    /// The sources counted in `RelayTable::per_source` (one if equal).
    sources: [IpAddr; 2],
    relayed_any: bool,
}

/// Every relayed call, and the relay's counters.
#[derive(Debug)]
pub struct RelayTable {
    config: RelayConfig,
    calls: HashMap<u32, Call>,
    /// One entry per call, `(filed, id)`: activity does not touch it; a
    /// due entry is re-filed at the call's real deadline when polled.
    expiry: BTreeSet<(Instant, u32)>,
    per_source: HashMap<IpAddr, usize>,
    stats: RelayStats,
}

impl RelayTable {
    /// An empty table with these limits.
    pub fn new(config: RelayConfig) -> Self {
        Self {
            config,
            calls: HashMap::new(),
            expiry: BTreeSet::new(),
            per_source: HashMap::new(),
            stats: RelayStats::default(),
        }
    }

    /// Allocates a call at consent. Refuses a duplicate id, a party whose
    /// source is in [`RelayConfig::max_per_source`] calls already, and —
    /// when the table is full — sheds the least recently active call if it
    /// has been quiet for [`RelayConfig::shed_idle`], else refuses
    /// ([`AllocError::Full`]): a flood of allocations never ends a live call.
    pub fn allocate(&mut self, now: Instant, alloc: Allocation) -> Result<(), AllocError> {
        if self.calls.contains_key(&alloc.call_id) {
            return Err(AllocError::Duplicate {
                call_id: alloc.call_id,
            });
        }
        let sources = [
            source_key(alloc.caller.source),
            source_key(alloc.callee.source),
        ];
        let max = self.config.max_per_source;
        if let Some(&source) = sources
            .iter()
            .find(|s| self.per_source.get(s).copied().unwrap_or(0) >= max)
        {
            self.stats.refused_source += 1;
            return Err(AllocError::SourceBusy { ip: source, max });
        }
        if self.calls.len() >= self.config.max_allocations && !self.shed_one(now) {
            self.stats.refused_full += 1;
            return Err(AllocError::Full {
                max: self.config.max_allocations,
            });
        }
        let rate = self.config.rate;
        let party = |p: &PartySpec| PartyState {
            addr: p.addr,
            key: FrameKey::new(&p.secret),
            window: ReplayWindow::default(),
            bucket: rate.map(|r| ByteBucket::new(&r, now)),
        };
        let filed = now + self.config.idle_timeout;
        let call = Call {
            parties: [party(&alloc.caller), party(&alloc.callee)],
            bytes: 0,
            last_active: now,
            filed,
            sources,
            relayed_any: false,
        };
        for s in distinct(&sources) {
            *self.per_source.entry(s).or_insert(0) += 1;
        }
        self.calls.insert(alloc.call_id, call);
        self.expiry.insert((filed, alloc.call_id));
        self.stats.allocations += 1;
        self.stats.active = self.calls.len() as u64;
        Ok(())
    }

    /// Forgets a call (it ended); later frames are [`DropCause::UnknownCall`].
    pub fn remove(&mut self, call_id: u32) -> bool {
        let Some(call) = self.calls.remove(&call_id) else {
            return false;
        };
        self.expiry.remove(&(call.filed, call_id));
        for s in distinct(&call.sources) {
            if let Some(n) = self.per_source.get_mut(&s) {
                *n -= 1;
                if *n == 0 {
                    self.per_source.remove(&s);
                }
            }
        }
        self.stats.active = self.calls.len() as u64;
        true
    }

    /// Checks a datagram that arrived from `from` and says what to do with
    /// it. In order: it parses; the call exists and is not idle past its
    /// timeout; the tag matches the sending party's key; the counter is not
    /// replayed (a fresh counter from a new address moves the party there:
    /// roaming; a late one is forwarded but moves nothing); an end-of-call
    /// frame ends the call here ([`Action::Ended`]); the sender's direction
    /// is within its rate; the call within its bytes.
    pub fn handle_packet(&mut self, now: Instant, from: SocketAddr, bytes: &[u8]) -> Action {
        let action = self.check(now, from, bytes);
        match action {
            Action::Forward { .. } => {
                self.stats.packets_relayed += 1;
                self.stats.bytes_relayed += bytes.len() as u64;
            }
            Action::Drop(cause) => self.stats.drops.add(cause),
            Action::Ended => {}
        }
        action
    }

    fn check(&mut self, now: Instant, from: SocketAddr, bytes: &[u8]) -> Action {
        let Ok(frame) = relay_frame::decode(bytes) else {
            return Action::Drop(DropCause::Malformed);
        };
        let id = frame.header.call_id;
        let Some(call) = self.calls.get_mut(&id) else {
            return Action::Drop(DropCause::UnknownCall);
        };
        if now >= call.last_active + self.config.idle_timeout {
            self.remove(id);
            self.stats.expired += 1;
            return Action::Drop(DropCause::Expired);
        }
        let sender = frame.header.party;
        let party = &mut call.parties[sender.index()];
        if frame.verify(&party.key).is_err() {
            return Action::Drop(DropCause::BadMac);
        }
        let counter = frame.header.counter;
        match party.window.check(counter) {
            Freshness::Replayed if from == party.addr => return Action::Drop(DropCause::Replayed),
            Freshness::Replayed => return Action::Drop(DropCause::ReplayedElsewhere),
            Freshness::Fresh if from != party.addr => {
                party.addr = from;
                self.stats.roams += 1;
            }
            Freshness::Fresh | Freshness::Late => {}
        }
        party.window.accept(counter);
        if frame.header.end {
            // Either party may end the call: each holds only its own key,
            // so nobody else can, and a replay was refused above.
            self.remove(id);
            self.stats.ended += 1;
            return Action::Ended;
        }
        if call.bytes.saturating_add(bytes.len() as u64) > self.config.max_bytes_per_call {
            return Action::Drop(DropCause::OverBytes);
        }
        call.last_active = now;
        if let (Some(bucket), Some(rate)) = (party.bucket.as_mut(), self.config.rate.as_ref()) {
            if !bucket.take(rate, bytes.len(), now) {
                return Action::Drop(DropCause::OverRate);
            }
        }
        call.bytes += bytes.len() as u64;
        if !call.relayed_any {
            call.relayed_any = true;
            self.stats.calls_relayed += 1;
        }
        Action::Forward {
            to: call.parties[sender.other().index()].addr,
        }
    }

    /// Forgets one call idle past its timeout at `now` and returns its id;
    /// `None` when none is due. Call until `None`, then sleep until
    /// [`RelayTable::next_deadline`].
    pub fn poll_expired(&mut self, now: Instant) -> Option<u32> {
        while let Some(&(filed, id)) = self.expiry.first() {
            if filed > now {
                return None;
            }
            if !self.refile(filed, id) {
                self.remove(id);
                self.stats.expired += 1;
                return Some(id);
            }
        }
        None
    }

    /// When to call [`RelayTable::poll_expired`] next. May be early (a
    /// call active since it was filed is re-filed then), never late.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.expiry.first().map(|(at, _)| *at)
    }

    /// The counters, for the metrics.
    pub fn stats(&self) -> &RelayStats {
        &self.stats
    }

    /// Calls in the table.
    pub fn len(&self) -> usize {
        self.calls.len()
    }

    /// Whether the table holds no call.
    pub fn is_empty(&self) -> bool {
        self.calls.is_empty()
    }

    /// The current address of a call's party (for the driver's logs and
    /// tests).
    pub fn party_addr(&self, call_id: u32, party: Party) -> Option<SocketAddr> {
        self.calls
            .get(&call_id)
            .map(|c| c.parties[party.index()].addr)
    }

    /// Moves the entry `(filed, id)` to the call's real deadline; false
    /// when it is already there (the call is due at `filed`).
    fn refile(&mut self, filed: Instant, id: u32) -> bool {
        let idle = self.config.idle_timeout;
        let Some(call) = self.calls.get_mut(&id) else {
            self.expiry.remove(&(filed, id));
            return true;
        };
        let real = call.last_active + idle;
        if real <= filed {
            return false;
        }
        self.expiry.remove(&(filed, id));
        self.expiry.insert((real, id));
        call.filed = real;
        true
    }

    /// Sheds the least recently active call if it has been quiet for
    /// [`RelayConfig::shed_idle`]; false when every call is livelier.
    fn shed_one(&mut self, now: Instant) -> bool {
        while let Some(&(filed, id)) = self.expiry.first() {
            if self.refile(filed, id) {
                continue;
            }
            let quiet = self.calls.get(&id).is_some_and(|c| {
                now.saturating_duration_since(c.last_active) >= self.config.shed_idle
            });
            if !quiet {
                return false;
            }
            self.remove(id);
            self.stats.shed += 1;
            return true;
        }
        false
    }
}

/// The sources of a call, each once.
fn distinct(sources: &[IpAddr; 2]) -> impl Iterator<Item = IpAddr> {
    let second = (sources[1] != sources[0]).then_some(sources[1]);
    std::iter::once(sources[0]).chain(second)
}

/// Bytes of one relayed call's entry in the table (fixed, no heap of its
/// own; the benchmark prints it, a test keeps it ≤ 2 KiB). The maps that
/// index it add a bucket each.
pub const CALL_ENTRY_SIZE: usize = std::mem::size_of::<Call>();
