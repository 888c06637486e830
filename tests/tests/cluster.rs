//! Two rendezvous nodes of one cluster (a shared name store, a real
//! nats-server as the bus) in the test process: lookups and calls across
//! nodes, direct and relayed node to node, a newer `listen` at one node
//! replacing the older at the other, strangers on the bus, and the bus
//! going away and coming back.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use common::ErrorKind;
use peer::path::PathMode;
use peer::{CallOptions, Event, Policy};
use rand::RngCore;
use rendezvous::store::{MemoryStore, NameStore};
use tests::inproc::{echo_roundtrip, listening, within, Serve, TestPeer, TestServer};
use tests::nats::NatsServer;
use tests::relay_tap::metric;

const T: Duration = Duration::from_secs(15);

/// Waits until `peer` (at some node) sees `name` online, or fails.
async fn until_online(peer: &TestPeer, name: &str, online: bool) {
    within(T, "presence across nodes", async {
        loop {
            match peer.peer.lookup(name).await {
                Ok(info) if info.online == online => return,
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    })
    .await;
}

#[tokio::test]
async fn alice_at_one_node_bob_at_the_other_look_up_and_call_directly() {
    let Some((_nats, one, two)) = tests::inproc::two_nodes().await else {
        return;
    };
    let (alice, _serve) = listening(&one, "alice", Policy::AcceptAll, Serve::Echo).await;
    let bob = two.peer("bob").await;
    until_online(&bob, "alice", true).await;
    let info = bob.peer.lookup("alice").await.expect("lookup");
    assert_eq!(info.fingerprint, alice.peer.fingerprint());
    let call = within(
        T,
        "call across nodes",
        bob.peer.call("alice", CallOptions::default()),
    )
    .await
    .expect("call");
    assert_eq!(call.path(), peer::Path::Direct);
    assert_eq!(call.fingerprint, alice.peer.fingerprint());
    let mut data = vec![0u8; 256 * 1024];
    rand::thread_rng().fill_bytes(&mut data);
    assert!(echo_roundtrip(&call, &data).await == data, "data changed");
    assert_eq!(metric(&two, "rendezvous_cluster_calls_total"), 1);
    assert_eq!(metric(&one, "rendezvous_cluster_calls_total"), 0);
}

#[tokio::test]
async fn a_relayed_call_across_nodes_goes_node_to_node() {
    let Some((_nats, one, two)) = tests::inproc::two_nodes().await else {
        return;
    };
    let (_alice, _serve) = listening(&one, "alice", Policy::AcceptAll, Serve::Echo).await;
    let bob = two.peer("bob").await;
    until_online(&bob, "alice", true).await;
    let relay = CallOptions {
        path: PathMode::Relay,
        ..CallOptions::default()
    };
    let call = within(
        T,
        "relayed call across nodes",
        bob.peer.call("alice", relay),
    )
    .await
    .expect("call");
    assert_eq!(call.path(), peer::Path::Relay);
    assert_eq!(
        call.remote_addr(),
        two.addr,
        "bob sends only to its own node"
    );
    let mut data = vec![0u8; 128 * 1024];
    rand::thread_rng().fill_bytes(&mut data);
    assert!(echo_roundtrip(&call, &data).await == data, "data changed");
    for node in [&one, &two] {
        assert_eq!(
            metric(node, "rendezvous_relay_calls_total"),
            1,
            "a half at each node"
        );
        assert!(
            metric(node, "rendezvous_relay_packets_total") > 20,
            "frames went through both"
        );
    }
}

#[tokio::test]
async fn a_newer_listen_at_the_other_node_replaces_the_older() {
    let Some((_nats, one, two)) = tests::inproc::two_nodes().await else {
        return;
    };
    let (alice, serve) = listening(&one, "alice", Policy::AcceptAll, Serve::Echo).await;
    let bob = two.peer("bob").await;
    until_online(&bob, "alice", true).await;
    // The same alice (same key) listens at node two now.
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::copy(
        alice.dir.path().join("identity.pem"),
        dir.path().join("identity.pem"),
    )
    .expect("copy identity");
    let config = two.peer_config(dir.path(), Some("alice"));
    let moved = peer::Peer::new(config).await.expect("peer");
    let mut events = moved.events();
    let _listener = moved.listen(Policy::AcceptAll).expect("listen");
    within(T, "registered at two", async {
        while !matches!(events.recv().await, Ok(Event::Registered { .. })) {}
    })
    .await;
    let ended = within(T, "the older listen ends", serve)
        .await
        .expect("task");
    assert!(
        matches!(&ended, Some(e) if e.kind() == ErrorKind::Replaced),
        "the older listen ended with {ended:?}"
    );
    // Bob's call reaches the new one, at node two.
    let call = within(T, "call", bob.peer.call("alice", CallOptions::default()))
        .await
        .expect("call");
    assert_eq!(call.remote_addr(), moved.local_addr().expect("addr"));
}

#[tokio::test]
async fn without_the_bus_same_node_calls_work_cross_node_calls_fail_clearly_and_recover() {
    let Some((mut nats, one, two)) = tests::inproc::two_nodes().await else {
        return;
    };
    let (_alice, _a) = listening(&one, "alice", Policy::AcceptAll, Serve::Echo).await;
    let (_carol, _c) = listening(&two, "carol", Policy::AcceptAll, Serve::Echo).await;
    let bob = two.peer("bob").await;
    until_online(&bob, "alice", true).await;
    nats.stop();
    // Same node: carol.
    let call = within(
        T,
        "same-node call",
        bob.peer.call("carol", CallOptions::default()),
    )
    .await
    .expect("same-node call without the bus");
    assert_eq!(echo_roundtrip(&call, b"hello").await, b"hello");
    drop(call);
    // Across nodes: alice, while the directory still says she is online.
    let err = within(
        T,
        "cross-node call",
        bob.peer.call("alice", CallOptions::default()),
    )
    .await
    .expect_err("no bus, no cross-node call");
    assert!(
        matches!(err.kind(), ErrorKind::Unavailable | ErrorKind::Offline),
        "a clear error: {err}"
    );
    nats.start_again();
    until_online(&bob, "alice", true).await;
    let call = within(T, "cross-node call again", async {
        loop {
            match bob.peer.call("alice", CallOptions::default()).await {
                Ok(call) => return call,
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    })
    .await;
    assert_eq!(echo_roundtrip(&call, b"back").await, b"back");
}

#[tokio::test]
async fn a_stranger_on_the_bus_cannot_announce_a_name() {
    let Some((nats, one, two)) = tests::inproc::two_nodes().await else {
        return;
    };
    // mallory's name exists and is offline: "online" is what a forger wants.
    let (mallory, _serve) = listening(&one, "mallory", Policy::AcceptAll, Serve::Echo).await;
    let bob = two.peer("bob").await;
    until_online(&bob, "mallory", true).await;
    mallory.peer.shutdown().await;
    until_online(&bob, "mallory", false).await;
    // Someone with bus credentials but not the server key: plain bytes, and
    // a well-formed Up sealed under another key.
    use rendezvous::cluster::wire::{Body, BusKey, Envelope, Online};
    let forged = Envelope {
        from: "evil".into(),
        sent_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_millis() as u64,
        body: Body::Up {
            epoch: 1,
            seq: 1,
            online: Online {
                name: "mallory".into(),
                fingerprint: common::Fingerprint([6; 32]),
                since_ms: u64::MAX / 2,
                invisible: false,
            },
        },
    };
    let (user, pass) = nats.credentials();
    let stranger = async_nats::ConnectOptions::with_user_and_password(user.into(), pass.into())
        .connect(nats.addr())
        .await
        .expect("connect");
    let sealed = BusKey::derive([9; 32]).seal("rdv.presence", &forged);
    for payload in [b"mallory is at node evil".to_vec(), sealed] {
        stranger
            .publish("rdv.presence", payload.into())
            .await
            .expect("publish");
    }
    stranger.flush().await.expect("flush");
    tests::relay_tap::wait_metric(&two, "rendezvous_cluster_refused_messages", 2).await;
    let info = bob.peer.lookup("mallory").await.expect("lookup");
    assert!(!info.online, "a forged announcement made mallory online");
    assert_eq!(
        metric(&two, "rendezvous_cluster_nodes"),
        1,
        "no node 'evil'"
    );
}

/// A CA and a certificate it signed for 127.0.0.1: (CA PEM, cert PEM, key PEM).
fn bus_certificates() -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, SanType};
    let ca_key = KeyPair::generate().expect("ca key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca.self_signed(&ca_key).expect("ca");
    let key = KeyPair::generate().expect("key");
    let mut leaf = CertificateParams::new(Vec::<String>::new()).expect("params");
    leaf.subject_alt_names = vec![SanType::IpAddress([127, 0, 0, 1].into())];
    let leaf = leaf.signed_by(&key, &ca, &ca_key).expect("leaf");
    (ca.pem(), leaf.pem(), key.serialize_pem())
}

#[tokio::test]
async fn the_bus_needs_its_password_and_a_tls_certificate_from_the_cluster_ca() {
    let (ca_pem, cert, key) = bus_certificates();
    let Some(nats) = NatsServer::start_tls(&cert, &key) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &ca_pem).expect("write ca");
    let addr = "127.0.0.1:9".parse().expect("addr");
    let (user, pass) = nats.credentials();
    let port = nats.addr().rsplit(':').next().expect("port").to_owned();
    let tls_url = format!("tls://{user}:{pass}@127.0.0.1:{port}");
    let join = |url: String, ca: Option<std::path::PathBuf>| async move {
        let mut config = rendezvous::cluster::ClusterConfig::new(url, "n1".into(), addr);
        config.ca = ca;
        rendezvous::cluster::Cluster::connect(config, [1; 32]).await
    };
    let joined = join(tls_url.clone(), Some(ca.clone())).await;
    assert!(
        joined.is_ok(),
        "TLS with the cluster CA: {:?}",
        joined.err()
    );
    let unknown = join(tls_url, None).await;
    assert!(
        unknown.is_err(),
        "a certificate from an unknown CA was accepted"
    );
    let wrong = join(format!("tls://{user}:wrong@127.0.0.1:{port}"), Some(ca)).await;
    assert!(wrong.is_err(), "a wrong bus password was accepted");
}

/// Registers a raw client (a fresh key) as `name` at `server`.
async fn raw_caller(server: &TestServer, name: &str) -> tests::inproc::RawClient {
    let raw = tests::inproc::RawClient::connect(server).await;
    let reply = raw.register(name).await;
    assert!(
        matches!(reply, common::Message::Registered { .. }),
        "{reply:?}"
    );
    raw
}

async fn raw_call(raw: &tests::inproc::RawClient, to: &str) -> common::Message {
    let call = common::Message::Call {
        to: to.into(),
        candidates: vec![],
        hide_addresses: false,
    };
    within(T, "call", raw.request(&call)).await
}

#[tokio::test]
async fn the_callees_offer_limit_is_kept_at_its_node_for_callers_at_every_node() {
    let Some(nats) = NatsServer::start() else {
        return;
    };
    let store: Arc<dyn NameStore> = Arc::new(MemoryStore::default());
    let keys = tempfile::tempdir().expect("tempdir");
    let tight = |c: &mut rendezvous::Config| {
        c.limits.offer_rate_per_callee = "2/0.001".parse().expect("rate");
    };
    let one =
        TestServer::start_node_tuned(keys.path(), store.clone(), &nats.url(), "one", tight).await;
    let two = TestServer::start_node_tuned(&one.data_dir, store, &nats.url(), "two", tight).await;
    let (_alice, _serve) = listening(&one, "alice", Policy::AcceptAll, Serve::Echo).await;
    let watcher = two.peer("watcher").await;
    until_online(&watcher, "alice", true).await;
    // Two offers in alice's budget: one from each node.
    for (i, node) in [&one, &two].into_iter().enumerate() {
        let raw = raw_caller(node, &format!("caller{i}")).await;
        let reply = raw_call(&raw, "alice").await;
        assert!(
            matches!(reply, common::Message::CallAccepted { .. }),
            "offer {i}: {reply:?}"
        );
    }
    // The budget is alice's, wherever the caller is.
    for (i, node) in [&two, &one].into_iter().enumerate() {
        let raw = raw_caller(node, &format!("late{i}")).await;
        let reply = raw_call(&raw, "alice").await;
        assert!(
            matches!(&reply, common::Message::Error { kind: ErrorKind::RateLimited, message }
                if message.contains("too many calls")),
            "late offer {i}: {reply:?}"
        );
    }
}

#[tokio::test]
async fn a_callee_at_another_node_who_refuses_gives_the_caller_no_address() {
    let Some((_nats, one, two)) = tests::inproc::two_nodes().await else {
        return;
    };
    let only_carol = Policy::AllowList(vec!["carol".into()]);
    let (_alice, _serve) = listening(&one, "alice", only_carol, Serve::Echo).await;
    let raw = raw_caller(&two, "mallory").await;
    let watcher = two.peer("watcher").await;
    until_online(&watcher, "alice", true).await;
    let reply = raw_call(&raw, "alice").await;
    assert!(
        matches!(
            reply,
            common::Message::Error {
                kind: ErrorKind::Rejected,
                ..
            }
        ),
        "{reply:?}"
    );
    let text = format!("{reply:?}");
    assert!(!text.contains("127.0.0.1"), "an address leaked: {text}");
}

#[tokio::test]
async fn a_request_to_a_node_that_is_gone_fails_at_once() {
    let Some(nats) = NatsServer::start() else {
        return;
    };
    let addr = "127.0.0.1:9".parse().expect("addr");
    let config = rendezvous::cluster::ClusterConfig::new(nats.url(), "n1".into(), addr);
    let (cluster, _incoming) = rendezvous::cluster::Cluster::connect(config, [1; 32])
        .await
        .expect("joins");
    let started = std::time::Instant::now();
    let body = rendezvous::cluster::wire::Body::Dialed(true);
    let answer = cluster.request("gone", body, Duration::from_secs(10)).await;
    assert!(answer.is_err(), "{answer:?}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "nobody serves that subject: no need to wait out the timeout ({:?})",
        started.elapsed()
    );
}
