//! Flood protection: one source hammering the server is slowed or refused
//! with a clear `rate_limited` error while everyone else is served; a
//! connection cannot open streams without end; memory stays bounded.
//! Sources are told apart by their 127.0.0.0/8 address.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::framing::{read_frame, write_frame, MAX_FRAME};
use common::{ErrorKind, Identity, Message};
use peer::{CallOptions, Policy};
use tests::inproc::{listening, within, RawClient, Serve, TestServer};

const T: Duration = Duration::from_secs(15);

fn from(ip: &str) -> SocketAddr {
    format!("{ip}:0").parse().unwrap()
}

async fn raw_from(server: &TestServer, ip: &str) -> RawClient {
    let id = Arc::new(Identity::generate().unwrap());
    RawClient::connect_from(server, id, None, from(ip)).await
}

/// The well-behaved world goes on: alice registered, bob looks her up and
/// calls her with data that echoes back.
async fn others_are_served(server: &TestServer, alice: &str) {
    let bob = server.peer(&format!("bob-{alice}")).await;
    let info = within(T, "lookup", bob.peer.lookup(alice))
        .await
        .expect("lookup while flooded");
    assert!(info.online);
    let call = within(T, "call", bob.peer.call(alice, CallOptions::default()))
        .await
        .expect("call while flooded");
    let (send, recv) = call.open(&common::PeerMessage::Pipe).await.unwrap();
    let mut out = vec![];
    peer::app::pipe(send, recv, &b"still here"[..], &mut out)
        .await
        .unwrap();
    assert_eq!(out, b"still here");
}

#[tokio::test]
async fn a_lookup_flood_is_rate_limited_and_others_are_served() {
    let server = TestServer::start().await;
    let (_alice, _t) = listening(&server, "alice", Policy::AcceptAll, Serve::Echo).await;
    let flooder = raw_from(&server, "127.0.0.2").await;
    let (mut answered, mut limited) = (0, 0);
    // Default lookup rate: burst 200, 100/s. 600 as fast as we can.
    for _ in 0..600 {
        match flooder
            .request(&Message::Lookup {
                name: "alice".into(),
            })
            .await
        {
            Message::LookupResult { .. } => answered += 1,
            Message::Error {
                kind: ErrorKind::RateLimited,
                message,
            } => {
                assert!(
                    message.contains("slow down") || message.contains("rate"),
                    "{message}"
                );
                limited += 1;
            }
            other => panic!("unexpected answer {other:?}"),
        }
    }
    assert!(limited > 0, "600 lookups at once must be limited");
    assert!(answered >= 200, "the burst is served: {answered}");
    others_are_served(&server, "alice").await;
}

#[tokio::test]
async fn a_registration_flood_is_rate_limited_and_others_are_served() {
    let server = TestServer::start().await;
    let (_alice, _t) = listening(&server, "alice", Policy::AcceptAll, Serve::Echo).await;
    let mut limited = 0;
    let mut clients = vec![];
    // Default register rate: burst 20, 5/s. 60 new keys from one source,
    // each on its own connection (one registration per connection).
    for i in 0..60 {
        let flooder = raw_from(&server, "127.0.0.3").await;
        let answer = flooder
            .request(&Message::Register {
                name: format!("spam-{i}"),
                presence: false,
            })
            .await;
        match answer {
            Message::Registered { .. } => {}
            Message::Error {
                kind: ErrorKind::RateLimited,
                ..
            } => limited += 1,
            other => panic!("unexpected answer {other:?}"),
        }
        clients.push(flooder);
    }
    assert!(
        limited >= 30,
        "60 registrations at once are limited: {limited}"
    );
    others_are_served(&server, "alice").await;
    // And a newcomer from another source can still register.
    let newcomer = raw_from(&server, "127.0.0.4").await;
    let answer = newcomer
        .request(&Message::Register {
            name: "newcomer".into(),
            presence: false,
        })
        .await;
    assert!(matches!(answer, Message::Registered { .. }), "{answer:?}");
}

#[tokio::test]
async fn a_connection_cannot_open_streams_without_end() {
    let server = TestServer::start().await;
    let (_alice, _t) = listening(&server, "alice", Policy::AcceptAll, Serve::Echo).await;
    let greedy = raw_from(&server, "127.0.0.5").await;
    let limit = rendezvous::Limits::default().max_streams_per_connection;
    let mut held = vec![];
    for _ in 0..limit {
        let (mut send, recv) = within(T, "open", greedy.conn.open_bi()).await.unwrap();
        // Half a frame, then silence: the server waits for the rest.
        send.write_all(&[0, 0, 0]).await.unwrap();
        held.push((send, recv));
    }
    // One more is not granted while those are open.
    let more = tokio::time::timeout(Duration::from_millis(1500), greedy.conn.open_bi()).await;
    assert!(more.is_err(), "stream {} was granted", limit + 1);
    others_are_served(&server, "alice").await;
    // The server gives up on the silent streams (request timeout, 10 s) and
    // says why; then the connection may open new ones.
    let (_send, mut recv) = held.pop().unwrap();
    let answer = within(Duration::from_secs(20), "timeout answer", async {
        read_frame(&mut recv, MAX_FRAME).await
    })
    .await;
    assert!(
        matches!(answer, Ok(Message::Error { .. }) | Err(_)),
        "{answer:?}"
    );
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn memory_stays_bounded_under_a_flood_from_many_sources() {
    let server = TestServer::start().await;
    let (_alice, _t) = listening(&server, "alice", Policy::AcceptAll, Serve::Echo).await;
    // Warm up allocations, then measure.
    let warm = raw_from(&server, "127.0.1.1").await;
    for _ in 0..50 {
        warm.request(&Message::Lookup {
            name: "alice".into(),
        })
        .await;
    }
    let before = rss_kib();
    // 40 sources × 8 concurrent streams × 40 requests, some oversized.
    let mut tasks = tokio::task::JoinSet::new();
    for s in 0..40u8 {
        let client = raw_from(&server, &format!("127.0.2.{}", s + 1)).await;
        let client = Arc::new(client);
        for _ in 0..8 {
            let client = client.clone();
            tasks.spawn(async move {
                for i in 0..40 {
                    let Ok((mut send, mut recv)) = client.conn.open_bi().await else {
                        return;
                    };
                    if i % 5 == 0 {
                        // An oversized length prefix: refused before buffering.
                        let _ = send.write_all(&(MAX_FRAME as u32 * 16).to_be_bytes()).await;
                    } else {
                        let msg = Message::Lookup {
                            name: format!("n{i}"),
                        };
                        let _ = write_frame(&mut send, &msg, MAX_FRAME).await;
                    }
                    let _ = send.finish();
                    let _ = tokio::time::timeout(T, read_frame::<Message, _>(&mut recv, MAX_FRAME))
                        .await;
                }
            });
        }
    }
    within(Duration::from_secs(120), "flood", async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    let grown_mib = rss_kib().saturating_sub(before) / 1024;
    assert!(grown_mib < 64, "RSS grew {grown_mib} MiB under the flood");
    others_are_served(&server, "alice").await;
}
