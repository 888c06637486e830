//! The relay table on a fake clock: forwarding, forgeries, replays,
//! roaming, limits and expiry.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::relay_frame::{encode, FrameKey, Header, Party};

use super::table::CALL_ENTRY_SIZE;
use super::*;

const PAYLOAD: &[u8] = &[0x40; 1200];

/// One side of a call: its key and its counter.
struct Side {
    party: Party,
    call_id: u32,
    key: FrameKey,
    counter: u64,
}

impl Side {
    fn frame(&mut self, payload: &[u8]) -> Vec<u8> {
        self.counter += 1;
        self.frame_at(self.counter, payload)
    }

    fn frame_at(&self, counter: u64, payload: &[u8]) -> Vec<u8> {
        self.encode(counter, payload, false)
    }

    /// Its end-of-call frame, at the next counter.
    fn end(&mut self) -> Vec<u8> {
        self.counter += 1;
        self.encode(self.counter, &[], true)
    }

    fn encode(&self, counter: u64, payload: &[u8], end: bool) -> Vec<u8> {
        let h = Header {
            party: self.party,
            call_id: self.call_id,
            counter,
            end,
        };
        let mut out = Vec::new();
        encode(&h, &self.key, payload, &mut out).expect("fits");
        out
    }
}

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("addr")
}

fn secret(call_id: u32, party: Party) -> [u8; 32] {
    let mut s = [party.index() as u8 + 1; 32];
    s[..4].copy_from_slice(&call_id.to_be_bytes());
    s
}

fn alloc(call_id: u32, a: &str, b: &str) -> Allocation {
    Allocation {
        call_id,
        caller: PartySpec {
            addr: addr(a),
            source: addr(a).ip(),
            secret: secret(call_id, Party::Caller),
        },
        callee: PartySpec {
            addr: addr(b),
            source: addr(b).ip(),
            secret: secret(call_id, Party::Callee),
        },
    }
}

fn sides(call_id: u32) -> (Side, Side) {
    let side = |party| Side {
        party,
        call_id,
        key: FrameKey::new(&secret(call_id, party)),
        counter: 0,
    };
    (side(Party::Caller), side(Party::Callee))
}

const A: &str = "198.51.100.1:4000";
const B: &str = "203.0.113.9:5000";
const EVE: &str = "192.0.2.66:6666";

fn table_with_call(t0: Instant) -> (RelayTable, Side, Side) {
    let mut t = RelayTable::new(RelayConfig::default());
    t.allocate(t0, alloc(7, A, B)).expect("allocated");
    let (a, b) = sides(7);
    (t, a, b)
}

fn fwd(to: &str) -> Action {
    Action::Forward { to: addr(to) }
}

#[test]
fn forwards_both_ways_and_counts() {
    let t0 = Instant::now();
    let (mut t, mut a, mut b) = table_with_call(t0);
    let fa = a.frame(b"hello");
    assert_eq!(t.handle_packet(t0, addr(A), &fa), fwd(B));
    assert_eq!(t.handle_packet(t0, addr(B), &b.frame(b"hi")), fwd(A));
    let s = t.stats();
    assert_eq!((s.packets_relayed, s.calls_relayed, s.active), (2, 1, 1));
    assert_eq!(s.bytes_relayed, (fa.len() + 22) as u64);
    assert_eq!(s.drops.total(), 0);
}

#[test]
fn wrong_mac_and_garbage_are_dropped() {
    let t0 = Instant::now();
    let (mut t, mut a, b) = table_with_call(t0);
    let mut forged = a.frame(b"x");
    forged[19] ^= 1;
    assert_eq!(
        t.handle_packet(t0, addr(A), &forged),
        Action::Drop(DropCause::BadMac)
    );
    // The callee's key does not sign the caller's frames.
    let as_caller = Side {
        party: Party::Caller,
        ..b
    };
    let wrong_key = as_caller.frame_at(1, b"x");
    assert_eq!(
        t.handle_packet(t0, addr(EVE), &wrong_key),
        Action::Drop(DropCause::BadMac)
    );
    assert_eq!(
        t.handle_packet(t0, addr(EVE), &[0x30; 5]),
        Action::Drop(DropCause::Malformed)
    );
    let other_call = sides(8).0.frame_at(1, b"x");
    assert_eq!(
        t.handle_packet(t0, addr(A), &other_call),
        Action::Drop(DropCause::UnknownCall)
    );
    assert_eq!(t.stats().drops.get(DropCause::BadMac), 2);
    assert_eq!(
        t.party_addr(7, Party::Caller),
        Some(addr(A)),
        "nothing moved"
    );
}

