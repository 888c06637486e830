//! `watch` across the nodes of a cluster (a shared name store, a real
//! nats-server as the bus): a watcher at one node sees a name at the other
//! come online and go offline, a `listen` moving between the nodes
//! does not flap, and an invisible `listen` is offline to the other node's
//! lookups and watchers but callable from there.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use peer::{Policy, PresenceUpdate, Watcher};

use tests::inproc::{listening, listening_tuned, two_nodes, within, Serve};

const T: Duration = Duration::from_secs(15);

async fn next(watcher: &mut Watcher) -> PresenceUpdate {
    within(T, "a presence update", watcher.next())
        .await
        .expect("the watch goes on")
        .expect("no error")
}

#[tokio::test]
async fn a_watch_at_one_node_sees_a_name_at_the_other_come_and_go() {
    let Some((_nats, one, two)) = two_nodes().await else {
        return;
    };
    let watching = one.peer("watcher").await;
    let mut watcher = watching.peer.watch(vec!["alice".into()]).expect("watch");
    let now = next(&mut watcher).await;
    assert!(!now.online && now.fingerprint.is_none(), "{now:?}");

    let (alice, listener) = listening(&two, "alice", Policy::AcceptAll, Serve::Echo).await;
    let up = next(&mut watcher).await;
    assert!(up.online, "{up:?}");
    assert_eq!(up.fingerprint, Some(alice.peer.fingerprint()));

    listener.abort();
    alice.peer.shutdown().await;
    let down = next(&mut watcher).await;
    assert!(!down.online, "{down:?}");
    assert_eq!(down.fingerprint, Some(alice.peer.fingerprint()));
}

#[tokio::test]
async fn a_listen_moving_to_the_other_node_does_not_flap() {
    let Some((_nats, one, two)) = two_nodes().await else {
        return;
    };
    let keys = tempfile::tempdir().expect("dir");
    let key = keys.path().join("identity.pem");
    let same_key = |c: &mut peer::PeerConfig| c.identity = key.clone();
    let (_old, old_listen) =
        listening_tuned(&one, "alice", Policy::AcceptAll, Serve::Echo, same_key).await;
    let watching = two.peer("watcher").await;
    let mut watcher = watching
        .peer
        .watch(vec!["alice".into(), "carol".into()])
        .expect("watch");
    // Node two may learn node one's names only at its first resync.
    within(T, "alice online at node one", async {
        while !matches!(next(&mut watcher).await, PresenceUpdate { online: true, ref name, .. } if name == "alice") {}
    })
    .await;

    // The same key listens at node two: the newer registration wins there
    // and node one closes its older one.
    let (_new, _l2) = listening_tuned(&two, "alice", Policy::AcceptAll, Serve::Echo, |c| {
        c.identity = key.clone();
    })
    .await;
    let ended = within(T, "the older listen replaced", old_listen).await;
    assert!(
        matches!(ended, Ok(Some(peer::Error::Replaced))),
        "{ended:?}"
    );
    // A barrier: carol registers at node one after it let alice go; its
    // announcements are in order, so anything the move caused comes first.
    let (_carol, _l3) = listening(&one, "carol", Policy::AcceptAll, Serve::Echo).await;
    // (carol's first state, offline, may still be queued: skipped.)
    let mut update = next(&mut watcher).await;
    while update.name == "carol" && !update.online {
        update = next(&mut watcher).await;
    }
    assert_eq!(
        (update.name.as_str(), update.online),
        ("carol", true),
        "alice flapped: {update:?}"
    );
}

#[tokio::test]
async fn an_invisible_listen_at_one_node_is_offline_at_the_other_but_callable() {
    let Some((_nats, one, two)) = two_nodes().await else {
        return;
    };
    let (alice, _l) = listening_tuned(&two, "alice", Policy::AcceptAll, Serve::Echo, |c| {
        c.invisible = true;
    })
    .await;
    let bob = one.peer("bob").await;
    // Callable from node one once it knows of alice (its first resync).
    let call = within(T, "a call across nodes", async {
        loop {
            match bob.peer.call("alice", peer::CallOptions::default()).await {
                Ok(call) => return call,
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    })
    .await;
    assert_eq!(call.fingerprint, alice.peer.fingerprint());
    let info = bob.peer.lookup("alice").await.expect("lookup");
    assert!(!info.online, "invisible: {info:?}");
    assert_eq!(info.fingerprint, alice.peer.fingerprint());
    let mut watcher = bob.peer.watch(vec!["alice".into()]).expect("watch");
    let seen = next(&mut watcher).await;
    assert!(!seen.online, "{seen:?}");
}
