//! The socket's routing table: which virtual address is which call, and
//! where each of its packets goes (DESIGN §5).
//!
//! quinn sees one stable *virtual* address per call ([`Router::register`]):
//! an address in 240.0.0.0/4 (IPv4-mapped on an IPv6 socket), a range that
//! candidate vetting always rejects, so it is never sent to or given out.
//! Underneath, each call has a [`PathTable`] that picks the real path:
//!
//! - **Out** ([`Router::targets`]): a packet to a virtual address goes to
//!   the call's chosen path: a direct address (the batch passes unchanged)
//!   or the relay (each segment wrapped in a relay frame, [`Router::relay_frame`]).
//!   Until a path is chosen, to every vetted path at once: the handshake
//!   races them all and no pair waits out a direct-first timeout.
//! - **In** ([`Router::recv`]): per datagram, by its first byte. QUIC (the
//!   fixed bit set) from one of a call's paths is handed to quinn as coming
//!   from the call's virtual address, so every copy of the first Initial
//!   lands in one connection. A probe is checked under the call's key and
//!   fed to its table. A relay frame from the call's relay is unwrapped:
//!   its payload is a probe or QUIC of that call. Anything else is dropped.
//!   While a call is expected (or pre-approved callers may call at any
//!   moment), a QUIC Initial from an address no call knows is kept briefly
//!   for a call that may claim it, then dropped too: it would open a second connection beside the virtual
//!   one (the caller's QUIC stack sends it again; by then the probe that
//!   names its address has arrived).
//!
//! A birthday attempt's hard side ([`crate::path::birthday`]) gives a call
//! extra local sockets ([`Router::add_extra`]). What comes in on one is
//! that call's or nobody's; a valid probe from a remote address on one
//! makes it the socket that address is sent from ([`Targets::via`]), and
//! a pong leaves from the socket its ping came in on.
//!
//! No sockets and no clock: the socket wrapper ([`crate::udp`]) and the
//! per-call task ([`crate::path_task`]) do the I/O.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use common::candidates::canonical;
use common::probe::{self, Mapping, Probe, ProbeKey, ProbeKeys, TxId, PROBE_LEN};
use common::relay_frame::{self, FrameKey, Header, Party, HEADER_LEN};
use common::RelayTicket;
use rand::SeedableRng;
use tokio::sync::Notify;
use tracing::{debug, trace};

use crate::path::{Action, PathConfig, PathMode, PathParams, PathTable, Route};

/// The first address of the virtual range (240.0.0.0/4, reserved).
const VIRTUAL_BASE: u32 = 0xF000_0000;

/// Whether `addr` is one of this router's kind of virtual addresses.
pub(crate) use common::candidates::is_virtual;

/// One call to route, as the server introduced it.
#[derive(Debug, Clone)]
pub(crate) struct CallSpec {
    /// The server's call id (in every probe).
    pub(crate) call_id: u64,
    /// Which side we are (the type of our relay frames).
    pub(crate) party: Party,
    /// The server's per-call probe key.
    pub(crate) probe_key: [u8; 32],
    /// The relay (the server's own address) and our ticket, if any.
    pub(crate) relay: Option<(SocketAddr, RelayTicket)>,
    /// The other side's candidates (vetted again by the table).
    pub(crate) candidates: Vec<SocketAddr>,
    /// `--path`.
    pub(crate) mode: PathMode,
    /// Loopback candidates are fine (the server link is on loopback).
    pub(crate) loopback_ok: bool,
}

/// Our side of a relayed call.
struct RelayLink {
    server: SocketAddr,
    call_id: u32,
    key: FrameKey,
    ours: Party,
    counter: u64,
}

struct Entry {
    /// Which side of the call we are.
    party: Party,
    table: PathTable,
    keys: ProbeKeys,
    relay: Option<RelayLink>,
    call_id: u64,
    /// Direct sources registered for this call in `Routes::by_addr`.
    sources: Vec<SocketAddr>,
    /// Wakes the call's task: the table has something to do.
    wake: Arc<Notify>,
    /// When its connection came up (then stray Initials are not for it,
    /// and the server's probe key stops being accepted soon after).
    connected: Option<Instant>,
    /// The path the last packet from the other side came over.
    last_in: Option<Route>,
    /// The path the first long-header packet of the current dial came
    /// over: the one to forget if the handshake met a stranger's key.
    first_in: Option<Route>,
    /// Its connection ended: its routes serve the closing packets only,
    /// and its addresses are free for a new call.
    closing: bool,
    /// The socket each of the call's direct paths was first heard on (a
    /// fresh valid probe): packets to it leave from there.
    via: HashMap<SocketAddr, Via>,
    /// Pings that came in on an extra socket, by transaction id: their
    /// pongs leave from it (newest last, at most [`PONG_VIA`]).
    pong_via: std::collections::VecDeque<(TxId, u32)>,
}