#[test]
fn a_replayed_counter_is_dropped_and_keeps_nothing_alive() {
    let t0 = Instant::now();
    let (mut t, mut a, _) = table_with_call(t0);
    let f = a.frame(b"once");
    assert_eq!(t.handle_packet(t0, addr(A), &f), fwd(B));
    let idle = RelayConfig::default().idle_timeout;
    let later = t0 + idle - Duration::from_secs(1);
    assert_eq!(
        t.handle_packet(later, addr(A), &f),
        Action::Drop(DropCause::Replayed)
    );
    assert_eq!(
        t.poll_expired(t0 + idle),
        Some(7),
        "the replay did not refresh the call"
    );
}

#[test]
fn a_replayed_frame_from_a_third_address_is_dropped_and_moves_nothing() {
    let t0 = Instant::now();
    let (mut t, mut a, mut b) = table_with_call(t0);
    let f = a.frame(b"seen");
    assert_eq!(t.handle_packet(t0, addr(A), &f), fwd(B));
    assert_eq!(
        t.handle_packet(t0, addr(EVE), &f),
        Action::Drop(DropCause::ReplayedElsewhere)
    );
    assert_eq!(t.party_addr(7, Party::Caller), Some(addr(A)));
    assert_eq!(
        t.handle_packet(t0, addr(B), &b.frame(b"to a")),
        fwd(A),
        "B still reaches A"
    );
    assert_eq!(t.stats().roams, 0);
}

#[test]
fn a_fresh_frame_from_a_new_address_moves_the_party_but_a_late_one_does_not() {
    let t0 = Instant::now();
    let (mut t, mut a, mut b) = table_with_call(t0);
    let early = a.frame(b"1");
    let late = a.frame(b"2");
    assert_eq!(t.handle_packet(t0, addr(A), &early), fwd(B));
    let roamed = "198.51.100.1:4999";
    assert_eq!(t.handle_packet(t0, addr(roamed), &a.frame(b"3")), fwd(B));
    assert_eq!(t.party_addr(7, Party::Caller), Some(addr(roamed)));
    assert_eq!(t.handle_packet(t0, addr(B), &b.frame(b"x")), fwd(roamed));
    // A frame sent before the move arrives late from the old address:
    // forwarded (it is authentic and unseen), but it moves nothing back.
    assert_eq!(t.handle_packet(t0, addr(A), &late), fwd(B));
    assert_eq!(t.party_addr(7, Party::Caller), Some(addr(roamed)));
    assert_eq!(t.stats().roams, 1);
}

#[test]
fn a_call_over_its_rate_is_throttled_while_another_keeps_its_rate() {
    let config = RelayConfig {
        rate: Some(ByteRate::per_second(100_000)),
        ..RelayConfig::default()
    };
    let burst = config.rate.expect("set").burst;
    let mut t = RelayTable::new(config);
    let t0 = Instant::now();
    t.allocate(t0, alloc(1, A, B)).expect("allocated");
    t.allocate(t0, alloc(2, "198.51.100.2:1", "203.0.113.2:1"))
        .expect("allocated");
    let (mut hog, _) = sides(1);
    let (mut calm, _) = sides(2);
    let (mut hog_sent, mut calm_sent) = (0u64, 0u64);
    // One simulated second in 1 ms steps: the hog offers 10 packets a
    // millisecond (~12 MB/s), the calm call 1 every 20 ms (~60 kB/s).
    for ms in 0..1000u64 {
        let now = t0 + Duration::from_millis(ms);
        for _ in 0..10 {
            let f = hog.frame(PAYLOAD);
            if t.handle_packet(now, addr(A), &f) == fwd(B) {
                hog_sent += f.len() as u64;
            }
        }
        if ms % 20 == 0 {
            let f = calm.frame(PAYLOAD);
            assert_eq!(
                t.handle_packet(now, addr("198.51.100.2:1"), &f),
                fwd("203.0.113.2:1")
            );
            calm_sent += f.len() as u64;
        }
    }
    assert!(hog_sent <= 100_000 + burst, "hog relayed {hog_sent}");
    assert!(hog_sent >= 90_000, "hog still gets its rate: {hog_sent}");
    assert_eq!(calm_sent, 50 * 1220, "the calm call lost nothing");
    assert!(t.stats().drops.get(DropCause::OverRate) > 9000);
}

