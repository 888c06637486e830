//! Hostile input to the server: each bad stream gets a typed error and its
//! connection closed, while a well-behaved peer connected at the same time
//! goes on unharmed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use common::framing::{encode, MAX_FRAME};
use common::{ErrorKind, Message};
use tests::inproc::{within, RawClient, TestServer};

fn decode_error(bytes: &[u8]) -> Option<(ErrorKind, String)> {
    match common::framing::decode::<Message>(bytes, MAX_FRAME) {
        Ok((Message::Error { kind, message }, _)) => Some((kind, message)),
        _ => None,
    }
}

async fn assert_refused(server: &TestServer, good: &RawClient, bytes: Vec<u8>, what: &str) {
    let bad = RawClient::connect(server).await;
    let answer = bad
        .raw_exchange(&bytes)
        .await
        .unwrap_or_else(|e| panic!("{what}: no error frame came back: {e}"));
    let (kind, message) = decode_error(&answer)
        .unwrap_or_else(|| panic!("{what}: expected an error frame, got {answer:?}"));
    assert_eq!(kind, ErrorKind::Protocol, "{what}: {message}");
    let closed = within(
        Duration::from_secs(5),
        "connection closed",
        bad.conn.closed(),
    )
    .await;
    assert!(
        matches!(closed, quinn::ConnectionError::ApplicationClosed(ref c) if c.error_code == common::error::close::PROTOCOL.into()),
        "{what}: {closed:?}"
    );
    // The well-behaved peer still gets answers.
    let reply = good
        .request(&Message::Lookup {
            name: "good".into(),
        })
        .await;
    assert!(
        matches!(reply, Message::LookupResult { .. }),
        "{what}: good peer got {reply:?}"
    );
}

#[tokio::test]
async fn bad_frames_close_only_the_offender() {
    let server = TestServer::start().await;
    let good = RawClient::connect(&server).await;
    let reply = good
        .request(&Message::Register {
            name: "good".into(),
            presence: true,
        })
        .await;
    assert!(matches!(reply, Message::Registered { .. }), "{reply:?}");

    let mut random = vec![0u8; 300];
    for (i, b) in random.iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(151).wrapping_add(7);
    }
    random[..4].copy_from_slice(&200u32.to_be_bytes());
    assert_refused(&server, &good, random, "random bytes").await;

    let mut huge = (u32::MAX).to_be_bytes().to_vec();
    huge.extend([0u8; 16]);
    assert_refused(&server, &good, huge, "oversized length prefix").await;

    let full = encode(
        &Message::Lookup {
            name: "alice".into(),
        },
        MAX_FRAME,
    )
    .expect("encode");
    assert_refused(
        &server,
        &good,
        full[..full.len() - 2].to_vec(),
        "truncated frame",
    )
    .await;

    let unexpected = encode(
        &Message::Dial {
            call_id: 1,
            candidates: vec![],
            probe_key: [0; 32],
            relay: None,
        },
        MAX_FRAME,
    )
    .expect("encode");
    assert_refused(&server, &good, unexpected, "unexpected message type").await;

    let good_reply = good
        .request(&Message::Lookup {
            name: "good".into(),
        })
        .await;
    assert!(
        matches!(good_reply, Message::LookupResult { online: true, .. }),
        "still online: {good_reply:?}"
    );
}

#[tokio::test]
async fn silent_stream_times_out_without_harm() {
    let server = TestServer::start_with(
        tempfile::tempdir().expect("dir").keep(),
        "127.0.0.1:0".parse().expect("addr"),
        |l| {
            l.request_timeout = Duration::from_millis(300);
        },
    )
    .await;
    let bad = RawClient::connect(&server).await;
    let (mut send, mut recv) = bad.conn.open_bi().await.expect("stream");
    send.write_all(&[0, 0])
        .await
        .expect("two bytes, then silence");
    // Slow is not malformed: the server gives up on that stream only, and
    // ends it (with an error frame saying why, or a reset).
    let ended = within(
        Duration::from_secs(5),
        "slow stream ended",
        recv.read_to_end(MAX_FRAME + 4),
    )
    .await;
    if let Ok(bytes) = &ended {
        assert!(!bytes.is_empty(), "an answer saying why, not silence");
    }
    // The connection itself is still good for the next request.
    let answer = bad
        .request(&Message::Lookup {
            name: "nobody".into(),
        })
        .await;
    assert!(matches!(answer, Message::Error { .. }), "{answer:?}");
    assert!(bad.conn.close_reason().is_none(), "the connection stays up");
}
