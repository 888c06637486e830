//! Tests of [`super`] against a caller that grants no flow-control credit:
//! the answers (Pong, SendResult) give up after the write timeout instead of
//! parking the task for good.

use std::net::SocketAddr;
use std::sync::Arc;

use common::tls::{self, ClientKeyPolicy};
use common::Identity;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};

use super::*;

/// A listener-side endpoint and a connected caller whose streams grant the
/// listener no credit (a receive window of 0 bytes).
/// (The endpoints are returned to keep them alive.)
async fn stingy_pair() -> ([quinn::Endpoint; 2], quinn::Connection, quinn::Connection) {
    let (callee, caller) = (
        Identity::generate().expect("id"),
        Identity::generate().expect("id"),
    );
    let tls = tls::server_config(&callee, ClientKeyPolicy::AnyKey, tls::PEER_ALPN).expect("tls");
    let server =
        quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(tls).expect("quic")));
    let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let listen = quinn::Endpoint::server(server, any).expect("endpoint");
    let tls = tls::client_config(&caller, callee.fingerprint(), tls::PEER_ALPN).expect("tls");
    let mut client =
        quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls).expect("quic")));
    let mut transport = quinn::TransportConfig::default();
    transport.stream_receive_window(0u32.into());
    client.transport_config(Arc::new(transport));
    let dial = quinn::Endpoint::client(any).expect("endpoint");
    let addr = listen.local_addr().expect("addr");
    let connecting = dial
        .connect_with(client, addr, tls::SERVER_NAME)
        .expect("connect");
    let accepting = listen.clone();
    let callee_conn = tokio::spawn(async move {
        let incoming = accepting.accept().await.expect("incoming");
        incoming.await.expect("handshake")
    });
    let caller_conn = connecting.await;
    let callee_conn = callee_conn.await.expect("accept task");
    ([listen, dial], callee_conn, caller_conn.expect("caller"))
}

/// The callee's side of a stream the caller opened with `first` (and the
/// caller's side, which must stay open).
type Halves = (quinn::SendStream, quinn::RecvStream);
async fn stream_with(
    callee: &quinn::Connection,
    caller: &quinn::Connection,
    first: &PeerMessage,
) -> (PeerMessage, Halves, Halves) {
    let (mut send, recv) = caller.open_bi().await.expect("open");
    write_frame(&mut send, first, MAX_FRAME)
        .await
        .expect("write");
    let (s, mut r) = callee.accept_bi().await.expect("accept");
    let header = read_frame::<PeerMessage, _>(&mut r, MAX_FRAME)
        .await
        .expect("header");
    (header, (s, r), (send, recv))
}

const SHORT: Duration = Duration::from_millis(300);

#[tokio::test]
async fn a_pong_the_caller_takes_no_credit_for_times_out() {
    let (_ep, callee, caller) = stingy_pair().await;
    let (header, (send, recv), _caller) =
        stream_with(&callee, &caller, &PeerMessage::Ping { seq: 7 }).await;
    assert_eq!(header, PeerMessage::Ping { seq: 7 });
    let answered = tokio::time::timeout(
        Duration::from_secs(5),
        answer_pings_within(7, send, recv, SHORT),
    )
    .await
    .expect("answer_pings must give up, not park");
    let err = answered.expect_err("no credit, no pong");
    assert!(err.to_string().contains("took no answer"), "{err}");
}

#[tokio::test]
async fn a_send_result_the_caller_takes_no_credit_for_times_out() {
    let (_ep, callee, caller) = stingy_pair().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let offer = PeerMessage::SendFile {
        name: "../escape".into(),
        size: 1,
        sha256: [0; 32],
    };
    let (header, (send, recv), _caller) = stream_with(&callee, &caller, &offer).await;
    let received = tokio::time::timeout(
        Duration::from_secs(5),
        receive_file_within(header, send, recv, dir.path(), 10, SHORT),
    )
    .await
    .expect("receive_file must give up on its answer, not park");
    let err = received.expect_err("refused name");
    assert!(err.to_string().contains("refused file name"), "{err}");
}
