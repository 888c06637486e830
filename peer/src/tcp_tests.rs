//! The tunnel opened directly and through a tiny `CONNECT` proxy written
//! here, against a loopback tunnel server (the real `common::tunnel` code).

use std::sync::{Arc, Mutex};

use common::Identity;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

use super::*;

const WAIT: Duration = Duration::from_secs(5);

/// A tunnel server on loopback: every datagram received goes to the
/// returned channel.
async fn tunnel_server(identity: &Identity) -> (SocketAddr, mpsc::Receiver<Bytes>) {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(
        common::tls::tunnel_server_config(identity).expect("server config"),
    ));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            if let Ok(ws) = tunnel::accept(tcp, &acceptor).await {
                // Kept running by its tasks; the handle may go.
                let _ = tunnel::pump::spawn(ws, PumpLimits::default(), tx.clone(), |b| b);
            }
        }
    });
    (addr, rx)
}

/// What the proxy saw: the request head's lines.
type Seen = Arc<Mutex<Vec<String>>>;

/// A `CONNECT` proxy on loopback answering `status` (then relaying if 200).
async fn proxy(status: &'static str) -> (SocketAddr, Seen) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen: Seen = Arc::default();
    let log = seen.clone();
    tokio::spawn(async move {
        let Ok((client, _)) = listener.accept().await else {
            return;
        };
        let mut client = BufReader::new(client);
        let mut lines = vec![];
        loop {
            let mut line = String::new();
            if client.read_line(&mut line).await.unwrap_or(0) == 0 || line == "\r\n" {
                break;
            }
            lines.push(line.trim_end().to_owned());
        }
        let target = lines
            .first()
            .and_then(|l| l.split(' ').nth(1))
            .unwrap_or("")
            .to_owned();
        *log.lock().expect("lock") = lines;
        let mut client = client.into_inner();
        let _ = client
            .write_all(format!("HTTP/1.1 {status}\r\n\r\n").as_bytes())
            .await;
        if status.starts_with("200") {
            if let Ok(mut upstream) = TcpStream::connect(target).await {
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            }
        }
    });
    (addr, seen)
}

fn proxy_config(addr: SocketAddr, no_proxy: &str) -> ProxyConfig {
    let mut p = ProxyConfig::parse(&format!("http://u:p@{addr}")).expect("url");
    p.no_proxy = crate::proxy::NoProxy::parse(no_proxy);
    p
}

async fn one_datagram_crosses(opened: &Opened, rx: &mut mpsc::Receiver<Bytes>) {
    opened.tunnel.send(b"\x40hello");
    let got = tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("in time")
        .expect("open");
    assert_eq!(&got[..], b"\x40hello");
}

#[tokio::test]
async fn opens_directly_and_a_wrong_key_is_bad_fingerprint() {
    let identity = Identity::generate().expect("identity");
    let (addr, mut rx) = tunnel_server(&identity).await;
    let server = addr.to_string();
    let target = Target {
        server: &server,
        addr,
        fingerprint: identity.fingerprint(),
        proxy: None,
    };
    let opened = open(&target, WAIT).await.expect("open");
    one_datagram_crosses(&opened, &mut rx).await;

    let other = Identity::generate().expect("identity").fingerprint();
    let target = Target {
        fingerprint: other,
        ..target
    };
    let e = open(&target, WAIT).await.err().expect("a wrong key");
    assert!(matches!(e, Error::BadServerFingerprint { .. }), "{e:?}");
}

#[tokio::test]
async fn goes_through_a_connect_proxy_with_credentials() {
    let identity = Identity::generate().expect("identity");
    let (addr, mut rx) = tunnel_server(&identity).await;
    let (proxy_addr, seen) = proxy("200 Connection established").await;
    let p = proxy_config(proxy_addr, "example.org");
    let server = addr.to_string();
    let target = Target {
        server: &server,
        addr,
        fingerprint: identity.fingerprint(),
        proxy: Some(&p),
    };
    let opened = open(&target, WAIT).await.expect("open through the proxy");
    one_datagram_crosses(&opened, &mut rx).await;
    let lines = seen.lock().expect("lock").clone();
    assert_eq!(
        lines.first().map(String::as_str),
        Some(&*format!("CONNECT {addr} HTTP/1.1"))
    );
    assert!(lines.contains(&format!("Host: {addr}")), "{lines:?}");
    assert!(
        lines.contains(&"Proxy-Authorization: Basic dTpw".to_owned()),
        "{lines:?}"
    );
}

#[tokio::test]
async fn a_refusing_proxy_is_named_with_its_status_and_no_proxy_bypasses_it() {
    let identity = Identity::generate().expect("identity");
    let (addr, mut rx) = tunnel_server(&identity).await;
    let (proxy_addr, seen) = proxy("407 Proxy Authentication Required").await;
    let p = proxy_config(proxy_addr, "");
    let server = addr.to_string();
    let target = Target {
        server: &server,
        addr,
        fingerprint: identity.fingerprint(),
        proxy: Some(&p),
    };
    let e = open(&target, WAIT).await.err().expect("refused");
    let text = e.to_string();
    assert!(matches!(e, Error::ServerUnreachable { .. }), "{e:?}");
    assert!(
        text.contains(&proxy_addr.to_string()) && text.contains("407"),
        "{text}"
    );
    assert!(!seen.lock().expect("lock").is_empty());

    // The same proxy config, but the server is an exception: direct.
    let p = proxy_config(proxy_addr, "127.0.0.0/8");
    let target = Target {
        proxy: Some(&p),
        ..target
    };
    let opened = open(&target, WAIT).await.expect("direct");
    one_datagram_crosses(&opened, &mut rx).await;
}
