use super::*;

use common::probe::Ping;
use common::relay_frame::{encode, Header, Party, TYPE_DATA_CALLEE};

fn a(s: &str) -> SocketAddr {
    s.parse().expect("addr")
}

const SERVER: &str = "192.0.2.1:7700";
const CALLEE: &str = "198.51.100.7:4000";

fn spec() -> CallSpec {
    CallSpec {
        call_id: 42,
        party: Party::Caller,
        probe_key: [5; 32],
        relay: Some((
            a(SERVER),
            RelayTicket {
                call_id: 9,
                secret: [6; 32],
            },
        )),
        candidates: vec![a(CALLEE)],
        mode: PathMode::Auto,
        loopback_ok: false,
    }
}

fn router() -> (Router, SocketAddr, Instant) {
    let r = Router::new(false);
    let now = Instant::now();
    let (v, _) = r.register(spec(), PathConfig::default(), now);
    (r, v, now)
}

/// A QUIC long-header Initial (first byte 0xC0) or a short header (0x40).
fn quic(first: u8) -> Vec<u8> {
    let mut p = vec![first, 0, 0, 0, 1];
    p.resize(1200, 0);
    p
}

fn frame_from(party: Party, call_id: u32, payload: &[u8]) -> Vec<u8> {
    let header = Header {
        party,
        call_id,
        counter: 1,
        end: false,
    };
    let mut out = vec![];
    encode(&header, &FrameKey::new(&[1; 32]), payload, &mut out).expect("frame");
    out
}

#[test]
fn virtual_addresses_are_in_the_reserved_range_and_never_vetted() {
    let (r, v, now) = router();
    assert!(is_virtual(v), "{v}");
    assert!(!common::candidates::is_observed_candidate(v, true));
    let (w, _) = r.register(spec(), PathConfig::default(), now);
    assert_ne!(v, w);
    let v6 = Router::new(true);
    let (m, _) = v6.register(spec(), PathConfig::default(), now);
    assert!(m.is_ipv6() && is_virtual(m), "{m}");
    assert!(!is_virtual(a(CALLEE)));
}

#[test]
fn before_a_choice_packets_go_every_vetted_way_and_other_addresses_pass() {
    let (r, v, _) = router();
    assert_eq!(
        r.targets(v),
        Some(Targets {
            direct: smallvec::smallvec![a(CALLEE)],
            relay: true,
            via: None,
        })
    );
    assert_eq!(r.targets(a(SERVER)), None, "the server link passes through");
    r.remove(v);
    assert_eq!(
        r.targets(v),
        Some(Targets::default()),
        "a gone call sends nothing"
    );
}

#[test]
fn quic_from_a_path_of_the_call_comes_from_its_virtual_address() {
    let (r, v, now) = router();
    r.add_server(a(SERVER));
    assert_eq!(r.recv(now, a(CALLEE), &quic(0xC0)), Inbound::Quic(v));
    assert_eq!(r.recv(now, a(SERVER), &quic(0x40)), Inbound::Pass);
    assert_eq!(
        r.recv(now, a(SERVER), &quic(0xC0)),
        Inbound::Pass,
        "the server's handshake passes even while a call waits"
    );
    // A stranger's Initial would open a second connection: dropped while
    // the call waits for its own. Its other packets never pass: they could
    // only provoke stateless resets or move a call's connection.
    let stranger = a("203.0.113.5:999");
    assert_eq!(r.recv(now, stranger, &quic(0xC0)), Inbound::Consumed);
    assert_eq!(r.recv(now, stranger, &quic(0x40)), Inbound::Consumed);
    r.connected(v, [7; 32], now);
    assert_eq!(r.recv(now, stranger, &quic(0xC0)), Inbound::Pass);
    assert_eq!(r.recv(now, stranger, &quic(0x40)), Inbound::Consumed);
    assert_eq!(r.path(v), Some((None, Some(Route::Direct(a(CALLEE))))));
}

