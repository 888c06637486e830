//! A listener under a flood of connection attempts while it expects a call:
//! strangers stalling their handshakes (spoofed sources: only their first
//! flight ever arrives) and an accepted caller opening connections that
//! never open a stream cannot keep another expected caller out; and an
//! accepted caller's connections past what one call needs are refused.
//!
//! A stalling stranger is a real QUIC client behind [`FirstFlightProxy`],
//! which passes only the client's first Initials (no token): the listener's
//! answer, and so a Retry, never reaches the client, as for a spoofed source.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{Identity, Message};
use peer::{CallOptions, Policy};
use tests::inproc::{listening, within, RawClient, Serve, TestPeer, TestServer};
use tokio::net::UdpSocket;

const T: Duration = Duration::from_secs(15);

/// Whether `d` starts with a QUIC v1 Initial packet without a token: a
/// client's first flight (its answer to a Retry carries the token).
fn is_first_flight(d: &[u8]) -> bool {
    let parse = || -> Option<bool> {
        let first = *d.first()?;
        if first & 0x80 == 0 || first & 0x30 != 0 {
            return Some(false);
        }
        let mut pos = 5; // first byte + version
        for _ in 0..2 {
            pos += 1 + usize::from(*d.get(pos)?);
        }
        Some(*d.get(pos)? == 0) // token length (a varint; 0 is one byte)
    };
    parse().unwrap_or(false)
}

/// Passes a client's first-flight datagrams to `target` and nothing else,
/// in neither direction: the client's handshakes stall at the listener.
struct FirstFlightProxy {
    addr: SocketAddr,
    passed: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl FirstFlightProxy {
    async fn start(target: SocketAddr) -> Self {
        let front = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let back = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = front.local_addr().unwrap();
        let passed = Arc::new(AtomicUsize::new(0));
        let counter = passed.clone();
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 2048];
            while let Ok((n, _)) = front.recv_from(&mut buf).await {
                if is_first_flight(&buf[..n]) {
                    let _ = back.send_to(&buf[..n], target).await;
                    counter.fetch_add(1, Ordering::SeqCst);
                }
            }
        });
        Self { addr, passed, task }
    }
}

impl Drop for FirstFlightProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A raw client registered as `name` that calls `to` and gets accepted:
/// the callee now expects a connection with its key, from the raw
/// client's own address or any of `candidates` (both on loopback, so the
/// server forwards them).
async fn accepted_caller(
    server: &TestServer,
    name: &str,
    to: &str,
    candidates: Vec<SocketAddr>,
) -> RawClient {
    let caller = RawClient::connect(server).await;
    let reply = caller
        .request(&Message::Register {
            name: name.into(),
            presence: false,
        })
        .await;
    assert!(matches!(reply, Message::Registered { .. }), "{reply:?}");
    let answer = caller
        .request(&Message::Call {
            to: to.into(),
            candidates,
            hide_addresses: false,
        })
        .await;
    assert!(matches!(answer, Message::CallAccepted { .. }), "{answer:?}");
    caller
}

/// A peer connection to `to` with `id`'s key from `endpoint`.
async fn connect_as(
    endpoint: &quinn::Endpoint,
    id: &Identity,
    to: &TestPeer,
) -> Result<quinn::Connection, quinn::ConnectionError> {
    let addr = to.peer.local_addr().expect("addr");
    connecting(endpoint, id, to, addr).await
}

/// Like [`connect_as`], sending to `addr` (a proxy in front of `to`).
fn connecting(
    endpoint: &quinn::Endpoint,
    id: &Identity,
    to: &TestPeer,
    addr: SocketAddr,
) -> quinn::Connecting {
    endpoint
        .connect_with(
            tests::dial::client_config(id, to.peer.fingerprint()),
            addr,
            common::tls::SERVER_NAME,
        )
        .expect("connect")
}

/// Whether `conn` is a call: a ping on it is answered.
async fn answers_a_ping(conn: &quinn::Connection) -> bool {
    matches!(
        tokio::time::timeout(Duration::from_secs(3), tests::dial::ping(conn)).await,
        Ok(Ok(()))
    )
}

