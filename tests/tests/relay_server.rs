//! The relay inside a real in-process server: tickets at consent, frames
//! forwarded between the two parties' sockets (the ones their server
//! connections use), and everything else dropped and counted in /metrics.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use common::framing::{read_frame, write_frame, MAX_FRAME};
use common::relay_frame::{Party, MAX_DATAGRAM};
use common::{ErrorKind, Message, RelayTicket};
use rendezvous::relay::{ByteRate, RelayConfig};
use tests::inproc::{within, RawClient, TestServer};
use tests::relay_tap::{call, drops, frame, metric, register, wait_metric, T};

#[tokio::test]
async fn both_sides_get_their_own_ticket_and_frames_cross_unchanged() {
    let server = TestServer::start().await;
    let mut c = call(&server, false, false).await;
    let (a, b) = (
        c.caller.ticket.expect("caller"),
        c.callee.ticket.expect("callee"),
    );
    assert_eq!(a.call_id, b.call_id, "one call id");
    assert_ne!(a.secret, b.secret, "each side its own key");
    assert_eq!(metric(&server, "rendezvous_relay_active_calls"), 1);

    let there = c.caller.frame(&[0x40; 1200]);
    c.caller.tap.send(server.addr, &there);
    let (from, got) = c.callee.tap.next(T).await;
    assert_eq!(
        (from, &got),
        (server.addr, &there),
        "caller → callee, unchanged"
    );

    let back = c.callee.frame(b"\x41 the answer");
    c.callee.tap.send(server.addr, &back);
    let (from, got) = c.caller.tap.next(T).await;
    assert_eq!(
        (from, &got),
        (server.addr, &back),
        "callee → caller, unchanged"
    );

    assert_eq!(metric(&server, "rendezvous_relay_packets_total"), 2);
    assert_eq!(
        metric(&server, "rendezvous_relay_bytes_total"),
        (there.len() + back.len()) as u64
    );
    assert_eq!(metric(&server, "rendezvous_relay_calls_total"), 1);
    assert_eq!(metric(&server, "rendezvous_relay_allocations_total"), 1);
    // The server connections never saw a relay frame, and still work.
    assert_link_works(&c.caller.client).await;
}

#[tokio::test]
async fn forged_replayed_and_third_party_frames_are_dropped_and_counted() {
    let server = TestServer::start().await;
    let mut c = call(&server, false, false).await;
    let ticket = c.caller.ticket.expect("ticket");
    let stranger = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");

    // A wrong tag, from the caller's own socket.
    let forged = frame(Party::Caller, ticket.call_id, 50, &[7; 32], b"\x40forged");
    c.caller.tap.send(server.addr, &forged);
    wait_metric(&server, &drops("bad_mac"), 1).await;
    // A valid frame, then the same frame again (a replay from the same address).
    let valid = c.caller.frame(b"\x40first");
    c.caller.tap.send(server.addr, &valid);
    assert_eq!(c.callee.tap.next(T).await.1, valid);
    c.caller.tap.send(server.addr, &valid);
    wait_metric(&server, &drops("replayed"), 1).await;
    // The seen frame from a third address: not forwarded, and no take-over.
    stranger.send_to(&valid, server.addr).expect("send");
    wait_metric(&server, &drops("replayed_elsewhere"), 1).await;
    // A stranger's frame with its own key: a forgery too.
    stranger.send_to(&forged, server.addr).expect("send");
    wait_metric(&server, &drops("bad_mac"), 2).await;
    // An unknown call id.
    let unknown = frame(
        Party::Caller,
        ticket.call_id ^ 1,
        1,
        &ticket.secret,
        b"\x40?",
    );
    stranger.send_to(&unknown, server.addr).expect("send");
    wait_metric(&server, &drops("unknown_call"), 1).await;

    assert!(
        c.callee.tap.try_next().is_none(),
        "nothing else reached the callee"
    );
    // The caller still holds its side: the callee's answer goes to it.
    let back = c.callee.frame(b"\x40back");
    c.callee.tap.send(server.addr, &back);
    assert_eq!(c.caller.tap.next(T).await.1, back);
    stranger.set_nonblocking(true).expect("nonblocking");
    let mut buf = [0u8; 2048];
    assert!(
        stranger.recv_from(&mut buf).is_err(),
        "the stranger got nothing"
    );
    assert_eq!(metric(&server, "rendezvous_relay_packets_total"), 2);
    assert_eq!(metric(&server, "rendezvous_relay_roams_total"), 0);
}