#[test]
fn relay_frames_of_the_other_party_from_the_relay_are_unwrapped() {
    let (r, v, now) = router();
    let packet = quic(0x40);
    let theirs = frame_from(Party::Callee, 9, &packet);
    assert_eq!(theirs[0], TYPE_DATA_CALLEE);
    assert_eq!(r.recv(now, a(SERVER), &theirs), Inbound::Relayed(v));
    // Our own party's frame (a reflection), another call id, another sender.
    let ours = frame_from(Party::Caller, 9, &packet);
    assert_eq!(r.recv(now, a(SERVER), &ours), Inbound::Consumed);
    let other = frame_from(Party::Callee, 10, &packet);
    assert_eq!(r.recv(now, a(SERVER), &other), Inbound::Consumed);
    assert_eq!(r.recv(now, a(CALLEE), &theirs), Inbound::Consumed);
    assert_eq!(r.recv(now, a(SERVER), &[0, 0, 0, 0]), Inbound::Consumed);
    assert_eq!(r.path(v), Some((None, Some(Route::Relay))));
    let (to, header) = r.relay_frame(v).expect("relayed");
    assert_eq!(to, a(SERVER));
    let (_, next) = r.relay_frame(v).expect("relayed");
    let counter = |h: &[u8; HEADER_LEN]| relay_frame::decode(h).expect("header").header.counter;
    assert_eq!(counter(&next), counter(&header) + 1, "counters rise");
}

#[test]
fn a_valid_ping_is_answered_and_a_forged_one_is_not() {
    let (r, v, now) = router();
    let first_pings = drain_sends(&r, v, now);
    assert_eq!(
        first_pings.len(),
        2,
        "the callee and the relay: {first_pings:?}"
    );
    let ping = Probe::Ping(Ping {
        call_id: 42,
        tx: [1; 8],
        nonce: [0; 8],
    });
    let forged = ping.encode(&ProbeKey::new(&[9; 32]));
    assert_eq!(r.recv(now, a(CALLEE), &forged), Inbound::Consumed);
    assert!(drain_sends(&r, v, now).is_empty(), "no answer to a bad MAC");
    let good = ping.encode(&ProbeKey::new(&[5; 32]));
    assert_eq!(r.recv(now, a(CALLEE), &good), Inbound::Consumed);
    let sent = drain_sends(&r, v, now);
    let pongs: Vec<_> = sent
        .iter()
        .filter(|o| o.bytes()[0] == common::probe::PONG)
        .collect();
    assert_eq!(pongs.len(), 1, "{sent:?}");
    assert_eq!(pongs[0].to, a(CALLEE));
    assert_eq!(pongs[0].bytes().len(), PROBE_LEN, "same size as the ping");
}

fn drain_sends(r: &Router, v: SocketAddr, now: Instant) -> Vec<Outgoing> {
    let mut out = vec![];
    for _ in 0..100 {
        match r.poll(v, now) {
            Polled::Send(o) => out.push(o),
            Polled::Action(_) => {}
            Polled::Idle(_) | Polled::Gone => break,
        }
    }
    out
}

#[test]
fn initials_are_held_off_while_an_accepted_calls_dial_is_on_the_way() {
    let r = Arc::new(Router::new(false));
    let now = Instant::now();
    let stranger = a("203.0.113.5:999");
    assert_eq!(r.recv(now, stranger, &quic(0xC0)), Inbound::Pass);
    let held = r.hold_initials();
    assert_eq!(r.recv(now, stranger, &quic(0xC0)), Inbound::Consumed);
    drop(held);
    assert_eq!(r.recv(now, stranger, &quic(0xC0)), Inbound::Pass);
}

#[test]
fn two_calls_between_the_same_two_sockets_do_not_share_an_address() {
    let (r, v, now) = router();
    let (w, _) = r.register(spec(), PathConfig::default(), now);
    assert_eq!(
        r.recv(now, a(CALLEE), &quic(0x40)),
        Inbound::Quic(v),
        "the first keeps it"
    );
    assert_eq!(
        r.targets(w),
        Some(Targets {
            direct: smallvec::smallvec![],
            relay: true,
            via: None,
        }),
        "the second does without it"
    );
}

#[test]
fn after_the_handshake_packets_follow_the_way_in_until_a_path_is_chosen() {
    let (r, v, now) = router();
    assert_eq!(r.recv(now, a(CALLEE), &quic(0x40)), Inbound::Quic(v));
    r.connected(v, [7; 32], now);
    assert_eq!(
        r.targets(v),
        Some(Targets {
            direct: smallvec::smallvec![a(CALLEE)],
            relay: false,
            via: None,
        })
    );
}