/// Issue 9 review, item 1: handshake slots are not held past the handshake,
/// and unproven sources are asked for a Retry once slots are scarce.
#[tokio::test]
async fn stalled_handshakes_and_idle_connections_do_not_lock_an_expected_caller_out() {
    let server = TestServer::start().await;
    let (alice, _serve) = listening(&server, "alice", Policy::AcceptAll, Serve::Echo).await;
    // Mallory's call is accepted, so alice lets handshakes in at all.
    let mallory = accepted_caller(&server, "mallory", "alice", vec![]).await;
    // Mallory's connections come from her own socket: the address the
    // server saw, so alice takes them as her call's.
    let client = mallory.endpoint.clone();
    // Nine authenticated connections of mallory's that never open a stream.
    let mut idle = Vec::new();
    for _ in 0..9 {
        idle.push(
            within(
                T,
                "mallory's connection",
                connect_as(&client, &mallory.identity, &alice),
            )
            .await
            .expect("mallory is expected"),
        );
    }
    // Twenty strangers whose handshakes stall (more than all the slots),
    // from an address that is no call's path: alice's socket drops their
    // Initials before quinn sees them, so they cannot hold a slot at all.
    let proxy = FirstFlightProxy::start(alice.peer.local_addr().unwrap()).await;
    let stranger = Identity::generate().unwrap();
    let mut stalled = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let attempt = connecting(&client, &stranger, &alice, proxy.addr);
        stalled.spawn(async move {
            let _ = attempt.await;
        });
    }
    within(T, "the strangers' first flights", async {
        while proxy.passed.load(Ordering::SeqCst) < 20 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    // Loopback delivers in order: alice has seen every first flight before
    // bob's. Bob's call must get through well before the stalls time out.
    let bob = server.peer("bob").await;
    let options = CallOptions {
        timeout: Duration::from_secs(4),
        ..CallOptions::default()
    };
    let call = bob
        .peer
        .call("alice", options)
        .await
        .expect("bob's call while strangers stall handshakes");
    let answered = peer::app::ping(
        &call,
        1,
        Duration::from_millis(10),
        Duration::from_secs(3),
        |_, _| {},
    )
    .await
    .expect("ping");
    assert_eq!(answered, 1);
    assert!(idle.iter().all(|c| c.close_reason().is_none()));
    stalled.abort_all();
}

/// Issue 9 review, item 1: one expected call holds at most 1 + 8
/// connections waiting for their first stream; the 10th is refused at once.
#[tokio::test]
async fn an_accepted_callers_tenth_unclaimed_connection_is_refused() {
    let server = TestServer::start().await;
    let (alice, _serve) = listening(&server, "alice", Policy::AcceptAll, Serve::Echo).await;
    let mallory = accepted_caller(&server, "mallory", "alice", vec![]).await;
    let client = mallory.endpoint.clone();
    let mut open = Vec::new();
    for _ in 0..9 {
        open.push(
            within(
                T,
                "a connection",
                connect_as(&client, &mallory.identity, &alice),
            )
            .await
            .expect("within what one call may dial"),
        );
    }
    // The handshake passes (the key is expected); then alice closes it.
    let tenth = within(
        T,
        "the tenth",
        connect_as(&client, &mallory.identity, &alice),
    )
    .await;
    let closed = match tenth {
        Ok(conn) => within(Duration::from_secs(5), "the tenth refused", conn.closed()).await,
        Err(e) => e,
    };
    match &closed {
        quinn::ConnectionError::ApplicationClosed(c) => {
            assert_eq!(c.error_code, common::error::close::PROTOCOL.into(), "{c:?}");
            assert!(
                String::from_utf8_lossy(&c.reason).contains("too many connections"),
                "{c:?}"
            );
        }
        other => panic!("the tenth was not refused by alice: {other:?}"),
    }
    assert!(open.iter().all(|c| c.close_reason().is_none()));
    // The first of them to open a stream is the call.
    assert!(
        answers_a_ping(&open[0]).await,
        "the call itself still works"
    );
}
