//! A raw rendezvous client whose one UDP socket also sends and receives
//! relay frames, as a real peer's does: the relay learns a party's address
//! from its server connection, so the frames must leave from that socket.
//!
//! [`TapSocket`] wraps quinn's socket: relay frames (first byte 0x30–0x3F)
//! that arrive are taken out before quinn sees them (with
//! [`rendezvous::relay::socket::filter_batch`]) and handed to the test
//! through a channel; [`Tap::send`] sends raw datagrams from the socket.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use common::relay_frame;
use common::tls;
use common::Identity;
use quinn::crypto::rustls::QuicClientConfig;
use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};
use tokio::sync::mpsc;

use crate::inproc::{RawClient, TestServer};

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
            let kept = rendezvous::relay::socket::filter_batch(bufs, meta, n, |from, b| {
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