#[test]
fn a_replayed_ping_gets_no_second_pong() {
    let (r, v, now) = router();
    drain_sends(&r, v, now);
    let ping = Probe::Ping(Ping {
        call_id: 42,
        tx: [1; 8],
        nonce: [0; 8],
    })
    .encode(&ProbeKey::new(&[5; 32]));
    assert_eq!(r.recv(now, a("203.0.113.5:1"), &ping), Inbound::Consumed);
    assert_eq!(r.recv(now, a("203.0.113.5:2"), &ping), Inbound::Consumed);
    let pongs = drain_sends(&r, v, now)
        .into_iter()
        .filter(|o| o.bytes()[0] == common::probe::PONG)
        .count();
    assert_eq!(pongs, 1);
}

#[test]
fn a_closed_calls_addresses_go_to_the_next_call_at_once() {
    let (r, v, now) = router();
    r.closing(v);
    let (w, _) = r.register(spec(), PathConfig::default(), now);
    assert_eq!(r.recv(now, a(CALLEE), &quic(0x40)), Inbound::Quic(w));
    assert_eq!(
        r.targets(w).map(|t| t.direct.to_vec()),
        Some(vec![a(CALLEE)]),
        "the next call between the same sockets goes direct"
    );
    assert!(
        r.targets(v)
            .is_some_and(|t| !t.direct.is_empty() || t.relay),
        "the close still goes out"
    );
}

#[test]
fn a_batch_from_a_known_source_is_one_decision_and_an_unknown_one_is_per_packet() {
    let (r, v, _) = router();
    r.add_server(a(SERVER));
    assert_eq!(
        r.quic_source(a(CALLEE), &quic(0x40)),
        Some(Inbound::Quic(v))
    );
    assert_eq!(r.quic_source(a(SERVER), &quic(0x40)), Some(Inbound::Pass));
    assert_eq!(r.quic_source(a("203.0.113.5:999"), &quic(0xC0)), None);
}

#[test]
fn an_initial_that_beats_the_dial_is_kept_and_handed_to_the_call_once_its_path_is_known() {
    let r = Arc::new(Router::new(false));
    let now = Instant::now();
    let waker = std::task::Waker::noop();
    let held = r.hold_initials();
    // The caller's first Initial over the LAN, before our Dial: kept, not
    // handed on (nobody knows the address yet).
    assert_eq!(r.recv(now, a(CALLEE), &quic(0xC0)), Inbound::Consumed);
    // A stranger's too, and one kept too long ago.
    let stranger = a("203.0.113.5:999");
    assert_eq!(r.recv(now, stranger, &quic(0xC0)), Inbound::Consumed);
    assert!(r.take_released(waker).is_empty());
    // The Dial: the call's candidates become its paths; the kept Initial
    // from one of them goes to quinn from the call's virtual address.
    let (v, _) = r.register(spec(), PathConfig::default(), now);
    drop(held);
    let released = r.take_released(waker);
    assert_eq!(released.len(), 1, "{released:?}");
    assert_eq!(released[0].0, v);
    assert_eq!(released[0].1, quic(0xC0));
    // The stranger's never is.
    let (_w, _) = r.register(spec(), PathConfig::default(), now);
    assert!(r.take_released(waker).is_empty());
}

#[test]
fn initials_are_kept_only_briefly_and_only_a_few() {
    let r = Arc::new(Router::new(false));
    let now = Instant::now();
    let waker = std::task::Waker::noop();
    let _held = r.hold_initials();
    let long_ago = now - std::time::Duration::from_millis(300);
    assert_eq!(r.recv(long_ago, a(CALLEE), &quic(0xC0)), Inbound::Consumed);
    let (_v, _) = r.register(spec(), PathConfig::default(), now);
    assert!(r.take_released(waker).is_empty(), "kept too long: dropped");
    // A flood from strangers fills the few places and then is dropped;
    // the caller's Initial, arriving after it, finds no room either but is
    // resent by its QUIC: nothing unknown ever passes.
    for port in 0..20u16 {
        let from = SocketAddr::from(([203, 0, 113, 9], 1000 + port));
        assert_eq!(r.recv(now, from, &quic(0xC0)), Inbound::Consumed);
    }
    assert!(r.lock().deferred.len() <= DEFERRED_INITIALS);
}

