//! The relay's allocation table (`rendezvous::relay::RelayTable`) driven by
//! fuzzer-chosen operations: allocations, valid and forged frames from any
//! address, replays, garbage, time passing, expiry and removal.
//!
//! Invariants: no panic; a frame is forwarded only to an address its
//! call's other party was allocated at or sent an authentic frame from;
//! forged, garbled and foreign frames are never forwarded; no (call,
//! party, counter) is forwarded twice; the table stays within its cap;
//! every datagram is counted once (relayed or dropped by a cause).
#![no_main]

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::relay_frame::{encode, FrameKey, Header, Party};
use libfuzzer_sys::fuzz_target;
use rendezvous::relay::{Action, Allocation, ByteRate, PartySpec, RelayConfig, RelayTable};

const ADDRS: [&str; 6] = [
    "10.0.0.1:1",
    "10.0.0.1:2",
    "10.0.0.2:1",
    "[2001:db8::1]:1",
    "[2001:db8::2]:7",
    "192.0.2.9:9",
];
const MAX_CALLS: usize = 3;

/// A call as the harness knows it: its keys' generation, its parties'
/// counters, and every address each party may legitimately be at.
struct Known {
    generation: u32,
    counters: [u64; 2],
    legit: [HashSet<SocketAddr>; 2],
}

/// Each allocation gets new secrets (`generation` never repeats within an
/// input); `forged` is a key nobody was given.
fn secret(call_id: u32, party: Party, generation: u32, forged: bool) -> [u8; 32] {
    let mut s = [0u8; 32];
    s[0] = party.index() as u8;
    s[1..5].copy_from_slice(&call_id.to_be_bytes());
    s[5..9].copy_from_slice(&generation.to_be_bytes());
    s[31] = u8::from(forged);
    s
}

struct Harness {
    table: RelayTable,
    now: Instant,
    addrs: Vec<SocketAddr>,
    calls: HashMap<u32, Known>,
    generation: u32,
    forwarded: HashSet<(u32, u32, usize, u64)>,
    sent: Vec<Vec<u8>>,
    handled: u64,
}

impl Harness {
    fn send(&mut self, from: SocketAddr, bytes: &[u8], authentic: Option<(u32, Party, u64)>) {
        self.handled += 1;
        let action = self.table.handle_packet(self.now, from, bytes);
        let Action::Forward { to } = action else {
            return;
        };
        let (id, party, counter) = authentic.expect("forwarded a frame that is not authentic");
        let known = self
            .calls
            .get(&id)
            .expect("forwarded for a call the relay should not have");
        let fresh = self
            .forwarded
            .insert((known.generation, id, party.index(), counter));
        assert!(fresh, "forwarded counter {counter} of call {id} twice");
        assert!(
            known.legit[party.other().index()].contains(&to),
            "forwarded to {to}, not an address of the other party"
        );
    }

    fn allocate(&mut self, id: u32, a: SocketAddr, b: SocketAddr) {
        self.generation += 1;
        let g = self.generation;
        let spec = |addr: SocketAddr, party| PartySpec {
            addr,
            source: addr.ip(),
            secret: secret(id, party, g, false),
        };
        let alloc = Allocation {
            call_id: id,
            caller: spec(a, Party::Caller),
            callee: spec(b, Party::Callee),
        };
        if self.table.allocate(self.now, alloc).is_ok() {
            let legit = [HashSet::from([a]), HashSet::from([b])];
            self.calls.insert(
                id,
                Known {
                    generation: g,
                    counters: [0; 2],
                    legit,
                },
            );
        }
    }

    /// A frame of call `id` from `party`, at the next counter or `back`
    /// below it, signed with the right key unless `forge`.
    fn frame(
        &mut self,
        id: u32,
        party: Party,
        back: u64,
        len: usize,
        forge: bool,
    ) -> Option<(Vec<u8>, u64)> {
        let known = self.calls.get_mut(&id)?;
        let c = &mut known.counters[party.index()];
        if back == 0 {
            *c += 1;
        }
        let counter = c.saturating_sub(back);
        let key = FrameKey::new(&secret(id, party, known.generation, forge));
        let mut out = Vec::new();
        encode(
            &Header {
                party,
                call_id: id,
                counter,
                end: false,
            },
            &key,
            &vec![0x40; len],
            &mut out,
        )
        .ok()?;
        Some((out, counter))
    }

    fn forget_gone(&mut self) {
        while let Some(id) = self.table.poll_expired(self.now) {
            self.calls.remove(&id);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let config = RelayConfig {
        rate: Some(ByteRate {
            per_second: 20_000,
            burst: 4_000,
        }),
        max_bytes_per_call: 50_000,
        idle_timeout: Duration::from_secs(10),
        shed_idle: Duration::from_secs(2),
        max_allocations: MAX_CALLS,
        max_per_source: 2,
    };
    let mut h = Harness {
        table: RelayTable::new(config),
        now: Instant::now(),
        addrs: ADDRS.iter().map(|a| a.parse().expect("addr")).collect(),
        calls: HashMap::new(),
        generation: 0,
        forwarded: HashSet::new(),
        sent: Vec::new(),
        handled: 0,
    };
    let mut bytes = data.iter().copied();
    while let Some(op) = bytes.next() {
        let arg = bytes.next().unwrap_or(0);
        let id = u32::from(arg % 4);
        let party = if arg & 4 == 0 {
            Party::Caller
        } else {
            Party::Callee
        };
        let from = h.addrs[usize::from(arg >> 3) % ADDRS.len()];
        match op % 8 {
            0 => {
                let b = h.addrs[usize::from(op >> 3) % ADDRS.len()];
                h.allocate(id, from, b);
            }
            1 | 2 => {
                let back = u64::from(op >> 6);
                let len = usize::from(op >> 3) * 45;
                if let Some((f, counter)) = h.frame(id, party, back, len, false) {
                    // The sender's address becomes legitimate only if the
                    // relay may roam there; record it before sending.
                    if let Some(k) = h.calls.get_mut(&id) {
                        k.legit[party.index()].insert(from);
                    }
                    h.send(from, &f, Some((id, party, counter)));
                    h.sent.push(f);
                }
            }
            3 => {
                if let Some((f, _)) = h.frame(id, party, u64::from(op >> 3), 10, true) {
                    h.send(from, &f, None);
                }
            }
            4 => {
                let i = usize::from(op >> 3);
                if let Some(f) = h.sent.get(i % h.sent.len().max(1)).cloned() {
                    let mut g = f.clone();
                    g[usize::from(arg) % 20] ^= 1 << (op >> 5);
                    h.send(from, &g, None);
                    h.send(from, &f, None); // an exact replay
                }
            }
            5 => h.now += Duration::from_millis(u64::from(arg) * 50),
            6 => {
                h.table.remove(id);
                h.calls.remove(&id);
            }
            _ => {
                let n = usize::from(arg) % 40;
                let junk: Vec<u8> = bytes.by_ref().take(n).collect();
                h.send(from, &junk, None);
            }
        }
        h.forget_gone();
        assert!(h.table.len() <= MAX_CALLS);
        h.calls
            .retain(|id, _| h.table.party_addr(*id, Party::Caller).is_some());
        let s = h.table.stats();
        assert_eq!(s.packets_relayed + s.drops.total(), h.handled);
        assert_eq!(s.active, h.table.len() as u64);
    }
});
