//! A cluster through the real binaries: two `rendezvous` nodes on one
//! PostgreSQL and one nats-server (private instances on loopback), one
//! key. A node SIGKILLed mid-listen: its peer is registered at the other
//! node and callable there within 20 s, and lookups through the survivor
//! say "offline" for no longer than a node's lease.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tests::nats::NatsServer;
use tests::postgres::PgServer;
use tests::proc::{PeerHome, ServerProc};

const T: Duration = Duration::from_secs(20);
/// From a node's death to its peer registered at another (the issue).
const FAILOVER: Duration = Duration::from_secs(20);
/// A node's lease (`ClusterConfig::lease`) plus one heartbeat of slack.
const LEASE: Duration = Duration::from_secs(12);

fn node(dir: &Path, id: &str, key: &Path, store: &str, bus: &str) -> ServerProc {
    let key = key.to_str().expect("utf-8");
    ServerProc::start(
        None,
        "127.0.0.1:0",
        &dir.join(id),
        &[
            "--identity",
            key,
            "--store",
            store,
            "--bus",
            bus,
            "--node-id",
            id,
        ],
    )
}

#[test]
fn a_killed_nodes_listen_is_registered_and_callable_at_the_other_within_20_s() {
    let (Some(pg), Some(nats)) = (PgServer::start(), NatsServer::start()) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("cluster.key");
    let mut a = node(dir.path(), "a", &key, &pg.url(), &nats.url());
    let b = node(dir.path(), "b", &key, &pg.url(), &nats.url());
    assert_eq!(a.fingerprint, b.fingerprint);

    let alice = PeerHome::for_nodes(dir.path(), "alice", &[&a, &b]);
    let mut listen = alice.spawn("alice", Some("alice"), &["listen", "--echo"]);
    listen.wait_for(T, "registered");
    // Through B, alice (at A) is online: the directory, not a local session.
    let via_b = PeerHome::for_nodes(dir.path(), "bob", &[&b]);
    let started = Instant::now();
    loop {
        let out = via_b.run(None, &["lookup", "alice"], T);
        if out.status.success() && out.event("lookup")["online"] == true {
            break;
        }
        assert!(
            started.elapsed() < T,
            "alice never showed at B: {}",
            out.log
        );
    }

    // Lookups through B while A dies, from another thread.
    let samples = Arc::new(Mutex::new(Vec::<(Duration, bool)>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    a.proc.kill();
    let killed = Instant::now();
    let poller = {
        let (samples, stop, via_b) = (samples.clone(), stop.clone(), via_b.clone());
        std::thread::spawn(move || {
            for _ in 0..400 {
                if stop.load(Ordering::Relaxed) || killed.elapsed() > Duration::from_secs(40) {
                    return;
                }
                let out = via_b.run(None, &["lookup", "alice"], T);
                let online = out.status.success() && out.event("lookup")["online"] == true;
                samples.lock().unwrap().push((killed.elapsed(), online));
            }
        })
    };
    listen.wait_for(FAILOVER, "rendezvous_lost");
    let left = FAILOVER.saturating_sub(killed.elapsed());
    let registered = listen.wait_for(left, "registered");
    let took = killed.elapsed();
    assert!(took < FAILOVER, "registered at B {took:?} after A's death");
    eprintln!("failover: registered at B {took:?} after the kill ({registered})");

    // Callable at B (bob given only B).
    let out = via_b.run(
        Some("bob"),
        &["ping", "alice", "-c", "2", "-i", "0.2"],
        Duration::from_secs(40),
    );
    assert!(out.status.success(), "{}", out.log);
    stop.store(true, Ordering::Relaxed);
    poller.join().unwrap();

    // The longest stretch in which B said "offline".
    let samples = samples.lock().unwrap().clone();
    let mut longest = Duration::ZERO;
    let mut since: Option<Duration> = None;
    for (at, online) in &samples {
        match (online, since) {
            (false, None) => since = Some(*at),
            (true, Some(from)) => {
                longest = longest.max(*at - from);
                since = None;
            }
            _ => {}
        }
    }
    assert!(
        since.is_none(),
        "B still says offline at the end: {samples:?}"
    );
    assert!(
        samples.last().is_some_and(|(_, online)| *online),
        "alice online again through B: {samples:?}"
    );
    eprintln!(
        "offline through B for {longest:?} at most ({} lookups)",
        samples.len()
    );
    assert!(longest <= LEASE, "offline for {longest:?}: {samples:?}");
    drop(pg);
}
