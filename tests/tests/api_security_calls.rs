//! Calls under abuse, through the `peer` library and a raw client against an
//! in-process server on loopback: private candidates stay inside one
//! network, a stranger's flood is rate-limited while a contact gets through,
//! a pre-approved key is still held to its own bucket, a callee that takes
//! no bytes cannot hold a call, and one accepted offer is one call with a
//! bounded number of streams.
//!
//! Distinct 127.0.0.0/8 addresses are distinct sources (and networks) to the
//! server.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::framing::{read_frame, write_frame, MAX_FRAME};
use common::{ErrorKind, Identity, Message, PeerMessage};
use peer::{CallOptions, Event, Peer, PeerConfig, Policy};
use tests::inproc::{
    echo_roundtrip, listening, listening_tuned, serve, within, RawClient, Serve, TestPeer,
    TestServer,
};

const T: Duration = Duration::from_secs(15);

fn a(s: &str) -> SocketAddr {
    s.parse().expect("addr")
}

/// A raw client from `local` registered as `name` (`presence` for a callee).
async fn raw(server: &TestServer, local: &str, name: &str, presence: bool) -> RawClient {
    raw_tuned(server, local, name, presence, None).await
}

async fn raw_tuned(
    server: &TestServer,
    local: &str,
    name: &str,
    presence: bool,
    transport: Option<quinn::TransportConfig>,
) -> RawClient {
    let id = Arc::new(Identity::generate().expect("id"));
    let c = RawClient::connect_tuned(server, id, None, a(local), transport).await;
    let reply = c
        .request(&Message::Register {
            name: name.into(),
            presence,
        })
        .await;
    assert!(matches!(reply, Message::Registered { .. }), "{reply:?}");
    c
}

/// A raw callee answers one offer with `Accept { candidates }` and returns
/// the Dial's candidates.
fn accept_one(
    callee: RawClient,
    candidates: Vec<SocketAddr>,
) -> tokio::task::JoinHandle<Vec<SocketAddr>> {
    tokio::spawn(async move {
        let (mut send, mut recv, offer) = callee.next_offer().await;
        assert!(matches!(offer, Message::IncomingCall { .. }), "{offer:?}");
        write_frame(
            &mut send,
            &Message::Accept {
                candidates,
                hide_addresses: false,
            },
            MAX_FRAME,
        )
        .await
        .expect("accept");
        let dial: Message = read_frame(&mut recv, MAX_FRAME).await.expect("dial");
        let Message::Dial { candidates, .. } = dial else {
            panic!("{dial:?}")
        };
        candidates
    })
}

/// Issue 9 item 4: a private address names a host in the *receiver's* LAN
/// unless both peers sit behind one public address.
#[tokio::test]
async fn private_candidates_cross_only_within_one_network() {
    let server = TestServer::start().await;
    let claimed = vec![a("192.168.1.5:4000"), a("[fd00::5]:4000")];
    let callee_claims = vec![a("10.9.9.9:4000")];
    for (caller_ip, same) in [("127.0.0.2:0", false), ("127.0.0.1:0", true)] {
        let name = if same { "alice-same" } else { "alice-other" };
        let callee = raw(&server, "127.0.0.1:0", name, true).await;
        let callee_addr = callee.endpoint.local_addr().expect("addr");
        let dial = accept_one(callee, callee_claims.clone());
        let caller = raw(&server, caller_ip, &format!("bob-{same}"), false).await;
        let answer = caller
            .request(&Message::Call {
                to: name.into(),
                candidates: claimed.clone(),
                hide_addresses: false,
            })
            .await;
        let Message::CallAccepted { candidates, .. } = answer else {
            panic!("{answer:?}")
        };
        let seen = within(T, "dial", dial).await.expect("callee task");
        let caller_addr = caller.endpoint.local_addr().expect("addr");
        if same {
            assert_eq!(seen, [vec![caller_addr], claimed.clone()].concat());
            assert_eq!(candidates, vec![callee_addr, callee_claims[0]]);
        } else {
            assert_eq!(seen, vec![caller_addr], "the caller's LAN stays home");
            assert_eq!(candidates, vec![callee_addr], "the callee's LAN stays home");
        }
    }
}