/// Pings on extra sockets remembered for their pongs.
const PONG_VIA: usize = 64;

/// Which socket a direct path's packets leave from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    /// The peer's one main socket.
    Main,
    /// A birthday attempt's extra socket.
    Extra(u32),
}

impl Via {
    fn extra(self) -> Option<u32> {
        match self {
            Self::Main => None,
            Self::Extra(id) => Some(id),
        }
    }
}

/// How long after the handshake the server's per-call probe key is still
/// accepted (the two sides finish it about half a round trip apart).
const SERVER_KEY_GRACE: std::time::Duration = std::time::Duration::from_secs(3);

#[derive(Default)]
struct Routes {
    /// Accepted offers whose `Dial` has not come yet ([`Router::hold_initials`]).
    held: usize,
    /// Registered calls whose connection is not up yet.
    unconnected: usize,
    /// Server links' addresses: their QUIC always passes.
    servers: std::collections::HashSet<SocketAddr>,
    calls: HashMap<SocketAddr, Entry>,
    by_probe: HashMap<u64, SocketAddr>,
    by_relay: HashMap<(SocketAddr, u32), SocketAddr>,
    by_addr: HashMap<SocketAddr, SocketAddr>,
    next: u32,
    /// Initials from addresses no call knows yet, kept briefly while a call
    /// waits for its connection ([`DEFERRED_INITIALS`], [`DEFER_FOR`]): a
    /// caller on our LAN can beat the probes that prove its address.
    deferred: std::collections::VecDeque<(Instant, SocketAddr, Vec<u8>)>,
    /// Deferred Initials whose source became a call's path: for quinn, from
    /// the call's virtual address.
    released: Vec<(SocketAddr, Vec<u8>)>,
    /// The socket's receiver, woken when something is released.
    receiver: Option<std::task::Waker>,
    /// Extra sockets (birthday attempts) and the call each belongs to.
    extra: HashMap<u32, SocketAddr>,
    /// This peer's NAT mapping, as the server's check ports showed it.
    mapping: Mapping,
}

/// Most Initials kept from addresses no call knows yet (a caller's first
/// flight is one or two datagrams; a stranger's flood gets no more room).
const DEFERRED_INITIALS: usize = 8;

/// How long such an Initial is kept: the probes that prove a LAN or a
/// reflexive address take a round trip or two.
const DEFER_FOR: std::time::Duration = std::time::Duration::from_millis(250);

/// What to do with one received datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Inbound {
    /// QUIC of no call (the server link): hand it to quinn as it is.
    Pass,
    /// QUIC of a call: hand it to quinn as coming from this (virtual) address.
    Quic(SocketAddr),
    /// QUIC inside a relay frame: hand quinn the bytes after the header,
    /// as coming from this (virtual) address.
    Relayed(SocketAddr),
    /// Handled here (a probe) or dropped.
    Consumed,
}

/// Where a packet for a virtual address goes.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Targets {
    /// Direct addresses (the batch goes to each unchanged). Inline: a
    /// call on one path, the common case, costs no allocation per packet.
    pub(crate) direct: smallvec::SmallVec<[SocketAddr; 2]>,
    /// Whether it goes through the relay too.
    pub(crate) relay: bool,
    /// The extra socket the direct address is sent from (`None`: the
    /// main one).
    pub(crate) via: Option<u32>,
}

/// The routing table (see the module docs). Cheap to share.
#[derive(Default)]
pub(crate) struct Router {
    routes: Mutex<Routes>,
    /// Whether the socket is IPv6 (virtual addresses are then v4-mapped).
    v6: bool,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router").finish_non_exhaustive()
    }
}

