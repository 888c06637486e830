//! `peer::forward` through the library against an in-process server: the
//! admission limit (past it a clear refusal, not a hang) and the lost-call
//! rule (an unanswered stream means call again), with listeners written
//! here so they can misbehave.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use peer::forward::{ForwardConfig, Forwarder};
use peer::{Event, Policy};
use tests::inproc::{within, TestPeer, TestServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const T: Duration = Duration::from_secs(15);

/// How alice treats `Forward` streams.
#[derive(Clone, Copy)]
enum Alice {
    /// Bridges to this target, as `listen --forward-to` does.
    ForwardTo(SocketAddr),
    /// Takes the stream and never answers (a listener that died while
    /// its call still looks up).
    Silent,
}

/// alice listening and serving as `how` says; counts the calls she took.
async fn alice(server: &TestServer, how: Alice) -> (TestPeer, Arc<AtomicUsize>) {
    let mut p = server.peer("alice").await;
    let mut listener = p.peer.listen(Policy::AcceptAll).expect("listen");
    p.wait_event(T, |e| matches!(e, Event::Registered { .. }))
        .await;
    let calls = Arc::new(AtomicUsize::new(0));
    let count = calls.clone();
    tokio::spawn(async move {
        while let Some(Ok(call)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let turns = peer::forward::prepare_call(&call);
            let call = Arc::new(call);
            tokio::spawn(async move {
                let mut held = Vec::new();
                while let Some(Ok((purpose, send, recv))) = call.accept().await {
                    match how {
                        Alice::ForwardTo(target) => {
                            let (target, turns) = (target.to_string(), turns.clone());
                            tokio::spawn(async move {
                                let connect = Duration::from_secs(4);
                                peer::forward::serve_target(
                                    &purpose, send, recv, &target, connect, &turns,
                                )
                                .await
                            });
                        }
                        Alice::Silent => held.push((send, recv)),
                    }
                }
            });
        }
    });
    (p, calls)
}

/// bob forwarding a local port to alice; returns him and the port.
async fn bob(server: &TestServer, config: ForwardConfig) -> (TestPeer, SocketAddr) {
    let bob = server.peer("bob").await;
    let forwarder = Forwarder::new(bob.peer.clone(), "alice", config);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { forwarder.serve(listener).await });
    (bob, addr)
}

/// One line through a forwarded connection, which stays open.
async fn served(addr: SocketAddr) -> TcpStream {
    let mut conn = TcpStream::connect(addr).await.unwrap();
    conn.write_all(b"ping\n").await.unwrap();
    let mut line = [0u8; 5];
    within(T, "the echo", conn.read_exact(&mut line))
        .await
        .unwrap();
    assert_eq!(&line, b"ping\n");
    conn
}

fn failed(reason: &'static str) -> impl Fn(&Event) -> bool {
    move |e| matches!(e, Event::ForwardFailed { reason: r, .. } if r == reason)
}

#[tokio::test]
async fn past_the_limit_a_connection_is_refused_at_once() {
    let server = TestServer::start().await;
    let echo = tests::tcp_services::echo_server();
    let (_alice, _) = alice(&server, Alice::ForwardTo(echo)).await;
    let config = ForwardConfig {
        max_connections: 2,
        ..ForwardConfig::default()
    };
    let (mut bob, addr) = bob(&server, config).await;
    let first = served(addr).await;
    let _second = served(addr).await;
    // The third is closed at once (EOF or reset), not left hanging.
    let mut third = TcpStream::connect(addr).await.unwrap();
    let mut buf = [0u8; 16];
    let n = within(T, "the refusal", third.read(&mut buf)).await;
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    bob.wait_event(T, failed("busy")).await;
    // A slot frees when a connection ends: the next one is served again.
    drop(first);
    let deadline = Instant::now() + T;
    loop {
        let mut conn = TcpStream::connect(addr).await.unwrap();
        conn.write_all(b"ping\n").await.unwrap();
        let mut line = [0u8; 5];
        if within(T, "an answer or a close", conn.read_exact(&mut line))
            .await
            .is_ok()
        {
            assert_eq!(&line, b"ping\n");
            break;
        }
        assert!(Instant::now() < deadline, "no slot freed within {T:?}");
    }
}

