//! What one connection or one key can make the server hold: names (one per
//! connection, a few per key, nothing bound by a refused registration),
//! request buffers (small requests only, buffered as their bytes arrive)
//! and tasks (a reply nobody takes is given up). Sources are told apart by
//! their 127.0.0.0/8 address.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::framing::{read_frame, write_frame, MAX_FRAME};
use common::{ErrorKind, Identity, Message};
use quinn::crypto::rustls::QuicClientConfig;
use tests::inproc::{within, RawClient, TestServer};

const T: Duration = Duration::from_secs(15);

fn from(ip: &str) -> SocketAddr {
    format!("{ip}:0").parse().unwrap()
}

async fn raw_as(server: &TestServer, id: &Arc<Identity>, ip: &str) -> RawClient {
    RawClient::connect_from(server, id.clone(), None, from(ip)).await
}

fn register(name: &str) -> Message {
    Message::Register {
        name: name.into(),
        presence: false,
    }
}

#[tokio::test]
async fn a_second_name_on_one_connection_binds_nothing() {
    let server = TestServer::start().await;
    let first = raw_as(
        &server,
        &Arc::new(Identity::generate().unwrap()),
        "127.0.6.1",
    )
    .await;
    let answer = first.request(&register("first")).await;
    assert!(matches!(answer, Message::Registered { .. }), "{answer:?}");
    let answer = first.request(&register("second")).await;
    assert!(
        matches!(
            answer,
            Message::Error {
                kind: ErrorKind::Protocol,
                ..
            }
        ),
        "{answer:?}"
    );
    // The refused name is still free for anyone.
    let other = raw_as(
        &server,
        &Arc::new(Identity::generate().unwrap()),
        "127.0.6.2",
    )
    .await;
    let answer = other.request(&register("second")).await;
    assert!(
        matches!(answer, Message::Registered { .. }),
        "a refused registration bound its name: {answer:?}"
    );
}

#[tokio::test]
async fn a_key_holds_at_most_four_names() {
    let server = TestServer::start().await;
    let id = Arc::new(Identity::generate().unwrap());
    for i in 0..4 {
        let c = raw_as(&server, &id, "127.0.6.3").await;
        let answer = c.request(&register(&format!("mine-{i}"))).await;
        assert!(
            matches!(answer, Message::Registered { .. }),
            "{i}: {answer:?}"
        );
    }
    let fifth = raw_as(&server, &id, "127.0.6.3").await;
    match fifth.request(&register("mine-4")).await {
        Message::Error {
            kind: ErrorKind::TooManyNames,
            message,
        } => assert!(message.contains('4'), "{message}"),
        other => panic!("a fifth name: {other:?}"),
    }
    assert_eq!(ErrorKind::TooManyNames.as_str(), "too_many_names");
    // Its own names still register, and the fifth is free for another key.
    let answer = fifth.request(&register("mine-2")).await;
    assert!(matches!(answer, Message::Registered { .. }), "{answer:?}");
    let other = raw_as(
        &server,
        &Arc::new(Identity::generate().unwrap()),
        "127.0.6.4",
    )
    .await;
    let answer = other.request(&register("mine-4")).await;
    assert!(matches!(answer, Message::Registered { .. }), "{answer:?}");
}

