//! The server's TCP side (peers on networks without UDP), with the test's
//! own tunnel client: a peer registers and is told its real address; bad
//! input on TCP — a TLS handshake never finished, a giant frame length, a
//! client that stops reading, too many connections from one IP — is cut
//! off within its limit while a well-behaved tunnel peer carries on.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use common::Message;
use futures_util::SinkExt;
use tests::inproc::{within, RawClient, TestServer};
use tests::relay_tap::{metric, wait_metric};
use tests::tunnel_client::{initials, open_raw, tcp, tcp_addr};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message as WsMessage;

const T: Duration = Duration::from_secs(10);

async fn server() -> TestServer {
    TestServer::start_tuned(|c| {
        let tcp = c.tcp.as_mut().expect("TCP on by default");
        tcp.handshake_timeout = Duration::from_secs(1);
        tcp.max_per_ip = 4;
        tcp.pump.write_stall = Duration::from_secs(1);
    })
    .await
}

/// A peer over TCP that registers `name` and can still look itself up.
async fn good_peer(server: &TestServer, name: &str) -> RawClient {
    let (client, _socket) = RawClient::connect_over_tcp(server).await;
    let reply = client
        .request(&Message::Register {
            name: name.into(),
            presence: true,
        })
        .await;
    assert!(matches!(reply, Message::Registered { .. }), "{reply:?}");
    client
}

async fn still_answers(client: &RawClient, name: &str) {
    let reply = within(
        T,
        "lookup",
        client.request(&Message::Lookup { name: name.into() }),
    )
    .await;
    assert!(matches!(reply, Message::LookupResult { .. }), "{reply:?}");
}

/// Reads until the server closes the connection; panics if it stays open.
async fn closed_within(stream: &mut (impl AsyncReadExt + Unpin), limit: Duration, what: &str) {
    let mut buf = [0u8; 4096];
    let closed = tokio::time::timeout(limit, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "{what}: the server kept the connection open past {limit:?}"
    );
}

#[tokio::test]
async fn a_tcp_peer_registers_and_is_told_its_real_address() {
    let server = server().await;
    assert_eq!(
        server.tcp_addr.map(|a| a.port()),
        Some(server.addr.port()),
        "same port number"
    );
    let (client, _socket) = RawClient::connect_over_tcp(&server).await;
    let reply = client
        .request(&Message::Register {
            name: "tcp-alice".into(),
            presence: true,
        })
        .await;
    let Message::Registered { observed_addr, .. } = reply else {
        panic!("{reply:?}");
    };
    assert!(
        observed_addr.ip().is_loopback(),
        "{observed_addr}: the real TCP source, not a virtual address"
    );
    assert_eq!(metric(&server, "rendezvous_tcp_peers"), 1);
    assert!(metric(&server, "rendezvous_tcp_bytes_received_total") > 1000);
    assert!(metric(&server, "rendezvous_tcp_bytes_sent_total") > 1000);
}

#[tokio::test]
async fn a_tls_handshake_never_finished_is_cut_at_its_timeout() {
    let server = server().await;
    let good = good_peer(&server, "tcp-bob").await;
    let mut silent = tcp(tcp_addr(&server), None).await;
    let mut half = tcp(tcp_addr(&server), None).await;
    half.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .await
        .expect("write");
    closed_within(&mut silent, Duration::from_secs(3), "silent client").await;
    closed_within(&mut half, Duration::from_secs(3), "half a ClientHello").await;
    wait_metric(&server, "rendezvous_tcp_handshakes_failed_total", 2).await;
    still_answers(&good, "tcp-bob").await;
}

#[tokio::test]
async fn a_giant_frame_length_is_refused_from_its_header() {
    let server = server().await;
    let good = good_peer(&server, "tcp-carol").await;
    let mut ws = open_raw(tcp_addr(&server), server.fingerprint, None)
        .await
        .expect("tunnel");
    // A masked binary frame claiming 2^40 bytes, then a little of it.
    let mut header = vec![0x82, 0xFF];
    header.extend_from_slice(&(1u64 << 40).to_be_bytes());
    header.extend_from_slice(&[1, 2, 3, 4]);
    header.extend_from_slice(&[0u8; 512]);
    let raw = ws.get_mut();
    raw.write_all(&header).await.expect("write");
    raw.flush().await.expect("flush");
    closed_within(raw, Duration::from_secs(3), "giant frame").await;
    wait_metric(
        &server,
        "rendezvous_tcp_closed_total{reason=\"protocol\"}",
        1,
    )
    .await;
    still_answers(&good, "tcp-carol").await;
}