/// Issue 9 item 9: strangers from many sources ringing one user get
/// `rate_limited`; a contact the user pre-approved still gets through.
#[tokio::test]
async fn a_strangers_flood_is_rate_limited_while_a_contact_gets_through() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start_with(dir.path().to_owned(), a("127.0.0.1:0"), |l| {
        l.offer_rate_per_source = rendezvous::Rate {
            burst: 3,
            per_second: 0.01,
        };
        l.offer_rate_per_callee = rendezvous::Rate {
            burst: 5,
            per_second: 0.01,
        };
    })
    .await;
    let carol = server.peer("carol").await;
    let carol_fp = carol.peer.fingerprint();
    let pin = |c: &mut PeerConfig| {
        std::fs::write(&c.known_peers, format!("carol {carol_fp}\n")).expect("known_peers");
    };
    let carol_only = Policy::AllowList(vec!["carol".into()]);
    let (alice, _serve) = listening_tuned(&server, "alice", carol_only, Serve::Echo, pin).await;

    let mut limited = 0;
    for (i, src) in ["127.0.0.2:0", "127.0.0.3:0", "127.0.0.4:0"]
        .iter()
        .enumerate()
    {
        let stranger = raw(&server, src, &format!("stranger-{i}"), false).await;
        let mut last = None;
        for _ in 0..6 {
            let answer = stranger
                .request(&Message::Call {
                    to: "alice".into(),
                    candidates: vec![],
                    hide_addresses: false,
                })
                .await;
            match &answer {
                Message::Error {
                    kind: ErrorKind::RateLimited,
                    ..
                } => limited += 1,
                Message::Error {
                    kind: ErrorKind::Rejected,
                    ..
                } => {}
                other => panic!("{other:?}"),
            }
            last = Some(answer);
        }
        assert!(
            matches!(
                last,
                Some(Message::Error {
                    kind: ErrorKind::RateLimited,
                    ..
                })
            ),
            "source {src} keeps ringing: {last:?}"
        );
    }
    // 18 offers: at most 5 rang through (the callee's budget).
    assert!(limited >= 13, "only {limited} of 18 limited");
    let call = within(
        T,
        "contact's call",
        carol.peer.call("alice", CallOptions::default()),
    )
    .await
    .expect("a pre-approved contact gets through");
    assert_eq!(call.fingerprint, alice.peer.fingerprint());
}

/// A raw callee that rejects every offer until aborted.
fn reject_all(callee: RawClient) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Ok((mut send, mut recv)) = callee.conn.accept_bi().await {
            let _: Result<Message, _> = read_frame(&mut recv, MAX_FRAME).await;
            let reject = Message::Reject {
                reason: "busy".into(),
            };
            let _ = write_frame(&mut send, &reject, MAX_FRAME).await;
            let _ = send.finish();
        }
    })
}

/// `n` offers from `caller` to `to`: how many rang (were rejected by the
/// callee) and how many were `rate_limited`.
async fn ring(caller: &RawClient, to: &str, n: usize) -> (usize, usize) {
    let (mut rang, mut limited) = (0, 0);
    for _ in 0..n {
        let answer = caller
            .request(&Message::Call {
                to: to.into(),
                candidates: vec![],
                hide_addresses: false,
            })
            .await;
        match answer {
            Message::Error {
                kind: ErrorKind::Rejected,
                ..
            } => rang += 1,
            Message::Error {
                kind: ErrorKind::RateLimited,
                ..
            } => limited += 1,
            other => panic!("{other:?}"),
        }
    }
    (rang, limited)
}

/// A registered raw client with the key `id`, from `local`.
async fn raw_as(server: &TestServer, id: &Arc<Identity>, local: &str, name: &str) -> RawClient {
    let c = RawClient::connect_from(server, id.clone(), None, a(local)).await;
    let reply = c
        .request(&Message::Register {
            name: name.into(),
            presence: false,
        })
        .await;
    assert!(matches!(reply, Message::Registered { .. }), "{reply:?}");
    c
}

