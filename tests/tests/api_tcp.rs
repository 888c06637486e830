//! Peers without UDP, in process on loopback: the peer's whole socket over
//! the server's TCP tunnel (issue 11).
//!
//! UDP is "blocked" by a gate: the peer is pointed at a UDP port that
//! swallows everything while the server's TCP side listens on the same
//! port number, so UDP gets no answer and TCP works, as on a network that
//! drops UDP. Opened, the gate forwards UDP to the server's real port
//! (as a NAT would, from its own address), and UDP works again. The NAT
//! lab (`lab_tcp`) runs the same stories with real routers.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use peer::path::PathMode;
use peer::{CallOptions, Event, Path, PeerConfig, Policy, TransportMode};
use tests::inproc::{echo_roundtrip, serve, within, Serve, TestPeer, TestServer};
use tests::relay_tap::{metric, wait_metric_eq};
use tokio::net::UdpSocket;

const T: Duration = Duration::from_secs(15);

/// The UDP gate in front of the server (see the module docs).
struct Gate {
    /// Where peers are pointed: UDP gated, TCP the server's.
    addr: SocketAddr,
    open: Arc<AtomicBool>,
    /// Datagrams forwarded toward the server.
    forwarded: Arc<AtomicU64>,
    _task: AbortOnDrop,
}

impl Gate {
    /// Forwards what `front` receives to `server_udp` while open.
    fn start(front: UdpSocket, back: UdpSocket, server_udp: SocketAddr) -> Self {
        let (front, back) = (Arc::new(front), Arc::new(back));
        let addr = front.local_addr().unwrap();
        let open = Arc::new(AtomicBool::new(false));
        let forwarded = Arc::new(AtomicU64::new(0));
        let client: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
        let (o, f, c) = (open.clone(), forwarded.clone(), client.clone());
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 2048];
            let mut back_buf = vec![0u8; 2048];
            loop {
                tokio::select! {
                    r = front.recv_from(&mut buf) => {
                        let Ok((n, from)) = r else { return };
                        if o.load(Ordering::SeqCst) {
                            *c.lock().unwrap() = Some(from);
                            f.fetch_add(1, Ordering::SeqCst);
                            let _ = back.send_to(&buf[..n], server_udp).await;
                        }
                    }
                    r = back.recv_from(&mut back_buf) => {
                        let Ok((n, _)) = r else { return };
                        let to = *c.lock().unwrap();
                        if let (true, Some(to)) = (o.load(Ordering::SeqCst), to) {
                            let _ = front.send_to(&back_buf[..n], to).await;
                        }
                    }
                }
            }
        });
        Self {
            addr,
            open,
            forwarded,
            _task: AbortOnDrop(task),
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);
impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A server whose TCP side listens on the gate's port number, and the gate.
async fn gated_server() -> (TestServer, Gate) {
    let front = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let back = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let tcp_at = front.local_addr().unwrap();
    let server = TestServer::start_tuned(move |c| {
        if let Some(tcp) = c.tcp.as_mut() {
            tcp.listen = Some(tcp_at);
        }
    })
    .await;
    assert_eq!(server.tcp_addr, Some(tcp_at));
    let gate = Gate::start(front, back, server.addr);
    (server, gate)
}

fn via_gate(gate: &Gate, transport: TransportMode) -> impl FnOnce(&mut PeerConfig) {
    let addr = gate.addr.to_string();
    move |c: &mut PeerConfig| {
        c.server = addr;
        c.transport = transport;
        c.listen_path = PathMode::Relay;
        c.timing.udp_retry_interval = Duration::from_millis(300);
    }
}

/// Starts `name` listening (echo) and returns it with its `registered`
/// event and how long registering took.
async fn listen_timed(
    server: &TestServer,
    name: &str,
    tune: impl FnOnce(&mut PeerConfig),
) -> (
    TestPeer,
    tokio::task::JoinHandle<Option<peer::Error>>,
    Event,
    Duration,
) {
    let mut p = server.peer_tuned(name, tune).await;
    let started = Instant::now();
    let listener = p.peer.listen(Policy::AcceptAll).expect("listen");
    let reg = p
        .wait_event(T, |e| matches!(e, Event::Registered { .. }))
        .await;
    let took = started.elapsed();
    (p, serve(listener, Serve::Echo), reg, took)
}

fn transport_of(e: &Event) -> &str {
    match e {
        Event::Registered { transport, .. } => transport,
        other => panic!("{other:?}"),
    }
}

fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

