//! [`filter_batch`]: relay segments out, QUIC segments compacted in place.

#![allow(clippy::unwrap_used)]

use std::io::IoSliceMut;
use std::net::SocketAddr;

use quinn::udp::RecvMeta;

use super::{classify_udp, filter_batch, UdpKind};

const RELAY: u8 = 0x30;
const QUIC: u8 = 0xC0;

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A datagram of segments, each `(first byte, length)`; the stride is the
/// first segment's length.
struct Datagram {
    from: SocketAddr,
    segments: Vec<(u8, usize)>,
}

fn seg_bytes(first: u8, len: usize, tag: u8) -> Vec<u8> {
    let mut v = vec![tag; len];
    v[0] = first;
    v
}

/// Runs `filter_batch` over `datagrams` in buffers of 4 KiB, taking relay
/// segments; returns what quinn would see (source, segments as bytes) and
/// what was taken.
/// What quinn would see: each datagram's source and segments.
type Seen = Vec<(SocketAddr, Vec<Vec<u8>>)>;
/// What the relay took: source and bytes of each segment.
type Taken = Vec<(SocketAddr, Vec<u8>)>;

fn run(datagrams: &[Datagram]) -> (Seen, Taken) {
    let mut storage = vec![[0u8; 4096]; 8];
    let mut meta = [RecvMeta::default(); 8];
    for (i, d) in datagrams.iter().enumerate() {
        let mut at = 0;
        for (j, &(first, len)) in d.segments.iter().enumerate() {
            let bytes = seg_bytes(first, len, (i * 16 + j) as u8);
            storage[i][at..at + len].copy_from_slice(&bytes);
            at += len;
        }
        meta[i].addr = d.from;
        meta[i].len = at;
        meta[i].stride = d.segments[0].1;
    }
    let mut bufs: Vec<IoSliceMut<'_>> = storage.iter_mut().map(|b| IoSliceMut::new(b)).collect();
    let mut taken = vec![];
    let n = filter_batch(&mut bufs, &mut meta, datagrams.len(), |from, b| {
        let relay = b[0] == RELAY;
        if relay {
            taken.push((from, b.to_vec()));
        }
        relay
    });
    let seen = (0..n)
        .map(|i| {
            let m = &meta[i];
            let segs = bufs[i][..m.len]
                .chunks(m.stride)
                .map(<[u8]>::to_vec)
                .collect();
            (m.addr, segs)
        })
        .collect();
    (seen, taken)
}

#[test]
fn a_batch_without_relay_frames_is_left_as_it_is() {
    let d = [
        Datagram {
            from: addr(1),
            segments: vec![(QUIC, 100), (QUIC, 100), (QUIC, 40)],
        },
        Datagram {
            from: addr(2),
            segments: vec![(0x00, 30)],
        },
    ];
    let (seen, taken) = run(&d);
    assert!(taken.is_empty());
    assert_eq!(seen.len(), 2);
    assert_eq!(
        seen[0].1,
        vec![
            seg_bytes(QUIC, 100, 0),
            seg_bytes(QUIC, 100, 1),
            seg_bytes(QUIC, 40, 2)
        ]
    );
    // Junk with the fixed bit clear that is no relay frame is quinn's to drop.
    assert_eq!(seen[1], (addr(2), vec![seg_bytes(0x00, 30, 16)]));
}

#[test]
fn mixed_segments_are_compacted_on_stride_boundaries() {
    let d = [Datagram {
        from: addr(1),
        segments: vec![(RELAY, 100), (QUIC, 100), (RELAY, 100), (QUIC, 100)],
    }];
    let (seen, taken) = run(&d);
    assert_eq!(
        taken,
        vec![
            (addr(1), seg_bytes(RELAY, 100, 0)),
            (addr(1), seg_bytes(RELAY, 100, 2))
        ]
    );
    assert_eq!(
        seen,
        vec![(
            addr(1),
            vec![seg_bytes(QUIC, 100, 1), seg_bytes(QUIC, 100, 3)]
        )]
    );
}

