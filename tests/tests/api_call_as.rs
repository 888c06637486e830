//! A fresh one-shot call registers and calls in one request (`CallAs`, issue
//! 14): the server's two answers on one stream, what it refuses, the peer
//! sending nothing before it, and the peer falling back to `Register` then
//! `Call` with a server older than `CallAs`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use common::framing::{read_frame, write_frame, FrameError, MAX_FRAME};
use common::{ErrorKind, Message};
use peer::{CallOptions, Event, Peer, Policy};
use tests::fake_server::FakeServer;
use tests::inproc::{error_kind, listening, within, RawClient, Serve, TestServer};
use tests::relay_tap::metric;

const T: Duration = Duration::from_secs(15);

fn call_as(from: &str, to: &str) -> Message {
    Message::CallAs {
        from: from.into(),
        to: to.into(),
        candidates: vec![],
        hide_addresses: false,
    }
}

/// Sends `msg` on a new stream; every frame the server answers, until it
/// finishes the stream.
async fn answers(client: &RawClient, msg: &Message) -> Vec<Message> {
    let (mut send, mut recv) = client.conn.open_bi().await.expect("stream");
    write_frame(&mut send, msg, MAX_FRAME).await.expect("write");
    send.finish().expect("finish");
    let mut got = vec![];
    loop {
        match within(T, "answer", read_frame::<Message, _>(&mut recv, MAX_FRAME)).await {
            Ok(m) => got.push(m),
            Err(FrameError::Closed) => return got,
            Err(e) => panic!("after {got:?}: {e}"),
        }
    }
}

#[tokio::test]
async fn the_server_answers_registered_then_the_call() {
    let server = TestServer::start().await;
    let (_alice, _t) = listening(&server, "alice", Policy::AcceptAll, Serve::Echo).await;
    let bob = RawClient::connect(&server).await;
    let got = answers(&bob, &call_as("bob", "alice")).await;
    assert!(
        matches!(&got[..], [Message::Registered { name, .. }, Message::CallAccepted { .. }] if name == "bob"),
        "{got:?}"
    );
    // The connection is registered as bob now: a plain Call works on it.
    let again = bob
        .request(&Message::Call {
            to: "alice".into(),
            candidates: vec![],
            hide_addresses: false,
        })
        .await;
    assert!(matches!(again, Message::CallAccepted { .. }), "{again:?}");
}

#[tokio::test]
async fn a_refused_registration_is_the_only_answer_and_rings_nobody() {
    let server = TestServer::start().await;
    let (_alice, _t) = listening(&server, "alice", Policy::AcceptAll, Serve::Echo).await;
    let carol = RawClient::connect(&server).await;
    assert!(matches!(
        carol.register("bob").await,
        Message::Registered { .. }
    ));
    // bob is carol's: another key's CallAs as bob is refused, and only that.
    let mallory = RawClient::connect(&server).await;
    let got = answers(&mallory, &call_as("bob", "alice")).await;
    assert!(
        matches!(&got[..], [m] if error_kind(m) == Some(ErrorKind::NameTaken)),
        "{got:?}"
    );
    // A bad name, too.
    let got = answers(&mallory, &call_as("no spaces allowed", "alice")).await;
    assert!(
        matches!(&got[..], [m] if error_kind(m) == Some(ErrorKind::InvalidName)),
        "{got:?}"
    );
    // A connection registered as one name cannot call as another.
    let got = answers(&carol, &call_as("dave", "alice")).await;
    assert!(
        matches!(&got[..], [m] if error_kind(m) == Some(ErrorKind::Protocol)),
        "{got:?}"
    );
    assert_eq!(
        metric(&server, "rendezvous_calls_requested_total"),
        0,
        "no call was brokered: nobody was rung"
    );
}

/// A peer whose server is `fake`, named bob.
async fn bob_at(fake: &FakeServer, dir: &std::path::Path) -> Peer {
    let mut config = fake.peer_config(dir);
    config.name = Some("bob".into());
    Peer::new(config).await.expect("peer")
}

