//! Direct calls through the `peer` library against an in-process server on
//! loopback: data integrity, every failure a caller can meet, file transfer
//! safety, many callers at once, and the server stepping aside.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use common::{ErrorKind, Identity, Message, PeerMessage};
use peer::{CallOptions, Event, Policy};
use rand::RngCore;
use tests::inproc::{echo_roundtrip, fake_callee, listening, within, RawClient, Serve, TestServer};

const T: Duration = Duration::from_secs(15);

#[tokio::test]
async fn one_megabyte_echoes_back_identical() {
    let server = TestServer::start().await;
    let (alice, _t) = listening(&server, "alice", Policy::AcceptAll, Serve::Echo).await;
    let bob = server.peer("bob").await;
    let call = within(T, "call", bob.peer.call("alice", CallOptions::default()))
        .await
        .expect("call");
    assert_eq!(call.peer, "alice");
    assert_eq!(call.fingerprint, alice.peer.fingerprint());
    assert_eq!(call.path(), peer::Path::Direct);
    assert_eq!(call.remote_addr(), alice.peer.local_addr().expect("addr"));
    assert!(call.setup > Duration::ZERO && call.setup < T);
    let ev = serde_json::to_value(call.connected_event()).expect("json");
    for field in [
        "peer",
        "fingerprint",
        "path",
        "remote_addr",
        "setup_ms",
        "server_ms",
    ] {
        assert!(ev.get(field).is_some(), "connected lacks {field}: {ev}");
    }
    let mut data = vec![0u8; 1 << 20];
    rand::thread_rng().fill_bytes(&mut data);
    assert!(
        echo_roundtrip(&call, &data).await == data,
        "1 MiB came back different"
    );
}

