//! The socket's optional tunnel to one server, and its UDP check
//! (issue 11, DESIGN §6 "No UDP at all").
//!
//! When UDP to the server gets no answer, the server link falls back to a
//! TCP tunnel ([`crate::tcp`]). Installed here ([`TunnelSlot::install`]),
//! every datagram whose destination is that server goes into the tunnel
//! instead of the UDP socket: the server link's QUIC, relay frames and
//! relayed probes alike. What the tunnel delivers is presented to the
//! socket wrapper as if it came from the server over UDP, so the same
//! demultiplexing applies ([`crate::udp`]).
//!
//! The UDP check (`common::tunnel::check`) asks, straight from the UDP
//! socket, whether UDP gets through again ([`PathSocket::udp_check`]); its
//! answer is taken by nonce, with the mapping checks' answers
//! ([`crate::mapping::CheckAnswers`]).
//!
//! Also the wrapper's tunnel-side I/O: receiving from both sources
//! ([`PathSocket::poll_sources`]) and sending the check.

use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};

use super::{lock, PathSocket};

use bytes::Bytes;
use common::candidates::canonical;
use common::tunnel::{check, Tunnel};
use quinn::udp::RecvMeta;
use tokio::sync::{mpsc, oneshot};

use crate::mapping::CheckAnswer;

/// The installed tunnel: where it goes and how to send into it.
struct Route {
    /// The server, canonical.
    server: SocketAddr,
    tunnel: Tunnel,
    id: u64,
}

/// The tunnel (at most one; see the module docs).
#[derive(Default)]
pub(crate) struct TunnelSlot {
    /// Whether a tunnel is installed: no lock on the hot path without one.
    active: AtomicBool,
    route: Mutex<Option<Route>>,
    inbox: Mutex<Option<mpsc::Receiver<Bytes>>>,
    /// The receiver's waker while no tunnel delivers: installing one wakes it.
    parked: Mutex<Option<Waker>>,
    next_id: AtomicU64,
    /// The id of the last tunnel removed because UDP works again (so the
    /// other links on it follow to UDP instead of reconnecting).
    left_for_udp: AtomicU64,
    /// While a connect races UDP and TCP: the server whose UDP datagrams
    /// are noted in `heard` (one flag check per datagram otherwise).
    watching: AtomicBool,
    watched: Mutex<Option<SocketAddr>>,
    heard: AtomicBool,
}