/// The cone side of a birthday attempt, driven to its guesses: the
/// relay validated (a pong over it), the call settled there, and the
/// symmetric side's note in. Returns the guessed pings sent.
fn spraying() -> (Router, SocketAddr, Instant, Vec<Outgoing>) {
    let r = Router::new(false);
    r.set_mapping(Mapping::Cone);
    let now = Instant::now();
    let (v, _) = r.register(spec(), PathConfig::default(), now);
    let relay_ping = drain_sends(&r, v, now)
        .into_iter()
        .find(|o| o.to == a(SERVER))
        .expect("a ping to the relay");
    let server_key = ProbeKey::new(&[5; 32]);
    let Ok(Probe::Ping(ping)) = Probe::decode(&relay_ping.bytes()[HEADER_LEN..], &server_key)
    else {
        panic!("not a ping");
    };
    let pong = Probe::Pong(common::probe::Pong {
        call_id: 42,
        tx: ping.tx,
        observed: None,
        nonce: [3; 8],
    });
    let framed = frame_from(Party::Callee, 9, &pong.encode(&server_key));
    assert_eq!(r.recv(now, a(SERVER), &framed), Inbound::Consumed);
    let later = now + std::time::Duration::from_millis(200);
    drain_sends(&r, v, later);
    assert_eq!(
        r.path(v).and_then(|p| p.0),
        Some(Route::Relay),
        "on the relay"
    );
    let note = Probe::Note(common::probe::Note {
        call_id: 42,
        tx: [8; 8],
        mapping: Mapping::Symmetric,
        round: 1,
        heard: true,
    });
    // A note under the server's per-call key (a lying server's, while
    // that key is still good for pings) starts nothing.
    let forged = frame_from(Party::Callee, 9, &note.encode(&server_key));
    assert_eq!(r.recv(later, a(SERVER), &forged), Inbound::Consumed);
    let soon = later + std::time::Duration::from_millis(50);
    assert!(
        drain_sends(&r, v, soon)
            .iter()
            .all(|o| o.to.ip() != a(CALLEE).ip() || o.to == a(CALLEE)),
        "no guess on a note under the server's key"
    );
    // The peer connection is up and the other side's probes come under
    // the exported key: its note counts.
    r.connected(v, [7; 32], soon);
    let key = ProbeKey::new(&[7; 32]);
    let framed = frame_from(Party::Callee, 9, &note.encode(&key));
    let later = soon;
    assert_eq!(r.recv(later, a(SERVER), &framed), Inbound::Consumed);
    let soon = later + std::time::Duration::from_millis(50);
    let guesses: Vec<Outgoing> = drain_sends(&r, v, soon)
        .into_iter()
        .filter(|o| o.to.ip() == a(CALLEE).ip() && o.to != a(CALLEE))
        .collect();
    (r, v, soon, guesses)
}

#[test]
fn a_birthday_guess_is_validated_only_by_its_own_pong_under_the_call_key() {
    let (r, v, now, guesses) = spraying();
    assert!(
        (40..=60).contains(&guesses.len()),
        "~1,000 a second for 50 ms: {}",
        guesses.len()
    );
    let key = ProbeKey::new(&[7; 32]);
    let hit = &guesses[0];
    let Ok(Probe::Ping(ping)) = Probe::decode(hit.bytes(), &key) else {
        panic!("a guess is a ping");
    };
    let answer = Probe::Pong(common::probe::Pong {
        call_id: 42,
        tx: ping.tx,
        observed: Some(a("203.0.113.9:5000")),
        nonce: [4; 8],
    });
    // A stranger at the guessed port, without the call's key.
    let forged = answer.encode(&ProbeKey::new(&[9; 32]));
    assert_eq!(r.recv(now, hit.to, &forged), Inbound::Consumed);
    // The right pong from another port of the same IP.
    let elsewhere = SocketAddr::new(hit.to.ip(), hit.to.port() ^ 1);
    assert_eq!(
        r.recv(now, elsewhere, &answer.encode(&key)),
        Inbound::Consumed
    );
    drain_sends(&r, v, now);
    assert_eq!(
        r.path(v).and_then(|p| p.0),
        Some(Route::Relay),
        "nothing validated"
    );
    // The pong from where the guess went: the call moves there.
    assert_eq!(r.recv(now, hit.to, &answer.encode(&key)), Inbound::Consumed);
    let mut switched = None;
    for _ in 0..100 {
        match r.poll(v, now) {
            Polled::Action(Action::Switch { to, reason }) => switched = Some((to, reason)),
            Polled::Idle(_) | Polled::Gone => break,
            _ => {}
        }
    }
    assert_eq!(
        switched,
        Some((Route::Direct(hit.to), crate::path::SwitchReason::Birthday))
    );
}

