//! The socket wrapper with a tunnel installed: a real loopback UDP socket
//! underneath, and a tunnel over an in-memory pipe whose other end stands
//! in for the server (the real pump code on both ends).

use std::future::poll_fn;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use common::tunnel::{self, check, PumpLimits, Tunnel};
use quinn::Runtime;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

use super::*;

const WAIT: Duration = Duration::from_secs(5);

/// The peer's wrapper, the server's end of its tunnel, and the server's
/// own UDP port (which must see nothing the tunnel carries).
struct Rig {
    sock: Arc<PathSocket>,
    server_end: Tunnel,
    at_server: mpsc::Receiver<Bytes>,
    server_udp: UdpSocket,
    server: SocketAddr,
}

fn path_socket(bind: &str) -> Option<Arc<PathSocket>> {
    let std = std::net::UdpSocket::bind(bind).ok()?;
    let v6 = std.local_addr().ok()?.is_ipv6();
    let inner = quinn::TokioRuntime.wrap_udp_socket(std).ok()?;
    let router = Arc::new(Router::new(v6));
    Some(Arc::new(PathSocket::new(inner, router, v6)))
}

async fn rig(bind: &str) -> Option<Rig> {
    let sock = path_socket(bind)?;
    let server_udp = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let server = server_udp.local_addr().expect("addr");
    let (a, b) = tokio::io::duplex(64 * 1024);
    let cfg = Some(tunnel::ws_config());
    let (client, srv) = tokio::join!(
        WebSocketStream::from_raw_socket(a, Role::Client, cfg),
        WebSocketStream::from_raw_socket(b, Role::Server, cfg),
    );
    let (tx, inbox) = mpsc::channel(64);
    let peer_end = tunnel::pump::spawn(client, PumpLimits::default(), tx, |b| b);
    let (tx, at_server) = mpsc::channel(64);
    let server_end = tunnel::pump::spawn(srv, PumpLimits::default(), tx, |b| b);
    sock.router.add_server(server);
    sock.tunnel.install(server, peer_end, inbox);
    Some(Rig {
        sock,
        server_end,
        at_server,
        server_udp,
        server,
    })
}

async fn next(rx: &mut mpsc::Receiver<Bytes>) -> Bytes {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("in time")
        .expect("open")
}

/// One receive call of quinn's, with one buffer.
async fn recv_one(sock: &PathSocket) -> (SocketAddr, Vec<u8>) {
    let mut storage = [0u8; 2048];
    let mut meta = [RecvMeta::default()];
    let n = tokio::time::timeout(
        WAIT,
        poll_fn(|cx| {
            let mut bufs = [IoSliceMut::new(&mut storage)];
            sock.poll_recv(cx, &mut bufs, &mut meta)
        }),
    )
    .await
    .expect("in time")
    .expect("received");
    assert_eq!(n, 1);
    (meta[0].addr, storage[..meta[0].len].to_vec())
}

fn transmit(to: SocketAddr, contents: &[u8], segment_size: Option<usize>) -> Transmit<'_> {
    Transmit {
        destination: to,
        ecn: None,
        contents,
        segment_size,
        src_ip: None,
    }
}

#[tokio::test]
async fn server_bound_datagrams_go_into_the_tunnel_one_per_segment() {
    let mut r = rig("127.0.0.1:0").await.expect("rig");
    let batch = [0x41u8; 250];
    r.sock
        .try_send(&transmit(r.server, &batch, Some(100)))
        .expect("sent");
    for len in [100, 100, 50] {
        assert_eq!(next(&mut r.at_server).await.len(), len);
    }
    r.sock.send_raw(r.server, b"\x30relayed probe");
    assert_eq!(&next(&mut r.at_server).await[..], b"\x30relayed probe");

    // Elsewhere: UDP as before; and the server's UDP port saw nothing.
    let other = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let to = other.local_addr().expect("addr");
    r.sock
        .try_send(&transmit(to, b"\x40direct", None))
        .expect("sent");
    let mut buf = [0u8; 64];
    let (n, _) = tokio::time::timeout(WAIT, other.recv_from(&mut buf))
        .await
        .expect("in time")
        .expect("recv");
    assert_eq!(&buf[..n], b"\x40direct");
    assert!(
        r.server_udp.try_recv(&mut buf).is_err(),
        "a datagram went over UDP"
    );

    // Removed: the server gets UDP again.
    assert!(r.sock.tunnel.remove(None));
    r.sock
        .try_send(&transmit(r.server, b"\x40over udp", None))
        .expect("sent");
    let n = tokio::time::timeout(WAIT, r.server_udp.recv(&mut buf))
        .await
        .expect("in time")
        .expect("recv");
    assert_eq!(&buf[..n], b"\x40over udp");
}

