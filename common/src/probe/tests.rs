//! Round trips, one encoding per probe, and the MAC's coverage.

use super::*;
use proptest::prelude::*;

fn key(b: u8) -> ProbeKey {
    ProbeKey::new(&[b; KEY_LEN])
}

fn arb_addr() -> impl Strategy<Value = Option<SocketAddr>> {
    prop_oneof![
        Just(None),
        (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, port)| Some((ip, port).into())),
        (any::<[u16; 8]>(), any::<u16>()).prop_map(|(ip, port)| Some((ip, port).into())),
    ]
}

fn arb_probe() -> impl Strategy<Value = Probe> {
    let ids = (any::<u64>(), any::<TxId>(), any::<Nonce>());
    prop_oneof![
        ids.prop_map(|(call_id, tx, nonce)| Probe::Ping(Ping { call_id, tx, nonce })),
        (
            any::<u64>(),
            any::<TxId>(),
            0u8..3,
            any::<u8>(),
            any::<bool>()
        )
            .prop_map(|(call_id, tx, m, round, heard)| {
                let mapping = [Mapping::Unknown, Mapping::Cone, Mapping::Symmetric][m as usize];
                Probe::Note(Note {
                    call_id,
                    tx,
                    mapping,
                    round,
                    heard,
                })
            }),
        (ids, arb_addr()).prop_map(|((call_id, tx, nonce), observed)| {
            Probe::Pong(Pong {
                call_id,
                tx,
                observed,
                nonce,
            })
        }),
    ]
}

fn sample_pong() -> Probe {
    Probe::Pong(Pong {
        call_id: 7,
        tx: [1; 8],
        observed: Some("[2001:db8::1]:4000".parse().expect("addr")),
        nonce: [2; 8],
    })
}

