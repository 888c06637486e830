//! The server's side of `Watch` with a hand-driven client: the states in
//! order, the per-connection cap, the lookup rate, a stalled watcher not
//! holding up another, and subscriptions gone with the stream or the
//! connection; and the library's [`peer::Watcher`].

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use common::framing::{read_frame, write_frame, MAX_FRAME};
use common::messages::{MAX_WATCHED, MAX_WATCH_BATCH};
use common::{ErrorKind, Message};
use peer::{Event, Policy};
use tests::inproc::{listening, listening_tuned, within, RawClient, Serve, TestServer};
use tests::relay_tap::metric;

const T: Duration = Duration::from_secs(10);

struct WatchStream {
    send: quinn::SendStream,
    recv: quinn::RecvStream,
}

impl WatchStream {
    async fn open(client: &RawClient) -> Self {
        let (send, recv) = client.conn.open_bi().await.expect("stream");
        Self { send, recv }
    }

    async fn ask(&mut self, names: Vec<String>) {
        let msg = Message::Watch { names };
        write_frame(&mut self.send, &msg, MAX_FRAME)
            .await
            .expect("write");
    }

    async fn next(&mut self) -> Message {
        within(T, "a frame", read_frame(&mut self.recv, MAX_FRAME))
            .await
            .expect("frame")
    }

    /// Reads states up to the `Watching` or `Error` answering a `Watch`.
    async fn answer(&mut self) -> (Vec<Message>, Message) {
        let mut states = vec![];
        loop {
            match self.next().await {
                m @ Message::Presence { .. } => states.push(m),
                m => return (states, m),
            }
        }
    }
}

fn names(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}")).collect()
}

