//! A few real addresses stalling their handshakes cannot lock everyone out
//! of new connections, and a crowd behind one address (a carrier NAT) still
//! gets all its connections through, only a little later.
//!
//! A stalling source is a real QUIC client behind [`StallProxy`]: the proxy
//! passes the client's Initial packets (so it answers the server's Retry
//! and proves its address) but never its Handshake packets, so the server
//! waits for each handshake until its timeout. Sources are told apart by
//! their 127.0.0.0/8 address.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Identity, Message};
use quinn::crypto::rustls::QuicClientConfig;
use tests::inproc::{within, RawClient, TestServer};
use tests::stall::is_initial_only;
use tokio::net::UdpSocket;

/// Handshakes each stalling source attempts (the old per-source connection cap).
const ATTEMPTS: usize = 64;

/// A UDP relay between one QUIC client and the server that drops every
/// client datagram but lone Initials: the client's handshakes stall.
struct StallProxy {
    /// Where the client connects to.
    addr: SocketAddr,
    /// Client datagrams passed on so far.
    passed: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl StallProxy {
    /// A proxy that reaches `server` from `source`.
    async fn start(server: SocketAddr, source: &str) -> Self {
        let front = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let back = UdpSocket::bind(format!("{source}:0")).await.unwrap();
        let addr = front.local_addr().unwrap();
        let passed = Arc::new(AtomicUsize::new(0));
        let counter = passed.clone();
        let task = tokio::spawn(async move {
            let (mut up, mut down) = (vec![0u8; 2048], vec![0u8; 2048]);
            let mut client = None;
            loop {
                tokio::select! {
                    Ok((n, from)) = front.recv_from(&mut up) => {
                        client = Some(from);
                        if is_initial_only(&up[..n]) {
                            counter.fetch_add(1, Ordering::SeqCst);
                            let _ = back.send_to(&up[..n], server).await;
                        }
                    }
                    Ok((n, _)) = back.recv_from(&mut down) => {
                        if let Some(client) = client {
                            let _ = front.send_to(&down[..n], client).await;
                        }
                    }
                }
            }
        });
        Self { addr, passed, task }
    }
}

impl Drop for StallProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `n` handshakes at once from one client endpoint to `to` (a proxy).
fn attempt_handshakes(
    endpoint: &quinn::Endpoint,
    server: &TestServer,
    to: SocketAddr,
    n: usize,
    tasks: &mut tokio::task::JoinSet<()>,
) {
    for _ in 0..n {
        let id = Identity::generate().unwrap();
        let tls =
            common::tls::client_config(&id, server.fingerprint, common::tls::SERVER_ALPN).unwrap();
        let config = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls).unwrap()));
        let connecting = endpoint
            .connect_with(config, to, common::tls::SERVER_NAME)
            .unwrap();
        tasks.spawn(async move {
            let _ = connecting.await;
        });
    }
}

/// The value of an unlabelled metric in Prometheus text.
fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{name} not in {text}"))
}

/// Waits until the server has decided on `attempts` handshakes: each one
/// held (still pending) or dropped.
async fn every_attempt_decided(server: &TestServer, attempts: u64) {
    within(Duration::from_secs(20), "the stalling handshakes", async {
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        loop {
            tick.tick().await;
            let dropped = metric(
                &server.metrics().render(),
                "rendezvous_handshakes_dropped_total",
            );
            if dropped + server.metrics().tables().handshakes as u64 >= attempts {
                return;
            }
        }
    })
    .await;
}

#[tokio::test]
async fn eight_sources_stalling_handshakes_do_not_lock_out_a_ninth() {
    let server = TestServer::start().await;
    let client = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let mut stalled = tokio::task::JoinSet::new();
    let mut proxies = vec![];
    for s in 0..8 {
        let proxy = StallProxy::start(server.addr, &format!("127.0.5.{}", s + 1)).await;
        attempt_handshakes(&client, &server, proxy.addr, ATTEMPTS, &mut stalled);
        proxies.push(proxy);
    }
    // The flood is at its peak once the server has decided on every
    // attempt with a proven address (each source's first, then each answer
    // to a Retry): accepted (still pending) or dropped. Retries do not
    // count: a client retransmitting its first Initial is asked again.
    let attempts = (8 * ATTEMPTS) as u64;
    every_attempt_decided(&server, attempts).await;
    for p in &proxies {
        assert!(p.passed.load(Ordering::SeqCst) >= 2 * ATTEMPTS - 1);
    }
    let held = server.metrics().tables().handshakes;
    let start = Instant::now();
    let registered = tokio::time::timeout(Duration::from_secs(2), async {
        let id = Arc::new(Identity::generate().unwrap());
        let ninth =
            RawClient::connect_from(&server, id, None, "127.0.5.9:0".parse().unwrap()).await;
        ninth
            .request(&Message::Register {
                name: "ninth".into(),
                presence: false,
            })
            .await
    })
    .await;
    assert!(
        matches!(registered, Ok(Message::Registered { .. })),
        "a ninth source could not register within 2 s while 8 sources held {held} \
         handshakes: {registered:?} after {:?}",
        start.elapsed()
    );
    let limits = rendezvous::Limits::default();
    assert!(
        held <= limits.retry_above_pending + 8 * limits.max_pending_handshakes_per_source,
        "8 stalling sources hold {held} handshakes"
    );
    stalled.abort_all();
}

