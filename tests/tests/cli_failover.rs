//! Several nodes of one cluster through the real binaries: one server key
//! (`rendezvous --identity FILE`) gives one fingerprint; `peer --server A,B`
//! moves a `listen` to B within 20 s of A's SIGKILL, and one-shot commands
//! use the first node that answers. Each node here is a single-node server
//! with its own embedded store: the test is about the peer's side.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tests::proc::{bin, PeerHome, ServerProc};

const T: Duration = Duration::from_secs(20);
/// From a node's death to the `listen` registered on another (CLI.md).
const FAILOVER: Duration = Duration::from_secs(20);

/// A node on loopback with its own data dir and the shared key `identity`.
fn node(dir: &Path, name: &str, identity: &Path) -> ServerProc {
    let identity = identity.to_str().expect("utf-8 path");
    ServerProc::start(
        None,
        "127.0.0.1:0",
        &dir.join(name),
        &["--identity", identity],
    )
}

#[test]
fn two_nodes_with_one_identity_file_have_one_fingerprint() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("keys/cluster.key");
    let printed = |data: &str| {
        let out = std::process::Command::new(bin("rendezvous"))
            .args(["fingerprint", "--data-dir"])
            .arg(dir.path().join(data))
            .arg("--identity")
            .arg(&key)
            .stdin(Stdio::null())
            .output()
            .expect("run rendezvous fingerprint");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    // Created on first use, in its own place, owner-only.
    let first = printed("one");
    assert_eq!(first.len(), 64, "{first}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the key is owner-only");
    }
    assert_eq!(printed("two"), first, "the same file, the same key");
    let a = node(dir.path(), "a", &key);
    let b = node(dir.path(), "b", &key);
    assert_eq!(a.fingerprint, first);
    assert_eq!(b.fingerprint, first);
    assert!(
        !dir.path().join("a/server.key").exists(),
        "no key of its own in the data dir"
    );
    // Without --identity each data dir has its own key.
    let own = ServerProc::start(None, "127.0.0.1:0", &dir.path().join("c"), &[]);
    assert_ne!(own.fingerprint, first);
}

#[test]
fn a_listen_moves_to_the_next_node_within_20_s_of_a_kill() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("cluster.key");
    let mut a = node(dir.path(), "a", &key);
    let b = node(dir.path(), "b", &key);
    let (a_addr, b_addr) = (a.addr.clone(), b.addr.clone());

    let alice = PeerHome::for_nodes(dir.path(), "alice", &[&a, &b]);
    let mut listen = alice.spawn("alice", Some("alice"), &["listen", "--echo"]);
    listen.wait_for(T, "registered");
    // On A: a lookup through A alone finds alice online, through B not at all.
    let bob_a = PeerHome::for_nodes(dir.path(), "bob", &[&a]);
    let out = bob_a.run(None, &["lookup", "alice"], T);
    assert_eq!(out.event("lookup")["online"], true, "{}", out.log);
    let bob_b = PeerHome::for_nodes(dir.path(), "bob", &[&b]);
    let out = bob_b.run(None, &["lookup", "alice"], T);
    assert_eq!(out.error_kind(), Some("not_found"), "{}", out.log);

    a.proc.kill();
    let killed = Instant::now();
    let lost = listen.wait_for(FAILOVER, "rendezvous_lost");
    assert_eq!(lost["server"], a_addr.as_str(), "names the node lost");
    let left = FAILOVER.saturating_sub(killed.elapsed());
    listen.wait_for(left, "registered");
    let took = killed.elapsed();
    assert!(took < FAILOVER, "registered on B {took:?} after the kill");
    let restored = listen.wait_for(T, "rendezvous_restored");
    assert_eq!(restored["server"], b_addr.as_str(), "names the node now");
    eprintln!("failover: registered on the next node {took:?} after the kill");

    // One-shot commands given the dead node first use the live one.
    let bob = PeerHome::for_nodes(dir.path(), "bob", &[&a, &b]);
    let out = bob.run(None, &["lookup", "alice"], T);
    assert!(out.status.success(), "{}", out.log);
    assert_eq!(out.event("lookup")["online"], true, "{}", out.log);
    let out = bob.run(
        Some("bob"),
        &["ping", "alice", "-c", "2", "-i", "0.2"],
        Duration::from_secs(40),
    );
    assert!(out.status.success(), "{}", out.log);
    let pongs = out.events.iter().filter(|e| e["event"] == "pong").count();
    assert_eq!(pongs, 2, "{}", out.log);
}

#[test]
fn a_one_shot_command_skips_a_dead_first_node() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("cluster.key");
    let mut dead = node(dir.path(), "dead", &key);
    let live = node(dir.path(), "live", &key);
    let (_, mut l) = {
        let alice = PeerHome::for_nodes(dir.path(), "alice", &[&live]);
        let mut l = alice.spawn("alice", Some("alice"), &["listen", "--echo"]);
        l.wait_for(T, "registered");
        (alice, l)
    };
    dead.proc.kill();
    let bob = PeerHome::for_nodes(dir.path(), "bob", &[&dead, &live]);
    let started = Instant::now();
    let out = bob.run(None, &["lookup", "alice"], T);
    assert!(out.status.success(), "{}", out.log);
    assert_eq!(out.event("lookup")["online"], true, "{}", out.log);
    // One connect timeout for the dead node (5 s), then the live one.
    assert!(
        started.elapsed() < Duration::from_secs(12),
        "{:?}",
        started.elapsed()
    );
    l.kill();

    // Every node dead: server_unreachable, naming each node.
    let mut live = live;
    live.proc.kill();
    let out = bob.run(None, &["lookup", "alice"], Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(1), "{}", out.log);
    assert_eq!(out.error_kind(), Some("server_unreachable"), "{}", out.log);
    assert!(
        out.log.contains(&dead.addr) && out.log.contains(&live.addr),
        "{}",
        out.log
    );
}

#[test]
fn a_garbled_server_list_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("cluster.key");
    let a = node(dir.path(), "a", &key);
    for bad in [
        format!("{},", a.addr),
        format!("{},,{}", a.addr, a.addr),
        format!("{},nohost", a.addr),
    ] {
        let mut home = PeerHome::for_nodes(dir.path(), "bob", &[&a]);
        home.server = bad.clone();
        let out = home.run(None, &["lookup", "alice"], T);
        assert_eq!(out.status.code(), Some(2), "{bad}: {}", out.log);
        assert_eq!(out.error_kind(), Some("usage"), "{bad}: {}", out.log);
        assert!(out.log.contains("HOST:PORT"), "{}", out.log);
    }
}