#[tokio::test]
async fn tunnel_datagrams_come_from_the_server_through_the_demux_and_alternate_with_udp() {
    let r = rig("127.0.0.1:0").await.expect("rig");
    // A relay frame of no call: consumed, as over UDP.
    r.server_end.send(&[0x30; 40]);
    r.server_end.send(b"\x40quic from the server");
    assert_eq!(
        recv_one(&r.sock).await,
        (r.server, b"\x40quic from the server".to_vec())
    );

    // Both sources have something queued: the receives take turns.
    let local = r.sock.local_addr().expect("addr");
    let other = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let (_, peer_end) = r.sock.tunnel.live(r.server).expect("installed");
    let before = peer_end.stats().datagrams_in.load(Ordering::Relaxed);
    for i in 0..4usize {
        // Initials from an unknown address pass (no call waits); sizes
        // differ so the kernel never coalesces them.
        let initial = vec![0xC0u8; 8 + i];
        other.send_to(&initial, local).await.expect("send");
        r.server_end.send(b"\x40tunnel");
    }
    tokio::time::timeout(WAIT, async {
        while peer_end.stats().datagrams_in.load(Ordering::Relaxed) < before + 4 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the tunnel delivered");
    let mut froms = vec![];
    for _ in 0..4 {
        froms.push(recv_one(&r.sock).await.0);
    }
    let from_other = other.local_addr().expect("addr");
    assert_eq!(
        froms.iter().filter(|a| **a == r.server).count(),
        2,
        "{froms:?}"
    );
    assert_eq!(
        froms.iter().filter(|a| **a == from_other).count(),
        2,
        "{froms:?}"
    );
}

#[tokio::test]
async fn the_udp_check_bypasses_the_tunnel_and_only_a_udp_answer_counts() {
    let mut r = rig("127.0.0.1:0").await.expect("rig");
    let mut answered = r.sock.udp_check(r.server).await;
    let mut buf = [0u8; 64];
    let (n, from) = tokio::time::timeout(WAIT, r.server_udp.recv_from(&mut buf))
        .await
        .expect("in time")
        .expect("recv");
    let nonce = check::parse_request(&buf[..n]).expect("a check request over UDP");
    assert!(
        r.at_server.try_recv().is_err(),
        "the check went into the tunnel"
    );
    let seen: SocketAddr = "203.0.113.5:4000".parse().expect("addr");
    let answer = check::answer(nonce, seen);

    // Through the tunnel: not an answer to the question "does UDP work".
    r.server_end.send(&answer);
    r.server_end.send(b"\x40after");
    assert_eq!(recv_one(&r.sock).await.1, b"\x40after".to_vec());
    assert!(answered.try_recv().is_err(), "a tunnel answer was taken");

    // Over UDP: taken, never handed to quinn.
    let sock = r.sock.clone();
    let receiver = tokio::spawn(async move { recv_one(&sock).await });
    r.server_udp.send_to(&answer, from).await.expect("send");
    let got = tokio::time::timeout(WAIT, answered).await.expect("in time");
    assert_eq!(got.expect("answered").0, seen);
    assert!(!receiver.is_finished(), "the answer reached quinn");
    receiver.abort();
}

#[tokio::test]
async fn a_dual_stack_socket_matches_the_server_in_mapped_form() {
    let Some(mut r) = rig("[::]:0").await else {
        return; // no IPv6 here
    };
    let mapped = SocketAddr::new(
        match r.server.ip() {
            std::net::IpAddr::V4(v4) => v4.to_ipv6_mapped().into(),
            ip => ip,
        },
        r.server.port(),
    );
    r.sock
        .try_send(&transmit(mapped, b"\x40mapped", None))
        .expect("sent");
    assert_eq!(&next(&mut r.at_server).await[..], b"\x40mapped");
    r.server_end.send(b"\x40back");
    assert_eq!(recv_one(&r.sock).await, (mapped, b"\x40back".to_vec()));
}

#[tokio::test]
async fn a_dead_tunnel_left_installed_takes_nothing_udp_goes_out() {
    let r = rig("127.0.0.1:0").await.expect("rig");
    // The server's end goes (the server was stopped) before any link
    // removed the tunnel.
    r.server_end.close();
    tokio::time::timeout(WAIT, async {
        while r.sock.tunnel.live(r.server).is_some() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the peer's end notices");
    r.sock
        .try_send(&transmit(r.server, b"\x40udp first", None))
        .expect("sent");
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(WAIT, r.server_udp.recv(&mut buf))
        .await
        .expect("over UDP in time")
        .expect("recv");
    assert_eq!(&buf[..n], b"\x40udp first");
}
