//! A raw rendezvous client whose one UDP socket also sends and receives
//! relay frames, as a real peer's does: the relay learns a party's address
//! from its server connection, so the frames must leave from that socket.
//!
//! [`TapSocket`] wraps quinn's socket: relay frames (first byte 0x30–0x3F)
//! that arrive are taken out before quinn sees them (with
//! [`rendezvous::socket::filter_batch`]) and handed to the test
//! through a channel; [`Tap::send`] sends raw datagrams from the socket.
//!
//! On top: [`call`] sets up a relayed call between two such clients (a raw
//! callee that accepts), and [`metric`] / [`wait_metric`] read the server's
//! counters.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use common::framing::{read_frame, write_frame, MAX_FRAME};
use common::relay_frame::{self, encode, FrameKey, Header, Party};
use common::tls;
use common::{Identity, Message, RelayTicket};
use quinn::crypto::rustls::QuicClientConfig;
use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};
use tokio::sync::mpsc;

use crate::inproc::{within, RawClient, TestServer};

/// How long the relay tests wait for anything.
pub const T: Duration = Duration::from_secs(10);

/// quinn's socket, with incoming relay frames diverted to a channel.
#[derive(Debug)]
pub struct TapSocket {
    inner: Arc<dyn AsyncUdpSocket>,
    frames: mpsc::UnboundedSender<(SocketAddr, Vec<u8>)>,
}

impl AsyncUdpSocket for TapSocket {
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
        loop {
            let n = match self.inner.poll_recv(cx, bufs, meta) {
                Poll::Ready(Ok(n)) => n,
                other => return other,
            };
            let kept = rendezvous::socket::filter_batch(bufs, meta, n, |from, b| {
                let relay = b.first().is_some_and(|f| relay_frame::is_relay_frame(*f));
                if relay {
                    let _ = self.frames.send((from, b.to_vec()));
                }
                relay
            });
            if kept > 0 {
                return Poll::Ready(Ok(kept));
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    // The inner socket's offloads: with GRO on, a receive buffer sized for
    // one datagram would cut a batch (the relay forwards with GSO).
    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

/// The test's side of a [`TapSocket`].
pub struct Tap {
    socket: Arc<TapSocket>,
    frames: mpsc::UnboundedReceiver<(SocketAddr, Vec<u8>)>,
}

impl Tap {
    /// Sends `bytes` to `to` from the client's socket.
    pub fn send(&self, to: SocketAddr, bytes: &[u8]) {
        let transmit = Transmit {
            destination: to,
            ecn: None,
            contents: bytes,
            segment_size: None,
            src_ip: None,
        };
        self.socket.inner.try_send(&transmit).expect("raw send");
    }

    /// The next relay frame that arrived (source, bytes), within `timeout`.
    pub async fn next(&mut self, timeout: Duration) -> (SocketAddr, Vec<u8>) {
        tokio::time::timeout(timeout, self.frames.recv())
            .await
            .expect("a relay frame within the timeout")
            .expect("tap open")
    }

    /// A relay frame that already arrived, if any.
    pub fn try_next(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        self.frames.try_recv().ok()
    }
}

/// A [`RawClient`] on 127.0.0.1 whose socket is tapped.
pub async fn connect_tapped(server: &TestServer) -> (RawClient, Tap) {
    let std_socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let runtime = Arc::new(quinn::TokioRuntime);
    let inner = quinn::Runtime::wrap_udp_socket(&*runtime, std_socket).expect("wrap");
    let (tx, frames) = mpsc::unbounded_channel();
    let socket = Arc::new(TapSocket { inner, frames: tx });
    let endpoint = quinn::Endpoint::new_with_abstract_socket(
        peer::endpoint_config(),
        None,
        socket.clone(),
        runtime,
    )
    .expect("endpoint");
    let identity = Arc::new(Identity::generate().expect("id"));
    let tls = tls::client_config(&identity, server.fingerprint, tls::SERVER_ALPN).expect("tls");
    let config = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls).expect("quic")));
    let conn = endpoint
        .connect_with(config, server.addr, tls::SERVER_NAME)
        .expect("connect")
        .await
        .expect("handshake");
    let client = RawClient {
        endpoint,
        conn,
        identity,
    };
    (client, Tap { socket, frames })
}

/// One side of a relayed call: its client, its tap, its ticket, its counter.
pub struct Side {
    pub client: RawClient,
    pub tap: Tap,
    pub party: Party,
    pub ticket: Option<RelayTicket>,
    pub counter: u64,
}