#[tokio::test]
async fn a_client_that_stops_reading_is_cut_at_the_write_stall() {
    let server = server().await;
    let good = good_peer(&server, "tcp-dave").await;
    // A tiny receive window that this client never drains, and a flood of
    // Initials, each of which the server answers.
    let mut ws = open_raw(tcp_addr(&server), server.fingerprint, Some(2048))
        .await
        .expect("tunnel");
    let flood = initials(server.fingerprint, 3000);
    let sent = tokio::time::timeout(T, async {
        for initial in flood {
            if ws.feed(WsMessage::Binary(initial.into())).await.is_err() {
                break;
            }
        }
        let _ = ws.flush().await;
    })
    .await;
    assert!(sent.is_ok(), "the server stopped reading us");
    wait_metric(
        &server,
        "rendezvous_tcp_closed_total{reason=\"write_stall\"}",
        1,
    )
    .await;
    still_answers(&good, "tcp-dave").await;
}

#[tokio::test]
async fn tcp_connections_past_the_per_ip_cap_are_refused() {
    let server = server().await;
    let good = good_peer(&server, "tcp-erin").await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(
            open_raw(tcp_addr(&server), server.fingerprint, None)
                .await
                .expect("under the cap"),
        );
    }
    let mut refused = tcp(tcp_addr(&server), None).await;
    closed_within(
        &mut refused,
        Duration::from_secs(2),
        "fifth connection from one IP",
    )
    .await;
    assert_eq!(metric(&server, "rendezvous_tcp_refused_total"), 1);
    still_answers(&good, "tcp-erin").await;
    drop(held);
}

#[tokio::test]
async fn udp_checks_are_answered_and_short_ones_are_not() {
    let server = server().await;
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let nonce = [9u8; 16];
    socket
        .send_to(&common::tunnel::check::request(nonce), server.addr)
        .await
        .expect("send");
    let mut buf = [0u8; 64];
    let (n, _) = within(T, "check answer", socket.recv_from(&mut buf))
        .await
        .expect("recv");
    let (got, seen) = common::tunnel::check::parse_answer(&buf[..n]).expect("an answer");
    assert_eq!(got, nonce);
    assert_eq!(seen, socket.local_addr().expect("addr"));
    // A short check gets nothing (no amplification): the next answer is
    // the one for the well-formed check after it.
    socket
        .send_to(&[common::tunnel::check::REQUEST; 8], server.addr)
        .await
        .expect("send");
    socket
        .send_to(&common::tunnel::check::request([1; 16]), server.addr)
        .await
        .expect("send");
    let (n, _) = within(T, "check answer", socket.recv_from(&mut buf))
        .await
        .expect("recv");
    assert_eq!(
        common::tunnel::check::parse_answer(&buf[..n]).map(|a| a.0),
        Some([1; 16])
    );
}

#[tokio::test]
async fn a_tcp_peer_counts_under_its_real_ip_for_per_source_limits() {
    let server = TestServer::start_tuned(|c| {
        c.limits.register_rate = rendezvous::Rate {
            burst: 1,
            per_second: 0.001,
        };
    })
    .await;
    // One registration from 127.0.0.1 over UDP spends the address's bucket…
    let udp = RawClient::connect(&server).await;
    let reply = udp
        .request(&Message::Register {
            name: "udp-first".into(),
            presence: true,
        })
        .await;
    assert!(matches!(reply, Message::Registered { .. }), "{reply:?}");
    // …so a TCP peer from the same address is refused: its virtual address
    // is not a fresh source.
    let (tcp, _socket) = RawClient::connect_over_tcp(&server).await;
    let reply = tcp
        .request(&Message::Register {
            name: "tcp-second".into(),
            presence: true,
        })
        .await;
    assert!(
        matches!(
            &reply,
            Message::Error {
                kind: common::ErrorKind::RateLimited,
                ..
            }
        ),
        "{reply:?}"
    );
}