proptest! {
    #[test]
    fn every_probe_round_trips(p in arb_probe(), k in any::<u8>()) {
        let bytes = p.encode(&key(k));
        prop_assert_eq!(bytes.len(), PROBE_LEN);
        prop_assert!(is_probe(&bytes));
        prop_assert_eq!(bytes[0] & 0x40, 0, "fixed bit clear");
        prop_assert_eq!(peek_call_id(&bytes), Some(p.call_id()));
        prop_assert_eq!(Probe::decode(&bytes, &key(k)), Ok(p));
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_what_decodes_re_encodes(
        bytes in proptest::collection::vec(any::<u8>(), 0..80)
    ) {
        if let Ok(p) = Probe::decode(&bytes, &key(0)) {
            prop_assert_eq!(&p.encode(&key(0))[..], &bytes[..]);
        }
    }
}

#[test]
fn any_single_bit_flip_fails() {
    for p in [
        sample_pong(),
        Probe::Ping(Ping {
            call_id: u64::MAX,
            tx: [9; 8],
            nonce: [0; 8],
        }),
    ] {
        let good = p.encode(&key(1));
        for bit in 0..PROBE_LEN * 8 {
            let mut bad = good;
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(Probe::decode(&bad, &key(1)).is_err(), "bit {bit} of {p:?}");
        }
    }
}

#[test]
fn wrong_key_wrong_length_and_other_types_are_refused() {
    let good = sample_pong().encode(&key(1));
    assert_eq!(Probe::decode(&good, &key(2)), Err(ProbeError::BadMac));
    assert_eq!(
        Probe::decode(&good[..59], &key(1)),
        Err(ProbeError::Length { len: 59 })
    );
    assert_eq!(
        Probe::decode(&[0, 0, 0, 0], &key(1)),
        Err(ProbeError::NotAProbe { first: 0 }),
        "the old punch"
    );
    assert_eq!(
        Probe::decode(&[], &key(1)),
        Err(ProbeError::NotAProbe { first: 0 })
    );
    for first in [0x10, 0x1f, 0x40, 0xc0] {
        assert!(!is_probe(&[first]), "{first:#x}: relay or QUIC");
    }
    let mut v2 = good;
    v2[0] = 0x04;
    assert_eq!(
        Probe::decode(&v2, &key(1)),
        Err(ProbeError::UnknownKind { kind: 4 })
    );
    assert!(PROBE_TYPES
        .clone()
        .all(|b| b & 0xc0 == 0 && !RELAY_TYPES.contains(&b)));
}

#[test]
fn padding_and_family_are_canonical_even_under_a_valid_mac() {
    // A sender holding the key cannot smuggle a second encoding.
    let k = key(3);
    let seal = |mut b: [u8; PROBE_LEN]| {
        k.seal_raw(&mut b);
        b
    };
    let mut ping = Probe::Ping(Ping {
        call_id: 1,
        tx: [0; 8],
        nonce: [0; 8],
    })
    .encode(&k);
    ping[40] = 1;
    assert_eq!(
        Probe::decode(&seal(ping), &k),
        Err(ProbeError::NonZeroPadding { at: 40 })
    );
    let mut pong = sample_pong().encode(&k);
    pong[ADDR_START] = 5;
    assert_eq!(
        Probe::decode(&seal(pong), &k),
        Err(ProbeError::BadAddressFamily { family: 5 })
    );
    let v4 = Probe::Pong(Pong {
        call_id: 1,
        tx: [0; 8],
        observed: Some("198.51.100.7:9".parse().expect("addr")),
        nonce: [0; 8],
    });
    let mut pong = v4.encode(&k);
    pong[ADDR_START + 10] = 1;
    assert_eq!(
        Probe::decode(&seal(pong), &k),
        Err(ProbeError::NonZeroPadding {
            at: ADDR_START + 10
        })
    );
}

#[test]
fn keys_move_to_the_exported_one_and_drop_the_servers() {
    let (server, exported) = (key(1), key(2));
    let tag = |k: &ProbeKey| k.tag(b"x");
    let p = sample_pong();
    // The side that finished the handshake last seals with the new key.
    let mut last = ProbeKeys::new(server.clone());
    assert_eq!(last.open(&p.encode(&server)), Ok(p));
    last.set_exported(exported.clone(), true);
    assert_eq!(tag(last.sealing()), tag(&exported));
    assert_eq!(last.open(&p.encode(&server)), Ok(p), "in flight: accepted");
    // The side that finished first keeps the server's until it sees the
    // other side has switched.
    let mut first = ProbeKeys::new(server.clone());
    first.set_exported(exported.clone(), false);
    assert_eq!(tag(first.sealing()), tag(&server));
    assert_eq!(first.open(&p.encode(&server)), Ok(p));
    assert_eq!(first.open(&p.encode(&exported)), Ok(p));
    assert_eq!(tag(first.sealing()), tag(&exported), "switched on proof");
    for keys in [&mut first, &mut last] {
        assert_eq!(keys.open(&p.encode(&exported)), Ok(p));
        assert_eq!(
            keys.open(&p.encode(&server)),
            Err(ProbeError::BadMac),
            "the server can no longer forge probes on this call"
        );
    }
    // Without any proof, the server's key still goes in the end.
    let mut idle = ProbeKeys::new(server.clone());
    idle.set_exported(exported.clone(), false);
    idle.forget_server_key();
    assert_eq!(tag(idle.sealing()), tag(&exported));
    assert_eq!(idle.open(&p.encode(&server)), Err(ProbeError::BadMac));
}

#[test]
fn probe_relay_and_quic_first_bytes_never_overlap() {
    for b in 0..=u8::MAX {
        let probe = PROBE_TYPES.contains(&b);
        let relay = crate::relay_frame::is_relay_frame(b);
        assert_eq!(relay, RELAY_TYPES.contains(&b), "{b:#04x}: one relay range");
        assert!(
            !(probe && relay),
            "{b:#04x} is both a probe and a relay frame"
        );
        if probe || relay {
            assert_eq!(b & 0x40, 0, "{b:#04x} has QUIC's fixed bit set");
        }
    }
}

#[test]
fn a_note_has_one_encoding_and_its_mapping_comes_from_two_answers() {
    let note = Probe::Note(Note {
        call_id: 9,
        tx: [3; 8],
        mapping: Mapping::Symmetric,
        round: 2,
        heard: true,
    });
    let k = key(5);
    let bytes = note.encode(&k);
    assert_eq!(bytes[0], NOTE);
    assert_eq!(Probe::decode(&bytes, &k), Ok(note));
    for (at, value) in [(17, 3u8), (19, 2)] {
        let mut bad = bytes;
        bad[at] = value;
        k.seal_raw(&mut bad);
        assert_eq!(
            Probe::decode(&bad, &k),
            Err(ProbeError::BadNote { value, at })
        );
    }
    let mut padded = bytes;
    padded[20] = 1;
    k.seal_raw(&mut padded);
    assert_eq!(
        Probe::decode(&padded, &k),
        Err(ProbeError::NonZeroPadding { at: 20 })
    );
    let a: SocketAddr = "198.51.100.1:5000".parse().expect("addr");
    let b: SocketAddr = "198.51.100.1:6000".parse().expect("addr");
    let c: SocketAddr = "198.51.100.2:5000".parse().expect("addr");
    assert_eq!(Mapping::from_answers(a, a), Mapping::Cone);
    assert_eq!(Mapping::from_answers(a, b), Mapping::Symmetric);
    assert_eq!(Mapping::from_answers(a, c), Mapping::Unknown);
}