impl Router {
    /// A router for a socket of this family.
    pub(crate) fn new(v6: bool) -> Self {
        Self {
            routes: Mutex::default(),
            v6,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Routes> {
        self.routes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a call and returns its virtual address and the notify that
    /// wakes its task. A probe id already in use is taken over (a newer
    /// call of the same id on another server).
    pub(crate) fn register(
        &self,
        spec: CallSpec,
        cfg: PathConfig,
        now: Instant,
    ) -> (SocketAddr, Arc<Notify>) {
        let mut routes = self.lock();
        let virtual_addr = loop {
            routes.next = routes.next.wrapping_add(1) & 0x0FFF_FFFF;
            let ip = Ipv4Addr::from(VIRTUAL_BASE | routes.next.max(1));
            let v4 = SocketAddr::new(IpAddr::V4(ip), 1);
            let addr = if self.v6 {
                SocketAddr::new(IpAddr::V6(ip.to_ipv6_mapped()), 1)
            } else {
                v4
            };
            if !routes.calls.contains_key(&addr) {
                break addr;
            }
        };
        let params = PathParams {
            call_id: spec.call_id,
            mode: spec.mode,
            relay: spec.relay.is_some(),
            candidates: spec.candidates,
            loopback_ok: spec.loopback_ok,
        };
        let mut table = PathTable::new(params, cfg, now, rand::rngs::StdRng::from_entropy());
        table.set_mapping(now, routes.mapping);
        let relay = spec.relay.map(|(server, ticket)| RelayLink {
            server: canonical(server),
            call_id: ticket.call_id,
            key: FrameKey::new(&ticket.secret),
            ours: spec.party,
            counter: rand::random::<u32>().into(),
        });
        if let Some(r) = &relay {
            routes.by_relay.insert((r.server, r.call_id), virtual_addr);
        }
        routes.by_probe.insert(spec.call_id, virtual_addr);
        let wake = Arc::new(Notify::new());
        let entry = Entry {
            party: spec.party,
            table,
            keys: ProbeKeys::new(ProbeKey::new(&spec.probe_key)),
            relay,
            call_id: spec.call_id,
            sources: vec![],
            wake: wake.clone(),
            connected: None,
            last_in: None,
            first_in: None,
            closing: false,
            via: HashMap::new(),
            pong_via: std::collections::VecDeque::new(),
        };
        routes.calls.insert(virtual_addr, entry);
        routes.unconnected += 1;
        routes.sync_sources(virtual_addr);
        (virtual_addr, wake)
    }

    /// An offer was accepted and its `Dial` is on the way, or a listener
    /// accepts its approved callers without being asked (their news and
    /// their first Initial arrive at about the same time): until the guard
    /// is dropped (the call is registered, or given up; the standing answer
    /// ends with its link), Initials from unknown addresses are kept
    /// briefly, then dropped, as while a registered call waits. A
    /// caller whose packets reach us unsolicited (an open or full-cone
    /// callee) may get its first Initial here before our `Dial`; let in, it
    /// would open a connection beside the call's virtual one.
    pub(crate) fn hold_initials(self: &Arc<Self>) -> InitialsHeld {
        self.lock().held += 1;
        InitialsHeld(self.clone())
    }

    /// Kept Initials released to calls since the last call, each with the
    /// call's virtual address; with none, `waker` is woken when one is.
    pub(crate) fn take_released(&self, waker: &std::task::Waker) -> Vec<(SocketAddr, Vec<u8>)> {
        let mut routes = self.lock();
        if routes.released.is_empty() {
            if !routes.receiver.as_ref().is_some_and(|w| w.will_wake(waker)) {
                routes.receiver = Some(waker.clone());
            }
            return vec![];
        }
        std::mem::take(&mut routes.released)
    }

    /// A server link's address: its packets always reach quinn as they are.
    pub(crate) fn add_server(&self, addr: SocketAddr) {
        self.lock().servers.insert(canonical(addr));
    }

    /// The call's connection ended: until [`Router::remove`] its packets
    /// out still go their way (the close, its repeats), but the addresses
    /// it came in from are free at once for the next call between the same
    /// two sockets.
    pub(crate) fn closing(&self, virtual_addr: SocketAddr) {
        let mut routes = self.lock();
        let Some(e) = routes.calls.get_mut(&virtual_addr) else {
            return;
        };
        e.closing = true;
        if e.connected.is_none() {
            e.connected = Some(Instant::now());
            routes.unconnected = routes.unconnected.saturating_sub(1);
        }
        let Some(e) = routes.calls.get_mut(&virtual_addr) else {
            return;
        };
        let sources = std::mem::take(&mut e.sources);
        for s in sources {
            if routes.by_addr.get(&s) == Some(&virtual_addr) {
                routes.by_addr.remove(&s);
            }
        }
    }

    /// Forgets a call (its connection ended).
    pub(crate) fn remove(&self, virtual_addr: SocketAddr) {
        let mut routes = self.lock();
        let Some(entry) = routes.calls.remove(&virtual_addr) else {
            return;
        };
        if entry.connected.is_none() {
            routes.unconnected = routes.unconnected.saturating_sub(1);
        }
        if routes.by_probe.get(&entry.call_id) == Some(&virtual_addr) {
            routes.by_probe.remove(&entry.call_id);
        }
        if let Some(r) = &entry.relay {
            let key = (r.server, r.call_id);
            if routes.by_relay.get(&key) == Some(&virtual_addr) {
                routes.by_relay.remove(&key);
            }
        }
        for s in entry.sources {
            if routes.by_addr.get(&s) == Some(&virtual_addr) {
                routes.by_addr.remove(&s);
            }
        }
        routes.extra.retain(|_, v| *v != virtual_addr);
    }

    /// This peer's NAT mapping (from the server's check ports): every
    /// call's table hears of it, and new ones start with it.
    /// An `Unknown` answer (a lost check, a server without the second
    /// port) does not undo a known one.
    pub(crate) fn set_mapping(&self, mapping: Mapping) {
        let mut routes = self.lock();
        if mapping == Mapping::Unknown || routes.mapping == mapping {
            return;
        }
        routes.mapping = mapping;
        let now = Instant::now();
        for e in routes.calls.values_mut() {
            e.table.set_mapping(now, mapping);
            e.wake.notify_one();
        }
    }

    /// This peer's NAT mapping as last learned.
    pub(crate) fn mapping(&self) -> Mapping {
        self.lock().mapping
    }

    /// Extra sockets `ids` now belong to the call at `virtual_addr`.
    pub(crate) fn add_extra(&self, virtual_addr: SocketAddr, ids: &[u32]) {
        let mut routes = self.lock();
        if !routes.calls.contains_key(&virtual_addr) {
            return;
        }
        for id in ids {
            routes.extra.insert(*id, virtual_addr);
        }
    }

    /// The call's extra sockets are closing: all of them, or all but the
    /// one its chosen direct path uses (`keep_chosen`). Returns the ids to
    /// close.
    pub(crate) fn drop_extra(&self, virtual_addr: SocketAddr, keep_chosen: bool) -> Vec<u32> {
        let mut routes = self.lock();
        let keep = routes
            .calls
            .get(&virtual_addr)
            .and_then(|e| match e.table.chosen() {
                Some(Route::Direct(a)) if keep_chosen => e.extra_for(a),
                _ => None,
            });
        let closing: Vec<u32> = routes
            .extra
            .iter()
            .filter(|(id, v)| **v == virtual_addr && Some(**id) != keep)
            .map(|(id, _)| *id)
            .collect();
        for id in &closing {
            routes.extra.remove(id);
        }
        if let Some(e) = routes.calls.get_mut(&virtual_addr) {
            e.via
                .retain(|_, v| v.extra().is_none_or(|id| !closing.contains(&id)));
            e.pong_via.retain(|(_, id)| !closing.contains(id));
        }
        closing
    }

    /// A probe sealed with the call's key, for the driver to send itself
    /// (the pings of [`Action::OpenSockets`]).
    pub(crate) fn seal(&self, virtual_addr: SocketAddr, probe: &Probe) -> Option<[u8; PROBE_LEN]> {
        let routes = self.lock();
        let e = routes.calls.get(&virtual_addr)?;
        Some(probe.encode(e.keys.sealing()))
    }

    /// The call's connection is up: probes are sealed with `exported`
    /// (keying material of the connection) from now on, and Initials from
    /// unknown addresses are no longer held against it.
    pub(crate) fn connected(&self, virtual_addr: SocketAddr, exported: [u8; 32], now: Instant) {
        let mut routes = self.lock();
        let Some(e) = routes.calls.get_mut(&virtual_addr) else {
            return;
        };
        if e.connected.is_some() {
            return;
        }
        // The callee (QUIC's server side) finishes the handshake last: the
        // caller has the exported key already. The caller keeps sealing
        // with the server's until the callee's probes show it switched.
        let seal_now = e.party == Party::Callee;
        e.keys.set_exported(ProbeKey::new(&exported), seal_now);
        e.connected = Some(now);
        routes.unconnected = routes.unconnected.saturating_sub(1);
    }

    /// Forgets the direct path the call's last packet came in on, if it is
    /// one (a stranger's key answered the handshake there); returns it.
    pub(crate) fn forget_last(&self, virtual_addr: SocketAddr) -> Option<SocketAddr> {
        let mut routes = self.lock();
        let e = routes.calls.get_mut(&virtual_addr)?;
        let Some(Route::Direct(addr)) = e.first_in.take() else {
            return None;
        };
        e.table.forget(Route::Direct(addr));
        routes.sync_sources(virtual_addr);
        Some(addr)
    }

    /// A new dial of the call starts: its first packets are looked at afresh.
    pub(crate) fn redial(&self, virtual_addr: SocketAddr) {
        if let Some(e) = self.lock().calls.get_mut(&virtual_addr) {
            e.first_in = None;
        }
    }

    /// The next action of the call's table at `now` and, when there is
    /// none, when to ask again. A probe to send comes sealed, with where
    /// it goes, ready for the socket ([`Outgoing`]).
    pub(crate) fn poll(&self, virtual_addr: SocketAddr, now: Instant) -> Polled {
        let mut routes = self.lock();
        let Some(e) = routes.calls.get_mut(&virtual_addr) else {
            return Polled::Gone;
        };
        let Some(action) = e.table.poll(now) else {
            return Polled::Idle(e.table.next_deadline());
        };
        let probe = match action {
            Action::SendPing { to, ping } => (to, Probe::Ping(ping)),
            Action::SendPong { to, pong } => (to, Probe::Pong(pong)),
            Action::SendNote { note } => (Route::Relay, Probe::Note(note)),
            other => return Polled::Action(other),
        };
        let bytes = probe.1.encode(e.keys.sealing());
        let out = match probe.0 {
            Route::Direct(addr) => {
                let via = match probe.1 {
                    Probe::Pong(p) => e.pong_via.iter().find(|(tx, _)| *tx == p.tx).map(|v| v.1),
                    _ => e.extra_for(addr),
                };
                let mut out = Outgoing::new(addr, &bytes);
                out.via = via;
                Some(out)
            }
            Route::Relay => e.relay.as_mut().map(|r| {
                let header = r.next_header();
                let mut out = Outgoing::new(r.server, &header);
                out.extend(&bytes);
                out
            }),
        };
        match out {
            Some(o) => Polled::Send(o),
            None => Polled::Action(action),
        }
    }

    /// The path the call's packets take now (`None` until one is chosen),
    /// and the one its last packet came in on.
    pub(crate) fn path(&self, virtual_addr: SocketAddr) -> Option<(Option<Route>, Option<Route>)> {
        let routes = self.lock();
        let e = routes.calls.get(&virtual_addr)?;
        Some((e.table.chosen(), e.last_in))
    }

    /// The relay's address for a call, if it has one.
    pub(crate) fn relay_addr(&self, virtual_addr: SocketAddr) -> Option<SocketAddr> {
        let routes = self.lock();
        routes
            .calls
            .get(&virtual_addr)?
            .relay
            .as_ref()
            .map(|r| r.server)
    }

    /// Where a packet to `dest` goes; `None` when `dest` is not virtual
    /// (send it as it is) and an empty [`Targets`] when the call is gone.
    pub(crate) fn targets(&self, dest: SocketAddr) -> Option<Targets> {
        if !is_virtual(dest) {
            return None;
        }
        let routes = self.lock();
        let Some(e) = routes.calls.get(&dest) else {
            return Some(Targets::default());
        };
        let mut t = Targets::default();
        let mut add = |r: Route| match r {
            Route::Direct(a) => t.direct.push(a),
            Route::Relay => t.relay = e.relay.is_some(),
        };
        let mut via = None;
        match (e.table.chosen(), e.connected, e.last_in) {
            (Some(r), ..) => {
                if let Route::Direct(a) = r {
                    via = e.extra_for(a);
                }
                add(r)
            }
            // Past the handshake, copies to every path would be sent with
            // no anti-amplification limit: only the way it came in.
            (None, Some(_), Some(r)) => add(r),
            (None, Some(_), None) => add(Route::Relay),
            (None, None, _) => e.table.unconfirmed_routes().for_each(add),
        }
        t.via = via;
        Some(t)
    }

    /// The call's end-of-call frame for its relay, and where it goes: the
    /// relay forgets the call at once instead of after its idle timeout
    /// (so a source's share of relayed calls is not held by ended ones).
    pub(crate) fn end_frame(
        &self,
        virtual_addr: SocketAddr,
    ) -> Option<(SocketAddr, [u8; HEADER_LEN])> {
        let mut routes = self.lock();
        let r = routes.calls.get_mut(&virtual_addr)?.relay.as_mut()?;
        Some((r.server, r.header(true)))
    }

    /// The relay frame header for the next segment of a packet to
    /// `virtual_addr`, and where the frame goes.
    pub(crate) fn relay_frame(
        &self,
        virtual_addr: SocketAddr,
    ) -> Option<(SocketAddr, [u8; HEADER_LEN])> {
        let mut routes = self.lock();
        let r = routes.calls.get_mut(&virtual_addr)?.relay.as_mut()?;
        Some((r.server, r.next_header()))
    }

    /// The verdict for every QUIC datagram from `from` when it is the same
    /// whatever the packet (a call's path, or a server link): one lookup
    /// for a whole receive batch. `None`: decide per datagram.
    pub(crate) fn quic_source(&self, from: SocketAddr, first: &[u8]) -> Option<Inbound> {
        self.lock().known_source(canonical(from), first)
    }

    /// Classifies one datagram that came in on extra socket `id`: QUIC or
    /// a probe of the call that owns it, from one of its paths; anything
    /// else is dropped.
    pub(crate) fn recv_extra(
        &self,
        now: Instant,
        id: u32,
        from: SocketAddr,
        bytes: &[u8],
    ) -> Inbound {
        let from = canonical(from);
        let mut routes = self.lock();
        let Some(&owner) = routes.extra.get(&id) else {
            return Inbound::Consumed;
        };
        match bytes.first() {
            Some(b) if b & 0x40 != 0 => match routes.known_source(from, bytes) {
                Some(Inbound::Quic(v)) if v == owner => Inbound::Quic(v),
                _ => Inbound::Consumed,
            },
            Some(_) if probe::is_probe(bytes) => {
                if routes.probe_of(bytes, owner) {
                    routes.probe_on(now, Route::Direct(from), bytes, Some(id));
                }
                Inbound::Consumed
            }
            _ => Inbound::Consumed,
        }
    }

    /// Classifies one received datagram from `from` (see [`Inbound`]);
    /// probes are handled here.
    pub(crate) fn recv(&self, now: Instant, from: SocketAddr, bytes: &[u8]) -> Inbound {
        let from = canonical(from);
        let Some(&first) = bytes.first() else {
            return Inbound::Consumed;
        };
        let mut routes = self.lock();
        if first & 0x40 != 0 {
            return routes.quic_from(now, from, bytes);
        }
        if probe::is_probe(bytes) {
            routes.probe(now, Route::Direct(from), bytes);
            return Inbound::Consumed;
        }
        if !relay_frame::is_relay_frame(first) {
            return Inbound::Consumed;
        }
        let Ok(frame) = relay_frame::decode(bytes) else {
            return Inbound::Consumed;
        };
        let Some(&v) = routes.by_relay.get(&(from, frame.header.call_id)) else {
            return Inbound::Consumed;
        };
        let from_other = routes.calls.get(&v).is_some_and(|e| {
            e.relay
                .as_ref()
                .is_some_and(|r| r.ours.other() == frame.header.party)
        });
        if !from_other {
            return Inbound::Consumed;
        }
        let payload = frame.payload;
        if probe::is_probe(payload) {
            // Only this call's probes ride this call's relay frames.
            if routes.probe_of(payload, v) {
                routes.probe(now, Route::Relay, payload);
            }
            return Inbound::Consumed;
        }
        if payload.first().is_some_and(|b| b & 0x40 != 0) {
            if let Some(e) = routes.calls.get_mut(&v) {
                e.arrived(Route::Relay, payload);
            }
            return Inbound::Relayed(v);
        }
        Inbound::Consumed
    }
}

/// Holds stray Initials off while an accepted call's `Dial` is on the way
/// ([`Router::hold_initials`]).
pub(crate) struct InitialsHeld(Arc<Router>);

impl Drop for InitialsHeld {
    fn drop(&mut self) {
        let mut routes = self.0.lock();
        routes.held = routes.held.saturating_sub(1);
    }
}

/// What [`Router::poll`] says.
#[derive(Debug)]
pub(crate) enum Polled {
    /// Send this datagram.
    Send(Outgoing),
    /// Do this (switch, nudge, give up).
    Action(Action),
    /// Nothing now; ask again at this time (or when woken).
    Idle(Option<Instant>),
    /// The call is not routed any more.
    Gone,
}

/// A datagram to send: at most a relay header and a probe.
#[derive(Clone)]
pub(crate) struct Outgoing {
    /// Where.
    pub(crate) to: SocketAddr,
    /// From which extra socket (`None`: the main one).
    pub(crate) via: Option<u32>,
    buf: [u8; HEADER_LEN + PROBE_LEN],
    len: usize,
}

impl std::fmt::Debug for Outgoing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Outgoing({} bytes to {})", self.len, self.to)
    }
}

impl Outgoing {
    fn new(to: SocketAddr, bytes: &[u8]) -> Self {
        let mut o = Self {
            to,
            via: None,
            buf: [0; HEADER_LEN + PROBE_LEN],
            len: 0,
        };
        o.extend(bytes);
        o
    }

