//! Registration, lookup and server trust through the `peer` library against
//! an in-process server on loopback.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use common::error::close;
use common::Message;
use peer::{ErrorKind, Event, Peer, Policy};
use tests::inproc::{within, RawClient, TestServer};

const T: Duration = Duration::from_secs(10);

#[tokio::test]
async fn register_lookup_and_name_taken() {
    let server = TestServer::start().await;
    let mut alice = server.peer("alice").await;
    let _listener = alice.peer.listen(Policy::AcceptAll).expect("listen");
    let reg = alice
        .wait_event(T, |e| matches!(e, Event::Registered { .. }))
        .await;
    let Event::Registered {
        name,
        fingerprint,
        observed_addr,
        transport,
    } = reg
    else {
        unreachable!()
    };
    assert_eq!(name, "alice");
    assert_eq!(transport, "udp", "UDP works on loopback: no fallback");
    assert_eq!(fingerprint, alice.peer.fingerprint().to_string());
    assert_eq!(
        observed_addr,
        alice.peer.local_addr().expect("addr").to_string()
    );

    let bob = server.peer("bob").await;
    let info = bob.peer.lookup("alice").await.expect("lookup");
    assert!(info.online);
    assert_eq!(info.fingerprint, alice.peer.fingerprint());
    let err = bob.peer.lookup("nobody").await.expect_err("not found");
    assert_eq!(err.kind(), ErrorKind::NotFound);

    // Another key asking for "alice" is refused, and listening ends on it.
    let thief = server.peer("alice").await;
    let mut stolen = thief.peer.listen(Policy::AcceptAll).expect("listen");
    let err = within(T, "name_taken", stolen.accept())
        .await
        .expect("an outcome")
        .expect_err("taken");
    assert_eq!(err.kind(), ErrorKind::NameTaken);
    assert!(err.to_string().contains("another key"), "{err}");
}

#[tokio::test]
async fn binding_survives_restart_and_listen_comes_back() {
    let mut server = TestServer::start().await;
    let dir = server.keep_dir().expect("dir");
    let addr = server.addr;
    let mut alice = server.peer("alice").await;
    let _listener = alice.peer.listen(Policy::AcceptAll).expect("listen");
    alice
        .wait_event(T, |e| matches!(e, Event::Registered { .. }))
        .await;

    server.stop().await;
    alice
        .wait_event(T, |e| matches!(e, Event::RendezvousLost { .. }))
        .await;
    // The old handle (and its metrics handle) let go of the database first.
    let old_fingerprint = server.fingerprint;
    drop(server);
    let restarted = TestServer::start_at(dir.path().to_owned(), addr).await;
    assert_eq!(
        restarted.fingerprint, old_fingerprint,
        "the key lives in the data dir"
    );
    // Callable again within 20 s of the server's return (CLI.md).
    alice
        .wait_event(Duration::from_secs(20), |e| {
            matches!(e, Event::RendezvousRestored { .. })
        })
        .await;
    let bob = restarted.peer("bob").await;
    assert!(bob.peer.lookup("alice").await.expect("lookup").online);

    let thief = restarted.peer("alice").await;
    let mut stolen = thief.peer.listen(Policy::AcceptAll).expect("listen");
    let err = within(T, "name_taken", stolen.accept())
        .await
        .expect("outcome")
        .expect_err("taken");
    assert_eq!(err.kind(), ErrorKind::NameTaken, "the binding is durable");
}

/// A clean stop tells every peer at once; the close asks them to spread
/// their return over one second per `reconnect_rate` sessions, so the next
/// server is not met by all of them in the same second.
#[tokio::test]
async fn a_clean_stop_asks_peers_to_spread_their_return() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = TestServer::start_with(
        dir.path().to_owned(),
        "127.0.0.1:0".parse().expect("addr"),
        |limits| limits.reconnect_rate = 2,
    )
    .await;
    let clients = [
        RawClient::connect(&server).await,
        RawClient::connect(&server).await,
        RawClient::connect(&server).await,
    ];
    for (i, c) in clients.iter().enumerate() {
        let reply = c
            .request(&Message::Register {
                name: format!("spread{i}"),
                presence: true,
            })
            .await;
        assert!(matches!(reply, Message::Registered { .. }), "{reply:?}");
    }
    server.stop().await;
    for c in &clients {
        let why = within(T, "the close", c.conn.closed()).await;
        let quinn::ConnectionError::ApplicationClosed(close) = why else {
            panic!("closed by the application: {why:?}");
        };
        assert_eq!(close.error_code, close::SHUTDOWN.into());
        assert_eq!(
            close::shutdown_spread(&close.reason),
            Some(Duration::from_millis(1500)),
            "3 sessions at 2 per second: {:?}",
            String::from_utf8_lossy(&close.reason)
        );
    }
}