impl TunnelSlot {
    /// Installs `tunnel` to `server` (replacing and closing any other);
    /// `inbox` is where its pump delivers. Returns the tunnel's id here.
    pub(crate) fn install(
        &self,
        server: SocketAddr,
        tunnel: Tunnel,
        inbox: mpsc::Receiver<Bytes>,
    ) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let old = {
            // The route's lock covers the inbox too: a concurrent remove
            // cannot take the new tunnel's receiver away.
            let mut route = lock(&self.route);
            let old = route.replace(Route {
                server: canonical(server),
                tunnel,
                id,
            });
            *lock(&self.inbox) = Some(inbox);
            self.active.store(true, Ordering::Release);
            old
        };
        if let Some(old) = old {
            old.tunnel.close();
        }
        if let Some(w) = lock(&self.parked).take() {
            w.wake();
        }
        id
    }

    /// Removes and closes the tunnel; with `only`, only if it is that one.
    /// Returns whether one was removed.
    pub(crate) fn remove(&self, only: Option<u64>) -> bool {
        let removed = {
            let mut route = lock(&self.route);
            if only.is_some_and(|id| route.as_ref().is_some_and(|r| r.id != id)) {
                return false;
            }
            self.active.store(false, Ordering::Release);
            *lock(&self.inbox) = None;
            route.take()
        };
        match removed {
            Some(r) => {
                r.tunnel.close();
                true
            }
            None => false,
        }
    }

    /// Removes tunnel `id` because UDP works again (see
    /// [`TunnelSlot::left_for_udp`]).
    pub(crate) fn remove_for_udp(&self, id: u64) {
        self.left_for_udp.store(id, Ordering::Release);
        self.remove(Some(id));
    }

    /// Starts noting whether anything arrives from `server` over UDP (a
    /// connect's race: a server that answers over UDP at all is reachable
    /// there, however slowly, and the handshake must not move to TCP).
    pub(crate) fn watch_udp(&self, server: SocketAddr) {
        *lock(&self.watched) = Some(canonical(server));
        self.heard.store(false, Ordering::Release);
        self.watching.store(true, Ordering::Release);
    }

    /// Stops noting (the race is over).
    pub(crate) fn unwatch_udp(&self) {
        self.watching.store(false, Ordering::Release);
    }

    /// Whether a datagram from the watched server came over UDP since
    /// [`TunnelSlot::watch_udp`].
    pub(crate) fn udp_heard(&self) -> bool {
        self.heard.load(Ordering::Acquire)
    }

    /// Notes a datagram from `from` received over UDP.
    pub(crate) fn note_udp(&self, from: SocketAddr) {
        if !self.watching.load(Ordering::Relaxed) || self.heard.load(Ordering::Relaxed) {
            return;
        }
        if *lock(&self.watched) == Some(canonical(from)) {
            self.heard.store(true, Ordering::Release);
        }
    }

    /// Whether tunnel `id` was removed because UDP works again.
    pub(crate) fn left_for_udp(&self, id: u64) -> bool {
        self.left_for_udp.load(Ordering::Acquire) == id
    }

    /// The installed tunnel to `server` and its id, if it is still up.
    pub(crate) fn live(&self, server: SocketAddr) -> Option<(u64, Tunnel)> {
        if !self.active() {
            return None;
        }
        let route = lock(&self.route);
        let r = route.as_ref()?;
        (r.server == canonical(server) && !r.tunnel.is_closed()).then(|| (r.id, r.tunnel.clone()))
    }

    /// Whether a tunnel is installed (maybe dead).
    pub(crate) fn active(&self) -> bool {
        self.active.load(Ordering::Acquire)
    }

    /// Sends `contents` into the tunnel if `dest` is its server, one
    /// tunnel datagram per `segment` bytes; `false` when it is not (send
    /// over UDP). A refused datagram is dropped, as UDP would.
    pub(crate) fn send(&self, dest: SocketAddr, contents: &[u8], segment: Option<usize>) -> bool {
        if !self.active() {
            return false;
        }
        let route = lock(&self.route);
        // A dead tunnel (its link gone first) takes nothing: UDP, until a
        // link installs a new one.
        let Some(r) = route
            .as_ref()
            .filter(|r| r.server == canonical(dest) && !r.tunnel.is_closed())
        else {
            return false;
        };
        let seg = segment.unwrap_or(contents.len()).max(1);
        for datagram in contents.chunks(seg) {
            r.tunnel.send(datagram);
        }
        true
    }

    /// The tunnel's server in the socket's family, if one is installed.
    pub(crate) fn server(&self) -> Option<SocketAddr> {
        if !self.active() {
            return None;
        }
        lock(&self.route).as_ref().map(|r| r.server)
    }

    /// Parks the receiver's waker: installing a tunnel wakes it (the
    /// receiver must poll the tunnel too from then on).
    pub(crate) fn park(&self, waker: &Waker) {
        let mut parked = lock(&self.parked);
        match parked.as_ref() {
            Some(w) if w.will_wake(waker) => {}
            _ => *parked = Some(waker.clone()),
        }
    }

    /// Moves datagrams the tunnel delivered into `bufs`, each as coming
    /// from `from` (the server, in the socket's family); `Pending` (with
    /// the waker registered) when there are none. A datagram larger than
    /// its buffer is dropped.
    pub(crate) fn poll_inbox(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [std::io::IoSliceMut<'_>],
        meta: &mut [RecvMeta],
        from: SocketAddr,
    ) -> Poll<usize> {
        let mut inbox = lock(&self.inbox);
        let Some(rx) = inbox.as_mut() else {
            self.park(cx.waker());
            return Poll::Pending;
        };
        let max = bufs.len().min(meta.len());
        let mut k = 0;
        while k < max {
            let next = if k == 0 {
                match rx.poll_recv(cx) {
                    Poll::Ready(next) => next,
                    Poll::Pending => return Poll::Pending,
                }
            } else {
                rx.try_recv().ok()
            };
            let Some(datagram) = next else {
                break;
            };
            if datagram.len() > bufs[k].len() || datagram.is_empty() {
                continue;
            }
            bufs[k][..datagram.len()].copy_from_slice(&datagram);
            meta[k] = RecvMeta {
                addr: from,
                len: datagram.len(),
                stride: datagram.len(),
                ecn: None,
                dst_ip: None,
            };
            k += 1;
        }
        if k == 0 {
            // The pump ended: nothing more comes this way.
            *inbox = None;
            self.park(cx.waker());
            return Poll::Pending;
        }
        Poll::Ready(k)
    }
}