    fn extend(&mut self, bytes: &[u8]) {
        let end = (self.len + bytes.len()).min(self.buf.len());
        self.buf[self.len..end].copy_from_slice(&bytes[..end - self.len]);
        self.len = end;
    }

    /// The datagram's bytes.
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl RelayLink {
    fn next_header(&mut self) -> [u8; HEADER_LEN] {
        self.header(false)
    }

    /// The next header; `end`: an end-of-call frame.
    fn header(&mut self, end: bool) -> [u8; HEADER_LEN] {
        self.counter = (self.counter + 1).min(relay_frame::MAX_COUNTER);
        let header = Header {
            party: self.ours,
            call_id: self.call_id,
            counter: self.counter,
            end,
        };
        relay_frame::encode_header(&header, &self.key)
    }
}

impl Entry {
    /// The extra socket packets to `addr` leave from (`None`: the main
    /// one). Calls without extra sockets, nearly all, do no lookup.
    fn extra_for(&self, addr: SocketAddr) -> Option<u32> {
        if self.via.is_empty() {
            return None;
        }
        self.via.get(&addr).and_then(|v| v.extra())
    }

    /// A fresh valid probe from `addr`, a path of the call, came in on
    /// `local` (`None`: the main socket): a ping's pong leaves from that
    /// socket, and if `addr` has no socket yet (or its socket closed), it
    /// is sent from this one from now on. The first socket keeps it: a
    /// second guess that hits another mapping does not move the call off
    /// the one the other side chose.
    fn heard_on(
        &mut self,
        addr: SocketAddr,
        probe: &Probe,
        local: Option<u32>,
        open: &HashMap<u32, SocketAddr>,
    ) {
        let held = match self.via.get(&addr) {
            Some(Via::Extra(id)) => open.contains_key(id),
            Some(Via::Main) => true,
            None => false,
        };
        if !held {
            let via = local.map_or(Via::Main, Via::Extra);
            self.via.insert(addr, via);
        }
        if let (Probe::Ping(p), Some(id)) = (probe, local) {
            if self.pong_via.len() >= PONG_VIA {
                self.pong_via.pop_front();
            }
            self.pong_via.push_back((p.tx, id));
        }
    }

