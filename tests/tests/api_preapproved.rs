//! The pre-approved fast path (issue 14): a listener that accepts its
//! approved callers without being asked (`AcceptApproved`) has their calls
//! introduced at once (`Preapproved`, then `Dial`, no round trip to it);
//! a caller not on its list still needs its consent; and a pre-approved
//! call the callee's own policy does not accept is refused by the callee.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use common::framing::{read_frame, write_frame, MAX_FRAME};
use common::{ErrorKind, Fingerprint, Message};
use peer::{CallOptions, Event, Peer, Policy};
use tests::fake_server::FakeServer;
use tests::inproc::{
    echo_roundtrip, listening_tuned, within, RawClient, Serve, TestPeer, TestServer,
};
use tests::relay_tap::metric;

const T: Duration = Duration::from_secs(15);
const PREAPPROVED: &str = "rendezvous_calls_preapproved_total";

fn a(s: &str) -> SocketAddr {
    s.parse().expect("addr")
}

fn call(to: &str) -> Message {
    Message::Call {
        to: to.into(),
        candidates: vec![],
        hide_addresses: false,
    }
}

/// A raw client registered as `name` (`presence` for a callee).
async fn raw(server: &TestServer, name: &str, presence: bool) -> RawClient {
    let c = RawClient::connect(server).await;
    let reply = c
        .request(&Message::Register {
            name: name.into(),
            presence,
        })
        .await;
    assert!(matches!(reply, Message::Registered { .. }), "{reply:?}");
    c
}

#[tokio::test]
async fn an_approved_caller_gets_candidates_without_the_callee_being_asked() {
    let server = TestServer::start().await;
    let bob = raw(&server, "bob", false).await;
    let carol = raw(&server, "carol", false).await;
    let alice = raw(&server, "alice", true).await;
    let approved = alice
        .request(&Message::Approve {
            fingerprints: vec![bob.identity.fingerprint()],
        })
        .await;
    assert!(
        matches!(approved, Message::Approved { count: 1 }),
        "{approved:?}"
    );
    let standing = alice
        .request(&Message::AcceptApproved {
            candidates: vec![a("10.0.0.5:5000")],
            hide_addresses: false,
        })
        .await;
    assert!(
        matches!(standing, Message::Approved { count: 1 }),
        "{standing:?}"
    );

    // bob's call is answered while alice says nothing at all.
    let answer = within(T, "bob's call", bob.request(&call("alice"))).await;
    let Message::CallAccepted {
        call_id,
        fingerprint,
        candidates,
        ..
    } = answer
    else {
        panic!("not accepted: {answer:?}");
    };
    assert_eq!(fingerprint, alice.identity.fingerprint());
    // Where the server sees alice, from her standing answer, with no word from her.
    let alice_at = alice.endpoint.local_addr().expect("addr");
    assert_eq!(candidates.first(), Some(&alice_at), "{candidates:?}");
    // alice is told after the fact: who, then where to punch.
    let (_send, mut recv, told) = alice.next_offer().await;
    assert_eq!(
        told,
        Message::Preapproved {
            call_id,
            from: "bob".into(),
            fingerprint: bob.identity.fingerprint(),
        }
    );
    let dial: Message = within(T, "dial", read_frame(&mut recv, MAX_FRAME))
        .await
        .expect("dial");
    assert!(
        matches!(dial, Message::Dial { call_id: id, .. } if id == call_id),
        "{dial:?}"
    );
    assert_eq!(metric(&server, PREAPPROVED), 1);

    // carol is not on the list: alice is asked, and her no is final.
    let ask = tokio::spawn(async move {
        let (mut send, _recv, offer) = alice.next_offer().await;
        let reject = Message::Reject {
            reason: "not you".into(),
        };
        write_frame(&mut send, &reject, MAX_FRAME)
            .await
            .expect("reject");
        let _ = send.finish();
        (offer, alice)
    });
    let answer = within(T, "carol's call", carol.request(&call("alice"))).await;
    let (offer, _alice) = within(T, "offer", ask).await.expect("task");
    assert!(
        matches!(offer, Message::IncomingCall { ref from, .. } if from == "carol"),
        "{offer:?}"
    );
    assert!(
        matches!(
            answer,
            Message::Error {
                kind: ErrorKind::Rejected,
                ..
            }
        ),
        "{answer:?}"
    );
    assert_eq!(
        metric(&server, PREAPPROVED),
        1,
        "carol was not pre-approved"
    );
}

#[tokio::test]
async fn only_a_listen_session_may_accept_without_being_asked() {
    let server = TestServer::start().await;
    let bob = raw(&server, "bob", false).await;
    let answer = bob
        .request(&Message::AcceptApproved {
            candidates: vec![],
            hide_addresses: false,
        })
        .await;
    assert!(
        matches!(
            answer,
            Message::Error {
                kind: ErrorKind::NotRegistered,
                ..
            }
        ),
        "{answer:?}"
    );
}