#[test]
fn the_other_direction_keeps_its_rate() {
    let config = RelayConfig {
        rate: Some(ByteRate {
            per_second: 1,
            burst: 5000,
        }),
        ..RelayConfig::default()
    };
    let mut t = RelayTable::new(config);
    let t0 = Instant::now();
    t.allocate(t0, alloc(7, A, B)).expect("allocated");
    let (mut a, mut b) = sides(7);
    let passed = (0..10)
        .filter(|_| t.handle_packet(t0, addr(A), &a.frame(PAYLOAD)) == fwd(B))
        .count();
    assert_eq!(passed, 4, "5000 bytes of burst: four 1220-byte frames");
    assert_eq!(t.handle_packet(t0, addr(B), &b.frame(b"ack")), fwd(A));
}

#[test]
fn a_call_past_its_bytes_is_dropped() {
    let config = RelayConfig {
        max_bytes_per_call: 3000,
        ..RelayConfig::default()
    };
    let mut t = RelayTable::new(config);
    let t0 = Instant::now();
    t.allocate(t0, alloc(7, A, B)).expect("allocated");
    let (mut a, mut b) = sides(7);
    assert_eq!(t.handle_packet(t0, addr(A), &a.frame(PAYLOAD)), fwd(B));
    assert_eq!(t.handle_packet(t0, addr(B), &b.frame(PAYLOAD)), fwd(A));
    assert_eq!(
        t.handle_packet(t0, addr(A), &a.frame(PAYLOAD)),
        Action::Drop(DropCause::OverBytes)
    );
    assert_eq!(
        t.handle_packet(t0, addr(A), &a.frame(b"small")),
        fwd(B),
        "what fits passes"
    );
}

#[test]
fn an_idle_call_expires_and_an_active_one_does_not() {
    let t0 = Instant::now();
    let idle = RelayConfig::default().idle_timeout;
    let mut t = RelayTable::new(RelayConfig::default());
    t.allocate(t0, alloc(1, A, B)).expect("allocated");
    t.allocate(t0, alloc(2, "198.51.100.2:1", "203.0.113.2:1"))
        .expect("allocated");
    let (mut a1, _) = sides(1);
    let (mut a2, _) = sides(2);
    let half = t0 + idle / 2;
    assert_eq!(
        t.handle_packet(half, addr("198.51.100.2:1"), &a2.frame(b"x")),
        fwd("203.0.113.2:1")
    );
    assert_eq!(t.next_deadline(), Some(t0 + idle));
    assert_eq!(t.poll_expired(t0 + idle - Duration::from_millis(1)), None);
    assert_eq!(t.poll_expired(t0 + idle), Some(1));
    assert_eq!(
        t.poll_expired(t0 + idle),
        None,
        "call 2 was active: re-filed"
    );
    assert_eq!(t.next_deadline(), Some(half + idle));
    assert_eq!(
        t.handle_packet(t0 + idle, addr(A), &a1.frame(b"x")),
        Action::Drop(DropCause::UnknownCall)
    );
    // Expiry is also caught on the packet itself, before any poll.
    let late = half + idle;
    assert_eq!(
        t.handle_packet(late, addr("198.51.100.2:1"), &a2.frame(b"x")),
        Action::Drop(DropCause::Expired)
    );
    assert!(t.is_empty());
    assert_eq!(t.next_deadline(), None);
    assert_eq!(t.stats().expired, 2);
}

#[test]
fn a_partys_end_frame_ends_the_call_and_nobody_elses_does() {
    let t0 = Instant::now();
    let (mut t, mut a, mut b) = table_with_call(t0);
    assert_eq!(t.handle_packet(t0, addr(A), &a.frame(b"x")), fwd(B));
    // A forged end (another key), and a replay of an old counter as an end:
    // refused, the call goes on.
    let mut eve = Side {
        key: FrameKey::new(&[0xEE; 32]),
        ..sides(7).0
    };
    assert_eq!(
        t.handle_packet(t0, addr(EVE), &eve.end()),
        Action::Drop(DropCause::BadMac)
    );
    let stale_end = a.encode(1, &[], true);
    assert_eq!(
        t.handle_packet(t0, addr(A), &stale_end),
        Action::Drop(DropCause::Replayed)
    );
    assert_eq!(t.handle_packet(t0, addr(B), &b.frame(b"y")), fwd(A));
    // The callee's own end: gone at once, not after the idle timeout.
    assert_eq!(t.handle_packet(t0, addr(B), &b.end()), Action::Ended);
    assert!(t.is_empty());
    assert_eq!(t.stats().ended, 1);
    assert_eq!(
        t.handle_packet(t0, addr(A), &a.frame(b"x")),
        Action::Drop(DropCause::UnknownCall)
    );
}