    /// A QUIC packet of this call came in over `route`.
    fn arrived(&mut self, route: Route, bytes: &[u8]) {
        self.last_in = Some(route);
        let long_header = bytes.first().is_some_and(|b| b & 0x80 != 0);
        if long_header && self.connected.is_none() && self.first_in.is_none() {
            self.first_in = Some(route);
        }
    }
}

impl Routes {
    /// A QUIC packet from `from`: a call's (at its virtual address), a
    /// server link's (as it is), or nobody's. Of nobody's, only Initials
    /// pass, and only while no call waits for its connection (a stranger's
    /// Initial is then refused by the accept loop); the rest would only
    /// provoke stateless resets, or move a call's connection off its
    /// virtual address.
    fn quic_from(&mut self, now: Instant, from: SocketAddr, bytes: &[u8]) -> Inbound {
        if let Some(verdict) = self.known_source(from, bytes) {
            return verdict;
        }
        if is_initial(bytes) && !self.awaiting_connection() {
            return Inbound::Pass;
        }
        if is_initial(bytes) {
            self.defer(now, from, bytes);
            return Inbound::Consumed;
        }
        trace!(%from, "dropping QUIC from an address no call or server knows");
        Inbound::Consumed
    }

    /// Keeps an Initial from `from` (unknown now) for [`DEFER_FOR`], if
    /// there is room: it reaches quinn only if `from` becomes a proven path
    /// of a call meanwhile ([`Routes::release_from`]).
    fn defer(&mut self, now: Instant, from: SocketAddr, bytes: &[u8]) {
        self.deferred
            .retain(|(at, _, _)| now.saturating_duration_since(*at) < DEFER_FOR);
        if self.deferred.len() >= DEFERRED_INITIALS
            || bytes.len() > common::relay_frame::MAX_DATAGRAM
        {
            trace!(%from, "dropping an Initial from an address no call knows");
            return;
        }
        trace!(%from, "keeping an Initial from an address no call knows yet");
        self.deferred.push_back((now, from, bytes.to_vec()));
    }

