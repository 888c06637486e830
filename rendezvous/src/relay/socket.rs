//! The server's UDP socket as quinn sees it, with the relay in front.
//!
//! The relay shares the server's port (DESIGN §6). `RelaySocket` wraps
//! quinn's own tokio socket; after every receive it looks at each datagram
//! — per GRO segment ([`RecvMeta::stride`]: one receive may hold several
//! datagrams from one source, `stride` bytes each, the last maybe shorter)
//! — and hands those whose first byte is a relay frame
//! ([`relay_frame::is_relay_frame`]) to the [`super::RelayTable`]. A frame it
//! forwards leaves unchanged through the same socket; the frames of one
//! receive batch for one destination leave together, as one
//! segmentation-offload (GSO) transmit when their sizes allow (all equal
//! but a shorter last one), which saves a system call per frame. A full
//! send buffer drops them (counted per frame: QUIC's loss recovery at the
//! two ends handles it). Every other datagram — QUIC, or
//! junk quinn drops itself — goes on to quinn, the batch compacted in place
//! by [`filter_batch`] (pure, unit-tested) so quinn never sees a relay frame.
//!
//! Sends are quinn's own, untouched: the wrapper adds nothing on the QUIC
//! path but one first-byte check per received datagram.

use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use common::relay_frame;
use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};
use tracing::debug;

use super::driver::Relay;
use super::table::Action;

/// Receives in a row that held nothing but relay frames before the wrapper
/// yields (waking itself at once): a flood of frames must not keep the
/// endpoint's task from its connections.
const MAX_ALL_RELAY_ROUNDS: usize = 16;

/// quinn's socket with the relay's frames taken out of every receive.
pub(crate) struct RelaySocket {
    inner: Arc<dyn AsyncUdpSocket>,
    relay: Arc<Relay>,
    /// Frames of the receive batch being filtered, to forward.
    outbox: Mutex<Outbox>,
}

impl RelaySocket {
    /// Wraps `inner` (from [`quinn::Runtime::wrap_udp_socket`]); frames go
    /// to `relay`.
    pub(crate) fn new(inner: Arc<dyn AsyncUdpSocket>, relay: Arc<Relay>) -> Self {
        Self {
            inner,
            relay,
            outbox: Mutex::new(Outbox::default()),
        }
    }

    /// One relay frame from `from`: checked, then queued in `out` to be
    /// forwarded (or dropped).
    fn relay_one(&self, now: Instant, from: SocketAddr, bytes: &[u8], out: &mut Outbox) {
        let Action::Forward { to } = self.relay.handle_packet(now, from, bytes) else {
            return;
        };
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
        match self.inner.try_send(&transmit) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                (0..out.frames).for_each(|_| self.relay.count_send_full())
            }
            Err(e) => {
                (0..out.frames).for_each(|_| self.relay.count_send_error());
                debug!(%to, "relayed datagrams not sent: {e}");
            }
        }
        out.buf.clear();
        out.frames = 0;
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

impl fmt::Debug for RelaySocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RelaySocket")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl AsyncUdpSocket for RelaySocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        self.inner.try_send(transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        for _ in 0..MAX_ALL_RELAY_ROUNDS {
            let n = match self.inner.poll_recv(cx, bufs, meta) {
                Poll::Ready(Ok(n)) => n,
                other => return other,
            };
            let now = Instant::now();
            let mut out = self.outbox.lock().unwrap_or_else(|p| p.into_inner());
            let kept = filter_batch(bufs, meta, n, |from, bytes| {
                let is_relay = bytes
                    .first()
                    .is_some_and(|b| relay_frame::is_relay_frame(*b));
                if is_relay {
                    self.relay_one(now, from, bytes, &mut out);
                }
                is_relay
            });
            self.flush(&mut out);
            drop(out);
            if kept > 0 {
                return Poll::Ready(Ok(kept));
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
