//! A listening peer under a server that takes no bytes and a flood of
//! stalled handshakes (issue 9 items 10 and 11):
//! - the answer to an offer (Accept or Reject) that the server grants no
//!   flow-control credit for is given up after `Timing::write_timeout`,
//!   and the offer stream reset, instead of parking the answering task;
//! - while a call is expected, at most `Limits::max_peer_handshakes`
//!   handshakes are in progress at once (the rest are dropped unanswered),
//!   and the expected caller still connects once a slot frees.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::framing::{write_frame, MAX_FRAME};
use common::tls;
use common::{Identity, Message};
use peer::{Event, Peer, Policy};
use tests::dial::{self, ping_from};
use tests::fake_server::FakeServer;
use tests::inproc::{serve, within, RawClient, Serve, TestServer};
use tests::stall::StallProxy;

const T: Duration = Duration::from_secs(15);

/// Issue 9 item 10: a server that takes none of the callee's answer cannot
/// park the task answering it; the offer stream is reset after the write
/// timeout (an old callee waited for credit forever).
#[tokio::test]
async fn an_answer_the_server_takes_no_bytes_of_is_given_up() {
    let write_timeout = Duration::from_millis(300);
    for (policy, answer) in [
        (Policy::AcceptAll, "Accept"),
        (Policy::AllowList(vec!["carol".into()]), "Reject"),
    ] {
        // 4 bytes: room for a frame's length, not for an answer (the
        // smallest, an Accept without candidates, is 6 bytes).
        let server = FakeServer::stingy(4);
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = server.peer_config(dir.path());
        config.timing.write_timeout = write_timeout;
        let alice = Peer::new(config).await.expect("peer");
        let _listener = alice.listen(policy).expect("listen");
        let conn = server.accept_listener().await;

        let (mut send, mut recv) = conn.open_bi().await.expect("offer stream");
        let offer = Message::IncomingCall {
            call_id: 1,
            from: "bob".into(),
            fingerprint: Identity::generate().expect("id").fingerprint(),
        };
        write_frame(&mut send, &offer, MAX_FRAME)
            .await
            .expect("offer");
        let start = Instant::now();
        // Never read: no credit is ever returned for the answer.
        let reset = within(
            Duration::from_secs(3),
            &format!("the callee giving up its {answer} (write timeout {write_timeout:?})"),
            recv.received_reset(),
        )
        .await;
        assert_eq!(
            reset.expect("the offer stream"),
            Some(common::error::close::PROTOCOL.into()),
            "{answer}: the offer stream ended without the documented reset"
        );
        assert!(
            start.elapsed() >= write_timeout,
            "{answer}: reset after {:?}, before the write timeout",
            start.elapsed()
        );
    }
}

/// Issue 9 item 11, under the path layer: with a call expected and only
/// `max_peer_handshakes` = 2 slots, ten handshakes that stall (half with
/// the expected caller's own key) from an address that is no path of the
/// call never reach alice's QUIC stack at all (her socket drops their
/// Initials: they would open a connection beside the call's), so they hold
/// no slot, and the expected caller, from his own socket, gets in at once.
/// (The cap and the Retry past half the slots still guard the call's own
/// paths: `accept.rs` tests; `api_listener_flood` for the per-call cap.)
#[tokio::test]
async fn stalled_handshakes_from_no_path_of_the_call_hold_no_slot() {
    const CAP: usize = 2;
    const STALLED: usize = 10;
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = server.peer_config(dir.path(), Some("alice"));
    config.limits.max_peer_handshakes = CAP;
    config.timing.peer_handshake_timeout = Duration::from_secs(3);
    let alice = Peer::new(config).await.expect("peer");
    let mut events = alice.events();
    let listener = alice.listen(Policy::AcceptAll).expect("listen");
    within(T, "registered", async {
        while !matches!(events.recv().await, Ok(Event::Registered { .. })) {}
    })
    .await;
    let _serve = serve(listener, Serve::Echo);

    // Bob calls: alice accepts, and now expects his key.
    let bob_id = Arc::new(Identity::generate().expect("id"));
    let bob = RawClient::connect_with(&server, bob_id.clone(), None).await;
    let reg = bob
        .request(&Message::Register {
            name: "bob".into(),
            presence: false,
        })
        .await;
    assert!(matches!(reg, Message::Registered { .. }), "{reg:?}");
    // The flood comes through a proxy whose address bob gives as one of
    // his candidates: alice takes its packets as his call's (a source that
    // is no call's path never reaches her handshakes at all).
    let alice_addr = alice.local_addr().expect("addr");
    let proxy = StallProxy::start(alice_addr, "127.0.0.1")
        .await
        .expect("proxy");
    let answer = bob
        .request(&Message::Call {
            to: "alice".into(),
            candidates: vec![],
            hide_addresses: false,
        })
        .await;
    assert!(matches!(answer, Message::CallAccepted { .. }), "{answer:?}");
    let flood = quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("ep");
    let mut stalled = tokio::task::JoinSet::new();
    for i in 0..STALLED {
        let id = if i % 2 == 0 {
            bob_id.clone()
        } else {
            Arc::new(Identity::generate().expect("id"))
        };
        let config = dial::client_config(&id, alice.fingerprint());
        let connecting = flood
            .connect_with(config, proxy.addr, tls::SERVER_NAME)
            .expect("connect");
        stalled.spawn(async move {
            let _ = connecting.await;
        });
    }
    within(T, "every stalled handshake reaching alice", async {
        proxy.wait_for(|c| c.offered >= STALLED).await
    })
    .await;
    // Give alice a second: an unguarded listener answers all ten within
    // milliseconds, a capped one two.
    let answered =
        tokio::time::timeout(Duration::from_secs(1), proxy.wait_for(|c| c.answered > 0)).await;
    assert!(
        answered.is_err(),
        "alice answered handshakes from no path of the call: {:?}",
        proxy.counts()
    );

    // Bob, from his own socket (the address the server saw), while the
    // flood is still stalled at alice's door.
    let start = Instant::now();
    let pinged = within(
        Duration::from_secs(12),
        "bob's call past the flood",
        ping_from(&bob.endpoint, &bob_id, alice.fingerprint(), alice_addr),
    )
    .await;
    assert_eq!(pinged, Ok(()), "after {:?}", start.elapsed());
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "bob waited {:?}: the flood held handshake slots",
        start.elapsed()
    );
    drop(proxy);
    stalled.abort_all();
    flood.close(0u32.into(), b"done");
}
