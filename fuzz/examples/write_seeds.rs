//! Writes the seed corpora: one valid encoding of every message variant, a
//! real certificate, a close reason and a few texts, under `seeds/<target>/`.
//! Run from `fuzz/`: `cargo run --example write_seeds`.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::framing::{encode, HEADER_LEN, MAX_FRAME};
use common::{ErrorKind, Fingerprint, Identity, Message, PeerMessage};

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("a literal address")
}

fn messages() -> Vec<Message> {
    let fp = Fingerprint([7; 32]);
    let cands = vec![
        addr("203.0.113.9:4000"),
        addr("192.168.1.2:7000"),
        addr("[fe80::1]:9"),
    ];
    vec![
        Message::Register {
            name: "alice".into(),
            presence: true,
        },
        Message::Registered {
            name: "alice".into(),
            fingerprint: fp,
            observed_addr: addr("[2001:db8::1]:5"),
        },
        Message::Lookup { name: "bob".into() },
        Message::LookupResult {
            name: "bob".into(),
            online: true,
            fingerprint: fp,
        },
        Message::Call {
            to: "bob".into(),
            candidates: cands.clone(),
            hide_addresses: false,
        },
        Message::IncomingCall {
            call_id: 42,
            from: "alice".into(),
            fingerprint: fp,
        },
        Message::Accept {
            candidates: cands.clone(),
            hide_addresses: true,
        },
        Message::Reject {
            reason: "not on the allow-list".into(),
        },
        Message::CallAccepted {
            call_id: 42,
            fingerprint: fp,
            candidates: cands.clone(),
            probe_key: [7; 32],
            relay: Some(common::RelayTicket {
                call_id: 9,
                secret: [8; 32],
            }),
        },
        Message::Dial {
            call_id: u64::MAX,
            candidates: cands,
            probe_key: [7; 32],
            relay: None,
        },
        Message::Approve {
            fingerprints: vec![fp; 3],
        },
        Message::Approved { count: 3 },
        Message::error(ErrorKind::RateLimited, "slow down"),
    ]
}

fn peer_messages() -> Vec<PeerMessage> {
    vec![
        PeerMessage::Pipe,
        PeerMessage::Ping { seq: 1 },
        PeerMessage::Pong { seq: 300 },
        PeerMessage::SendFile {
            name: "report.bin".into(),
            size: 300_000,
            sha256: [3; 32],
        },
        PeerMessage::SendResult {
            ok: false,
            message: "SHA-256 mismatch".into(),
        },
    ]
}

fn write(target: &str, seeds: &[Vec<u8>]) -> std::io::Result<()> {
    let dir = Path::new("seeds").join(target);
    std::fs::create_dir_all(&dir)?;
    for (i, seed) in seeds.iter().enumerate() {
        std::fs::write(dir.join(format!("{i:02}")), seed)?;
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut frames = Vec::new();
    for m in messages() {
        frames.push(encode(&m, MAX_FRAME)?);
    }
    for m in peer_messages() {
        frames.push(encode(&m, MAX_FRAME)?);
    }
    let bodies = |frames: &[Vec<u8>]| -> Vec<Vec<u8>> {
        frames.iter().map(|f| f[HEADER_LEN..].to_vec()).collect()
    };
    let (server, peer) = frames.split_at(messages().len());
    write("frame", &frames)?;
    // read_frame's first byte shapes the reads: 3-byte chunks, with Pendings.
    let shaped: Vec<Vec<u8>> = frames.iter().map(|f| [&[0x42], &f[..]].concat()).collect();
    write("read_frame", &shaped)?;
    write("message", &bodies(server))?;
    write("peer_message", &bodies(peer))?;
    let reason = common::error::close::shutdown_reason(Duration::from_millis(8_000));
    write("close_reason", &[reason, b"server shutting down".to_vec()])?;
    let fp = Identity::generate()?.fingerprint().to_string();
    let texts = [
        fp.clone(),
        fp.to_uppercase(),
        format!(" {fp}\n"),
        "alice".into(),
        "bob-2".into(),
    ];
    write("text", &texts.map(String::into_bytes))?;
    let certs = [
        Identity::generate()?.cert().to_vec(),
        Identity::generate()?.cert().to_vec(),
    ];
    write("certificate", &certs)?;
    Ok(())
}
