//! The PostgreSQL name store against a real, private PostgreSQL
//! ([`tests::postgres::PgServer`]): the rules, two nodes (two `PgStore`s)
//! racing for one name and one key's cap, an outage (stop, start again),
//! restarts of every node, concurrent migrations, and a server whose store
//! goes away under its peers. Skipped with a printed reason outside CI when
//! PostgreSQL is not installed; under CI a missing PostgreSQL fails.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{ErrorKind, Fingerprint, Message};
use peer::{Event, Policy};
use rendezvous::store::{Claim, NameStore, PgStore, StoreError};
use tests::inproc::{error_kind, within, RawClient, TestServer};
use tests::postgres::PgServer;

const ANY: usize = usize::MAX;
const T: Duration = Duration::from_secs(20);
/// An outage must be reported this fast (the timeouts are 2–6 s).
const OUTAGE: Duration = Duration::from_secs(8);

fn key(n: u8) -> Fingerprint {
    Fingerprint([n; 32])
}

async fn store(pg: &PgServer) -> PgStore {
    PgStore::connect(&pg.url()).await.expect("connect")
}

#[tokio::test]
async fn the_store_rules_hold_on_postgres() {
    let Some(pg) = PgServer::start() else { return };
    let store = store(&pg).await;
    let (a, b) = (key(1), key(2));
    assert_eq!(store.claim("alice", a, 4).await.expect("new"), Claim::New);
    assert_eq!(
        store.claim("alice", a, 4).await.expect("again"),
        Claim::Existing
    );
    assert!(matches!(
        store.claim("alice", b, 4).await,
        Err(StoreError::NameTaken { name }) if name == "alice"
    ));
    assert_eq!(store.owner("alice").await.expect("owner"), Some(a));
    assert_eq!(store.owner("nobody").await.expect("owner"), None);
    for i in 1..4 {
        assert_eq!(
            store.claim(&format!("a{i}"), a, 4).await.expect("a"),
            Claim::New
        );
    }
    assert!(matches!(
        store.claim("a4", a, 4).await,
        Err(StoreError::TooManyNames { max: 4 })
    ));
    assert_eq!(
        store.owner("a4").await.expect("owner"),
        None,
        "a refused claim binds nothing"
    );
    assert_eq!(
        store.claim("a2", a, 4).await.expect("own"),
        Claim::Existing,
        "the cap never stops a re-registration"
    );
    assert_eq!(store.held(a).await.expect("held"), 4);
    assert_eq!(store.held(b).await.expect("held"), 0);
    assert_eq!(store.claim("bob", b, 4).await.expect("bob"), Claim::New);
    assert_eq!(store.held(b).await.expect("held"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_claiming_one_name_at_once_give_one_winner_50_times() {
    let Some(pg) = PgServer::start() else { return };
    let (node1, node2) = (store(&pg).await, store(&pg).await);
    for i in 0..50 {
        let name = format!("race{i}");
        let (one, two) = tokio::join!(
            node1.claim(&name, key(1), ANY),
            node2.claim(&name, key(2), ANY)
        );
        let winner = match (&one, &two) {
            (Ok(Claim::New), Err(StoreError::NameTaken { .. })) => key(1),
            (Err(StoreError::NameTaken { .. }), Ok(Claim::New)) => key(2),
            other => panic!("{name}: {other:?}"),
        };
        assert_eq!(node1.owner(&name).await.expect("owner"), Some(winner));
        assert_eq!(node2.owner(&name).await.expect("owner"), Some(winner));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_key_claiming_through_both_nodes_cannot_pass_its_cap() {
    let Some(pg) = PgServer::start() else { return };
    let nodes = [Arc::new(store(&pg).await), Arc::new(store(&pg).await)];
    // 30 rounds, a fresh key each: 8 claims through each node at once.
    for round in 0..30u8 {
        let k = key(100 + round);
        let claims: Vec<_> = (0..16)
            .map(|i| {
                let node = nodes[i % 2].clone();
                tokio::spawn(async move { node.claim(&format!("k{round}-{i}"), k, 4).await })
            })
            .collect();
        let mut won = 0;
        for claim in claims {
            match claim.await.expect("task") {
                Ok(Claim::New) => won += 1,
                Err(StoreError::TooManyNames { max: 4 }) => {}
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(won, 4, "round {round}");
        assert_eq!(nodes[round as usize % 2].held(k).await.expect("held"), 4);
    }
}

/// `fut` gives `Unavailable` (never an answer) within [`OUTAGE`].
async fn unavailable<T: std::fmt::Debug>(
    what: &str,
    fut: impl std::future::Future<Output = Result<T, StoreError>>,
) {
    let start = Instant::now();
    let outcome = within(OUTAGE, what, fut).await;
    assert!(
        matches!(outcome, Err(StoreError::Unavailable(_))),
        "{what} with PostgreSQL down: {outcome:?}"
    );
    assert!(outcome.expect_err("err").is_retryable());
    eprintln!("{what}: unavailable after {:?}", start.elapsed());
}

/// Retries `claim` until PostgreSQL is back (the pool reconnects by itself).
async fn claim_when_back(store: &PgStore, name: &str, key: Fingerprint) -> Claim {
    within(T, "the store working again", async {
        loop {
            match store.claim(name, key, ANY).await {
                Err(StoreError::Unavailable(_)) => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                other => return other.expect("claim after the outage"),
            }
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_is_unavailable_and_nothing_is_lost() {
    let Some(mut pg) = PgServer::start() else {
        return;
    };
    let store = store(&pg).await;
    for i in 0..20 {
        assert_eq!(
            store
                .claim(&format!("n{i}"), key(1), ANY)
                .await
                .expect("claim"),
            Claim::New
        );
    }
    pg.stop();
    unavailable("a new claim", store.claim("fresh", key(2), ANY)).await;
    unavailable("a re-registration", store.claim("n1", key(1), ANY)).await;
    unavailable("a taken name", store.claim("n2", key(2), ANY)).await;
    unavailable("an owner", store.owner("n3")).await;
    unavailable("a count", store.held(key(1))).await;
    pg.start_again();
    assert_eq!(claim_when_back(&store, "fresh", key(2)).await, Claim::New);
    for i in 0..20 {
        assert_eq!(
            store.owner(&format!("n{i}")).await.expect("owner"),
            Some(key(1)),
            "n{i}"
        );
    }
    assert_eq!(store.held(key(1)).await.expect("held"), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_binding_survives_restarting_every_node_and_the_database() {
    let Some(mut pg) = PgServer::start() else {
        return;
    };
    let node = Arc::new(store(&pg).await);
    let claims: Vec<_> = (0..200u32)
        .map(|i| {
            let node = node.clone();
            tokio::spawn(
                async move { node.claim(&format!("m{i}"), key((i % 50) as u8), ANY).await },
            )
        })
        .collect();
    for claim in claims {
        assert_eq!(claim.await.expect("task").expect("claim"), Claim::New);
    }
    drop(node);
    pg.stop();
    pg.start_again();
    let again = store(&pg).await;
    for i in 0..200u32 {
        assert_eq!(
            again.owner(&format!("m{i}")).await.expect("owner"),
            Some(key((i % 50) as u8)),
            "m{i}"
        );
    }
    assert_eq!(again.held(key(3)).await.expect("held"), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_migrating_a_fresh_database_at_once_all_succeed() {
    let Some(pg) = PgServer::start() else { return };
    let url = pg.url();
    let (a, b, c) = tokio::join!(
        PgStore::connect(&url),
        PgStore::connect(&url),
        PgStore::connect(&url)
    );
    let (a, b) = (a.expect("node 1"), b.expect("node 2"));
    c.expect("node 3");
    assert_eq!(a.claim("x", key(1), ANY).await.expect("claim"), Claim::New);
    assert_eq!(b.owner("x").await.expect("owner"), Some(key(1)));
}

#[tokio::test]
async fn a_schema_newer_than_this_binary_is_refused() {
    let Some(pg) = PgServer::start() else { return };
    drop(store(&pg).await);
    let (client, conn) = tokio_postgres::connect(&pg.url(), tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    client
        .execute("INSERT INTO rdv_schema_version (version) VALUES (99)", &[])
        .await
        .expect("a newer version");
    let refused = PgStore::connect(&pg.url()).await.err().expect("refused");
    assert!(matches!(refused, StoreError::Backend(_)), "{refused:?}");
    assert!(!refused.is_retryable());
    assert!(
        refused.to_string().contains("version 99, newer"),
        "{refused}"
    );
}

#[tokio::test]
async fn a_database_that_is_not_there_fails_the_start_quickly() {
    let Some(mut pg) = PgServer::start() else {
        return;
    };
    pg.stop();
    let start = Instant::now();
    let refused = PgStore::connect(&pg.url())
        .await
        .err()
        .expect("no database");
    assert!(refused.is_retryable(), "{refused:?}");
    assert!(start.elapsed() < OUTAGE, "{:?}", start.elapsed());
}

async fn register(client: &RawClient, name: &str) -> Message {
    client.register(name).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_on_postgres_says_unavailable_while_it_is_down_and_recovers() {
    let Some(mut pg) = PgServer::start() else {
        return;
    };
    let server = TestServer::start_with_store(Arc::new(store(&pg).await)).await;
    let mut alice = server.peer("alice").await;
    let _alice = alice.peer.listen(Policy::AcceptAll).expect("listen");
    alice
        .wait_event(T, |e| matches!(e, Event::Registered { .. }))
        .await;

    // Dave registered (not listening: offline), Erin to call from.
    let dave = RawClient::connect(&server).await;
    assert!(matches!(
        register(&dave, "dave").await,
        Message::Registered { .. }
    ));
    let erin = RawClient::connect(&server).await;
    assert!(matches!(
        register(&erin, "erin").await,
        Message::Registered { .. }
    ));
    // Frank registered through another node: this one has never seen him.
    let other_node = store(&pg).await;
    other_node
        .claim("frank", common::Fingerprint([7; 32]), 4)
        .await
        .expect("frank");

    pg.stop();
    let raw = RawClient::connect(&server).await;
    let reply = within(OUTAGE, "a registration", register(&raw, "carol")).await;
    assert_eq!(
        error_kind(&reply),
        Some(ErrorKind::Unavailable),
        "{reply:?}"
    );
    // An online peer is still found (its key is its session's)...
    let lookup = raw.lookup("alice").await;
    assert!(
        matches!(lookup, Message::LookupResult { online: true, .. }),
        "{lookup:?}"
    );
    // ...an offline one this node has seen is answered from its cache
    // (bindings never change)...
    let lookup = raw.lookup("dave").await;
    assert!(
        matches!(lookup, Message::LookupResult { online: false, .. }),
        "{lookup:?}"
    );
    // ...one it has not cannot be resolved: unavailable, never not_found.
    let lookup = raw.lookup("frank").await;
    assert_eq!(
        error_kind(&lookup),
        Some(ErrorKind::Unavailable),
        "{lookup:?}"
    );
    // Erin re-registers (known binding) and calls: frank cannot be resolved.
    let erin_again = RawClient::connect_with(&server, erin.identity.clone(), None).await;
    assert!(matches!(
        register(&erin_again, "erin").await,
        Message::Registered { .. }
    ));
    let call = erin
        .request(&Message::Call {
            to: "frank".into(),
            candidates: vec![],
            hide_addresses: false,
        })
        .await;
    assert_eq!(error_kind(&call), Some(ErrorKind::Unavailable), "{call:?}");
    let mut bob = server.peer("bob").await;
    let _bob = bob.peer.listen(Policy::AcceptAll).expect("listen");
    bob.wait_event(
        T,
        |e| matches!(e, Event::Error { kind, .. } if kind == "unavailable"),
    )
    .await;

    pg.start_again();
    // The listen retries by itself (`unavailable` is transient).
    bob.wait_event(T, |e| matches!(e, Event::Registered { .. }))
        .await;
    let reply = register(&raw, "carol").await;
    assert!(matches!(reply, Message::Registered { .. }), "{reply:?}");
    let lookup = raw.lookup("alice").await;
    assert!(
        matches!(lookup, Message::LookupResult { online: true, .. }),
        "{lookup:?}"
    );
}
