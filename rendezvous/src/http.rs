//! A minimal HTTP endpoint serving `GET /metrics` in Prometheus text.
//!
//! Deliberately tiny: one request per connection, a request head of at most
//! 8 KiB read within 5 s, anything but `GET /metrics` gets 404. Bind it to a
//! private address; it has no authentication.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tracing::debug;

use crate::MetricsHandle;

/// Serves `/metrics` on `listener` forever.
pub async fn serve(listener: TcpListener, metrics: MetricsHandle) {
    loop {
        let (mut stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                debug!("metrics accept failed: {e}");
                // Out of file descriptors or similar: back off instead of spinning.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let mut head = vec![0u8; 8192];
            let mut got = 0;
            let read = async {
                while got < head.len() {
                    let n = stream.read(&mut head[got..]).await?;
                    if n == 0 {
                        break;
                    }
                    got += n;
                    if head[..got].windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
                Ok::<_, std::io::Error>(())
            };
            if tokio::time::timeout(Duration::from_secs(5), read)
                .await
                .is_err()
            {
                return;
            }
            let (status, body) = if head[..got].starts_with(b"GET /metrics ") {
                ("200 OK", metrics.render())
            } else {
                ("404 Not Found", "try /metrics\n".to_owned())
            };
            let reply = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            if let Err(e) = stream.write_all(reply.as_bytes()).await {
                debug!(%peer, "metrics reply failed: {e}");
            }
        });
    }
}

/// Binds the metrics listener.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}