impl Side {
    /// A fresh frame (next counter) under this side's own key.
    pub fn frame(&mut self, payload: &[u8]) -> Vec<u8> {
        let ticket = self.ticket.expect("a relay ticket");
        self.counter += 1;
        frame(
            self.party,
            ticket.call_id,
            self.counter,
            &ticket.secret,
            payload,
        )
    }
}

pub fn frame(
    party: Party,
    call_id: u32,
    counter: u64,
    secret: &[u8; 32],
    payload: &[u8],
) -> Vec<u8> {
    let header = Header {
        party,
        call_id,
        counter,
        end: false,
    };
    let mut out = Vec::new();
    encode(&header, &FrameKey::new(secret), payload, &mut out).expect("fits");
    out
}

pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!("{prefix}-{}", N.fetch_add(1, Ordering::Relaxed))
}

pub async fn register(client: &RawClient, name: &str, presence: bool) {
    let reply = client
        .request(&Message::Register {
            name: name.into(),
            presence,
        })
        .await;
    assert!(matches!(reply, Message::Registered { .. }), "{reply:?}");
}

/// A call from a fresh caller to a fresh raw callee that accepts (hiding
/// its addresses if `callee_hides`). Returns both sides (tickets filled
/// from CallAccepted and Dial), the caller's answer and what the callee got
/// instead of an offer's Dial.
pub async fn call(server: &TestServer, caller_hides: bool, callee_hides: bool) -> Call {
    let (callee_client, callee_tap) = connect_tapped(server).await;
    let to = unique("callee");
    register(&callee_client, &to, true).await;
    let (caller_client, caller_tap) = connect_tapped(server).await;
    register(&caller_client, &unique("caller"), false).await;
    let conn = callee_client.conn.clone();
    let answered = tokio::spawn(async move {
        let (mut send, mut recv) = within(T, "offer", conn.accept_bi()).await.expect("offer");
        let offer: Message = read_frame(&mut recv, MAX_FRAME).await.expect("offer frame");
        assert!(matches!(offer, Message::IncomingCall { .. }), "{offer:?}");
        let accept = Message::Accept {
            candidates: vec![],
            hide_addresses: callee_hides,
        };
        write_frame(&mut send, &accept, MAX_FRAME)
            .await
            .expect("accept");
        let dial: Message = within(T, "dial", read_frame(&mut recv, MAX_FRAME))
            .await
            .expect("dial frame");
        dial
    });
    let answer = caller_client
        .request(&Message::Call {
            to,
            candidates: vec![],
            hide_addresses: caller_hides,
        })
        .await;
    let dial = within(T, "callee task", answered).await.expect("callee");
    let ticket = |m: &Message| match m {
        Message::CallAccepted { relay, .. } | Message::Dial { relay, .. } => *relay,
        _ => None,
    };
    Call {
        caller: Side {
            ticket: ticket(&answer),
            client: caller_client,
            tap: caller_tap,
            party: Party::Caller,
            counter: 0,
        },
        callee: Side {
            ticket: ticket(&dial),
            client: callee_client,
            tap: callee_tap,
            party: Party::Callee,
            counter: 1000,
        },
        answer,
        dial,
    }
}

/// Both sides of a call and what each was told.
pub struct Call {
    pub caller: Side,
    pub callee: Side,
    pub answer: Message,
    pub dial: Message,
}

/// The value of the series `series` (name plus labels, as rendered).
pub fn metric(server: &TestServer, series: &str) -> u64 {
    let text = server.metrics().render();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{series} not in the metrics:\n{text}"))
}

/// Waits until `series` reaches at least `want` (the server counted it).
pub async fn wait_metric(server: &TestServer, series: &str, want: u64) {
    wait_metric_until(server, series, T, &format!("want {want}"), |v| v >= want).await;
}

/// Waits (at most `within`) until `series` is exactly `want` (a gauge
/// coming down, say).
pub async fn wait_metric_eq(server: &TestServer, series: &str, want: u64, within: Duration) {
    wait_metric_until(server, series, within, &format!("not {want}"), |v| {
        v == want
    })
    .await;
}

/// Polls `series` until `done` holds for its value, within `within`;
/// panics with the last value and `want` otherwise.
async fn wait_metric_until(
    server: &TestServer,
    series: &str,
    within: Duration,
    want: &str,
    done: impl Fn(u64) -> bool,
) {
    let reached = tokio::time::timeout(within, async {
        while !done(metric(server, series)) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(
        reached.is_ok(),
        "{series} stayed at {} ({want})",
        metric(server, series)
    );
}

/// The drop counter series of `cause`.
pub fn drops(cause: &str) -> String {
    format!("rendezvous_relay_drops_total{{cause=\"{cause}\"}}")
}
