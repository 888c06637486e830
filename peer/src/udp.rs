//! The socket wrapper quinn sees: the peer's one UDP socket, with calls at
//! virtual addresses mapped onto their real paths by the [`Router`].
//!
//! Sending: a packet to a virtual address goes where the router says: to a
//! direct address with its segmentation (GSO) batch untouched, or through
//! the relay, one relay frame per segment, the frames one batch again.
//! Anything else (the server link)
//! passes through.
//!
//! Receiving: every datagram of a receive batch is classified per GRO
//! segment ([`quinn::udp::RecvMeta::stride`]). The common cases are done in
//! place: a batch that is all QUIC keeps its bytes (only its source may be
//! rewritten to a call's virtual address); a batch that is all relay frames
//! of one call has the headers cut out. A batch mixing kinds (rare: GRO
//! only joins same-size datagrams of one flow) is split into single
//! datagrams, held in a small queue and handed out on the next calls.
//! Probes and foreign datagrams are consumed and never reach quinn.
//!
//! A birthday attempt's hard side ([`crate::path::birthday`]) opens extra
//! UDP sockets for one call ([`PathSocket::open_extra`]); they are polled
//! beside the main one (taking turns first), what comes in on them is
//! classified by the router for their call only, and a direct path the
//! router says goes `via` one is sent from it. All but the winner close
//! when the attempt ends, the winner with its call.
//!
//! A TCP tunnel to the server ([`crate::udp_tunnel`]) may stand in for the
//! UDP socket toward that one address: every datagram to it (quinn's, relay
//! frames, probes) goes into the tunnel, and what comes out is demultiplexed
//! as a datagram from the server. Receiving alternates between the two
//! sources so neither starves the other.

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::Instant;

use common::relay_frame::{HEADER_LEN, MAX_PAYLOAD};
use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};

use crate::router::{Inbound, Router};

#[path = "udp_tunnel.rs"]
mod tunnel;
use tunnel::TunnelSlot;

/// Most split-out datagrams held between receive calls.
const MAX_HELD: usize = 256;

/// The wrapper (see the module docs).
pub(crate) struct PathSocket {
    inner: Arc<dyn AsyncUdpSocket>,
    router: Arc<Router>,
    v6: bool,
    held: Mutex<VecDeque<Held>>,
    /// The tunnel to the server, when UDP does not get through.
    pub(crate) tunnel: TunnelSlot,
    /// Which source a receive polls first (flips every time).
    tunnel_first: AtomicBool,
    /// UDP checks (plain and mapping) waiting for their answers.
    pub(crate) checks: crate::mapping::CheckAnswers,
    /// Extra sockets of birthday attempts, by id.
    extra: Mutex<Vec<(u32, Arc<dyn AsyncUdpSocket>)>>,
    next_extra: AtomicU32,
    /// Whether a receive polls the extra sockets before the main one.
    extra_first: AtomicBool,
    /// Whether any extra socket is open.
    extra_open: AtomicBool,
    /// The receiver, woken when extra sockets open (their readiness is
    /// registered only once polled).
    extra_waker: Mutex<Option<std::task::Waker>>,
}

/// Most extra sockets open at once, all calls together (each is a file
/// descriptor and a NAT mapping).
pub const MAX_EXTRA: usize = 512;

/// A datagram split out of a mixed receive batch, handed out later.
struct Held {
    addr: SocketAddr,
    bytes: Vec<u8>,
    ecn: Option<quinn::udp::EcnCodepoint>,
    dst_ip: Option<std::net::IpAddr>,
}

impl fmt::Debug for PathSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PathSocket").finish_non_exhaustive()
    }
}

impl PathSocket {
    /// Wraps `inner`; `v6` is its family.
    pub(crate) fn new(inner: Arc<dyn AsyncUdpSocket>, router: Arc<Router>, v6: bool) -> Self {
        Self {
            inner,
            router,
            v6,
            held: Mutex::new(VecDeque::new()),
            tunnel: TunnelSlot::default(),
            tunnel_first: AtomicBool::new(false),
            checks: Default::default(),
            extra: Mutex::new(Vec::new()),
            next_extra: AtomicU32::new(1),
            extra_first: AtomicBool::new(false),
            extra_open: AtomicBool::new(false),
            extra_waker: Mutex::new(None),
        }
    }

