//! The tunnel end to end on loopback: both ends' real code.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::SinkExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use super::*;
use crate::tls::{tunnel_client_config, tunnel_server_config};
use crate::Identity;

const WAIT: Duration = Duration::from_secs(5);

struct Ends {
    identity: Identity,
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
}

async fn ends() -> Ends {
    let identity = Identity::generate().expect("identity");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(
        tunnel_server_config(&identity).expect("server config"),
    ));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    Ends {
        identity,
        listener,
        acceptor,
    }
}

async fn client(
    ends: &Ends,
    pin: crate::Fingerprint,
) -> Result<ClientStream<TcpStream>, TunnelError> {
    let addr = ends.listener.local_addr().expect("addr");
    let tcp = TcpStream::connect(addr).await.expect("connect");
    tune_tcp(&tcp);
    let tls = Arc::new(tunnel_client_config(pin).expect("client config"));
    connect(tcp, tls, &addr.to_string()).await
}

async fn server(ends: &Ends) -> Result<ServerStream<TcpStream>, TunnelError> {
    let (tcp, _) = ends.listener.accept().await.expect("accept");
    accept(tcp, &ends.acceptor).await
}

fn limits() -> PumpLimits {
    PumpLimits {
        idle: Duration::from_millis(500),
        ..PumpLimits::default()
    }
}

#[tokio::test]
async fn datagrams_cross_both_ways_unchanged() {
    let ends = ends().await;
    let pin = ends.identity.fingerprint();
    let (c, s) = tokio::join!(client(&ends, pin), server(&ends));
    let (c_tx, mut c_rx) = mpsc::channel::<Bytes>(64);
    let (s_tx, mut s_rx) = mpsc::channel::<(u8, Bytes)>(64);
    let c = pump::spawn(c.expect("client"), PumpLimits::default(), c_tx, |b| b);
    let s = pump::spawn(s.expect("server"), PumpLimits::default(), s_tx, |b| (7, b));
    for i in 0..20u8 {
        assert_eq!(c.send(&vec![i; 1 + i as usize * 60]), Pushed::Queued);
    }
    for i in 0..20u8 {
        let (tag, got) = tokio::time::timeout(WAIT, s_rx.recv())
            .await
            .expect("in time")
            .expect("open");
        assert_eq!(tag, 7);
        assert_eq!(&got[..], &vec![i; 1 + i as usize * 60][..]);
    }
    s.send(b"back");
    let got = tokio::time::timeout(WAIT, c_rx.recv())
        .await
        .expect("in time")
        .expect("open");
    assert_eq!(&got[..], b"back");
    assert_eq!(c.send(&[0; MAX_DATAGRAM + 1]), Pushed::TooBig);
    c.close();
    assert_eq!(
        tokio::time::timeout(WAIT, s.closed())
            .await
            .expect("in time"),
        CloseReason::Remote
    );
}

#[tokio::test]
async fn a_wrong_pin_fails_as_bad_fingerprint() {
    let ends = ends().await;
    let other = Identity::generate().expect("identity").fingerprint();
    let (c, _s) = tokio::join!(client(&ends, other), server(&ends));
    assert!(matches!(c, Err(TunnelError::BadFingerprint)), "{c:?}");
}

#[tokio::test]
async fn an_oversized_message_ends_the_tunnel_from_its_header() {
    let ends = ends().await;
    let pin = ends.identity.fingerprint();
    let (c, s) = tokio::join!(client(&ends, pin), server(&ends));
    let mut c = c.expect("client");
    let (s_tx, _s_rx) = mpsc::channel::<Bytes>(4);
    let s = pump::spawn(s.expect("server"), PumpLimits::default(), s_tx, |b| b);
    // Raw, past our own queue's check.
    let _ = c
        .send(Message::Binary(Bytes::from(vec![0u8; MAX_DATAGRAM + 1])))
        .await;
    let reason = tokio::time::timeout(WAIT, s.closed())
        .await
        .expect("in time");
    assert!(matches!(reason, CloseReason::Protocol(_)), "{reason:?}");
}

#[tokio::test]
async fn a_silent_other_end_is_cut_at_the_idle_timeout() {
    let ends = ends().await;
    let pin = ends.identity.fingerprint();
    let (c, s) = tokio::join!(client(&ends, pin), server(&ends));
    let _c = c.expect("client");
    let (s_tx, _s_rx) = mpsc::channel::<Bytes>(4);
    let s = pump::spawn(s.expect("server"), limits(), s_tx, |b| b);
    let reason = tokio::time::timeout(WAIT, s.closed())
        .await
        .expect("in time");
    assert_eq!(reason, CloseReason::Idle);
}

#[tokio::test]
async fn another_path_or_protocol_is_refused() {
    let ends = ends().await;
    let addr = ends.listener.local_addr().expect("addr");
    let pin = ends.identity.fingerprint();
    let wrong = async {
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let tls = Arc::new(tunnel_client_config(pin).expect("config"));
        let name = rustls::pki_types::ServerName::try_from(crate::tls::SERVER_NAME).expect("name");
        let stream = tokio_rustls::TlsConnector::from(tls)
            .connect(name, tcp)
            .await
            .expect("tls");
        tokio_tungstenite::client_async(format!("wss://{addr}/elsewhere"), stream).await
    };
    let (c, s) = tokio::join!(wrong, server(&ends));
    assert!(c.is_err());
    assert!(matches!(s, Err(TunnelError::Upgrade(_))), "{s:?}");
}

#[tokio::test]
async fn pings_alone_do_not_keep_a_tunnel_open() {
    let ends = ends().await;
    let pin = ends.identity.fingerprint();
    let (c, s) = tokio::join!(client(&ends, pin), server(&ends));
    let mut c = c.expect("client");
    let (s_tx, _s_rx) = mpsc::channel::<Bytes>(4);
    let s = pump::spawn(s.expect("server"), limits(), s_tx, |b| b);
    let pinger = async {
        for _ in 0..40 {
            if c.send(Message::Ping(Bytes::from_static(b"hi")))
                .await
                .is_err()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let reason = tokio::select! {
        reason = s.closed() => reason,
        () = pinger => panic!("still open after 2 s of pings (idle 0.5 s)"),
    };
    assert_eq!(reason, CloseReason::Idle);
}