/// Review of issue 9: below the busy mark too, one source holds at most
/// its standing share of the queue (16), so four stalling hosts cannot
/// keep it at the busy mark (where every newcomer pays a Retry).
#[tokio::test]
async fn one_source_stalling_below_the_busy_mark_holds_at_most_its_share() {
    let server = TestServer::start().await;
    let limits = rendezvous::Limits::default();
    let share = limits.max_pending_handshakes_per_source_idle;
    assert!(ATTEMPTS > share && ATTEMPTS < limits.retry_above_pending);
    let client = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let mut stalled = tokio::task::JoinSet::new();
    let proxy = StallProxy::start(server.addr, "127.0.6.1").await;
    attempt_handshakes(&client, &server, proxy.addr, ATTEMPTS, &mut stalled);
    // Every attempt decided (held or dropped) once its proven Initial came.
    let attempts = ATTEMPTS as u64;
    every_attempt_decided(&server, attempts).await;
    let held = server.metrics().tables().handshakes;
    assert!(
        held <= share,
        "one source holds {held} handshakes below the busy mark"
    );
    stalled.abort_all();
}

#[tokio::test]
async fn twelve_connections_at_once_from_one_address_all_get_through() {
    twelve_from_one_address(&TestServer::start().await).await;
}

/// Also while the queue is busy, when each source is held to its few
/// handshakes: the others are dropped and come back on retransmission.
#[tokio::test]
async fn twelve_at_once_from_one_address_get_through_a_busy_queue_too() {
    let dir = tempfile::tempdir().unwrap();
    let addr = "127.0.0.1:0".parse().unwrap();
    let server = TestServer::start_with(dir.path().to_owned(), addr, |l| {
        l.retry_above_pending = 0;
    })
    .await;
    twelve_from_one_address(&server).await;
    let dropped = metric(
        &server.metrics().render(),
        "rendezvous_handshakes_dropped_total",
    );
    assert!(dropped > 0, "the per-source cap was not reached");
}

async fn twelve_from_one_address(server: &TestServer) {
    let results = within(Duration::from_secs(20), "twelve registrations", async {
        let mut set = tokio::task::JoinSet::new();
        for i in 0..12 {
            let (addr, fingerprint) = (server.addr, server.fingerprint);
            set.spawn(async move {
                // Each its own endpoint (port) on one address: users behind
                // one carrier NAT.
                let local: SocketAddr = "127.0.5.20:0".parse().unwrap();
                let endpoint = quinn::Endpoint::client(local).unwrap();
                let id = Identity::generate().unwrap();
                let tls =
                    common::tls::client_config(&id, fingerprint, common::tls::SERVER_ALPN).unwrap();
                let config =
                    quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls).unwrap()));
                let conn = endpoint
                    .connect_with(config, addr, common::tls::SERVER_NAME)
                    .unwrap()
                    .await
                    .map_err(|e| format!("connection {i}: {e}"))?;
                let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
                let register = Message::Register {
                    name: format!("nat-user-{i}"),
                    presence: false,
                };
                common::framing::write_frame(&mut send, &register, 4096)
                    .await
                    .map_err(|e| e.to_string())?;
                let _ = send.finish();
                let answer: Message = common::framing::read_frame(&mut recv, 65536)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok::<_, String>((answer, endpoint, conn))
            });
        }
        let mut out = vec![];
        while let Some(done) = set.join_next().await {
            out.push(done.unwrap());
        }
        out
    })
    .await;
    for r in &results {
        assert!(
            matches!(r, Ok((Message::Registered { .. }, _, _))),
            "{:?}",
            r.as_ref().map(|(m, _, _)| m)
        );
    }
    let text = server.metrics().render();
    assert!(
        text.contains("rendezvous_connections_refused_total 0"),
        "{text}"
    );
}