/// The registration a fake server answers for `conn`.
fn registered(conn: &quinn::Connection) -> Message {
    Message::Registered {
        name: "bob".into(),
        fingerprint: common::Fingerprint([7; 32]),
        observed_addr: conn.remote_address(),
    }
}

/// The fake server says alice is offline on `send`; the peer's call ends so.
async fn ends_offline(
    mut send: quinn::SendStream,
    call: tokio::task::JoinHandle<peer::Result<peer::Call>>,
) {
    let offline = Message::error(ErrorKind::Offline, "alice is not online");
    write_frame(&mut send, &offline, MAX_FRAME).await.unwrap();
    let _ = send.finish();
    let result = within(T, "call", call).await.expect("task");
    assert!(
        matches!(
            &result,
            Err(peer::Error::Server {
                kind: ErrorKind::Offline,
                ..
            })
        ),
        "{:?}",
        result.as_ref().map(|c| &c.peer)
    );
}

#[tokio::test]
async fn a_fresh_peer_sends_call_as_first_and_nothing_before_it() {
    let fake = FakeServer::start();
    let dir = tempfile::tempdir().unwrap();
    let bob = bob_at(&fake, dir.path()).await;
    let mut events = bob.events();
    let call = tokio::spawn(async move { bob.call("alice", CallOptions::default()).await });
    let (conn, mut send, _recv, first) = fake.accept_request().await;
    assert_eq!(first, call_as("bob", "alice"), "the first request");
    write_frame(&mut send, &registered(&conn), MAX_FRAME)
        .await
        .unwrap();
    ends_offline(send, call).await;
    let ev = within(T, "registered", events.recv()).await.expect("event");
    assert!(
        matches!(ev, Event::Registered { ref name, .. } if name == "bob"),
        "{ev:?}"
    );
}

#[tokio::test]
async fn with_a_server_older_than_call_as_the_peer_registers_first() {
    let fake = FakeServer::start();
    let dir = tempfile::tempdir().unwrap();
    let bob = bob_at(&fake, dir.path()).await;
    let call = tokio::spawn(async move { bob.call("alice", CallOptions::default()).await });
    // What an older server does with a request it cannot decode.
    let (conn, mut send, _recv, first) = fake.accept_request().await;
    assert!(matches!(first, Message::CallAs { .. }), "{first:?}");
    let bad = Message::error(ErrorKind::Protocol, "bad request: unknown variant");
    write_frame(&mut send, &bad, MAX_FRAME).await.unwrap();
    let _ = send.finish();
    let _ = within(T, "error read", send.stopped()).await;
    conn.close(common::error::close::PROTOCOL.into(), b"bad request");
    // Then the old way, on a new connection.
    let (conn, mut send, _recv, first) = fake.accept_request().await;
    assert!(
        matches!(&first, Message::Register { name, presence: false } if name == "bob"),
        "{first:?}"
    );
    write_frame(&mut send, &registered(&conn), MAX_FRAME)
        .await
        .unwrap();
    let _ = send.finish();
    let (send, _recv, second) = FakeServer::next_request(&conn).await;
    assert!(
        matches!(&second, Message::Call { to, .. } if to == "alice"),
        "{second:?}"
    );
    ends_offline(send, call).await;
}

/// Two calls at once from a fresh peer: one registers (`CallAs`), the
/// other waits for that and calls on the registered link; both connect.
#[tokio::test]
async fn two_calls_at_once_from_a_fresh_peer_both_connect() {
    let server = TestServer::start().await;
    let (_alice, _t) = listening(&server, "alice", Policy::AcceptAll, Serve::Echo).await;
    let bob = server.peer("bob").await;
    let (one, two) = tokio::join!(
        within(
            T,
            "call one",
            bob.peer.call("alice", CallOptions::default())
        ),
        within(
            T,
            "call two",
            bob.peer.call("alice", CallOptions::default())
        ),
    );
    let (one, two) = (one.expect("call one"), two.expect("call two"));
    assert_eq!(one.peer, "alice");
    assert_eq!(two.peer, "alice");
}