#[tokio::test]
async fn without_udp_a_peer_registers_over_tcp_within_3_s_and_takes_relayed_calls() {
    let (server, gate) = gated_server().await;
    let (alice, _serve, reg, took) =
        listen_timed(&server, "alice", via_gate(&gate, TransportMode::Auto)).await;
    assert_eq!(transport_of(&reg), "tcp", "{reg:?}");
    assert!(took < Duration::from_secs(3), "registered after {took:?}");
    assert!(
        took >= Duration::from_millis(900),
        "UDP was not given its second first: {took:?}"
    );
    assert_eq!(gate.forwarded.load(Ordering::SeqCst), 0);
    assert!(metric(&server, "rendezvous_tcp_peers") >= 1);

    // A UDP peer calls it: relayed over alice's tunnel, data intact.
    let bob = server.peer("bob").await;
    let call = within(T, "call", bob.peer.call("alice", CallOptions::default()))
        .await
        .expect("call");
    assert_eq!(call.path(), Path::Relay);
    let before = metric(&server, "rendezvous_tcp_bytes_sent_total");
    let data = payload(512 * 1024);
    let back = within(T, "echo", echo_roundtrip(&call, &data)).await;
    assert!(back == data, "{} bytes back, differing", back.len());
    let sent = metric(&server, "rendezvous_tcp_bytes_sent_total") - before;
    assert!(
        sent >= data.len() as u64,
        "the relay's bytes to alice went over TCP: {sent}"
    );

    // A TCP-only peer (forced) calls it too: no fallback wait.
    let mut carol = server
        .peer_tuned("carol", via_gate(&gate, TransportMode::Tcp))
        .await;
    let started = Instant::now();
    let call = within(T, "call", carol.peer.call("alice", CallOptions::default()))
        .await
        .expect("call from a TCP-only peer");
    let reg = carol
        .wait_event(T, |e| matches!(e, Event::Registered { .. }))
        .await;
    assert_eq!(transport_of(&reg), "tcp");
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(call.path(), Path::Relay);
    let back = within(T, "echo", echo_roundtrip(&call, &data)).await;
    assert!(back == data, "{} bytes back, differing", back.len());
    drop(alice);
}

#[tokio::test]
async fn when_udp_comes_back_the_link_moves_to_udp_and_the_call_goes_on() {
    let (server, gate) = gated_server().await;
    let (mut alice, _serve, reg, _) =
        listen_timed(&server, "alice", via_gate(&gate, TransportMode::Auto)).await;
    assert_eq!(transport_of(&reg), "tcp");
    let bob = server.peer("bob").await;
    let call = within(T, "call", bob.peer.call("alice", CallOptions::default()))
        .await
        .expect("call");
    let data = payload(64 * 1024);
    assert!(within(T, "echo", echo_roundtrip(&call, &data)).await == data);

    gate.open.store(true, Ordering::SeqCst);
    let moved = alice
        .wait_event(T, |e| matches!(e, Event::TransportChanged { .. }))
        .await;
    assert!(
        matches!(&moved, Event::TransportChanged { transport, .. } if transport == "udp"),
        "{moved:?}"
    );
    // The same call carries on, now over UDP through the relay.
    let before = gate.forwarded.load(Ordering::SeqCst);
    assert!(within(T, "echo after the move", echo_roundtrip(&call, &data)).await == data);
    let after = gate.forwarded.load(Ordering::SeqCst);
    assert!(
        after - before >= 40,
        "alice's relay frames over UDP: {}",
        after - before
    );
    // The link too: the tunnel is gone, and a new call's offer reaches
    // alice over her (migrated) server link.
    let call = within(
        T,
        "a call after the move",
        bob.peer.call("alice", CallOptions::default()),
    )
    .await
    .expect("call");
    assert!(within(T, "echo", echo_roundtrip(&call, &data)).await == data);
    within(T, "the tunnel closed at the server", async {
        while metric(&server, "rendezvous_tcp_peers") != 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    while let Ok(e) = alice.events.try_recv() {
        assert!(!matches!(e, Event::RendezvousLost { .. }), "{e:?}");
    }
}

#[tokio::test]
async fn a_link_on_tcp_the_peer_lets_go_of_is_closed() {
    let (server, gate) = gated_server().await;
    let bob = server
        .peer_tuned("bob", via_gate(&gate, TransportMode::Tcp))
        .await;
    // A lookup makes an unregistered one-shot link; a call needs a
    // registered one, so the first link is replaced and dropped.
    let looked = tokio::time::timeout(T, bob.peer.lookup("nobody"))
        .await
        .expect("lookup answered in time");
    assert!(
        matches!(
            &looked,
            Err(peer::Error::Server {
                kind: common::ErrorKind::NotFound,
                ..
            })
        ),
        "{looked:?}"
    );
    wait_metric_eq(&server, "rendezvous_connected_peers", 1, T).await;
    let (_alice, _serve, _, _) = listen_timed(&server, "alice", |_| {}).await;
    wait_metric_eq(&server, "rendezvous_connected_peers", 2, T).await;
    let call = within(T, "call", bob.peer.call("alice", CallOptions::default()))
        .await
        .expect("call");
    drop(call);
    // Alice's link and bob's registered one: the dropped link is gone
    // (its watcher does not keep it alive over its tunnel).
    wait_metric_eq(&server, "rendezvous_connected_peers", 2, T).await;
}
