//! The cluster bus (`rendezvous::cluster`): opening arbitrary bytes never
//! panics; any plaintext that decodes as an envelope seals and opens back
//! to itself, and its presence content, fed to a directory, never panics
//! it.
#![no_main]

use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use rendezvous::cluster::directory::{Change, Directory};
use rendezvous::cluster::wire::{Body, BusKey, Envelope};

fuzz_target!(|data: &[u8]| {
    let key = BusKey::derive([1; 32]);
    let _ = key.open("rdv.presence", data, 1_000_000);
    let Ok(envelope) = postcard::from_bytes::<Envelope>(data) else {
        return;
    };
    let sealed = key.seal("rdv.node.n1", &envelope);
    if sealed.len() <= rendezvous::cluster::wire::MAX_MESSAGE {
        let opened = key.open("rdv.node.n1", &sealed, envelope.sent_ms);
        assert_eq!(opened.as_ref(), Ok(&envelope));
    }
    let mut directory = Directory::new("me", std::time::Duration::from_secs(10));
    let now = Instant::now();
    let (from, sent) = (envelope.from.as_str(), envelope.sent_ms);
    match envelope.body {
        Body::Alive {
            epoch,
            relay_addr,
            seq,
        } => {
            directory.on_alive(from, (epoch, sent), relay_addr, seq, now);
        }
        Body::Up { epoch, seq, online } => {
            let name = online.name.clone();
            directory.on_change(from, (epoch, sent), seq, Change::Up(online), now);
            let _ = directory.find(&name, now);
        }
        Body::Down { epoch, seq, name } => {
            directory.on_change(from, (epoch, sent), seq, Change::Down(name), now);
        }
        Body::Snapshot { seq, names, more } => {
            let addr = "192.0.2.1:1".parse().expect("addr");
            directory.on_alive(from, (1, sent), addr, seq, now);
            // Resync generations start at 1.
            directory.on_page(from, 1, seq, names, more);
        }
        _ => {}
    }
    let _ = directory.expire(now);
});