impl Drop for TunnelSlot {
    fn drop(&mut self) {
        self.remove(None);
    }
}

impl PathSocket {
    /// Sends a UDP check request to `server` straight out of the UDP
    /// socket (never the tunnel: the question is whether UDP works) and
    /// returns where its answer will come: the address the server saw
    /// (and the server's other port, if it named one).
    /// Waits for the socket to be writable if it is not (the caller bounds
    /// it in time).
    pub(crate) async fn udp_check(&self, server: SocketAddr) -> oneshot::Receiver<CheckAnswer> {
        let nonce: [u8; 16] = rand::random();
        let answer = self.checks.expect(server, nonce);
        self.send_check(server, &check::request(nonce)).await;
        answer
    }

    /// Sends check `request` to `server` straight out of the UDP socket,
    /// waiting for it to be writable if it is not (the caller bounds it in
    /// time).
    pub(crate) async fn send_check(&self, server: SocketAddr, request: &[u8]) {
        let transmit = self.single(server, request);
        let mut poller = self.inner.clone().create_io_poller();
        loop {
            match self.inner.try_send(&transmit) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if std::future::poll_fn(|cx| poller.as_mut().poll_writable(cx))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
                Err(e) => {
                    tracing::debug!(%server, "UDP check not sent: {e}");
                    break;
                }
                Ok(()) => break,
            }
        }
    }

    /// Receives from the UDP socket or the tunnel (alternating which goes
    /// first); says whether the datagrams came through the tunnel. Both
    /// register the waker when neither has anything.
    pub(super) fn poll_sources(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<(usize, bool)>> {
        if !self.tunnel.active() {
            let polled = self.inner.poll_recv(cx, bufs, meta);
            if polled.is_pending() {
                self.tunnel.park(cx.waker());
                // Installed meanwhile: poll again, now with the tunnel.
                if self.tunnel.active() {
                    cx.waker().wake_by_ref();
                }
            }
            return polled.map_ok(|n| (n, false));
        }
        let server = match self.tunnel.server() {
            Some(s) => self.family(s),
            None => return self.inner.poll_recv(cx, bufs, meta).map_ok(|n| (n, false)),
        };
        let tunnel_first = self.tunnel_first.fetch_xor(true, Ordering::Relaxed);
        if tunnel_first {
            if let Poll::Ready(n) = self.tunnel.poll_inbox(cx, bufs, meta, server) {
                return Poll::Ready(Ok((n, true)));
            }
        }
        if let Poll::Ready(r) = self.inner.poll_recv(cx, bufs, meta) {
            return Poll::Ready(r.map(|n| (n, false)));
        }
        if !tunnel_first {
            if let Poll::Ready(n) = self.tunnel.poll_inbox(cx, bufs, meta, server) {
                return Poll::Ready(Ok((n, true)));
            }
        }
        Poll::Pending
    }
}