/// A `Write` the test can read back after the pipe's thread is done with it.
#[derive(Clone, Default)]
struct Shared(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Shared {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The CLI's stdin/stdout pipe (`peer::stdio_pipe`, one thread each way)
/// through a real call: 8 MiB out, the echo back in, every byte in order.
#[tokio::test]
async fn the_cli_pipe_threads_move_every_byte_both_ways() {
    let server = TestServer::start().await;
    let (_alice, _t) = listening(&server, "alice", Policy::AcceptAll, Serve::Echo).await;
    let bob = server.peer("bob").await;
    let call = within(T, "call", bob.peer.call("alice", CallOptions::default()))
        .await
        .expect("call");
    let mut data = vec![0u8; 8 << 20];
    rand::thread_rng().fill_bytes(&mut data);
    let (send, recv) = call.open(&PeerMessage::Pipe).await.expect("stream");
    let out = Shared::default();
    let input = std::io::Cursor::new(data.clone());
    let (sent, received) = within(
        T,
        "pipe",
        peer::stdio_pipe::pipe_threads(send, recv, input, out.clone()),
    )
    .await
    .expect("pipe");
    assert_eq!((sent, received), (data.len() as u64, data.len() as u64));
    assert!(
        *out.0.lock().unwrap() == data,
        "the echo came back different"
    );
}

#[tokio::test]
async fn not_found_offline_and_rejected() {
    let server = TestServer::start().await;
    let bob = server.peer("bob").await;
    let err = bob
        .peer
        .call("nobody", CallOptions::default())
        .await
        .expect_err("not found");
    assert_eq!(err.kind(), ErrorKind::NotFound);

    // carol registered once, then left: offline. While she listens she is
    // callable (so "offline" below is her leaving, not a name nobody can call).
    let carol = server.peer("carol").await;
    let mut l = carol.peer.listen(Policy::AcceptAll).expect("listen");
    let mut ev = carol.peer.events();
    within(T, "registered", async {
        while !matches!(ev.recv().await, Ok(Event::Registered { .. })) {}
    })
    .await;
    let placed = within(
        T,
        "call carol",
        bob.peer.call("carol", CallOptions::default()),
    )
    .await
    .expect("carol is callable while she listens");
    assert_eq!(placed.peer, "carol");
    assert_eq!(placed.fingerprint, carol.peer.fingerprint());
    // The listener hands the call over with the caller's first stream.
    let _stream = placed
        .open(&PeerMessage::Ping { seq: 7 })
        .await
        .expect("open a stream");
    let answered = within(T, "carol's listener gets the call", l.accept())
        .await
        .expect("still listening")
        .expect("carol's side of the call");
    assert_eq!(answered.peer, "bob");
    assert_eq!(answered.fingerprint, bob.peer.fingerprint());
    let (purpose, _, _) = within(T, "bob's stream", answered.accept())
        .await
        .expect("a stream")
        .expect("its first frame");
    assert_eq!(purpose, PeerMessage::Ping { seq: 7 });
    placed.close();
    drop(l);
    drop(carol);
    let err = within(T, "offline", async {
        loop {
            match bob.peer.call("carol", CallOptions::default()).await {
                Err(e) if e.kind() == ErrorKind::Offline => return e,
                _ => tokio::task::yield_now().await,
            }
        }
    })
    .await;
    assert!(err.to_string().contains("carol"), "{err}");

    let (_dave, _t) = listening(
        &server,
        "dave",
        Policy::AllowList(vec!["erin".into()]),
        Serve::Echo,
    )
    .await;
    let err = bob
        .peer
        .call("dave", CallOptions::default())
        .await
        .expect_err("rejected");
    assert_eq!(err.kind(), ErrorKind::Rejected);
    assert!(err.to_string().contains("allow-list"), "{err}");
    let erin = server.peer("erin").await;
    erin.peer
        .call("dave", CallOptions::default())
        .await
        .expect("erin is allowed");
}

#[tokio::test]
async fn changed_key_is_refused_unless_accepted() {
    let server = TestServer::start().await;
    let (_alice, _t) = listening(&server, "alice", Policy::AcceptAll, Serve::Echo).await;
    let bob = server.peer("bob").await;
    let kp = peer::known_peers::KnownPeers::new(bob.dir.path().join("known_peers"));
    kp.record("alice", &common::Fingerprint([9; 32]))
        .expect("seed a different key");
    let err = bob
        .peer
        .call("alice", CallOptions::default())
        .await
        .expect_err("key changed");
    assert_eq!(err.kind(), ErrorKind::KeyChanged);
    assert!(err.to_string().contains("--accept-new-key"), "{err}");
    let opts = CallOptions {
        accept_new_key: true,
        ..CallOptions::default()
    };
    let call = bob
        .peer
        .call("alice", opts)
        .await
        .expect("accepted new key");
    assert_eq!(
        kp.get("alice").expect("read"),
        Some(call.fingerprint),
        "the new key is recorded"
    );
}

#[tokio::test]
async fn wrong_key_at_the_address_is_skipped_and_reported() {
    let server = TestServer::start().await;
    let stranger = Identity::generate().expect("id");
    let _fake = fake_callee(&server, "mallory", Some(&stranger)).await;
    let bob = server.peer("bob").await;
    let err = within(
        T,
        "unreachable",
        bob.peer.call(
            "mallory",
            CallOptions {
                timeout: Duration::from_secs(5),
                ..Default::default()
            },
        ),
    )
    .await
    .expect_err("wrong key");
    assert_eq!(err.kind(), ErrorKind::Unreachable);
    assert!(err.to_string().contains("a key did not match"), "{err}");
}

#[tokio::test]
async fn black_holed_callee_is_unreachable_within_the_timeout() {
    let server = TestServer::start().await;
    let _fake = fake_callee(&server, "hole", None).await;
    let bob = server.peer("bob").await;
    let started = std::time::Instant::now();
    let opts = CallOptions {
        timeout: Duration::from_secs(2),
        ..Default::default()
    };
    let err = within(T, "give up", bob.peer.call("hole", opts))
        .await
        .expect_err("unreachable");
    assert_eq!(err.kind(), ErrorKind::Unreachable);
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "gave up at the deadline: {:?}",
        started.elapsed()
    );
    assert!(
        err.to_string().contains("127.0.0.1"),
        "says what was tried: {err}"
    );
}

#[tokio::test]
async fn server_forwards_only_vetted_candidates() {
    let server = TestServer::start().await;
    let fake = fake_callee(&server, "carol", None).await;
    let caller = RawClient::connect(&server).await;
    let reply = caller
        .request(&Message::Register {
            name: "caller".into(),
            presence: false,
        })
        .await;
    assert!(matches!(reply, Message::Registered { .. }));
    let claimed = vec![
        "203.0.113.9:9".parse().expect("addr"),
        "192.168.7.7:4000".parse().expect("addr"),
        "127.0.0.1:1".parse().expect("addr"),
    ];
    let answer = caller
        .request(&Message::Call {
            to: "carol".into(),
            candidates: claimed,
            hide_addresses: false,
        })
        .await;
    assert!(matches!(answer, Message::CallAccepted { .. }), "{answer:?}");
    let seen = match within(T, "dial", fake.dial).await.expect("fake callee") {
        Message::Dial { candidates, .. } => candidates,
        other => panic!("{other:?}"),
    };
    let observed = caller.endpoint.local_addr().expect("addr");
    assert_eq!(
        seen,
        vec![observed, "192.168.7.7:4000".parse().expect("addr")],
        "observed first, then private ones only"
    );
}

async fn file_server(
    server: &TestServer,
    max: u64,
) -> (tempfile::TempDir, tests::inproc::TestPeer) {
    let dir = tempfile::tempdir().expect("dir");
    let (alice, _t) = listening(
        server,
        "alice",
        Policy::AcceptAll,
        Serve::Receive(dir.path().to_owned(), max),
    )
    .await;
    (dir, alice)
}

fn stored(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .expect("read")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect()
}

#[tokio::test]
async fn send_file_verified_and_hostile_transfers_leave_nothing() {
    let server = TestServer::start().await;
    let (dir, _alice) = file_server(&server, 1 << 20).await;
    let bob = server.peer("bob").await;
    let call = bob
        .peer
        .call("alice", CallOptions::default())
        .await
        .expect("call");

    let src = tempfile::tempdir().expect("src");
    let file = src.path().join("report.bin");
    let mut data = vec![0u8; 300_000];
    rand::thread_rng().fill_bytes(&mut data);
    std::fs::write(&file, &data).expect("write");
    let said = peer::app::send_file(&call, &file, |_| {})
        .await
        .expect("sent");
    assert!(said.contains("report.bin"), "{said}");
    assert_eq!(
        std::fs::read(dir.path().join("report.bin")).expect("stored"),
        data
    );

    // Tampered: the hash does not match the bytes.
    let sha = [0u8; 32];
    let (mut send, mut recv) = call
        .open(&PeerMessage::SendFile {
            name: "tampered.bin".into(),
            size: 4,
            sha256: sha,
        })
        .await
        .expect("open");
    send.write_all(b"abcd").await.expect("write");
    send.finish().expect("finish");
    let r: PeerMessage = common::framing::read_frame(&mut recv, 1 << 16)
        .await
        .expect("result");
    assert!(
        matches!(r, PeerMessage::SendResult { ok: false, ref message } if message.contains("SHA-256")),
        "{r:?}"
    );

    // Truncated: fewer bytes than announced.
    let (sha, _) = (ring_sha(b"abcdefgh"), 8);
    let (mut send, mut recv) = call
        .open(&PeerMessage::SendFile {
            name: "short.bin".into(),
            size: 8,
            sha256: sha,
        })
        .await
        .expect("open");
    send.write_all(b"abcd").await.expect("write");
    send.finish().expect("finish");
    let r: PeerMessage = common::framing::read_frame(&mut recv, 1 << 16)
        .await
        .expect("result");
    assert!(
        matches!(r, PeerMessage::SendResult { ok: false, ref message } if message.contains("ended after 4 of 8")),
        "{r:?}"
    );

    // Hostile names and over-size files are refused before a byte is stored.
    for (name, size) in [
        ("../escape.bin", 4),
        ("/etc/passwd", 4),
        (".hidden", 4),
        ("big.bin", 2 << 20),
    ] {
        let (mut send, mut recv) = call
            .open(&PeerMessage::SendFile {
                name: name.into(),
                size,
                sha256: ring_sha(b"abcd"),
            })
            .await
            .expect("open");
        let _ = send.write_all(b"abcd").await;
        let _ = send.finish();
        let r: PeerMessage = common::framing::read_frame(&mut recv, 1 << 16)
            .await
            .expect("result");
        assert!(
            matches!(r, PeerMessage::SendResult { ok: false, .. }),
            "{name}: {r:?}"
        );
    }
    assert_eq!(
        stored(dir.path()),
        vec!["report.bin".to_owned()],
        "nothing else was left behind"
    );
    assert!(!src
        .path()
        .parent()
        .expect("parent")
        .join("escape.bin")
        .exists());
}

fn ring_sha(data: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

#[tokio::test]
async fn twenty_callers_at_once() {
    // All callers share 127.0.0.1: lift the per-source limits, which are not under test here.
    let dir = tempfile::tempdir().expect("dir");
    let server = TestServer::start_with(
        dir.path().to_owned(),
        "127.0.0.1:0".parse().expect("addr"),
        |l| {
            l.register_rate = rendezvous::Rate {
                burst: 1000,
                per_second: 1000.0,
            };
            l.call_rate = rendezvous::Rate {
                burst: 1000,
                per_second: 1000.0,
            };
        },
    )
    .await;
    let (_alice, _t) = listening(&server, "alice", Policy::AcceptAll, Serve::Echo).await;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..20u8 {
        let bob = server.peer(&format!("caller-{i}")).await;
        tasks.spawn(async move {
            let call = bob
                .peer
                .call("alice", CallOptions::default())
                .await
                .expect("call");
            let data = vec![i; 50_000];
            assert!(
                echo_roundtrip(&call, &data).await == data,
                "caller {i} got other bytes back"
            );
            call.close();
        });
    }
    let mut done = 0;
    while let Some(r) = within(T, "20 calls", tasks.join_next()).await {
        r.expect("caller task");
        done += 1;
    }
    assert_eq!(done, 20);
}

#[tokio::test]
async fn call_survives_the_server_going_away() {
    let mut server = TestServer::start().await;
    let (_alice, _t) = listening(&server, "alice", Policy::AcceptAll, Serve::Echo).await;
    let bob = server.peer("bob").await;
    let call = bob
        .peer
        .call("alice", CallOptions::default())
        .await
        .expect("call");
    server.stop().await;
    let answered = peer::app::ping(
        &call,
        5,
        Duration::from_millis(100),
        Duration::from_secs(3),
        |_, _| {},
    )
    .await
    .expect("pings");
    assert_eq!(answered, 5);
    assert!(echo_roundtrip(&call, b"still here").await == b"still here");
}
