//! A call's path table (`peer::path::PathTable`) driven by fuzzer-chosen
//! events: candidates announced (vetted or not), pings and pongs from any
//! address (announced, unannounced, echoing nonces or not), time passing.
//!
//! Invariants: no panic; nothing is ever sent to an address that neither
//! passed vetting when announced nor pinged us first; an address that
//! pinged us but never echoed our nonce gets pongs only (no pings, no
//! data), at most one pong per ping; at most 4 such addresses get anything;
//! the chosen path is always a route the table may send data on. Birthday
//! attempts (this side's mapping from the first byte, notes from the
//! fuzzer): guessed pings go only to the IP of an announced address, only
//! after a note that says the other side is symmetric, at most the budget.
#![no_main]

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::candidates::is_observed_candidate;
use common::probe::{Mapping, Note, Ping, Pong};
use libfuzzer_sys::fuzz_target;
use peer::path::{Action, PathConfig, PathMode, PathParams, PathTable, Route};
use rand::SeedableRng;

const ADDRS: [&str; 8] = [
    "198.51.100.1:1",
    "198.51.100.1:2",
    "203.0.113.5:9",
    "192.168.1.7:4",
    "127.0.0.1:5",
    "224.0.0.1:6",
    "[2001:db8::1]:1",
    "0.0.0.0:0",
];

fn addr(b: u8) -> SocketAddr {
    ADDRS[usize::from(b) % ADDRS.len()].parse().expect("addr")
}

fuzz_target!(|data: &[u8]| {
    let Some((&head, ops)) = data.split_first() else {
        return;
    };
    let t0 = Instant::now();
    let mode = match head % 3 {
        0 => PathMode::Auto,
        1 => PathMode::Direct,
        _ => PathMode::Relay,
    };
    let initial: Vec<SocketAddr> = (0..head % 4).map(|i| addr(head.wrapping_add(i))).collect();
    let params = PathParams {
        call_id: 1,
        mode,
        relay: head & 0x10 != 0,
        candidates: initial.clone(),
        loopback_ok: false,
    };
    let mut table = PathTable::new(
        params,
        PathConfig::default(),
        t0,
        rand::rngs::StdRng::seed_from_u64(u64::from(head)),
    );
    let mine = [Mapping::Unknown, Mapping::Cone, Mapping::Symmetric][usize::from(head >> 5) % 3];
    table.set_mapping(t0, mine);
    let mut now = t0;
    let mut symmetric_note = false;
    let mut guesses = 0u32;
    // Addresses that may get pings/data: vetted announcements (and, in
    // relay mode, none). Unannounced senders: pongs only until proven.
    let vetted = |a: &SocketAddr| mode != PathMode::Relay && is_observed_candidate(*a, false);
    let mut announced: HashSet<SocketAddr> = initial.iter().copied().filter(vetted).collect();
    let mut pinged_us: HashMap<SocketAddr, usize> = HashMap::new();
    let mut pongs_to: HashMap<SocketAddr, usize> = HashMap::new();
    let mut last_tx = [0u8; 8];
    let mut nonces: HashMap<Route, [u8; 8]> = HashMap::new();
    for op in ops.chunks(3) {
        let (kind, x, y) = (op[0], *op.get(1).unwrap_or(&0), *op.get(2).unwrap_or(&0));
        let from = if x & 0x80 != 0 {
            Route::Relay
        } else {
            Route::Direct(addr(x))
        };
        match kind % 6 {
            0 => {
                let a = addr(x);
                table.candidates_added(now, &[a]);
                if vetted(&a) {
                    announced.insert(a);
                }
            }
            1 => {
                // A ping, echoing our last nonce to that route if `y` says so.
                let nonce = if y & 1 == 1 {
                    nonces.get(&from).copied().unwrap_or([0; 8])
                } else {
                    [y; 8]
                };
                table.ping_received(
                    now,
                    from,
                    &Ping {
                        call_id: 1,
                        tx: [y; 8],
                        nonce,
                    },
                );
                if let Route::Direct(a) = from {
                    *pinged_us.entry(a).or_default() += 1;
                }
            }
            2 => {
                let tx = if y & 1 == 1 { last_tx } else { [y; 8] };
                let pong = Pong {
                    call_id: 1,
                    tx,
                    observed: Some(addr(y)),
                    nonce: [x; 8],
                };
                table.pong_received(now, from, &pong);
            }
            3 => {
                let mapping =
                    [Mapping::Unknown, Mapping::Cone, Mapping::Symmetric][usize::from(y) % 3];
                symmetric_note |= mapping == Mapping::Symmetric;
                table.note_received(
                    now,
                    &Note {
                        call_id: 1,
                        tx: [x; 8],
                        mapping,
                        round: y >> 4,
                        heard: x & 1 == 1,
                    },
                );
            }
            _ => now += Duration::from_millis(u64::from(x) * 20 + u64::from(y)),
        }
        while let Some(action) = table.poll(now) {
            match action {
                Action::SendPing { to, ping } => {
                    last_tx = ping.tx;
                    if let Route::Direct(a) = to {
                        let known = announced.contains(&a) || pinged_us.contains_key(&a);
                        if !known {
                            guesses += 1;
                            assert!(
                                mine == Mapping::Cone
                                    && symmetric_note
                                    && announced.iter().any(|b| b.ip() == a.ip()),
                                "pinged {a}, never vetted nor heard from, and no birthday guess"
                            );
                            // One attempt's budget per retry interval.
                            let cfg = PathConfig::default();
                            let rounds = 1 + (now - t0).as_secs() / cfg.birthday_retry.as_secs();
                            let rounds = u32::try_from(rounds).unwrap_or(u32::MAX);
                            assert!(guesses <= cfg.birthday_budget.saturating_mul(rounds));
                        }
                        assert!(mode != PathMode::Relay, "relay mode pinged {a}");
                    }
                }
                Action::SendPong { to, pong } => {
                    nonces.insert(to, pong.nonce);
                    if let Route::Direct(a) = to {
                        let n = pongs_to.entry(a).or_default();
                        *n += 1;
                        let heard = pinged_us.get(&a).copied().unwrap_or(0);
                        assert!(*n <= heard, "{n} pongs to {a} for {heard} pings");
                        assert!(mode != PathMode::Relay, "relay mode answered {a}");
                    }
                }
                Action::Switch { to, .. } => {
                    if let Route::Direct(a) = to {
                        assert!(mode != PathMode::Relay);
                        assert!(
                            announced.contains(&a)
                                || pinged_us.contains_key(&a)
                                || (guesses > 0 && announced.iter().any(|b| b.ip() == a.ip()))
                        );
                    } else {
                        assert!(mode != PathMode::Direct, "direct mode chose the relay");
                    }
                }
                Action::OpenSockets { to, count, .. } => {
                    assert_eq!(
                        mine,
                        Mapping::Symmetric,
                        "only the symmetric side opens sockets"
                    );
                    assert!(count <= PathConfig::default().birthday_sockets);
                    assert!(announced.contains(&to), "opened toward {to}, never vetted");
                }
                Action::SendNote { .. }
                | Action::BirthdayEnded { .. }
                | Action::Nudge
                | Action::GiveUp { .. } => {}
            }
        }
        let strangers = pongs_to.keys().filter(|a| !announced.contains(a)).count();
        assert!(strangers <= 4, "{strangers} unannounced addresses answered");
    }
});
