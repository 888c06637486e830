//! The socket as quinn sees it: the server's UDP socket with the relay in
//! front, and the TCP peers' tunnels at virtual addresses.
//!
//! The relay shares the server's port (DESIGN §6). `ServerSocket` wraps
//! quinn's own tokio socket; after every receive it looks at each datagram
//! — per GRO segment ([`RecvMeta::stride`]: one receive may hold several
//! datagrams from one source, `stride` bytes each, the last maybe shorter)
//! — and hands those whose first byte is a relay frame
//! ([`relay_frame::is_relay_frame`]) to the relay table. A frame it
//! forwards leaves unchanged through the same socket; the frames of one
//! receive batch for one destination leave together, as one
//! segmentation-offload (GSO) transmit when their sizes allow (all equal
//! but a shorter last one), which saves a system call per frame. A full
//! send buffer drops them (counted per frame: QUIC's loss recovery at the
//! two ends handles it). A UDP check ([`check`]) gets its answer at once
//! ([`crate::checks`]; a mapping check's names the other check port,
//! [`crate::mapping`]).
//! Every other datagram — QUIC, or
//! junk quinn drops itself — goes on to quinn, the batch compacted in place
//! by [`filter_batch`] (pure, unit-tested) so quinn never sees a relay frame.
//!
//! **TCP peers** ([`crate::tcp`]): their datagrams come from the tunnels'
//! shared inbox, each presented as one datagram from the tunnel's virtual
//! address (relay frames among them go to the relay the same way); whatever
//! quinn or the relay sends to a virtual address goes into that tunnel,
//! segment by segment. Receives alternate between the inbox and UDP, so
//! neither starves the other. A UDP datagram from the virtual range is
//! dropped: nobody can pose as a TCP peer over UDP.
//!
//! Sends to real addresses are quinn's own, untouched.

use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use common::relay_frame;
use common::tunnel::check;
use prometheus::IntCounter;
use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};
use tracing::debug;

use crate::checks::Checker;
use crate::relay::driver::Relay;
use crate::relay::table::Action;
use crate::tcp::{is_virtual, TcpPeers};

/// Receives in a row that held nothing but relay frames before the wrapper
/// yields (waking itself at once): a flood of frames must not keep the
/// endpoint's task from its connections.
const MAX_ALL_RELAY_ROUNDS: usize = 16;

/// quinn's socket with the relay's frames taken out of every receive, and
/// the TCP peers' tunnels.
pub(crate) struct ServerSocket {
    inner: Arc<dyn AsyncUdpSocket>,
    relay: Option<Arc<Relay>>,
    tcp: Option<Arc<TcpPeers>>,
    /// Frames of the receive batch being filtered, to forward.
    outbox: Mutex<Outbox>,
    /// Tunnel datagrams taken from the inbox, being handed out.
    from_tunnels: Mutex<Vec<(SocketAddr, Bytes)>>,
    /// Whether the next receive looks at the tunnels first.
    tunnels_first: AtomicBool,
    /// UDP checks: what each gets, within this socket's rates.
    checks: Mutex<Checker>,
    /// Mapping answers sent from this socket.
    mapping_sent: IntCounter,
}

impl ServerSocket {
    /// Wraps `inner` (from [`quinn::Runtime::wrap_udp_socket`]); relay
    /// frames go to `relay` (dropped without one), tunnels come from `tcp`,
    /// UDP checks are answered as `checks` says (counting mapping answers
    /// in `mapping_sent`).
    pub(crate) fn new(
        inner: Arc<dyn AsyncUdpSocket>,
        relay: Option<Arc<Relay>>,
        tcp: Option<Arc<TcpPeers>>,
        checks: Checker,
        mapping_sent: IntCounter,
    ) -> Self {
        Self {
            inner,
            relay,
            tcp,
            outbox: Mutex::new(Outbox::default()),
            from_tunnels: Mutex::new(Vec::new()),
            tunnels_first: AtomicBool::new(false),
            checks: Mutex::new(checks),
            mapping_sent,
        }
    }

    /// One relay frame from `from`: checked, then queued in `out` to be
    /// forwarded (or dropped).
    fn relay_one(&self, now: Instant, from: SocketAddr, bytes: &[u8], out: &mut Outbox) {
        let Some(relay) = &self.relay else {
            return;
        };
        let Action::Forward { to } = relay.handle_packet(now, from, bytes) else {
            return;
        };
        if is_virtual(to) {
            if let Some(tcp) = &self.tcp {
                tcp.send(to, bytes);
            }
            return;
        }
        if !out.fits(to, bytes.len(), self.inner.max_transmit_segments()) {
            self.flush(out);
        }
        out.push(to, bytes);
    }