#[tokio::test]
async fn frames_of_an_expired_call_are_dropped_and_counted() {
    let server = TestServer::start_tuned(|c| {
        c.relay = Some(RelayConfig {
            idle_timeout: Duration::from_millis(300),
            ..RelayConfig::default()
        });
    })
    .await;
    let mut c = call(&server, false, false).await;
    let live = c.caller.frame(b"\x40live");
    c.caller.tap.send(server.addr, &live);
    assert_eq!(c.callee.tap.next(T).await.1, live);
    // The expiry task forgets the call once it is idle past its timeout.
    wait_metric(&server, "rendezvous_relay_expired_total", 1).await;
    assert_eq!(metric(&server, "rendezvous_relay_active_calls"), 0);
    let late = c.caller.frame(b"\x40late");
    c.caller.tap.send(server.addr, &late);
    wait_metric(&server, &drops("unknown_call"), 1).await;
    assert!(
        c.callee.tap.try_next().is_none(),
        "the late frame was not forwarded"
    );
    assert_eq!(metric(&server, "rendezvous_relay_packets_total"), 1);
}

#[tokio::test]
async fn a_call_over_its_rate_is_throttled_while_another_keeps_its_rate() {
    let rate = ByteRate {
        per_second: 20_000,
        burst: 16 * MAX_DATAGRAM as u64,
    };
    let server = TestServer::start_tuned(|c| {
        c.relay = Some(RelayConfig {
            rate: Some(rate),
            ..RelayConfig::default()
        });
    })
    .await;
    let mut flood = call(&server, false, false).await;
    let mut calm = call(&server, false, false).await;
    let payload = [0x40u8; 1000];
    let (sent_flood, sent_calm) = (100u64, 10u64);
    for i in 0..sent_flood {
        let f = flood.caller.frame(&payload);
        flood.caller.tap.send(server.addr, &f);
        if i < sent_calm {
            let f = calm.caller.frame(&payload);
            calm.caller.tap.send(server.addr, &f);
        }
    }
    // Wait until the relay decided on every frame.
    let decided =
        || metric(&server, "rendezvous_relay_packets_total") + metric(&server, &drops("over_rate"));
    within(T, "every frame decided", async {
        while decided() < sent_flood + sent_calm {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    for _ in 0..sent_calm {
        calm.callee.tap.next(T).await;
    }
    let over = metric(&server, &drops("over_rate"));
    let forwarded_flood = sent_flood - over;
    for _ in 0..forwarded_flood {
        flood.callee.tap.next(T).await;
    }
    assert!(flood.callee.tap.try_next().is_none());
    let burst_frames = rate.burst / 1020;
    assert!(
        forwarded_flood >= burst_frames / 2 && forwarded_flood <= burst_frames + 10,
        "the flooding call got {forwarded_flood} of {sent_flood} through (burst {burst_frames})"
    );
    assert_eq!(
        metric(&server, "rendezvous_relay_packets_total"),
        forwarded_flood + sent_calm,
        "the calm call lost nothing"
    );
}

#[tokio::test]
async fn relay_off_gives_no_ticket_and_leaves_frames_alone() {
    let server = TestServer::start_tuned(|c| c.relay = None).await;
    let mut c = call(&server, false, false).await;
    assert!(
        matches!(c.answer, Message::CallAccepted { relay: None, .. }),
        "{:?}",
        c.answer
    );
    assert!(
        matches!(c.dial, Message::Dial { relay: None, .. }),
        "{:?}",
        c.dial
    );
    // A relay-looking datagram goes to quinn, which drops it; nothing counted.
    c.callee.ticket = Some(RelayTicket {
        call_id: 1,
        secret: [1; 32],
    });
    let f = c.callee.frame(b"\x40x");
    c.callee.tap.send(server.addr, &f);
    assert_link_works(&c.callee.client).await;
    assert_eq!(metric(&server, &drops("unknown_call")), 0);
    assert_eq!(metric(&server, "rendezvous_relay_allocations_total"), 0);

    // Hiding the caller's addresses needs the relay: refused before ringing.
    let hidden = c
        .caller
        .client
        .request(&Message::Call {
            to: "nobody-needed".into(),
            candidates: vec![],
            hide_addresses: true,
        })
        .await;
    match hidden {
        Message::Error { kind, message } => {
            assert_eq!(kind, ErrorKind::Unreachable);
            assert!(message.contains("relay"), "{message}");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_full_relay_means_no_ticket_and_hidden_calls_are_unreachable() {
    let server = TestServer::start_tuned(|c| {
        c.relay = Some(RelayConfig {
            max_allocations: 1,
            shed_idle: Duration::from_secs(3600),
            ..RelayConfig::default()
        });
    })
    .await;
    let first = call(&server, false, false).await;
    assert!(first.caller.ticket.is_some() && first.callee.ticket.is_some());
    let second = call(&server, false, false).await;
    assert!(
        matches!(second.answer, Message::CallAccepted { relay: None, .. }),
        "the call goes on without relay: {:?}",
        second.answer
    );
    assert!(matches!(second.dial, Message::Dial { relay: None, .. }));
    let full = "rendezvous_relay_allocations_refused_total{reason=\"full\"}";
    assert_eq!(metric(&server, full), 1);
    // The callee hides its addresses: only the relay could carry the call.
    let hidden = call(&server, false, true).await;
    for (who, m) in [("caller", &hidden.answer), ("callee", &hidden.dial)] {
        match m {
            Message::Error { kind, message } => {
                assert_eq!(*kind, ErrorKind::Unreachable, "{who}");
                assert!(message.contains("relay has no room"), "{who}: {message}");
            }
            other => panic!("{who}: {other:?}"),
        }
    }
    assert_eq!(metric(&server, full), 2);
}

#[tokio::test]
async fn the_server_follows_a_peer_whose_address_changed() {
    let server = TestServer::start().await;
    let callee = RawClient::connect(&server).await;
    register(&callee, "roamee", true).await;
    let caller = RawClient::connect(&server).await;
    register(&caller, "roamer", false).await;
    let old = caller.endpoint.local_addr().expect("addr");
    // A new socket under the same connection: a NAT's new mapping.
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let new: SocketAddr = socket.local_addr().expect("addr");
    caller.endpoint.rebind(socket).expect("rebind");
    assert_ne!(old, new);
    let reply = caller
        .request(&Message::Register {
            name: "roamer".into(),
            presence: false,
        })
        .await;
    match reply {
        Message::Registered { observed_addr, .. } => assert_eq!(observed_addr, new),
        other => panic!("{other:?}"),
    }
    let conn = callee.conn.clone();
    let answered = tokio::spawn(async move {
        let (mut send, mut recv) = conn.accept_bi().await.expect("offer");
        let _offer: Message = read_frame(&mut recv, MAX_FRAME).await.expect("offer");
        let accept = Message::Accept {
            candidates: vec![],
            hide_addresses: false,
        };
        write_frame(&mut send, &accept, MAX_FRAME)
            .await
            .expect("accept");
        read_frame::<Message, _>(&mut recv, MAX_FRAME)
            .await
            .expect("dial")
    });
    let answer = caller
        .request(&Message::Call {
            to: "roamee".into(),
            candidates: vec![],
            hide_addresses: false,
        })
        .await;
    assert!(matches!(answer, Message::CallAccepted { .. }), "{answer:?}");
    match within(T, "dial", answered).await.expect("callee") {
        Message::Dial { candidates, .. } => {
            assert_eq!(candidates.first(), Some(&new), "the caller where it is now")
        }
        other => panic!("{other:?}"),
    }
}

/// The client's server link still answers requests (a lookup of nobody).
async fn assert_link_works(client: &tests::inproc::RawClient) {
    let answer = client
        .request(&Message::Lookup {
            name: "anyone".into(),
        })
        .await;
    assert!(
        matches!(
            answer,
            Message::Error {
                kind: ErrorKind::NotFound,
                ..
            }
        ),
        "{answer:?}"
    );
}