/// alice listens with `--accept-from bob`, bob's key pinned.
async fn alice_accepting_bob(server: &TestServer, bob: Fingerprint) -> TestPeer {
    let pin = |c: &mut peer::PeerConfig| {
        std::fs::write(&c.known_peers, format!("bob {bob}\n")).expect("known_peers");
    };
    let bob_only = Policy::AllowList(vec!["bob".into()]);
    listening_tuned(server, "alice", bob_only, Serve::Echo, pin)
        .await
        .0
}

#[tokio::test]
async fn a_listen_accept_from_contact_calls_through_the_fast_path() {
    let server = TestServer::start().await;
    let bob = server.peer("bob").await;
    let alice = alice_accepting_bob(&server, bob.peer.fingerprint()).await;
    let call = within(
        T,
        "bob's call",
        bob.peer.call("alice", CallOptions::default()),
    )
    .await
    .expect("call");
    assert_eq!(call.fingerprint, alice.peer.fingerprint());
    assert_eq!(echo_roundtrip(&call, b"fast").await, b"fast");
    assert_eq!(metric(&server, PREAPPROVED), 1);
    // Another key calling as another name is asked (and refused by policy).
    let mallory = server.peer("mallory").await;
    let refused = within(
        T,
        "mallory's call",
        mallory.peer.call("alice", CallOptions::default()),
    )
    .await;
    assert!(
        matches!(
            &refused,
            Err(peer::Error::Server {
                kind: ErrorKind::Rejected,
                ..
            })
        ),
        "{:?}",
        refused.as_ref().map(|c| &c.peer)
    );
    assert_eq!(metric(&server, PREAPPROVED), 1);
}

/// A server that says a pre-approved bob calls, with another key than the
/// one alice pinned for bob: alice refuses it (she expects no such key, so
/// its connection could not get in).
#[tokio::test]
async fn a_preapproved_call_with_the_wrong_key_is_refused_by_the_callee() {
    let fake = FakeServer::start();
    let dir = tempfile::tempdir().unwrap();
    let pinned = Fingerprint([1; 32]);
    std::fs::write(dir.path().join("known_peers"), format!("bob {pinned}\n")).unwrap();
    let alice = Peer::new(fake.peer_config(dir.path())).await.expect("peer");
    let mut events = alice.events();
    let _listener = alice
        .listen(Policy::AllowList(vec!["bob".into()]))
        .expect("listen");
    let conn = fake.accept_listener().await;
    // Its approval of bob's pinned key, and its standing answer.
    for expected in ["Approve", "AcceptApproved"] {
        let (mut send, _recv, request) = FakeServer::next_request(&conn).await;
        assert_eq!(request.kind_name(), expected);
        let approved = Message::Approved { count: 1 };
        write_frame(&mut send, &approved, MAX_FRAME).await.unwrap();
        let _ = send.finish();
    }
    let (mut send, _recv) = conn.open_bi().await.expect("stream");
    let forged = Message::Preapproved {
        call_id: 1,
        from: "bob".into(),
        fingerprint: Fingerprint([2; 32]),
    };
    write_frame(&mut send, &forged, MAX_FRAME).await.unwrap();
    let dial = Message::Dial {
        call_id: 1,
        candidates: vec![a("127.0.0.1:9")],
        probe_key: [0; 32],
        relay: None,
    };
    write_frame(&mut send, &dial, MAX_FRAME).await.unwrap();
    let refused = within(T, "call_refused", async {
        loop {
            match events.recv().await {
                Ok(Event::CallRefused { from, .. }) => return from,
                Ok(_) => {}
                Err(e) => panic!("events: {e}"),
            }
        }
    })
    .await;
    assert_eq!(refused, "bob");
}

/// The fast path's race: the caller learns the callee's address at the
/// moment the callee is told of the call, so on loopback its first Initial
/// can arrive before the callee has read `Preapproved`. That Initial must
/// wait for the call (kept briefly), not be refused as a stranger's: every
/// one of 30 calls connects.
#[tokio::test]
async fn a_preapproved_callers_first_initial_may_beat_the_news_and_still_connects() {
    let server = TestServer::start_tuned(|c| {
        c.limits.register_rate.burst = 1000;
        c.limits.call_rate.burst = 1000;
    })
    .await;
    let bob = server.peer("bob").await;
    let _alice = alice_accepting_bob(&server, bob.peer.fingerprint()).await;
    for i in 0..30 {
        // A fresh caller process each time, as the CLI is.
        let config = server.peer_config(bob.dir.path(), Some("bob"));
        let caller = Peer::new(config).await.expect("peer");
        let call = within(T, "call", caller.call("alice", CallOptions::default())).await;
        assert!(call.is_ok(), "call {i}: {:?}", call.err());
        caller.shutdown().await;
    }
    assert_eq!(metric(&server, PREAPPROVED), 30);
}
