//! `watch` delivery latency on loopback: a server and peers in this
//! process; one watcher of `alice`; alice listens and stops cleanly N times
//! (default 50). Prints median and p95 of (a) alice's `registered` →
//! the watcher's `online`, (b) the start of alice's clean stop → the
//! watcher's `offline`, as a markdown table.
//!
//! `cargo run --release -p tests --bin watch-bench [-- --rounds N]`

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    missing_docs,
    unreachable_pub
)]

use std::time::{Duration, Instant};

use peer::{Event, Policy, Watcher};
use tests::inproc::{within, TestServer};

const T: Duration = Duration::from_secs(10);

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

async fn until(watcher: &mut Watcher, online: bool) -> Instant {
    loop {
        let update = within(T, "a presence update", watcher.next())
            .await
            .expect("the watch goes on")
            .expect("no error");
        if update.online == online {
            return Instant::now();
        }
    }
}

#[tokio::main]
async fn main() {
    let rounds: usize = std::env::args()
        .skip_while(|a| a != "--rounds")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(50);
    let server = TestServer::start().await;
    let watching = server.peer("watcher").await;
    let mut watcher = watching.peer.watch(vec!["alice".into()]).expect("watch");
    until(&mut watcher, false).await;
    let keys = tempfile::tempdir().expect("dir");
    let key = keys.path().join("identity.pem");
    let (mut up, mut down) = (vec![], vec![]);
    for _ in 0..rounds {
        // From alice's `registered` event (the server answered her
        // registration) to the watcher's state.
        let mut alice = server
            .peer_tuned("alice", |c| c.identity = key.clone())
            .await;
        let listener = alice.peer.listen(Policy::AcceptAll).expect("listen");
        alice
            .wait_event(T, |e| matches!(e, Event::Registered { .. }))
            .await;
        let registered = Instant::now();
        up.push(until(&mut watcher, true).await - registered);
        let stop = Instant::now();
        drop(listener);
        // The close goes at once; its wait for the close to be acked is
        // not part of the delivery.
        let closing = alice.peer.clone();
        let shutdown = tokio::spawn(async move { closing.shutdown().await });
        down.push(until(&mut watcher, false).await - stop);
        let _ = shutdown.await;
    }
    println!("| watch delivery ({rounds} rounds, loopback) | median ms | p95 ms |");
    println!("|---|---|---|");
    for (what, samples) in [
        ("registered → online", &mut up),
        ("clean stop → offline", &mut down),
    ] {
        let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        ms.sort_by(f64::total_cmp);
        println!(
            "| {what} | {:.2} | {:.2} |",
            percentile(&ms, 0.5),
            percentile(&ms, 0.95)
        );
    }
}