/// Review of issue 9: a key on the callee's approved list (in `AcceptAll`
/// mode, any caller it ever accepted) is not exempt from every limit: it
/// is held to its own per-(key, callee) bucket, from any session or
/// source. Strangers spending the callee's budget do not touch another
/// approved contact's.
#[tokio::test]
async fn an_approved_key_is_still_limited_and_strangers_cannot_drain_a_contact() {
    let slow = |burst| rendezvous::Rate {
        burst,
        per_second: 0.01,
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start_with(dir.path().to_owned(), a("127.0.0.1:0"), |l| {
        l.offer_rate_per_source = slow(3);
        l.offer_rate_per_callee = slow(5);
        l.offer_rate_per_contact = slow(4);
    })
    .await;
    let bob_id = Arc::new(Identity::generate().expect("id"));
    let carol_id = Arc::new(Identity::generate().expect("id"));
    let alice = raw(&server, "127.0.0.1:0", "alice", true).await;
    let approved = alice
        .request(&Message::Approve {
            fingerprints: vec![bob_id.fingerprint(), carol_id.fingerprint()],
        })
        .await;
    assert!(
        matches!(approved, Message::Approved { count: 2 }),
        "{approved:?}"
    );
    let _alice = reject_all(alice);

    let bob = raw_as(&server, &bob_id, "127.0.0.2:0", "bob").await;
    assert_eq!(ring(&bob, "alice", 8).await, (4, 4), "bob's own bucket");
    let bob_again = raw_as(&server, &bob_id, "127.0.0.3:0", "bob").await;
    assert_eq!(
        ring(&bob_again, "alice", 3).await,
        (0, 3),
        "another session and source of the same key is the same bucket"
    );

    let mut rang = 0;
    for (i, src) in ["127.0.0.4:0", "127.0.0.5:0", "127.0.0.6:0"]
        .iter()
        .enumerate()
    {
        let stranger = raw(&server, src, &format!("stranger-{i}"), false).await;
        rang += ring(&stranger, "alice", 6).await.0;
    }
    assert_eq!(rang, 5, "the strangers share the callee's budget");
    let carol = raw_as(&server, &carol_id, "127.0.0.4:0", "carol").await;
    assert_eq!(
        ring(&carol, "alice", 4).await,
        (4, 0),
        "neither bob nor the strangers drained carol's bucket"
    );
}

/// Issue 9 item 10: a callee that grants no flow-control credit for the
/// Dial does not hold the call's task, nor its caller, past the timeout.
#[tokio::test]
async fn a_callee_that_takes_no_bytes_cannot_hold_the_call() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start_with(dir.path().to_owned(), a("127.0.0.1:0"), |l| {
        l.dial_write_timeout = Duration::from_millis(300);
    })
    .await;
    // Room for the offer (~60 bytes), not for a Dial with 8 IPv6 candidates.
    let mut transport = quinn::TransportConfig::default();
    transport.stream_receive_window(100u32.into());
    let callee = raw_tuned(&server, "127.0.0.1:0", "alice", true, Some(transport)).await;
    let stuck = tokio::spawn(async move {
        let (send, _recv) = callee.conn.accept_bi().await.expect("offer stream");
        // Answer without reading anything: no credit is ever returned.
        let mut send = send;
        write_frame(
            &mut send,
            &Message::Accept {
                candidates: vec![],
                hide_addresses: false,
            },
            MAX_FRAME,
        )
        .await
        .expect("accept");
        // Hold everything open.
        std::future::pending::<()>().await;
        drop((send, callee));
    });
    let caller = raw(&server, "127.0.0.1:0", "bob", false).await;
    let many: Vec<SocketAddr> = (1..=8).map(|i| a(&format!("[fd00::{i}]:4000"))).collect();
    let (mut send, mut recv) = caller.conn.open_bi().await.expect("stream");
    write_frame(
        &mut send,
        &Message::Call {
            to: "alice".into(),
            candidates: many,
            hide_addresses: false,
        },
        MAX_FRAME,
    )
    .await
    .expect("write");
    send.finish().expect("finish");
    let answer: Message = within(
        Duration::from_secs(3),
        "the caller's answer despite a stuck callee",
        read_frame(&mut recv, MAX_FRAME),
    )
    .await
    .expect("answer");
    assert!(matches!(answer, Message::CallAccepted { .. }), "{answer:?}");
    stuck.abort();
}