    /// Opens up to `count` extra UDP sockets on the main socket's address
    /// (any port), for a birthday attempt, and sends `first` (a sealed
    /// ping) from each to `to` at once; returns their ids (fewer when the
    /// limit [`MAX_EXTRA`] or the system's runs out: the attempt makes
    /// do). Needs the tokio runtime.
    pub(crate) fn open_extra(&self, count: usize, to: SocketAddr, first: &[u8]) -> Vec<u32> {
        let ip = match self.inner.local_addr() {
            Ok(a) => a.ip(),
            Err(e) => {
                tracing::debug!("no extra sockets: {e}");
                return vec![];
            }
        };
        let runtime = quinn::TokioRuntime;
        let mut ids = Vec::with_capacity(count);
        let mut opened = Vec::with_capacity(count);
        let room = MAX_EXTRA.saturating_sub(lock(&self.extra).len());
        for _ in 0..count.min(room) {
            // Sent on the plain socket: a socket just registered with the
            // reactor is not known to be writable yet (quinn's send would
            // say "would block").
            let bound = std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).and_then(|s| {
                if let Err(e) = s.send_to(first, self.family(to)) {
                    tracing::debug!(%to, "birthday ping not sent: {e}");
                }
                quinn::Runtime::wrap_udp_socket(&runtime, s)
            });
            match bound {
                Ok(sock) => {
                    let id = self.next_extra.fetch_add(1, Ordering::Relaxed);
                    ids.push(id);
                    opened.push((id, sock));
                }
                Err(e) => {
                    tracing::debug!(opened = ids.len(), "no more extra sockets: {e}");
                    break;
                }
            }
        }
        {
            let mut extra = lock(&self.extra);
            extra.extend(opened);
            self.extra_open.store(!extra.is_empty(), Ordering::Release);
        }
        // Woken, not taken: a receiver parked before the next opening
        // must hear of that one too.
        if let Some(w) = lock(&self.extra_waker).as_ref() {
            w.wake_by_ref();
        }
        ids
    }

    /// Closes these extra sockets.
    pub(crate) fn close_extra(&self, ids: &[u32]) {
        let mut extra = lock(&self.extra);
        extra.retain(|(id, _)| !ids.contains(id));
        self.extra_open.store(!extra.is_empty(), Ordering::Release);
    }

    fn extra_socket(&self, id: u32) -> Option<Arc<dyn AsyncUdpSocket>> {
        lock(&self.extra)
            .iter()
            .find(|(i, _)| *i == id)
            .map(|(_, s)| s.clone())
    }

    /// Sends one small datagram from extra socket `via` (the main socket
    /// when `None` or when it is closed).
    pub(crate) fn send_raw_via(&self, via: Option<u32>, to: SocketAddr, bytes: &[u8]) {
        let Some(sock) = via.and_then(|id| self.extra_socket(id)) else {
            return self.send_raw(to, bytes);
        };
        if let Err(e) = sock.try_send(&self.single(to, bytes)) {
            tracing::debug!(%to, "probe not sent from an extra socket: {e}");
        }
    }

    /// Receives from the extra sockets, the first that has something;
    /// returns how many datagrams and from which socket.
    fn poll_extra(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<(usize, u32)> {
        // Polling does not call back into this wrapper: the lock is held
        // only for this loop.
        for (id, sock) in lock(&self.extra).iter() {
            match sock.poll_recv(cx, bufs, meta) {
                Poll::Ready(Ok(n)) => return Poll::Ready((n, *id)),
                Poll::Ready(Err(e)) => tracing::trace!(id, "extra socket: {e}"),
                Poll::Pending => {}
            }
        }
        Poll::Pending
    }

    /// Keeps the receiver's waker, for extra sockets that open while it
    /// waits.
    fn park_for_extra(&self, cx: &Context<'_>) {
        let mut waker = lock(&self.extra_waker);
        if !waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            *waker = Some(cx.waker().clone());
        }
    }

    /// Sends one transmit: into the tunnel if it goes to the tunnel's
    /// server, else out of the UDP socket.
    fn out(&self, transmit: &Transmit<'_>) -> io::Result<()> {
        let (dest, seg) = (transmit.destination, transmit.segment_size);
        if self.tunnel.send(dest, transmit.contents, seg) {
            return Ok(());
        }
        self.inner.try_send(transmit)
    }

    /// `addr` in the socket's family.
    fn family(&self, addr: SocketAddr) -> SocketAddr {
        match (self.v6, addr) {
            (true, SocketAddr::V4(a)) => SocketAddr::new(a.ip().to_ipv6_mapped().into(), a.port()),
            _ => addr,
        }
    }

    /// Sends one small datagram as it is (probes, relay-wrapped probes).
    pub(crate) fn send_raw(&self, to: SocketAddr, bytes: &[u8]) {
        if let Err(e) = self.out(&self.single(to, bytes)) {
            tracing::debug!(%to, "probe not sent: {e}");
        }
    }

    /// One datagram of `bytes` to `to`, as it is.
    pub(crate) fn single<'a>(&self, to: SocketAddr, bytes: &'a [u8]) -> Transmit<'a> {
        Transmit {
            destination: self.family(to),
            ecn: None,
            contents: bytes,
            segment_size: None,
            src_ip: None,
        }
    }

    /// Each segment of `transmit` in its own relay frame, all in one
    /// transmit: the frames are the segments' size plus the header (the
    /// last maybe shorter), so a segmentation batch stays one.
    fn send_relayed(&self, transmit: &Transmit<'_>) -> io::Result<()> {
        let seg = transmit
            .segment_size
            .unwrap_or(transmit.contents.len())
            .max(1);
        if seg > MAX_PAYLOAD {
            tracing::debug!(len = seg, "a packet too large for the relay, dropped");
            return Ok(());
        }
        let mut buf = Vec::with_capacity(transmit.contents.len() + HEADER_LEN * 64);
        let mut server = None;
        for chunk in transmit.contents.chunks(seg) {
            let Some((to, header)) = self.router.relay_frame(transmit.destination) else {
                return Ok(());
            };
            server = Some(to);
            buf.extend_from_slice(&header);
            buf.extend_from_slice(chunk);
        }
        let Some(server) = server else {
            return Ok(());
        };
        let frames = Transmit {
            destination: self.family(server),
            ecn: transmit.ecn,
            contents: &buf,
            segment_size: transmit.segment_size.map(|_| seg + HEADER_LEN),
            src_ip: None,
        };
        self.out(&frames)
    }

    /// Moves Initials the router kept and has now released to a call (see
    /// `Router::take_released`) into the held queue; registers the waker
    /// for the next ones.
    fn take_released(&self, cx: &Context<'_>) {
        let released = self.router.take_released(cx.waker());
        if released.is_empty() {
            return;
        }
        let mut held = lock(&self.held);
        for (addr, bytes) in released {
            if held.len() < MAX_HELD {
                held.push_back(Held {
                    addr,
                    bytes,
                    ecn: None,
                    dst_ip: None,
                });
            }
        }
    }

    /// Hands out held datagrams into free slots; returns how many.
    fn fill_held(&self, bufs: &mut [IoSliceMut<'_>], meta: &mut [RecvMeta], from: usize) -> usize {
        let mut held = lock(&self.held);
        let mut k = from;
        while k < bufs.len().min(meta.len()) {
            let Some(h) = held.pop_front() else {
                break;
            };
            if h.bytes.len() > bufs[k].len() {
                continue;
            }
            bufs[k][..h.bytes.len()].copy_from_slice(&h.bytes);
            meta[k] = RecvMeta {
                addr: h.addr,
                len: h.bytes.len(),
                stride: h.bytes.len(),
                ecn: h.ecn,
                dst_ip: h.dst_ip,
            };
            k += 1;
        }
        k - from
    }

    /// Classifies and rewrites one received buffer in place; returns its
    /// new length (0: nothing left for quinn).
    /// `local`: the extra socket it came in on (`None`: the main one).
    fn demux(&self, now: Instant, local: Option<u32>, buf: &mut [u8], m: &mut RecvMeta) -> usize {
        if m.len == 0 {
            return 0;
        }
        let stride = m.stride.clamp(1, m.len.max(1));
        // The common case, a batch of QUIC from a call's path or a server:
        // one lookup for all of it.
        if local.is_none() && buf[..m.len].chunks(stride).all(|seg| seg[0] & 0x40 != 0) {
            match self.router.quic_source(m.addr, &buf[..stride.min(m.len)]) {
                Some(Inbound::Quic(v)) => {
                    m.addr = v;
                    return m.len;
                }
                Some(Inbound::Pass) => return m.len,
                _ => {}
            }
        }
        let verdicts: Vec<Inbound> = buf[..m.len]
            .chunks(stride)
            .map(|seg| match local {
                None => self.router.recv(now, m.addr, seg),
                Some(id) => self.router.recv_extra(now, id, m.addr, seg),
            })
            .collect();
        let first = verdicts[0];
        if verdicts.iter().all(|v| *v == first) {
            match first {
                Inbound::Pass => return m.len,
                Inbound::Quic(v) => {
                    m.addr = v;
                    return m.len;
                }
                Inbound::Consumed => return 0,
                Inbound::Relayed(v) if stride > HEADER_LEN => {
                    let out = strip_headers(buf, m.len, stride);
                    m.addr = v;
                    m.stride = stride - HEADER_LEN;
                    return out;
                }
                Inbound::Relayed(_) => return 0,
            }
        }
        let mut held = lock(&self.held);
        for (seg, verdict) in buf[..m.len].chunks(stride).zip(verdicts) {
            if held.len() >= MAX_HELD {
                break;
            }
            let (addr, bytes) = match verdict {
                Inbound::Pass => (m.addr, seg),
                Inbound::Quic(v) => (v, seg),
                Inbound::Relayed(v) => (v, &seg[HEADER_LEN..]),
                Inbound::Consumed => continue,
            };
            held.push_back(Held {
                addr,
                bytes: bytes.to_vec(),
                ecn: m.ecn,
                dst_ip: m.dst_ip,
            });
        }
        0
    }
}

