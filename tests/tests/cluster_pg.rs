//! Two nodes of one cluster on a real PostgreSQL (each node its own pool,
//! as two processes would have) and a real nats-server: one name claimed
//! through both nodes at once has one owner, every binding survives
//! restarting every node, and with PostgreSQL stopped the cluster still
//! finds and calls online peers, refuses new names as `unavailable`, and
//! takes them again when it returns.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::{ErrorKind, Message};
use peer::{CallOptions, Policy};
use rendezvous::store::{NameStore, PgStore};
use tests::inproc::{echo_roundtrip, error_kind, listening, within, RawClient, Serve, TestServer};
use tests::nats::NatsServer;
use tests::postgres::PgServer;

const T: Duration = Duration::from_secs(15);

/// A node on `pg` and `nats`, with the key of `key_of`, registrations not rate-limited.
async fn node(pg: &PgServer, nats: &NatsServer, key_of: &Path, id: &str) -> TestServer {
    let store: Arc<dyn NameStore> = Arc::new(PgStore::connect(&pg.url()).await.expect("store"));
    TestServer::start_node_tuned(key_of, store, &nats.url(), id, |c| {
        c.limits.register_rate = "10000/10000".parse().expect("rate");
        c.limits.lookup_rate = "10000/10000".parse().expect("rate");
        c.limits.max_connections_per_ip = 10_000;
    })
    .await
}

async fn register(server: &TestServer, name: &str) -> Message {
    RawClient::connect(server).await.register(name).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_name_claimed_through_both_nodes_at_once_has_one_owner_50_times() {
    let (Some(pg), Some(nats)) = (PgServer::start(), NatsServer::start()) else {
        return;
    };
    let keys = tempfile::tempdir().expect("tempdir");
    let one = node(&pg, &nats, keys.path(), "one").await;
    let two = node(&pg, &nats, &one.data_dir, "two").await;
    for round in 0..50 {
        let name = format!("race{round}");
        let (a, b) = tokio::join!(register(&one, &name), register(&two, &name));
        let won = [&a, &b]
            .iter()
            .filter(|r| matches!(r, Message::Registered { .. }))
            .count();
        let taken = [&a, &b]
            .iter()
            .filter(|r| error_kind(r) == Some(ErrorKind::NameTaken))
            .count();
        assert_eq!((won, taken), (1, 1), "round {round}: {a:?} / {b:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_binding_survives_restarting_every_node() {
    let (Some(pg), Some(nats)) = (PgServer::start(), NatsServer::start()) else {
        return;
    };
    let keys = tempfile::tempdir().expect("tempdir");
    let mut one = node(&pg, &nats, keys.path(), "one").await;
    let mut two = node(&pg, &nats, &one.data_dir, "two").await;
    let key_dir = one.keep_dir().expect("key dir");
    let mut owners = Vec::new();
    for (i, at) in [&one, &two, &one, &two].into_iter().enumerate() {
        let client = RawClient::connect(at).await;
        let name = format!("kept{i}");
        let msg = Message::Register {
            name: name.clone(),
            presence: false,
        };
        assert!(matches!(
            client.request(&msg).await,
            Message::Registered { .. }
        ));
        owners.push((name, client.identity.fingerprint()));
    }
    one.stop().await;
    two.stop().await;
    // Every node new (new pools, new processes' worth of state).
    let one = node(&pg, &nats, key_dir.path(), "one").await;
    let two = node(&pg, &nats, &one.data_dir, "two").await;
    for (name, owner) in &owners {
        for at in [&one, &two] {
            let client = RawClient::connect(at).await;
            let reply = client
                .request(&Message::Lookup { name: name.clone() })
                .await;
            assert!(
                matches!(&reply, Message::LookupResult { fingerprint, .. } if fingerprint == owner),
                "{name}: {reply:?}"
            );
        }
        assert_eq!(
            error_kind(&register(&two, name).await),
            Some(ErrorKind::NameTaken)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_postgres_online_peers_are_found_and_called_and_new_names_wait() {
    let (Some(mut pg), Some(nats)) = (PgServer::start(), NatsServer::start()) else {
        return;
    };
    let keys = tempfile::tempdir().expect("tempdir");
    let one = node(&pg, &nats, keys.path(), "one").await;
    let two = node(&pg, &nats, &one.data_dir, "two").await;
    let (alice, _serve) = listening(&one, "alice", Policy::AcceptAll, Serve::Echo).await;
    let bob = two.peer("bob").await;
    within(T, "alice seen at two", async {
        while !bob.peer.lookup("alice").await.is_ok_and(|i| i.online) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    // Bob has called before: his name is bound, and this node has seen it.
    let call = within(T, "call", bob.peer.call("alice", CallOptions::default()))
        .await
        .expect("call");
    drop(call);
    pg.stop();
    let info = bob
        .peer
        .lookup("alice")
        .await
        .expect("lookup without the store");
    assert!(info.online);
    assert_eq!(info.fingerprint, alice.peer.fingerprint());
    let call = within(T, "call", bob.peer.call("alice", CallOptions::default()))
        .await
        .expect("a call to an online peer without the store");
    assert_eq!(echo_roundtrip(&call, b"still here").await, b"still here");
    drop(call);
    let reply = register(&two, "carol").await;
    assert_eq!(
        error_kind(&reply),
        Some(ErrorKind::Unavailable),
        "{reply:?}"
    );
    pg.start_again();
    let back = within(T, "carol after the store's return", async {
        loop {
            let reply = register(&two, "carol").await;
            if error_kind(&reply) != Some(ErrorKind::Unavailable) {
                return reply;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(matches!(back, Message::Registered { .. }), "{back:?}");
}