    /// Hands the kept Initials from `sources`, now paths of call `v`, to
    /// the receiver.
    fn release_from(&mut self, v: SocketAddr, sources: &[SocketAddr]) {
        if self.deferred.is_empty() {
            return;
        }
        let now = Instant::now();
        let mut released = false;
        for (at, from, bytes) in std::mem::take(&mut self.deferred) {
            if now.saturating_duration_since(at) >= DEFER_FOR {
                continue;
            }
            if sources.contains(&from) {
                if let Some(e) = self.calls.get_mut(&v) {
                    e.arrived(Route::Direct(from), &bytes);
                }
                self.released.push((v, bytes));
                released = true;
            } else {
                self.deferred.push_back((at, from, bytes));
            }
        }
        if released {
            if let Some(w) = self.receiver.take() {
                w.wake();
            }
        }
    }

    /// The verdict for QUIC from a call's path (its virtual address) or a
    /// server link (as it is); `None` for anyone else.
    fn known_source(&mut self, from: SocketAddr, bytes: &[u8]) -> Option<Inbound> {
        if let Some(v) = self.by_addr.get(&from).copied() {
            if let Some(e) = self.calls.get_mut(&v) {
                e.arrived(Route::Direct(from), bytes);
            }
            return Some(Inbound::Quic(v));
        }
        self.servers.contains(&from).then_some(Inbound::Pass)
    }

