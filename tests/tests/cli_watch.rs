//! `peer watch` through the real binaries on loopback: the state now, a
//! `listen` coming online, going offline on a clean stop (within 1 s) and
//! on a SIGKILL (within the server link's idle timeout), a `listen`
//! replaced by a newer one without a flap, a watch that survives its
//! server restarting, and `listen --invisible` (offline to lookups and
//! watchers, callable all the same).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use serde_json::Value;
use tests::proc::{LocalWorld as World, PeerHome, Proc};

const T: Duration = Duration::from_secs(30);
/// A clean stop shows offline within this (the issue).
const CLEAN: Duration = Duration::from_secs(1);
/// A killed `listen`: the server notices at its link's idle timeout (9 s
/// on the peer's side), plus slack.
const KILLED: Duration = Duration::from_secs(12);

fn fingerprint_of(home: &PeerHome) -> String {
    String::from_utf8(home.run(None, &["id"], T).stdout)
        .unwrap()
        .trim()
        .to_owned()
}

/// The next `presence` event about `name`.
fn presence(watch: &mut Proc, name: &str, within: Duration) -> Value {
    watch.wait_event(within, |v| v["event"] == "presence" && v["name"] == name)
}

fn watch(w: &World, names: &[&str]) -> Proc {
    let mut args = vec!["watch"];
    args.extend_from_slice(names);
    w.home("watcher").spawn("watch", None, &args)
}

#[test]
fn watch_sees_a_name_come_online_and_go_offline_within_1_s_of_a_clean_stop() {
    let w = World::new();
    let mut watcher = watch(&w, &["alice"]);
    let now = presence(&mut watcher, "alice", T);
    assert_eq!(now["online"], false);
    assert_eq!(now["fingerprint"], Value::Null, "never registered: {now}");

    let (alice, mut listen) = w.listen("alice", &["--echo"]);
    let fp = fingerprint_of(&alice);
    let up = presence(&mut watcher, "alice", T);
    assert_eq!(up["online"], true);
    assert_eq!(up["fingerprint"], fp.as_str());
    assert!(up.get("addr").is_none() && up.get("observed_addr").is_none());

    let stopped = Instant::now();
    assert!(listen.terminate(T).success());
    let down = presence(&mut watcher, "alice", T);
    let took = stopped.elapsed();
    assert_eq!(down["online"], false);
    assert_eq!(down["fingerprint"], fp.as_str(), "offline keeps the key");
    assert!(took <= CLEAN, "offline {took:?} after SIGTERM");
    eprintln!("watch: offline {took:?} after SIGTERM");

    let status = watcher.terminate(T);
    assert!(status.success(), "SIGTERM ends watch with 0: {status:?}");
}

#[test]
fn watch_sees_a_killed_listen_offline_within_the_idle_timeout() {
    let w = World::new();
    let (_alice, mut listen) = w.listen("alice", &["--echo"]);
    let mut watcher = watch(&w, &["alice"]);
    assert_eq!(presence(&mut watcher, "alice", T)["online"], true);
    let killed = Instant::now();
    listen.kill();
    let down = presence(&mut watcher, "alice", KILLED + Duration::from_secs(5));
    let took = killed.elapsed();
    assert_eq!(down["online"], false);
    assert!(took <= KILLED, "offline {took:?} after SIGKILL");
    eprintln!("watch: offline {took:?} after SIGKILL");
}

#[test]
fn a_listen_replaced_by_a_newer_one_does_not_flap() {
    let w = World::new();
    let (alice, mut old) = w.listen("alice", &["--echo"]);
    let mut watcher = watch(&w, &["alice", "carol"]);
    assert_eq!(presence(&mut watcher, "alice", T)["online"], true);
    assert_eq!(presence(&mut watcher, "carol", T)["online"], false);

    // The same home started again: the same key, a newer listen.
    let mut new = alice.spawn("alice again", Some("alice"), &["listen", "--echo"]);
    new.wait_for(T, "registered");
    old.wait_error(T, "replaced");
    old.wait_exit(T);
    // A barrier: carol's state comes after anything the replacement caused.
    let (_carol, _c) = w.listen("carol", &["--echo"]);
    let next = watcher.wait_event(T, |v| v["event"] == "presence");
    assert_eq!(
        (next["name"].as_str(), next["online"].as_bool()),
        (Some("carol"), Some(true)),
        "alice flapped: {next}"
    );

    assert!(new.terminate(T).success());
    let down = presence(&mut watcher, "alice", T);
    assert_eq!(down["online"], false);
}

#[test]
fn a_watch_survives_its_server_restarting_and_tells_the_states_again() {
    let mut w = World::new();
    let (_alice, _l) = w.listen("alice", &["--echo"]);
    let mut watcher = watch(&w, &["alice"]);
    assert_eq!(presence(&mut watcher, "alice", T)["online"], true);
    w.restart(false);
    watcher.wait_for(T, "rendezvous_lost");
    watcher.wait_for(T, "rendezvous_restored");
    // The listen registers again too: the watch sees it online again.
    let again = watcher.wait_event(T, |v| {
        v["event"] == "presence" && v["name"] == "alice" && v["online"] == true
    });
    assert_eq!(again["online"], true);
}

#[test]
fn watch_refuses_bad_names_and_too_many_as_usage_errors() {
    let w = World::new();
    let home = w.home("watcher");
    let out = home.run(None, &["watch", "Not A Name"], T);
    assert_eq!(out.status.code(), Some(1), "{}", out.log);
    assert_eq!(out.error_kind(), Some("invalid_name"), "{}", out.log);
    let many: Vec<String> = (0..257).map(|i| format!("n{i}")).collect();
    let mut args = vec!["watch"];
    args.extend(many.iter().map(String::as_str));
    let out = home.run(None, &args, T);
    assert_eq!(out.status.code(), Some(2), "{}", out.log);
}

#[test]
fn an_invisible_listen_is_offline_to_lookup_and_watch_but_takes_calls() {
    let w = World::new();
    let (alice, _l) = w.listen("alice", &["--echo", "--invisible"]);
    let fp = fingerprint_of(&alice);
    let mut watcher = watch(&w, &["alice"]);
    let seen = presence(&mut watcher, "alice", T);
    assert_eq!(seen["online"], false, "{seen}");
    assert_eq!(seen["fingerprint"], fp.as_str());

    let bob = w.home("bob");
    let looked = bob.run(None, &["lookup", "alice"], T);
    assert!(looked.status.success(), "{}", looked.log);
    let ev = looked.event("lookup");
    assert_eq!(ev["online"], false, "{ev}");
    assert_eq!(ev["fingerprint"], fp.as_str());

    let mut cmd = bob.cmd(Some("bob"), &["call", "alice"]);
    cmd.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped());
    let mut call = Proc::spawn("bob call alice", cmd);
    let mut stdin = call.take_stdin();
    std::io::Write::write_all(&mut stdin, b"still there?\n").unwrap();
    drop(stdin);
    assert_eq!(call.read_stdout(T), b"still there?\n");
    assert!(call.wait_exit(T).success(), "{}", call.log());
    assert!(
        watcher.drain("presence").is_empty(),
        "the call showed nothing to the watcher"
    );
}
