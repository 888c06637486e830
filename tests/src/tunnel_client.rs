//! A test's own client of the server's TCP side: raw tunnels (to send what
//! a well-behaved peer never would) and a quinn endpoint over a tunnel
//! ([`TunnelSocket`]), so the server's TCP side is tested without the peer
//! crate's transport code.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use common::tunnel::{self, ClientStream, PumpLimits, Tunnel};
use common::{Fingerprint, Identity};
use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc;

use crate::inproc::{RawClient, TestServer};

/// The server's TCP address (the UDP port number unless moved).
pub fn tcp_addr(server: &TestServer) -> SocketAddr {
    server.tcp_addr.expect("the server has TCP on")
}

/// A TCP connection to `addr`, with a receive buffer of `rcvbuf` bytes
/// when given (a small one fills at once when the test stops reading).
pub async fn tcp(addr: SocketAddr, rcvbuf: Option<u32>) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    if let Some(size) = rcvbuf {
        socket.set_recv_buffer_size(size).expect("rcvbuf");
    }
    socket.connect(addr).await.expect("TCP connect")
}

/// A raw tunnel (TLS + WebSocket done) to `addr`, pinned to `fingerprint`.
pub async fn open_raw(
    addr: SocketAddr,
    fingerprint: Fingerprint,
    rcvbuf: Option<u32>,
) -> Result<ClientStream<TcpStream>, tunnel::TunnelError> {
    let stream = tcp(addr, rcvbuf).await;
    let tls = Arc::new(common::tls::tunnel_client_config(fingerprint).expect("tls"));
    tunnel::connect(stream, tls, &addr.to_string()).await
}

/// quinn's socket over one tunnel: every datagram goes into the tunnel,
/// whatever its destination; everything from it comes "from" `remote`.
pub struct TunnelSocket {
    tunnel: Tunnel,
    inbox: Mutex<mpsc::Receiver<Bytes>>,
    remote: SocketAddr,
    local: SocketAddr,
}

impl fmt::Debug for TunnelSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TunnelSocket").finish_non_exhaustive()
    }
}

impl TunnelSocket {
    /// Opens a tunnel to `server` and wraps it.
    pub async fn open(server: &TestServer) -> Arc<Self> {
        let addr = tcp_addr(server);
        let ws = open_raw(addr, server.fingerprint, None)
            .await
            .expect("tunnel opens");
        let (tx, rx) = mpsc::channel(256);
        let tunnel = tunnel::pump::spawn(ws, PumpLimits::default(), tx, |b| b);
        Arc::new(Self {
            tunnel,
            inbox: Mutex::new(rx),
            remote: server.addr,
            local: "127.0.0.1:1".parse().expect("addr"),
        })
    }

    /// The tunnel under it.
    pub fn tunnel(&self) -> &Tunnel {
        &self.tunnel
    }
}

#[derive(Debug)]
struct AlwaysWritable;

impl UdpPoller for AlwaysWritable {
    fn poll_writable(self: Pin<&mut Self>, _cx: &mut Context) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl AsyncUdpSocket for TunnelSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        Box::pin(AlwaysWritable)
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        let seg = transmit
            .segment_size
            .unwrap_or(transmit.contents.len())
            .max(1);
        for chunk in transmit.contents.chunks(seg) {
            self.tunnel.send(chunk);
        }
        Ok(())
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let mut inbox = self.inbox.lock().unwrap();
        let mut got = Vec::new();
        match inbox.poll_recv_many(cx, &mut got, bufs.len().min(meta.len())) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(0) => return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
            Poll::Ready(_) => {}
        }
        let mut k = 0;
        for bytes in got {
            if bytes.len() > bufs[k].len() {
                continue;
            }
            bufs[k][..bytes.len()].copy_from_slice(&bytes);
            meta[k] = RecvMeta {
                addr: self.remote,
                len: bytes.len(),
                stride: bytes.len(),
                ecn: None,
                dst_ip: None,
            };
            k += 1;
        }
        Poll::Ready(Ok(k))
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }

    fn max_transmit_segments(&self) -> usize {
        1
    }

    fn max_receive_segments(&self) -> usize {
        1
    }

    fn may_fragment(&self) -> bool {
        false
    }
}

impl RawClient {
    /// Connects to `server` over its TCP side with a fresh identity.
    pub async fn connect_over_tcp(server: &TestServer) -> (Self, Arc<TunnelSocket>) {
        let socket = TunnelSocket::open(server).await;
        let identity = Arc::new(Identity::generate().expect("id"));
        let endpoint = quinn::Endpoint::new_with_abstract_socket(
            peer::endpoint_config(),
            None,
            socket.clone(),
            Arc::new(quinn::TokioRuntime),
        )
        .expect("endpoint");
        let tls =
            common::tls::client_config(&identity, server.fingerprint, common::tls::SERVER_ALPN)
                .expect("tls");
        let config = quinn::ClientConfig::new(Arc::new(
            quinn::crypto::rustls::QuicClientConfig::try_from(tls).expect("quic"),
        ));
        let conn = endpoint
            .connect_with(config, server.addr, common::tls::SERVER_NAME)
            .expect("connect")
            .await
            .expect("handshake over TCP");
        (
            Self {
                endpoint,
                conn,
                identity,
            },
            socket,
        )
    }
}

/// `n` QUIC Initials of fresh connections to `server`, made by quinn's own
/// state machine (each makes the server answer: a Retry or a first flight).
pub fn initials(server: Fingerprint, n: usize) -> Vec<Vec<u8>> {
    let identity = Identity::generate().expect("id");
    let tls = common::tls::client_config(&identity, server, common::tls::SERVER_ALPN).expect("tls");
    let config = quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(tls).expect("quic"),
    ));
    let mut endpoint =
        quinn_proto::Endpoint::new(Arc::new(peer::endpoint_config()), None, false, None);
    let now = std::time::Instant::now();
    let to: SocketAddr = "127.0.0.1:7700".parse().expect("addr");
    (0..n)
        .filter_map(|_| {
            let (_, mut conn) = endpoint
                .connect(now, config.clone(), to, common::tls::SERVER_NAME)
                .ok()?;
            let mut buf = Vec::new();
            let t = conn.poll_transmit(now, 1, &mut buf)?;
            buf.truncate(t.size);
            Some(buf)
        })
        .collect()
}
