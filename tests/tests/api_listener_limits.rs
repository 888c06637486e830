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
use tests::dial::{self, ping_as};
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

/// Issue 9 item 11: with a call expected, ten handshakes that stall (half
/// with the expected caller's own key) get at most `max_peer_handshakes`
/// (2 here) taken up; the rest are dropped unanswered or, past half the
/// slots, asked to Retry (which costs alice no state). The expected caller,
/// arriving while both slots are held, gets through once one frees.
#[tokio::test]
async fn handshakes_are_capped_while_a_call_is_expected() {
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
    let answer = bob
        .request(&Message::Call {
            to: "alice".into(),
            candidates: vec![],
            hide_addresses: false,
        })
        .await;
    assert!(matches!(answer, Message::CallAccepted { .. }), "{answer:?}");

    let alice_addr = alice.local_addr().expect("addr");
    let proxy = StallProxy::start(alice_addr, "127.0.0.1")
        .await
        .expect("proxy");
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
    within(T, "alice answering the first handshakes", async {
        proxy.wait_for(|c| c.answered >= CAP).await
    })
    .await;
    // Every attempt has reached alice; give her a second to answer more
    // (an uncapped listener answers all ten within milliseconds). Her
    // handshake timeout (3 s) holds both slots through it.
    let over =
        tokio::time::timeout(Duration::from_secs(1), proxy.wait_for(|c| c.answered > CAP)).await;
    assert!(
        over.is_err(),
        "alice took up more than {CAP} stalled handshakes at once: {:?}",
        proxy.counts()
    );
    assert_eq!(proxy.counts().answered, CAP, "{:?}", proxy.counts());

    // The flood stops; both slots are still held. Bob's own connection is
    // dropped until one frees, and then gets through (his QUIC stack sends
    // its Initial again).
    drop(proxy);
    stalled.abort_all();
    flood.close(0u32.into(), b"done");
    let start = Instant::now();
    let pinged = within(
        Duration::from_secs(12),
        "bob's call once a handshake slot frees",
        ping_as(&bob_id, alice.fingerprint(), alice_addr),
    )
    .await;
    assert_eq!(pinged, Ok(()), "after {:?}", start.elapsed());
    // Both slots were held for seconds more when bob began: his first
    // Initial was dropped too (seen: through after ~3 s, his retransmissions).
    assert!(
        start.elapsed() >= Duration::from_millis(500),
        "bob got in at once, past two held handshake slots"
    );
}