#[tokio::test]
async fn a_request_over_the_request_limit_is_refused_at_its_header() {
    let server = TestServer::start().await;
    let c = raw_as(
        &server,
        &Arc::new(Identity::generate().unwrap()),
        "127.0.6.5",
    )
    .await;
    let limit = rendezvous::Limits::default().max_request_frame;
    let (mut send, mut recv) = c.conn.open_bi().await.unwrap();
    let header = u32::try_from(limit + 1).unwrap().to_be_bytes();
    send.write_all(&header).await.unwrap();
    // No body, no finish: the header alone is refused, at once.
    let answer = within(
        Duration::from_secs(5),
        "refusal",
        read_frame(&mut recv, MAX_FRAME),
    )
    .await
    .unwrap();
    match answer {
        Message::Error {
            kind: ErrorKind::Protocol,
            message,
        } => assert!(message.contains("over the limit"), "{message}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_reply_the_peer_grants_no_credit_for_is_given_up() {
    let server = TestServer::start().await;
    let endpoint = quinn::Endpoint::client(from("127.0.6.6")).unwrap();
    let id = Identity::generate().unwrap();
    let tls =
        common::tls::client_config(&id, server.fingerprint, common::tls::SERVER_ALPN).unwrap();
    let mut config = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls).unwrap()));
    let mut transport = quinn::TransportConfig::default();
    transport.stream_receive_window(0u32.into());
    config.transport_config(Arc::new(transport));
    let conn = within(
        T,
        "connect",
        endpoint
            .connect_with(config, server.addr, common::tls::SERVER_NAME)
            .unwrap(),
    )
    .await
    .unwrap();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let lookup = Message::Lookup {
        name: "nobody".into(),
    };
    write_frame(&mut send, &lookup, MAX_FRAME).await.unwrap();
    send.finish().unwrap();
    // The answer cannot be sent; the server resets the stream after its
    // reply timeout instead of waiting for credit forever.
    let mut buf = [0u8; 64];
    let read = within(
        Duration::from_secs(12),
        "the stream's end",
        recv.read(&mut buf),
    )
    .await;
    assert!(matches!(read, Err(quinn::ReadError::Reset(_))), "{read:?}");
}

/// A `/proc/self/status` figure, in KiB.
fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// 200 connections each announce 7 frames of the largest size the server
/// takes and send none of the bodies (the 8th stream, a lookup, shows the
/// server has read them). Buffers grow with the bytes that arrive, so the
/// server holds almost nothing; buffering each announced length at once
/// would hold 1,400 × 64 KiB ≈ 88 MiB.
///
/// Measured as the process's allocated memory (`VmData`), and RSS: zeroed
/// buffers on fresh pages are not resident until written (so RSS alone
/// barely moves on a young heap: +15 MiB against +93 MiB allocated, measured
/// on the old code), but they are the server's to hold, and a heap that
/// reuses freed memory zeroes — touches — all of it.
#[tokio::test]
async fn announced_frames_that_never_come_cost_little_memory() {
    let dir = tempfile::tempdir().unwrap();
    let server =
        TestServer::start_with(dir.path().to_owned(), "127.0.0.1:0".parse().unwrap(), |l| {
            // The largest announced length the server accepts at all.
            l.max_request_frame = MAX_FRAME;
        })
        .await;
    let mut clients = vec![];
    for s in 0..200u32 {
        let ip = format!("127.0.7.{}", s + 1);
        clients.push(raw_as(&server, &Arc::new(Identity::generate().unwrap()), &ip).await);
    }
    let (data, rss) = (status_kib("VmData"), status_kib("VmRSS"));
    let mut held = vec![];
    for c in &clients {
        for _ in 0..7 {
            let (mut send, recv) = within(T, "open", c.conn.open_bi()).await.unwrap();
            send.write_all(&u32::try_from(MAX_FRAME).unwrap().to_be_bytes())
                .await
                .unwrap();
            held.push((send, recv));
        }
    }
    within(
        Duration::from_secs(60),
        "a lookup on every connection",
        async {
            for c in &clients {
                let answer = c
                    .request(&Message::Lookup {
                        name: "nobody".into(),
                    })
                    .await;
                assert!(matches!(answer, Message::Error { .. }), "{answer:?}");
            }
        },
    )
    .await;
    let data_mib = status_kib("VmData").saturating_sub(data) / 1024;
    let rss_mib = status_kib("VmRSS").saturating_sub(rss) / 1024;
    assert!(
        data_mib < 40 && rss_mib < 40,
        "memory grew {data_mib} MiB (RSS {rss_mib} MiB) for 1,400 announced frames without bodies"
    );
    drop(held);
}