    /// Registers the call's direct paths as sources of its packets.
    fn sync_sources(&mut self, v: SocketAddr) {
        let Some(e) = self.calls.get_mut(&v) else {
            return;
        };
        if e.closing {
            return;
        }
        let wanted: Vec<SocketAddr> = e
            .table
            .proven_routes()
            .filter_map(|r| match r {
                Route::Direct(a) => Some(a),
                Route::Relay => None,
            })
            .collect();
        if wanted == e.sources {
            return;
        }
        let old = std::mem::take(&mut e.sources);
        for s in old {
            if self.by_addr.get(&s) == Some(&v) {
                self.by_addr.remove(&s);
            }
        }
        let mut taken = vec![];
        let mut mine = vec![];
        for s in wanted {
            match self.by_addr.get(&s) {
                Some(other) if *other != v => taken.push(s),
                _ => {
                    self.by_addr.insert(s, v);
                    mine.push(s);
                }
            }
        }
        self.release_from(v, &mine);
        let Some(e) = self.calls.get_mut(&v) else {
            return;
        };
        // Another call already has that address (two calls between the
        // same two sockets): packets from it cannot be told apart, so this
        // call does without it (and goes through the relay if nothing else
        // is left).
        for s in taken {
            debug!(addr = %s, "an address of another call: not used for this one");
            e.table.forget(Route::Direct(s));
        }
        e.sources = mine;
    }

