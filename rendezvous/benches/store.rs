//! Registrations the durable name store commits per second: one claimant at
//! a time, and 64 claimants at once (their commits group). Every write uses
//! redb's two-phase commit (see `RedbStore`).
//!
//! `cargo bench -p rendezvous --bench store` prints one table.

#![allow(clippy::expect_used, missing_docs)]

use std::sync::Arc;
use std::thread;
use std::time::Instant;

use common::Fingerprint;
use rendezvous::store::{NameStore, RedbStore};

/// No cap on names per key: the bench measures commits, not the rule.
const ANY: usize = usize::MAX;
const SERIAL: u32 = 200;
const THREADS: u8 = 64;
const PER_THREAD: u32 = 50;

fn main() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(RedbStore::open(&dir.path().join("names.redb")).expect("open"));

    let start = Instant::now();
    for i in 0..SERIAL {
        store
            .claim_blocking(&format!("s{i}"), Fingerprint([1; 32]), ANY)
            .expect("claim");
    }
    let serial = f64::from(SERIAL) / start.elapsed().as_secs_f64();

    let start = Instant::now();
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let store = store.clone();
            thread::spawn(move || {
                for i in 0..PER_THREAD {
                    store
                        .claim_blocking(&format!("p{t}-{i}"), Fingerprint([t; 32]), ANY)
                        .expect("claim");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("thread");
    }
    let grouped = f64::from(u32::from(THREADS) * PER_THREAD) / start.elapsed().as_secs_f64();

    println!("| claimants | claims/s |");
    println!("|---|---|");
    println!("| one at a time | {serial:.0} |");
    println!("| {THREADS} at once | {grouped:.0} |");
}