#[test]
fn the_short_last_segment_stays_last_and_whole() {
    // A full-size segment taken from before it: the short one moves down.
    let (seen, taken) = run(&[Datagram {
        from: addr(1),
        segments: vec![(QUIC, 100), (RELAY, 100), (QUIC, 37)],
    }]);
    assert_eq!(taken.len(), 1);
    assert_eq!(
        seen,
        vec![(
            addr(1),
            vec![seg_bytes(QUIC, 100, 0), seg_bytes(QUIC, 37, 2)]
        )]
    );
    // The short last one is a relay frame: taken whole, the rest untouched.
    let (seen, taken) = run(&[Datagram {
        from: addr(1),
        segments: vec![(QUIC, 100), (QUIC, 100), (RELAY, 37)],
    }]);
    assert_eq!(taken, vec![(addr(1), seg_bytes(RELAY, 37, 2))]);
    assert_eq!(
        seen,
        vec![(
            addr(1),
            vec![seg_bytes(QUIC, 100, 0), seg_bytes(QUIC, 100, 1)]
        )]
    );
}

#[test]
fn emptied_datagrams_are_removed_and_later_ones_move_down() {
    let d = [
        Datagram {
            from: addr(1),
            segments: vec![(RELAY, 50), (RELAY, 50)],
        },
        Datagram {
            from: addr(2),
            segments: vec![(QUIC, 60)],
        },
        Datagram {
            from: addr(3),
            segments: vec![(RELAY, 70)],
        },
        Datagram {
            from: addr(4),
            segments: vec![(QUIC, 80), (RELAY, 80)],
        },
    ];
    let (seen, taken) = run(&d);
    let sources: Vec<_> = taken.iter().map(|(a, _)| a.port()).collect();
    assert_eq!(sources, vec![1, 1, 3, 4]);
    assert_eq!(
        seen,
        vec![
            (addr(2), vec![seg_bytes(QUIC, 60, 16)]),
            (addr(4), vec![seg_bytes(QUIC, 80, 48)]),
        ]
    );
}

#[test]
fn an_all_relay_batch_leaves_nothing() {
    let d = [
        Datagram {
            from: addr(1),
            segments: vec![(RELAY, 50), (RELAY, 20)],
        },
        Datagram {
            from: addr(2),
            segments: vec![(RELAY, 60)],
        },
    ];
    let (seen, taken) = run(&d);
    assert!(seen.is_empty());
    assert_eq!(taken.len(), 3);
}

#[test]
fn a_zero_stride_is_one_segment() {
    let mut storage = [RELAY, 1, 2, 3];
    let mut bufs = [IoSliceMut::new(&mut storage)];
    let mut meta = [RecvMeta::default()];
    meta[0].len = 4;
    meta[0].stride = 0;
    let mut calls = 0;
    let n = filter_batch(&mut bufs, &mut meta, 1, |_, b| {
        calls += 1;
        assert_eq!(b.len(), 4);
        true
    });
    assert_eq!((n, calls), (0, 1));
}

#[test]
fn udp_from_the_virtual_range_is_dropped_while_tcp_is_on() {
    let spoof: SocketAddr = "240.0.0.7:443".parse().unwrap();
    let real = addr(4000);
    assert_eq!(classify_udp(spoof, &[QUIC, 1], true), UdpKind::Spoofed);
    assert_eq!(classify_udp(spoof, &[RELAY, 1], true), UdpKind::Spoofed);
    assert_eq!(classify_udp(real, &[QUIC, 1], true), UdpKind::Quic);
    assert_eq!(classify_udp(real, &[RELAY, 1], true), UdpKind::Relay);
    assert_eq!(
        classify_udp(real, &[common::tunnel::check::REQUEST], true),
        UdpKind::Check
    );
    assert_eq!(classify_udp(real, &[], true), UdpKind::Quic);
    // Without TCP there is no virtual peer to pose as.
    assert_eq!(classify_udp(spoof, &[QUIC, 1], false), UdpKind::Quic);
}