    /// Whether some call still waits for its connection.
    fn awaiting_connection(&self) -> bool {
        self.held > 0 || self.unconnected > 0
    }

    /// Whether `bytes` names the probe key of the call at `virtual_addr`
    /// (its MAC is checked later, under that call's keys).
    fn probe_of(&self, bytes: &[u8], virtual_addr: SocketAddr) -> bool {
        probe::peek_call_id(bytes).and_then(|id| self.by_probe.get(&id)) == Some(&virtual_addr)
    }

    /// A probe from `from` on the main socket (see [`Routes::probe_on`]).
    fn probe(&mut self, now: Instant, from: Route, bytes: &[u8]) {
        self.probe_on(now, from, bytes, None);
    }

    /// A probe from `from` that came in on extra socket `local` (`None`:
    /// the main one): checked under its call's keys and fed to the call's
    /// table; the socket it came in on is where `from` is sent from now.
    fn probe_on(&mut self, now: Instant, from: Route, bytes: &[u8], local: Option<u32>) {
        let Some(v) = probe::peek_call_id(bytes).and_then(|id| self.by_probe.get(&id).copied())
        else {
            return;
        };
        let Some(e) = self.calls.get_mut(&v) else {
            return;
        };
        if e.connected
            .is_some_and(|t| now.saturating_duration_since(t) > SERVER_KEY_GRACE)
        {
            e.keys.forget_server_key();
        }
        let (probe, exported) = match e.keys.open_keyed(bytes) {
            Ok(p) => p,
            Err(err) => {
                trace!(?from, "dropping a probe: {err}");
                return;
            }
        };
        if e.keys.seals_exported() {
            e.table.notes_ready();
        }
        let taken = match probe {
            Probe::Ping(p) => e.table.ping_received(now, from, &p),
            Probe::Pong(p) => e.table.pong_received(now, from, &p),
            // Only under the key the server never had.
            Probe::Note(n) if exported => {
                e.table.note_received(now, &n);
                false
            }
            Probe::Note(_) => {
                trace!(?from, "dropping a note under the server's key");
                false
            }
        };
        if let (true, Route::Direct(addr)) = (taken, from) {
            if local.is_some() {
                e.table.birthday_heard(now);
            }
            e.heard_on(addr, &probe, local, &self.extra);
        }
        e.wake.notify_one();
        if matches!(from, Route::Direct(_)) {
            self.sync_sources(v);
        }
    }
}

/// Whether a QUIC datagram starts with a long-header Initial packet.
fn is_initial(bytes: &[u8]) -> bool {
    bytes.first().is_some_and(|b| b & 0xB0 == 0x80) && bytes.len() >= 5
}

#[cfg(test)]
#[path = "router_tests.rs"]
mod tests;
