//! Registrations the durable name stores commit per second: one claimant at
//! a time, and 64 claimants at once (their commits group). The embedded
//! redb store (two-phase commit, see `RedbStore`) and, when PostgreSQL is
//! installed, `PgStore` on a private PostgreSQL on loopback (default
//! settings: fsync and synchronous_commit on).
//!
//! `cargo bench -p rendezvous --bench store` prints one table.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    missing_docs,
    unreachable_pub,
    dead_code
)]

// The tests' PostgreSQL harness (std and tempfile only).
#[path = "../../tests/src/postgres.rs"]
mod postgres;

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use common::Fingerprint;
use rendezvous::store::{NameStore, PgStore, RedbStore};

/// No cap on names per key: the bench measures commits, not the rule.
const ANY: usize = usize::MAX;
const SERIAL: u32 = 200;
const CLAIMANTS: u8 = 64;
const PER_CLAIMANT: u32 = 50;

/// Claims/s of `SERIAL` claims one after the other, and of `CLAIMANTS`
/// claimants at once, `PER_CLAIMANT` each (every name new).
async fn measure(store: Arc<dyn NameStore>, tag: &str) -> (f64, f64) {
    let start = Instant::now();
    for i in 0..SERIAL {
        store
            .claim(&format!("{tag}s{i}"), Fingerprint([1; 32]), ANY)
            .await
            .expect("claim");
    }
    let serial = f64::from(SERIAL) / start.elapsed().as_secs_f64();
    let start = Instant::now();
    let tasks: Vec<_> = (0..CLAIMANTS)
        .map(|t| {
            let store = store.clone();
            let tag = tag.to_owned();
            tokio::spawn(async move {
                for i in 0..PER_CLAIMANT {
                    store
                        .claim(&format!("{tag}p{t}-{i}"), Fingerprint([t; 32]), ANY)
                        .await
                        .expect("claim");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("task");
    }
    let grouped = f64::from(u32::from(CLAIMANTS) * PER_CLAIMANT) / start.elapsed().as_secs_f64();
    (serial, grouped)
}

fn row(store: &str, (serial, grouped): (f64, f64)) {
    println!("| {store} | one at a time | {serial:.0} |");
    println!("| {store} | {CLAIMANTS} at once | {grouped:.0} |");
}

fn block_on<T>(f: impl Future<Output = T>) -> T {
    tokio::runtime::Runtime::new().expect("runtime").block_on(f)
}

fn main() {
    let dir = tempfile::tempdir().expect("tempdir");
    let redb = Arc::new(RedbStore::open(&dir.path().join("names.redb")).expect("open"));
    let redb = block_on(measure(redb, "r"));
    let pg = postgres::PgServer::start().map(|pg| {
        let rates = block_on(async {
            let store = PgStore::connect(&pg.url()).await.expect("connect");
            measure(Arc::new(store), "p").await
        });
        drop(pg);
        rates
    });
    println!("| store | claimants | claims/s |");
    println!("|---|---|---|");
    row("redb", redb);
    match pg {
        Some(rates) => row("PostgreSQL", rates),
        None => println!("| PostgreSQL | (not installed) | |"),
    }
}