#[test]
fn an_extra_socket_takes_only_its_calls_packets_and_answers_from_itself() {
    let (r, v, now) = router();
    r.add_extra(v, &[7]);
    let key = ProbeKey::new(&[5; 32]);
    let ping = Probe::Ping(Ping {
        call_id: 42,
        tx: [2; 8],
        nonce: [0; 8],
    });
    // A socket of no call drops everything.
    assert_eq!(
        r.recv_extra(now, 8, a(CALLEE), &ping.encode(&key)),
        Inbound::Consumed
    );
    assert!(drain_sends(&r, v, now)
        .iter()
        .all(|o| o.bytes()[0] != common::probe::PONG));
    // A valid ping on the call's socket: its pong leaves from that socket,
    // and so do the call's packets to that address from now on.
    assert_eq!(
        r.recv_extra(now, 7, a(CALLEE), &ping.encode(&key)),
        Inbound::Consumed
    );
    let pongs: Vec<Outgoing> = drain_sends(&r, v, now)
        .into_iter()
        .filter(|o| o.bytes()[0] == common::probe::PONG)
        .collect();
    assert_eq!(pongs.len(), 1);
    assert_eq!((pongs[0].to, pongs[0].via), (a(CALLEE), Some(7)));
    // The triggered ping back (and what follows to that address) leaves
    // from it too; a later probe on another socket does not move it.
    let ping2 = Probe::Ping(Ping {
        call_id: 42,
        tx: [3; 8],
        nonce: [0; 8],
    });
    r.add_extra(v, &[9]);
    assert_eq!(
        r.recv_extra(now, 9, a(CALLEE), &ping2.encode(&key)),
        Inbound::Consumed
    );
    let sent = drain_sends(&r, v, now);
    let pings: Vec<&Outgoing> = sent
        .iter()
        .filter(|o| o.bytes()[0] == common::probe::PING && o.to == a(CALLEE))
        .collect();
    assert!(!pings.is_empty(), "{sent:?}");
    assert!(pings.iter().all(|o| o.via == Some(7)), "{pings:?}");
    let pong2 = sent
        .iter()
        .find(|o| o.bytes()[0] == common::probe::PONG)
        .expect("the second ping's pong");
    assert_eq!(pong2.via, Some(9), "a pong leaves where its ping came in");
    // A replayed ping on yet another socket moves nothing either.
    r.add_extra(v, &[10]);
    assert_eq!(
        r.recv_extra(now, 10, a(CALLEE), &ping2.encode(&key)),
        Inbound::Consumed
    );
    assert!(drain_sends(&r, v, now).iter().all(|o| o.via != Some(10)));
    r.drop_extra(v, false);
    r.add_extra(v, &[7]);
    // QUIC from a stranger on it is dropped; the call's peer's passes.
    assert_eq!(
        r.recv_extra(now, 7, a("203.0.113.5:1"), &quic(0x40)),
        Inbound::Consumed
    );
    assert_eq!(
        r.recv_extra(now, 7, a(CALLEE), &quic(0x40)),
        Inbound::Quic(v)
    );
    // Closed with the attempt: nothing more gets in on it.
    assert_eq!(r.drop_extra(v, false), vec![7]);
    assert_eq!(
        r.recv_extra(now, 7, a(CALLEE), &quic(0x40)),
        Inbound::Consumed
    );
}
