//! Paths through the library on loopback: a call forced onto the relay
//! carries data intact and says so; `listen --path relay` and
//! `call --path relay` keep each side's addresses from the other;
//! `--path direct` fails at once where only the relay could carry the
//! call. (Moves between paths mid-call need a network that can cut one:
//! the NAT lab's `lab_paths` tests.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use common::{ErrorKind, Message};
use peer::path::PathMode;
use peer::{CallOptions, Path, Policy};
use tests::inproc::{
    echo_roundtrip, fake_callee, listening, listening_tuned, within, RawClient, Serve, TestServer,
};
use tests::relay_tap::metric;

const T: Duration = Duration::from_secs(15);

fn relay_only() -> CallOptions {
    CallOptions {
        path: PathMode::Relay,
        ..CallOptions::default()
    }
}

#[tokio::test]
async fn a_call_on_the_relay_carries_a_megabyte_intact_and_says_so() {
    let server = TestServer::start().await;
    let (_alice, _serve) = listening(&server, "alice", Policy::AcceptAll, Serve::Echo).await;
    let bob = server.peer("bob").await;
    let call = within(T, "relayed call", bob.peer.call("alice", relay_only()))
        .await
        .expect("call");
    assert_eq!(call.path(), Path::Relay);
    assert_eq!(
        call.remote_addr(),
        server.addr,
        "a relayed call shows the relay"
    );
    let data: Vec<u8> = (0..1 << 20).map(|i| (i * 7 + i / 251) as u8).collect();
    let back = within(T, "echo", echo_roundtrip(&call, &data)).await;
    assert!(back == data, "{} bytes back, differing", back.len());
    let relayed = metric(&server, "rendezvous_relay_bytes_total");
    assert!(
        relayed >= 2 << 20,
        "both directions through the relay: {relayed}"
    );
    match call.connected_event() {
        peer::Event::Connected { path, .. } => assert_eq!(path, "relay"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn an_ordinary_call_on_loopback_starts_direct() {
    let server = TestServer::start().await;
    let (_alice, _serve) = listening(&server, "alice", Policy::AcceptAll, Serve::Echo).await;
    let bob = server.peer("bob").await;
    for _ in 0..5 {
        let call = within(T, "call", bob.peer.call("alice", CallOptions::default()))
            .await
            .expect("call");
        assert_eq!(
            call.path(),
            Path::Direct,
            "racing the relay lost the direct start"
        );
        assert_eq!(echo_roundtrip(&call, b"hi").await, b"hi");
        call.close();
    }
}

/// A raw caller sees exactly what the server gives away.
async fn raw_call(server: &TestServer, to: &str, hide: bool) -> Message {
    let raw = RawClient::connect(server).await;
    let reply = raw
        .request(&Message::Register {
            name: "raw".into(),
            presence: false,
        })
        .await;
    assert!(matches!(reply, Message::Registered { .. }), "{reply:?}");
    raw.request(&Message::Call {
        to: to.into(),
        candidates: vec![],
        hide_addresses: hide,
    })
    .await
}

#[tokio::test]
async fn listen_path_relay_gives_callers_no_address_and_still_takes_calls() {
    let server = TestServer::start().await;
    let (_alice, _serve) = listening_tuned(&server, "alice", Policy::AcceptAll, Serve::Echo, |c| {
        c.listen_path = PathMode::Relay;
    })
    .await;
    match raw_call(&server, "alice", false).await {
        Message::CallAccepted {
            candidates, relay, ..
        } => {
            assert!(
                candidates.is_empty(),
                "alice's addresses given out: {candidates:?}"
            );
            assert!(relay.is_some(), "and no relay to reach her through");
        }
        other => panic!("{other:?}"),
    }
    let bob = server.peer("bob").await;
    let call = within(T, "call", bob.peer.call("alice", CallOptions::default()))
        .await
        .expect("a plain call reaches a relay-only listener");
    assert_eq!(call.path(), Path::Relay);
    assert_eq!(echo_roundtrip(&call, b"hello").await, b"hello");
}

#[tokio::test]
async fn call_path_relay_keeps_the_callers_addresses_from_the_callee() {
    let server = TestServer::start().await;
    let fake = fake_callee(&server, "carol", None).await;
    let answer = raw_call(&server, "carol", true).await;
    assert!(matches!(answer, Message::CallAccepted { .. }), "{answer:?}");
    match within(T, "the Dial", fake.dial).await.expect("fake callee") {
        Message::Dial {
            candidates, relay, ..
        } => {
            assert!(
                candidates.is_empty(),
                "the caller's addresses given out: {candidates:?}"
            );
            assert!(relay.is_some());
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn path_direct_fails_at_once_where_only_the_relay_could_carry_the_call() {
    let server = TestServer::start().await;
    let (_alice, _serve) = listening_tuned(&server, "alice", Policy::AcceptAll, Serve::Echo, |c| {
        c.listen_path = PathMode::Relay;
    })
    .await;
    let bob = server.peer("bob").await;
    let started = std::time::Instant::now();
    let err = within(
        T,
        "the refusal",
        bob.peer.call(
            "alice",
            CallOptions {
                path: PathMode::Direct,
                ..CallOptions::default()
            },
        ),
    )
    .await
    .expect_err("no direct path can exist");
    assert_eq!(err.kind(), ErrorKind::Unreachable, "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn without_a_relay_a_hidden_call_is_refused_with_unreachable() {
    let server = TestServer::start_tuned(|c| c.relay = None).await;
    let bob = server.peer("bob").await;
    let (_alice, _serve) = listening(&server, "alice", Policy::AcceptAll, Serve::Echo).await;
    let err = within(T, "the refusal", bob.peer.call("alice", relay_only()))
        .await
        .expect_err("nothing can carry it");
    assert_eq!(err.kind(), ErrorKind::Unreachable, "{err}");
}

#[tokio::test]
async fn a_call_that_ends_frees_its_relay_allocation_at_once() {
    let server = TestServer::start().await;
    let (_alice, _serve) = listening(&server, "alice", Policy::AcceptAll, Serve::Echo).await;
    let bob = server.peer("bob").await;
    for options in [relay_only(), CallOptions::default()] {
        let call = within(T, "call", bob.peer.call("alice", options))
            .await
            .expect("call");
        assert_eq!(echo_roundtrip(&call, b"hi").await, b"hi");
        assert_eq!(metric(&server, "rendezvous_relay_active_calls"), 1);
        drop(call);
        // Both sides send their end-of-call frame once the close is out
        // (2 s): well before the relay's 60 s idle expiry.
        within(Duration::from_secs(6), "the allocation freed", async {
            while metric(&server, "rendezvous_relay_active_calls") > 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
    }
    assert!(metric(&server, "rendezvous_relay_ended_total") >= 2);
    assert_eq!(metric(&server, "rendezvous_relay_expired_total"), 0);
}