impl PathSocket {
    /// Receives from the main socket or the tunnel ([`PathSocket::poll_sources`])
    /// or an extra socket, the extra ones first every other time: says
    /// whether it came through the tunnel, and from which extra socket.
    fn poll_all(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<(usize, bool, Option<u32>)>> {
        // No extra sockets (nearly always): no lock on the way.
        let any = self.extra_open.load(Ordering::Acquire);
        let extra_first = any && self.extra_first.fetch_xor(true, Ordering::Relaxed);
        if extra_first {
            if let Poll::Ready((n, id)) = self.poll_extra(cx, bufs, meta) {
                return Poll::Ready(Ok((n, false, Some(id))));
            }
        }
        if let Poll::Ready(r) = self.poll_sources(cx, bufs, meta) {
            return Poll::Ready(r.map(|(n, t)| (n, t, None)));
        }
        if any && !extra_first {
            if let Poll::Ready((n, id)) = self.poll_extra(cx, bufs, meta) {
                return Poll::Ready(Ok((n, false, Some(id))));
            }
        }
        self.park_for_extra(cx);
        Poll::Pending
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Cuts the relay header off every `stride`-sized segment of `buf[..len]`,
/// moving the payloads together; returns the new length.
fn strip_headers(buf: &mut [u8], len: usize, stride: usize) -> usize {
    let mut out = 0;
    let mut start = 0;
    while start < len {
        let end = (start + stride).min(len);
        let payload = start + HEADER_LEN..end;
        let n = payload.len();
        buf.copy_within(payload, out);
        out += n;
        start = end;
    }
    out
}

impl AsyncUdpSocket for PathSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit<'_>) -> io::Result<()> {
        let Some(targets) = self.router.targets(transmit.destination) else {
            return self.out(transmit);
        };
        let mut result = Ok(());
        let mut sent = false;
        let via = targets.via.and_then(|id| self.extra_socket(id));
        for addr in &targets.direct {
            // No source address: quinn pins the one the handshake came in
            // on, which after a switch may be the wrong interface.
            let direct = Transmit {
                destination: self.family(*addr),
                src_ip: None,
                ..transmit.clone()
            };
            let out = match &via {
                // quinn waits for the main socket to be writable, not this
                // one: a full buffer here is a drop (QUIC recovers), not
                // "would block" (quinn would retry at once, in a loop).
                Some(sock) => match sock.try_send(&direct) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
                    other => other,
                },
                None => self.out(&direct),
            };
            match out {
                Ok(()) => sent = true,
                Err(e) => result = Err(e),
            }
        }
        if targets.relay {
            match self.send_relayed(transmit) {
                Ok(()) => sent = true,
                Err(e) => result = Err(e),
            }
        }
        if sent {
            Ok(())
        } else {
            result
        }
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        self.take_released(cx);
        let held = self.fill_held(bufs, meta, 0);
        if held > 0 {
            return Poll::Ready(Ok(held));
        }
        loop {
            let (n, via_tunnel, local) = ready!(self.poll_all(cx, bufs, meta))?;
            let now = Instant::now();
            let mut kept = 0;
            for i in 0..n {
                let mut m = meta[i];
                // A check answer counts only over UDP: that is its question.
                if !via_tunnel && local.is_none() {
                    self.tunnel.note_udp(m.addr);
                    let bytes = &bufs[i][..m.len];
                    if self.checks.take_answer(m.addr, bytes) {
                        continue;
                    }
                }
                let len = self.demux(now, local, &mut bufs[i], &mut m);
                if len == 0 {
                    continue;
                }
                m.len = len;
                m.stride = m.stride.min(len);
                if kept != i {
                    let (to, from) = bufs.split_at_mut(i);
                    to[kept][..len].copy_from_slice(&from[0][..len]);
                }
                meta[kept] = m;
                kept += 1;
            }
            self.take_released(cx);
            kept += self.fill_held(bufs, meta, kept);
            if kept > 0 {
                return Poll::Ready(Ok(kept));
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strip_headers_keeps_payloads_in_order_with_a_short_last_one() {
        let stride = HEADER_LEN + 4;
        let mut buf = vec![];
        for (i, n) in [(1u8, 4), (2, 4), (3, 2)] {
            buf.extend(std::iter::repeat_n(0xEE, HEADER_LEN));
            buf.extend(std::iter::repeat_n(i, n));
        }
        let len = buf.len();
        let out = strip_headers(&mut buf, len, stride);
        assert_eq!(&buf[..out], &[1, 1, 1, 1, 2, 2, 2, 2, 3, 3]);
    }
}

#[cfg(test)]
#[path = "udp_tests.rs"]
mod tunnel_tests;