    /// Sends what `out` holds as one transmit (one GSO batch when it holds
    /// several frames) and empties it.
    fn flush(&self, out: &mut Outbox) {
        let Some(to) = out.to.take() else {
            return;
        };
        let transmit = Transmit {
            destination: to,
            ecn: None,
            contents: &out.buf,
            segment_size: (out.frames > 1).then_some(out.segment),
            src_ip: None,
        };
        match (self.inner.try_send(&transmit), &self.relay) {
            (Ok(()), _) | (_, None) => {}
            (Err(e), Some(relay)) if e.kind() == io::ErrorKind::WouldBlock => {
                (0..out.frames).for_each(|_| relay.count_send_full())
            }
            (Err(e), Some(relay)) => {
                (0..out.frames).for_each(|_| relay.count_send_error());
                debug!(%to, "relayed datagrams not sent: {e}");
            }
        }
        out.buf.clear();
        out.frames = 0;
    }

    /// Answers a UDP check from `from`, as the [`Checker`] says (within
    /// the rates; a flagged request gets a mapping answer naming the other
    /// port, an unflagged one the plain answer).
    fn answer_check(&self, now: Instant, from: SocketAddr, bytes: &[u8]) {
        let answer = self
            .checks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .handle(now, from, bytes);
        let Some(answer) = answer else {
            return;
        };
        let transmit = Transmit {
            destination: from,
            ecn: None,
            contents: answer.bytes(),
            segment_size: None,
            src_ip: None,
        };
        match self.inner.try_send(&transmit) {
            Ok(()) if answer.is_mapping() => self.mapping_sent.inc(),
            Ok(()) => {}
            Err(e) => debug!(%from, "UDP check answer not sent: {e}"),
        }
    }

    /// What the UDP receive path takes out of the batch for itself: relay
    /// frames, checks, and anything posing as a TCP peer.
    fn take_udp(&self, now: Instant, from: SocketAddr, bytes: &[u8], out: &mut Outbox) -> bool {
        match classify_udp(from, bytes, self.tcp.is_some()) {
            UdpKind::Quic => false,
            UdpKind::Spoofed => true,
            UdpKind::Check => {
                self.answer_check(now, from, bytes);
                true
            }
            UdpKind::Relay => {
                self.relay_one(now, from, bytes, out);
                true
            }
        }
    }

    /// One receive from UDP: `Ready(Some(n))` datagrams left for quinn,
    /// `Ready(None)` when the batch held none for it.
    fn poll_udp(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<Option<usize>>> {
        let n = match self.inner.poll_recv(cx, bufs, meta) {
            Poll::Ready(Ok(n)) => n,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => return Poll::Pending,
        };
        let now = Instant::now();
        let mut out = self.outbox.lock().unwrap_or_else(|p| p.into_inner());
        let kept = filter_batch(bufs, meta, n, |from, bytes| {
            self.take_udp(now, from, bytes, &mut out)
        });
        self.flush(&mut out);
        Poll::Ready(Ok((kept > 0).then_some(kept)))
    }

    /// Datagrams from the tunnels: `Ready(k)` with `k` of them put in
    /// `bufs` for quinn (0: what came was all for the relay).
    fn poll_tunnels(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<usize> {
        let Some(tcp) = &self.tcp else {
            return Poll::Pending;
        };
        let room = bufs.len().min(meta.len());
        let mut items = self.from_tunnels.lock().unwrap_or_else(|p| p.into_inner());
        items.clear();
        {
            let mut inbox = tcp.inbox.lock().unwrap_or_else(|p| p.into_inner());
            if inbox.poll_recv_many(cx, &mut items, room).is_pending() {
                return Poll::Pending;
            }
        }
        let now = Instant::now();
        let mut out = self.outbox.lock().unwrap_or_else(|p| p.into_inner());
        let mut k = 0;
        for (from, bytes) in items.drain(..) {
            tcp.stats
                .bytes_in
                .fetch_add(bytes.len() as u64, Ordering::Relaxed);
            match bytes.first() {
                None | Some(&check::REQUEST) => {}
                Some(&b) if relay_frame::is_relay_frame(b) => {
                    self.relay_one(now, from, &bytes, &mut out)
                }
                Some(_) if bytes.len() <= bufs[k].len() => {
                    bufs[k][..bytes.len()].copy_from_slice(&bytes);
                    meta[k] = RecvMeta {
                        addr: from,
                        len: bytes.len(),
                        stride: bytes.len(),
                        ecn: None,
                        dst_ip: None,
                    };
                    k += 1;
                }
                Some(_) => {}
            }
        }
        self.flush(&mut out);
        Poll::Ready(k)
    }
}

/// What a UDP datagram is to the server socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UdpKind {
    /// QUIC (or junk quinn drops itself): for quinn.
    Quic,
    /// A relay frame.
    Relay,
    /// A UDP check request.
    Check,
    /// From the virtual range while TCP is on: someone posing as a TCP
    /// peer. Dropped.
    Spoofed,
}

/// Classifies one UDP datagram from `from` by its source and first byte.
pub(crate) fn classify_udp(from: SocketAddr, bytes: &[u8], tcp_on: bool) -> UdpKind {
    if tcp_on && is_virtual(from) {
        return UdpKind::Spoofed;
    }
    match bytes.first() {
        Some(&check::REQUEST) => UdpKind::Check,
        Some(&b) if relay_frame::is_relay_frame(b) => UdpKind::Relay,
        _ => UdpKind::Quic,
    }
}

/// Frames to forward to one destination, gathered from a receive batch so
/// they leave as one segmentation-offload (GSO) transmit: all `segment`
/// bytes long but the last, which may be shorter and ends the batch.
#[derive(Debug, Default)]
struct Outbox {
    to: Option<SocketAddr>,
    segment: usize,
    frames: usize,
    buf: Vec<u8>,
}

/// Most bytes in one forwarded transmit (a UDP GSO send's limit is 64 KiB).
const MAX_OUTBOX: usize = 60 * 1024;

impl Outbox {
    /// Whether a frame of `len` bytes to `to` can join what is held.
    fn fits(&self, to: SocketAddr, len: usize, max_segments: usize) -> bool {
        match self.to {
            None => true,
            Some(held) => {
                held == to
                    && len <= self.segment
                    && self.buf.len() == self.frames * self.segment
                    && self.frames < max_segments
                    && self.buf.len() + len <= MAX_OUTBOX
            }
        }
    }

