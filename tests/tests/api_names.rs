//! Names and text from the network, and the known_peers file, against a
//! lying server and broken files: a crafted caller name never reaches
//! known_peers, a broken known_peers file refuses calls on both sides (fail
//! closed), and a received file name with bidi controls is refused with a
//! clear error to the sender.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use common::framing::{read_frame, write_frame, MAX_FRAME};
use common::tls;
use common::{ErrorKind, Fingerprint, Identity, Message, PeerMessage};
use peer::{CallOptions, Event, Peer, Policy};
use tests::fake_server::FakeServer;
use tests::inproc::{listening, within, Serve, TestServer};

const T: Duration = Duration::from_secs(15);

/// Dials the callee at `addr` as the key `caller` and opens a stream, as a
/// caller the lying server vouched for would.
async fn dial_as(caller: &Identity, callee: Fingerprint, addr: SocketAddr) -> quinn::Connection {
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("ep");
    let conn = endpoint
        .connect_with(
            tests::dial::client_config(caller, callee),
            addr,
            tls::SERVER_NAME,
        )
        .expect("connect")
        .await
        .expect("handshake with the callee");
    let (mut send, _recv) = conn.open_bi().await.expect("stream");
    write_frame(&mut send, &PeerMessage::Ping { seq: 0 }, MAX_FRAME)
        .await
        .expect("first frame");
    conn
}

#[tokio::test]
async fn a_forged_caller_name_never_pins_a_contact() {
    let forged_key = Fingerprint([0x66; 32]);
    for from in [
        format!("bob {forged_key}"),
        format!("mallory\nbob {forged_key}"),
        "bob\u{202e}".to_owned(),
    ] {
        let server = FakeServer::start();
        let dir = tempfile::tempdir().expect("tempdir");
        let alice = Peer::new(server.peer_config(dir.path()))
            .await
            .expect("peer");
        let mut events = alice.events();
        let _listener = alice.listen(Policy::AcceptAll).expect("listen");
        let conn = server.accept_listener().await;

        let caller = Identity::generate().expect("caller id");
        let (mut send, mut recv) = conn.open_bi().await.expect("offer stream");
        let offer = Message::IncomingCall {
            call_id: 1,
            from: from.clone(),
            fingerprint: caller.fingerprint(),
        };
        write_frame(&mut send, &offer, MAX_FRAME)
            .await
            .expect("offer");
        let answer: Message = within(T, "answer", read_frame(&mut recv, MAX_FRAME))
            .await
            .expect("answer");
        if let Message::Accept { .. } = answer {
            // What the old code did: accept, let the caller in, and record
            // the name in known_peers once it opened a stream.
            let addr = alice.local_addr().expect("addr");
            let _conn = dial_as(&caller, alice.fingerprint(), addr).await;
            within(T, "connected", async {
                while !matches!(events.recv().await, Ok(Event::Connected { .. })) {}
            })
            .await;
        } else {
            let refused = within(T, "call_refused", async {
                loop {
                    match events.recv().await {
                        Ok(e @ Event::CallRefused { .. }) => return e,
                        Ok(Event::IncomingCall { from, .. }) => {
                            panic!("incoming_call emitted for {from:?}")
                        }
                        Ok(_) => {}
                        Err(e) => panic!("events: {e}"),
                    }
                }
            })
            .await;
            assert!(!refused.human().contains('\n'), "{}", refused.human());
        }
        let known = std::fs::read_to_string(dir.path().join("known_peers")).unwrap_or_default();
        assert!(
            !known.contains("bob"),
            "{from:?} reached known_peers:\n{known}"
        );
        let reader = peer::known_peers::KnownPeers::new(dir.path().join("known_peers"));
        assert_eq!(reader.get("bob").expect("readable"), None, "{from:?}");
        assert!(
            matches!(answer, Message::Reject { ref reason } if reason.contains("name rules")),
            "{from:?}: {answer:?}"
        );
    }
}