#[tokio::test]
async fn an_unanswered_stream_counts_as_a_lost_call() {
    let server = TestServer::start().await;
    let (_alice, calls) = alice(&server, Alice::Silent).await;
    let config = ForwardConfig {
        answer_timeout: Duration::from_millis(800),
        ..ForwardConfig::default()
    };
    let (mut bob, addr) = bob(&server, config).await;
    let started = Instant::now();
    let mut conn = TcpStream::connect(addr).await.unwrap();
    let mut buf = [0u8; 16];
    let n = within(T, "the close", conn.read(&mut buf)).await;
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    bob.wait_event(T, failed("call_lost")).await;
    // The first call's stream went unanswered, so bob called again (and
    // gave up when that one was silent too), all in about two timeouts.
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_listener_that_does_not_forward_is_told_apart() {
    let server = TestServer::start().await;
    // An echo listener: it resets streams it does not serve.
    let (_alice, _t) = tests::inproc::listening(
        &server,
        "alice",
        Policy::AcceptAll,
        tests::inproc::Serve::Echo,
    )
    .await;
    let (mut bob, addr) = bob(&server, ForwardConfig::default()).await;
    let _conn = TcpStream::connect(addr).await.unwrap();
    let ev = bob
        .wait_event(T, |e| matches!(e, Event::ForwardFailed { .. }))
        .await;
    // tests::inproc's echo listener drops a stream it does not serve: it
    // ends without the answer, which is not a lost call.
    assert!(
        matches!(&ev, Event::ForwardFailed { reason, .. } if reason == "not_forwarding"),
        "{ev:?}"
    );
}

/// The streams of one call take turns at its send buffer
/// (`peer::forward::Turns`): eight 4 MiB transfers at once on one call
/// (32 MiB against its 16 MiB send window) move evenly, so when the first
/// ends every other has at least 90 % of its bytes across (99 % measured). Without the
/// turns, quinn gives the room freed by each acknowledgement to the
/// writer that blocked last, and the first stream ends while another has
/// 43–52 % across (five runs).
#[tokio::test]
async fn the_streams_of_one_call_share_its_send_buffer_evenly() {
    const STREAMS: usize = 8;
    const PIECE: usize = 256 * 1024;
    const PIECES: usize = 16;
    const EACH: u64 = (PIECE * PIECES) as u64;
    let server = TestServer::start().await;
    let alice = server.peer("alice").await;
    let mut listener = alice.peer.listen(Policy::AcceptAll).expect("listen");
    let counts: Arc<Vec<std::sync::atomic::AtomicU64>> =
        Arc::new((0..STREAMS).map(|_| Default::default()).collect());
    let (first_done, mut first) = tokio::sync::mpsc::channel::<Vec<u64>>(STREAMS);
    let seen = counts.clone();
    tokio::spawn(async move {
        let Some(Ok(call)) = listener.accept().await else {
            return;
        };
        let mut index = 0;
        while let Some(Ok((_, _send, mut recv))) = call.accept().await {
            let (seen, first_done) = (seen.clone(), first_done.clone());
            let i = index;
            index += 1;
            tokio::spawn(async move {
                while let Ok(Some(chunk)) = recv.read_chunk(usize::MAX, true).await {
                    seen[i].fetch_add(chunk.bytes.len() as u64, Ordering::SeqCst);
                }
                let now: Vec<u64> = seen.iter().map(|c| c.load(Ordering::SeqCst)).collect();
                let _ = first_done.send(now).await;
            });
        }
    });
    let bob = server.peer("bob").await;
    let call = bob
        .peer
        .call("alice", peer::CallOptions::default())
        .await
        .expect("call");
    let turns = peer::forward::prepare_call(&call);
    let piece = bytes::Bytes::from(vec![7u8; PIECE]);
    let mut writers = tokio::task::JoinSet::new();
    for _ in 0..STREAMS {
        let (mut send, _recv) = call
            .open(&common::PeerMessage::Pipe)
            .await
            .expect("open a stream");
        let (mut writer, piece) = (turns.writer(), piece.clone());
        writers.spawn(async move {
            for _ in 0..PIECES {
                writer.write(&mut send, piece.clone()).await.expect("write");
            }
            send.finish().expect("finish");
            let _ = send.stopped().await;
        });
    }
    let at_first_end = within(T, "the first stream to end", first.recv())
        .await
        .expect("a stream ended");
    // The purpose frame counts too: a few bytes over EACH for the first.
    let (least, most) = at_first_end
        .iter()
        .fold((u64::MAX, 0), |(lo, hi), n| (lo.min(*n), hi.max(*n)));
    assert!(most >= EACH, "the first one ended: {at_first_end:?}");
    assert!(
        least >= EACH / 10 * 9,
        "when the first stream ended, one had {least} of {EACH} bytes across: {at_first_end:?}"
    );
    within(T, "every stream to end", async {
        while writers.join_next().await.is_some() {}
    })
    .await;
}