    /// Adds a frame (after [`Outbox::fits`], or into an empty box).
    fn push(&mut self, to: SocketAddr, bytes: &[u8]) {
        if self.to.is_none() {
            self.to = Some(to);
            self.segment = bytes.len();
        }
        self.buf.extend_from_slice(bytes);
        self.frames += 1;
    }
}

impl fmt::Debug for ServerSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerSocket")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl AsyncUdpSocket for ServerSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        match &self.tcp {
            Some(tcp) if is_virtual(transmit.destination) => {
                tcp.send_segments(
                    transmit.destination,
                    transmit.contents,
                    transmit.segment_size,
                );
                Ok(())
            }
            _ => self.inner.try_send(transmit),
        }
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        for _ in 0..MAX_ALL_RELAY_ROUNDS {
            let tunnels_first = self.tunnels_first.fetch_xor(true, Ordering::Relaxed);
            if tunnels_first {
                match self.poll_tunnels(cx, bufs, meta) {
                    Poll::Ready(0) => continue,
                    Poll::Ready(k) => return Poll::Ready(Ok(k)),
                    Poll::Pending => {}
                }
            }
            match self.poll_udp(cx, bufs, meta) {
                Poll::Ready(Ok(Some(kept))) => return Poll::Ready(Ok(kept)),
                Poll::Ready(Ok(None)) => continue,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending if tunnels_first => return Poll::Pending,
                Poll::Pending => {}
            }
            match self.poll_tunnels(cx, bufs, meta) {
                Poll::Ready(0) => continue,
                Poll::Ready(k) => return Poll::Ready(Ok(k)),
                Poll::Pending => return Poll::Pending,
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
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

/// Takes out of a received batch (`n` datagrams: `meta[i]` describes
/// `bufs[i]`) every segment `take(source, bytes)` consumes, and returns how
/// many datagrams are left.
///
/// Each datagram's buffer is compacted in place: kept segments move down to
/// the next `stride` boundary, so all but the last stay `stride` long (only
/// the original last segment can be shorter, and it stays last). A datagram
/// left empty is removed, later ones moving down — buffers are swapped, not
/// copied (`bufs` is the caller's array of equal chunks; which chunk holds
/// which datagram does not matter to it). `take` sees each segment before
/// anything overwrites it.
pub fn filter_batch(
    bufs: &mut [IoSliceMut<'_>],
    meta: &mut [RecvMeta],
    n: usize,
    mut take: impl FnMut(SocketAddr, &[u8]) -> bool,
) -> usize {
    let n = n.min(meta.len()).min(bufs.len());
    let mut kept = 0;
    for i in 0..n {
        let m = &mut meta[i];
        let len = m.len.min(bufs[i].len());
        let from = m.addr;
        m.len = compact_segments(&mut bufs[i][..len], m.stride, |b| take(from, b));
        if m.len == 0 {
            continue;
        }
        if kept != i {
            meta.swap(kept, i);
            bufs.swap(kept, i);
        }
        kept += 1;
    }
    kept
}

/// Compacts the segments of one datagram (`stride` bytes each; 0 means
/// one segment) that `take` does not consume to the front of `buf`; returns
/// the bytes kept.
fn compact_segments(buf: &mut [u8], stride: usize, mut take: impl FnMut(&[u8]) -> bool) -> usize {
    let len = buf.len();
    let stride = if stride == 0 { len.max(1) } else { stride };
    let (mut read, mut write) = (0, 0);
    while read < len {
        let end = (read + stride).min(len);
        if !take(&buf[read..end]) {
            if write != read {
                buf.copy_within(read..end, write);
            }
            write += end - read;
        }
        read = end;
    }
    write
}

#[cfg(test)]
#[path = "socket_tests.rs"]
mod tests;