/// Connects to `to` with `from`'s key (read from its identity file) and asks
/// for one ping: `Ok` when a call answered it.
async fn ping_with_key_of(from: &TestPeer, to: &TestPeer) -> Result<(), String> {
    let id = Identity::load_or_create(&from.dir.path().join("identity.pem")).expect("identity");
    let addr = to.peer.local_addr().expect("addr");
    tokio::time::timeout(
        Duration::from_secs(3),
        tests::dial::ping_as(&id, to.peer.fingerprint(), addr),
    )
    .await
    .unwrap_or_else(|_| Err("no answer".into()))
}

/// Issue 9 item 11: after one accepted offer, the caller's key gets one
/// call, not one per connection for the rest of the accept window.
#[tokio::test]
async fn one_accepted_offer_is_one_call() {
    let server = TestServer::start().await;
    let (alice, _t) = listening(&server, "alice", Policy::AcceptAll, Serve::Echo).await;
    let bob = server.peer("bob").await;
    let call = within(T, "call", bob.peer.call("alice", CallOptions::default()))
        .await
        .expect("call");
    // The call is made once its first stream opens.
    let answered = peer::app::ping(
        &call,
        1,
        Duration::from_millis(50),
        Duration::from_secs(3),
        |_, _| {},
    )
    .await
    .expect("ping");
    assert_eq!(answered, 1);
    let second = ping_with_key_of(&bob, &alice).await;
    assert!(
        second.is_err(),
        "a second connection with the caller's key became a second call"
    );
    assert!(
        echo_roundtrip(&call, b"still the one call").await == b"still the one call",
        "the first call is untouched"
    );
}

/// Issue 9 item 11: a call holds at most `max_streams_per_call` streams at
/// once (each an `sh -c` in `--exec` mode); the next waits for one to end.
#[tokio::test]
async fn a_call_holds_a_bounded_number_of_streams() {
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = server.peer_config(dir.path(), Some("alice"));
    config.limits.max_streams_per_call = 4;
    let alice = Peer::new(config).await.expect("peer");
    let mut events = alice.events();
    let listener = alice.listen(Policy::AcceptAll).expect("listen");
    within(T, "registered", async {
        while !matches!(events.recv().await, Ok(Event::Registered { .. })) {}
    })
    .await;
    let _serve = serve(listener, Serve::Echo);
    let bob = server.peer("bob").await;
    let call = within(T, "call", bob.peer.call("alice", CallOptions::default()))
        .await
        .expect("call");
    let mut open = Vec::new();
    for _ in 0..4 {
        let (mut send, mut recv) = within(T, "stream", call.open(&PeerMessage::Pipe))
            .await
            .expect("stream");
        // Each stream is live (echoes) before the next opens.
        send.write_all(b"x").await.expect("write");
        let mut byte = [0u8; 1];
        within(T, "echo", recv.read_exact(&mut byte))
            .await
            .expect("echo");
        open.push((send, recv));
    }
    let fifth =
        tokio::time::timeout(Duration::from_millis(500), call.open(&PeerMessage::Pipe)).await;
    assert!(fifth.is_err(), "a fifth concurrent stream opened");
    let (mut send, mut recv) = open.pop().expect("one");
    send.finish().expect("finish");
    within(T, "end", recv.read_to_end(16)).await.expect("end");
    within(T, "a stream once one ended", call.open(&PeerMessage::Pipe))
        .await
        .expect("stream");
}