#[test]
fn a_removed_call_drops_its_frames() {
    let t0 = Instant::now();
    let (mut t, mut a, _) = table_with_call(t0);
    assert!(t.remove(7));
    assert!(!t.remove(7));
    assert_eq!(
        t.handle_packet(t0, addr(A), &a.frame(b"x")),
        Action::Drop(DropCause::UnknownCall)
    );
    assert_eq!(t.next_deadline(), None);
}

#[test]
fn one_source_is_in_a_bounded_number_of_calls() {
    let config = RelayConfig {
        max_per_source: 3,
        ..RelayConfig::default()
    };
    let mut t = RelayTable::new(config);
    let t0 = Instant::now();
    for i in 0..3u32 {
        let a = format!("[2001:db8:1:2::{}]:4000", i + 1);
        t.allocate(t0, alloc(i, &a, &format!("203.0.113.{}:1", i + 1)))
            .expect("allocated");
    }
    let same_64 = "[2001:db8:1:2:ffff::9]:4000";
    assert_eq!(
        t.allocate(t0, alloc(9, "203.0.113.50:1", same_64)),
        Err(AllocError::SourceBusy {
            ip: "2001:db8:1:2::".parse().expect("ip"),
            max: 3
        }),
        "an IPv6 /64 is one source, as caller or callee"
    );
    t.allocate(t0, alloc(10, "[2001:db8:1:3::1]:1", "203.0.113.50:1"))
        .expect("the next /64");
    assert!(t.remove(0));
    t.allocate(t0, alloc(9, "203.0.113.50:1", same_64))
        .expect("a slot came back");
    assert_eq!(t.stats().refused_source, 1);
    assert_eq!(
        t.allocate(t0, alloc(9, "203.0.113.51:1", "203.0.113.52:1")),
        Err(AllocError::Duplicate { call_id: 9 })
    );
}

/// Under a flood the table stays at its cap: quiet calls are shed for new
/// ones (oldest activity first), active calls are never shed — then new
/// ones are refused.
#[test]
fn memory_is_bounded_under_a_flood_of_allocations() {
    let config = RelayConfig {
        max_allocations: 100,
        ..RelayConfig::default()
    };
    let shed_idle = config.shed_idle;
    let mut t = RelayTable::new(config);
    let t0 = Instant::now();
    t.allocate(t0, alloc(0, A, B)).expect("the real call");
    let (mut a, _) = sides(0);
    let mut refused = 0u32;
    for i in 1..10_000u32 {
        let now = t0 + Duration::from_millis(u64::from(i));
        assert_eq!(t.handle_packet(now, addr(A), &a.frame(b"live")), fwd(B));
        let x = format!("10.{}.{}.1:1", i >> 8, i & 255);
        let y = format!("10.{}.{}.2:1", i >> 8, i & 255);
        if t.allocate(now, alloc(i, &x, &y)).is_err() {
            refused += 1;
        }
        assert!(t.len() <= 100);
    }
    assert_eq!(t.len(), 100);
    assert!(
        t.party_addr(0, Party::Caller).is_some(),
        "the live call survived"
    );
    // Calls 1..=99 fill the table in the first 99 ms; from then on new
    // ones are refused until call 1 has been quiet for `shed_idle` (at
    // 5001 ms); each of the next 99 sheds one of calls 1..=99; the calls
    // that replaced them are not quiet long enough before the flood ends.
    assert_eq!(shed_idle, Duration::from_secs(5));
    assert_eq!(t.stats().shed, 99);
    assert_eq!(refused, 9_999 - 99 - 99);
    assert_eq!(t.stats().refused_full, u64::from(refused));
}

#[test]
fn per_call_state_is_under_2_kib() {
    let size = CALL_ENTRY_SIZE;
    eprintln!("per-call state: {size} bytes");
    assert!(size <= 2048, "a call takes {size} bytes");
}