#[tokio::test]
async fn newer_listen_replaces_older() {
    let server = TestServer::start().await;
    let first = server.peer("alice").await;
    let mut old = first.peer.listen(Policy::AcceptAll).expect("listen");
    let mut events = first.peer.events();
    within(T, "registered", async {
        while !matches!(events.recv().await, Ok(Event::Registered { .. })) {}
    })
    .await;
    // Same key, second process (a laptop that changed networks).
    let mut config = server.peer_config(first.dir.path(), Some("alice"));
    config.known_peers = first.dir.path().join("kp2");
    let second = Peer::new(config).await.expect("peer");
    let _new = second.listen(Policy::AcceptAll).expect("listen");
    let err = within(T, "replaced", old.accept())
        .await
        .expect("outcome")
        .expect_err("replaced");
    assert_eq!(err.kind(), ErrorKind::Replaced);
    let bob = server.peer("bob").await;
    assert!(
        bob.peer.lookup("alice").await.expect("lookup").online,
        "the newer session holds presence"
    );
}

#[tokio::test]
async fn wrong_server_fingerprint_is_refused() {
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = server.peer_config(dir.path(), Some("alice"));
    config.server_fingerprint = common::Fingerprint([0xab; 32]);
    let peer = Peer::new(config).await.expect("peer");
    let err = peer.lookup("alice").await.expect_err("bad fingerprint");
    assert_eq!(err.kind(), ErrorKind::BadFingerprint);
    assert!(
        err.to_string().contains("rendezvous fingerprint"),
        "says how to get it: {err}"
    );
}

#[tokio::test]
async fn version_mismatch_is_reported_not_hung() {
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = server.peer_config(dir.path(), Some("alice"));
    config.server_alpn = b"rdv/999".to_vec();
    let peer = Peer::new(config).await.expect("peer");
    let err = within(T, "version answer", peer.lookup("alice"))
        .await
        .expect_err("mismatch");
    assert_eq!(err.kind(), ErrorKind::VersionMismatch, "{err}");
}

#[tokio::test]
async fn invalid_names_are_refused_locally_and_by_the_server() {
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let err = Peer::new(server.peer_config(dir.path(), Some("Bad_Name")))
        .await
        .err()
        .expect("invalid");
    assert_eq!(err.kind(), ErrorKind::InvalidName);
    assert!(err.to_string().contains("1-32 characters"), "{err}");
    // The server checks too (a client that skips the local check).
    let raw = tests::inproc::RawClient::connect(&server).await;
    for bad in ["", "-x", "UPPER", &"x".repeat(33)] {
        let reply = raw
            .request(&common::Message::Register {
                name: bad.into(),
                presence: true,
            })
            .await;
        assert!(
            matches!(
                reply,
                common::Message::Error {
                    kind: ErrorKind::InvalidName,
                    ..
                }
            ),
            "{bad:?}: {reply:?}"
        );
    }
}

#[tokio::test]
async fn unreachable_server_fails_fast_with_server_unreachable() {
    // A bound UDP socket that never answers: a server that is not there.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = peer::PeerConfig::new(
        silent.local_addr().expect("addr").to_string(),
        common::Fingerprint([1; 32]),
    );
    config.identity = dir.path().join("id.pem");
    config.known_peers = dir.path().join("kp");
    config.bind = "127.0.0.1:0".parse().expect("addr");
    config.timing.server_connect_timeout = Duration::from_secs(1);
    let peer = Peer::new(config).await.expect("peer");
    let err = within(T, "give up", peer.lookup("alice"))
        .await
        .expect_err("unreachable");
    assert_eq!(err.kind(), ErrorKind::ServerUnreachable);
}

#[tokio::test]
async fn lookup_never_reveals_an_address() {
    let server = TestServer::start().await;
    let mut alice = server.peer("alice").await;
    let _l = alice.peer.listen(Policy::AcceptAll).expect("listen");
    alice
        .wait_event(T, |e| matches!(e, Event::Registered { .. }))
        .await;
    let raw = tests::inproc::RawClient::connect(&server).await;
    let reply = raw
        .request(&common::Message::Lookup {
            name: "alice".into(),
        })
        .await;
    let common::Message::LookupResult { online: true, .. } = &reply else {
        panic!("{reply:?}")
    };
    let wire = common::framing::encode(&reply, common::framing::MAX_FRAME).expect("encode");
    let port = alice.peer.local_addr().expect("addr").port().to_be_bytes();
    assert!(
        !wire.windows(4).any(|w| w == [127, 0, 0, 1]),
        "no IPv4 address bytes on the wire"
    );
    assert!(!wire.windows(2).any(|w| w == port), "not even the port");
    let text = format!("{reply:?}");
    assert!(!text.contains("127.0.0.1"), "{text}");
}