async fn until_metric(server: &TestServer, name: &str, value: u64) {
    within(T, &format!("{name} = {value}"), async {
        while metric(server, name) != value {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn states_now_then_changes_and_no_address_ever() {
    let server = TestServer::start().await;
    let client = RawClient::connect(&server).await;
    let mut watch = WatchStream::open(&client).await;
    watch.ask(vec!["alice".into(), "alice".into()]).await;
    let (states, answer) = watch.answer().await;
    assert_eq!(
        states,
        vec![Message::Presence {
            name: "alice".into(),
            online: false,
            fingerprint: None
        }],
        "duplicates once; never registered"
    );
    assert_eq!(answer, Message::Watching { count: 1 });
    let (alice, listener) = listening(&server, "alice", Policy::AcceptAll, Serve::Echo).await;
    let fp = alice.peer.fingerprint();
    assert_eq!(
        watch.next().await,
        Message::Presence {
            name: "alice".into(),
            online: true,
            fingerprint: Some(fp)
        }
    );
    listener.abort();
    alice.peer.shutdown().await;
    assert_eq!(
        watch.next().await,
        Message::Presence {
            name: "alice".into(),
            online: false,
            fingerprint: Some(fp)
        }
    );
}

#[tokio::test]
async fn a_connection_watches_at_most_256_names_and_a_refusal_keeps_the_stream() {
    let server = TestServer::start_tuned(|c| c.limits.lookup_rate.burst = 10_000).await;
    let client = RawClient::connect(&server).await;
    let mut one = WatchStream::open(&client).await;
    let mut two = WatchStream::open(&client).await;
    let all = names("n", MAX_WATCHED);
    for (i, batch) in all.chunks(MAX_WATCH_BATCH).enumerate() {
        let stream = if i == 0 { &mut one } else { &mut two };
        stream.ask(batch.to_vec()).await;
        let (states, answer) = stream.answer().await;
        assert_eq!(states.len(), batch.len());
        assert!(matches!(answer, Message::Watching { .. }), "{answer:?}");
    }
    // The cap is per connection, over both streams.
    two.ask(vec!["one-more".into()]).await;
    let (states, answer) = two.answer().await;
    assert!(states.is_empty());
    match answer {
        Message::Error { kind, message } => {
            assert_eq!(kind, ErrorKind::TooManyNames);
            assert!(message.contains("256"), "{message}");
        }
        other => panic!("expected too_many_names, got {other:?}"),
    }
    assert_eq!(
        metric(&server, "rendezvous_watch_subscriptions"),
        MAX_WATCHED as u64
    );
    // Too many in one frame: refused too.
    let mut three = WatchStream::open(&RawClient::connect(&server).await).await;
    three.ask(names("m", MAX_WATCH_BATCH + 1)).await;
    let (_, answer) = three.answer().await;
    assert!(
        matches!(
            answer,
            Message::Error {
                kind: ErrorKind::TooManyNames,
                ..
            }
        ),
        "{answer:?}"
    );
    // The refused stream still works: a name it may watch.
    two.ask(vec!["n100".into()]).await;
    let (_, answer) = two.answer().await;
    assert!(matches!(answer, Message::Watching { .. }), "{answer:?}");
}

#[tokio::test]
async fn each_watched_name_costs_a_lookup() {
    let server = TestServer::start_tuned(|c| {
        c.limits.lookup_rate.burst = 50;
        c.limits.lookup_rate.per_second = 0.001;
    })
    .await;
    let client = RawClient::connect(&server).await;
    let mut watch = WatchStream::open(&client).await;
    watch.ask(names("a", 40)).await;
    let (_, answer) = watch.answer().await;
    assert!(
        matches!(answer, Message::Watching { count: 40 }),
        "{answer:?}"
    );
    watch.ask(names("b", 20)).await;
    let (states, answer) = watch.answer().await;
    assert!(states.is_empty(), "nothing added");
    match answer {
        Message::Error { kind, message } => {
            assert_eq!(kind, ErrorKind::RateLimited, "{message}");
        }
        other => panic!("expected rate_limited, got {other:?}"),
    }
    // The names it watches cost nothing again, and are not looked up (or
    // told) again; the 10 tokens left buy 10.
    watch.ask(names("a", 40)).await;
    let (states, answer) = watch.answer().await;
    assert!(states.is_empty(), "told again: {states:?}");
    assert!(
        matches!(answer, Message::Watching { count: 40 }),
        "{answer:?}"
    );
    watch.ask(names("b", 10)).await;
    assert!(matches!(
        watch.answer().await.1,
        Message::Watching { count: 50 }
    ));
    // A lookup shares the bucket: it is empty now.
    let looked = client.lookup("a0").await;
    assert!(
        matches!(
            looked,
            Message::Error {
                kind: ErrorKind::RateLimited,
                ..
            }
        ),
        "{looked:?}"
    );
}

#[tokio::test]
async fn subscriptions_are_gone_when_the_stream_or_the_connection_goes() {
    let server = TestServer::start().await;
    let client = RawClient::connect(&server).await;
    let mut a = WatchStream::open(&client).await;
    a.ask(names("x", 10)).await;
    a.answer().await;
    let other = RawClient::connect(&server).await;
    let mut b = WatchStream::open(&other).await;
    b.ask(names("x", 5)).await;
    b.answer().await;
    until_metric(&server, "rendezvous_watch_subscriptions", 15).await;
    until_metric(&server, "rendezvous_watch_streams", 2).await;
    // The stream goes (the watcher stops reading): its names go.
    a.recv.stop(0u32.into()).expect("stop");
    until_metric(&server, "rendezvous_watch_subscriptions", 5).await;
    // The connection goes: the rest.
    other.conn.close(0u32.into(), b"bye");
    until_metric(&server, "rendezvous_watch_subscriptions", 0).await;
    until_metric(&server, "rendezvous_watch_streams", 0).await;
}

#[tokio::test]
async fn a_stalled_watcher_does_not_hold_up_another() {
    let server = TestServer::start().await;
    // A watcher that never reads (and grants a few bytes of credit): its
    // buffer keeps only the latest state, and its stream is reset once a
    // state waits longer than the reply timeout.
    let mut transport = quinn::TransportConfig::default();
    transport.stream_receive_window(64u32.into());
    let stalled = RawClient::connect_tuned(
        &server,
        std::sync::Arc::new(common::Identity::generate().expect("id")),
        None,
        "127.0.0.1:0".parse().expect("addr"),
        Some(transport),
    )
    .await;
    let mut s = WatchStream::open(&stalled).await;
    s.ask(vec!["alice".into()]).await;
    let live = RawClient::connect(&server).await;
    let mut w = WatchStream::open(&live).await;
    w.ask(vec!["alice".into()]).await;
    w.answer().await;
    let quick = Duration::from_secs(2);
    // One key, listening again and again.
    let keys = tempfile::tempdir().expect("dir");
    let key = keys.path().join("identity.pem");
    for _ in 0..10 {
        let (alice, listener) =
            listening_tuned(&server, "alice", Policy::AcceptAll, Serve::Echo, |c| {
                c.identity = key.clone();
            })
            .await;
        let up = within(quick, "online, stalled or not", w.next()).await;
        assert!(
            matches!(up, Message::Presence { online: true, .. }),
            "{up:?}"
        );
        listener.abort();
        alice.peer.shutdown().await;
        let down = within(quick, "offline, stalled or not", w.next()).await;
        assert!(
            matches!(down, Message::Presence { online: false, .. }),
            "{down:?}"
        );
    }
    // The stalled watcher lost its stream; the live one keeps its own.
    until_metric(&server, "rendezvous_watch_streams", 1).await;
    drop(s);
}

#[tokio::test]
async fn the_library_watcher_yields_states_and_presence_events() {
    let server = TestServer::start().await;
    let mut watcher_peer = server.peer("watcher").await;
    let mut watcher = watcher_peer
        .peer
        .watch(vec!["alice".into()])
        .expect("watch");
    let first = within(T, "state now", watcher.next()).await.expect("some");
    let first = first.expect("ok");
    assert!(!first.online && first.fingerprint.is_none(), "{first:?}");
    let (alice, _l) = listening(&server, "alice", Policy::AcceptAll, Serve::Echo).await;
    let up = within(T, "online", watcher.next()).await.expect("some");
    let up = up.expect("ok");
    assert!(up.online);
    assert_eq!(up.fingerprint, Some(alice.peer.fingerprint()));
    watcher_peer
        .wait_event(
            T,
            |e| matches!(e, Event::Presence { online: true, name, .. } if name == "alice"),
        )
        .await;
    assert!(
        watcher_peer
            .peer
            .watch(names("n", MAX_WATCHED + 1))
            .is_err(),
        "more than the cap is refused before asking"
    );
}

/// A `Watch` frame that arrives in pieces while a watched name changes:
/// the half-read frame is kept (the read is not dropped for the push), so
/// the stream stays in step.
#[tokio::test]
async fn a_frame_arriving_in_pieces_while_a_state_changes_is_read_whole() {
    let server = TestServer::start().await;
    let client = RawClient::connect(&server).await;
    let mut watch = WatchStream::open(&client).await;
    watch.ask(vec!["alice".into()]).await;
    let (_, answer) = watch.answer().await;
    assert!(
        matches!(answer, Message::Watching { count: 1 }),
        "{answer:?}"
    );
    // The first half of the next frame.
    let frame = common::framing::encode(
        &Message::Watch {
            names: names("b", 50),
        },
        MAX_FRAME,
    )
    .expect("encode");
    let (head, tail) = frame.split_at(frame.len() / 2);
    watch.send.write_all(head).await.expect("write");
    // alice comes online: the server pushes her state meanwhile.
    let (_alice, _t) = listening(&server, "alice", Policy::AcceptAll, Serve::Echo).await;
    let pushed = watch.next().await;
    assert!(
        matches!(&pushed, Message::Presence { name, online: true, .. } if name == "alice"),
        "{pushed:?}"
    );
    watch.send.write_all(tail).await.expect("write");
    let (states, answer) = watch.answer().await;
    assert_eq!(states.len(), 50, "{states:?}");
    assert!(
        matches!(answer, Message::Watching { count: 51 }),
        "{answer:?}"
    );
}