#[tokio::test]
async fn a_broken_known_peers_file_refuses_calls_on_both_sides() {
    let server = TestServer::start().await;
    let (mut alice, _t) = listening(&server, "alice", Policy::AcceptAll, Serve::Echo).await;
    let bob = server.peer("bob").await;
    let broken = "# contacts\ncarol not-a-key\n";

    // The callee's file is broken: the call is refused, the file untouched.
    let alice_file = alice.dir.path().join("known_peers");
    std::fs::write(&alice_file, broken).expect("write");
    let result = within(T, "call", bob.peer.call("alice", CallOptions::default())).await;
    let Err(err) = result else {
        panic!("the callee must refuse")
    };
    assert_eq!(err.kind(), ErrorKind::Rejected, "{err}");
    assert!(err.to_string().contains("known_peers"), "{err}");
    let ev = alice
        .wait_event(T, |e| matches!(e, Event::Error { .. }))
        .await;
    let Event::Error { kind, message } = ev else {
        unreachable!()
    };
    assert_eq!(kind, "known_peers");
    assert!(
        message.contains(&format!("{} line 2", alice_file.display())),
        "{message}"
    );
    assert_eq!(std::fs::read_to_string(&alice_file).expect("read"), broken);

    // The caller's file is broken: the call stops before it is made (the
    // callee never hears of it).
    std::fs::remove_file(&alice_file).expect("rm");
    while alice.events.try_recv().is_ok() {}
    let bob_file = bob.dir.path().join("known_peers");
    std::fs::write(&bob_file, broken).expect("write");
    let result = within(T, "call", bob.peer.call("alice", CallOptions::default())).await;
    let Err(err) = result else {
        panic!("the caller must stop")
    };
    assert_eq!(err.kind(), ErrorKind::KnownPeers, "{err}");
    assert!(err.to_string().contains("line 2"), "{err}");
    assert_eq!(std::fs::read_to_string(&bob_file).expect("read"), broken);
    while let Ok(e) = alice.events.try_recv() {
        assert!(
            !matches!(e, Event::IncomingCall { .. }),
            "the call was made: {e:?}"
        );
    }

    // Both files fixed: the call goes through and both sides record it.
    std::fs::write(&bob_file, "# contacts\n").expect("write");
    let call = within(T, "call", bob.peer.call("alice", CallOptions::default()))
        .await
        .expect("call");
    call.close();
    let kept = std::fs::read_to_string(&bob_file).expect("read");
    assert!(kept.starts_with("# contacts\nalice "), "{kept}");
}

#[tokio::test]
async fn a_file_name_with_bidi_controls_is_refused_with_a_clear_error() {
    let server = TestServer::start().await;
    let inbox = tempfile::tempdir().expect("tempdir");
    let (_alice, _t) = listening(
        &server,
        "alice",
        Policy::AcceptAll,
        Serve::Receive(inbox.path().to_owned(), 1 << 20),
    )
    .await;
    let bob = server.peer("bob").await;
    let call = within(T, "call", bob.peer.call("alice", CallOptions::default()))
        .await
        .expect("call");
    for name in [
        "invoice\u{202e}fdp.exe",
        "a\u{2067}b.txt",
        "a\u{1b}]0;x\u{7}.txt",
    ] {
        let (mut send, mut recv) = call
            .open(&PeerMessage::SendFile {
                name: name.into(),
                size: 4,
                sha256: ring_sha(b"abcd"),
            })
            .await
            .expect("open");
        let _ = send.write_all(b"abcd").await;
        let _ = send.finish();
        let r: PeerMessage = within(T, "result", read_frame(&mut recv, 1 << 16))
            .await
            .expect("result");
        let PeerMessage::SendResult { ok, message } = r else {
            panic!("{name:?}: {r:?}");
        };
        assert!(!ok, "{name:?} was stored");
        assert!(
            message.contains("control or bidi") && message.contains("\\u{"),
            "{name:?}: {message}"
        );
        assert!(
            !message.chars().any(common::text::is_unsafe_for_terminal),
            "{message:?}"
        );
    }
    let stored: Vec<_> = std::fs::read_dir(inbox.path()).expect("ls").collect();
    assert!(stored.is_empty(), "{stored:?}");
}

fn ring_sha(data: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}
