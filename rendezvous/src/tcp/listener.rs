//! Accepts TCP connections and turns each into a tunnel: admission by
//! the connection caps, then TLS and the WebSocket upgrade under one
//! deadline, then the pumps until the tunnel ends.

use std::sync::Arc;
use std::time::Duration;

use common::candidates::canonical;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use super::{Slot, TcpPeers};

/// Accepts tunnels on `listener` until the task is aborted.
pub(crate) async fn serve(listener: TcpListener, peers: Arc<TcpPeers>, acceptor: TlsAcceptor) {
    loop {
        let (stream, remote) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: pause, then go on.
                warn!("TCP accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let remote = canonical(remote);
        let Some(slot) = peers.admit(remote.ip()) else {
            debug!(%remote, "TCP connection refused: at a connection limit");
            continue;
        };
        let (peers, acceptor) = (peers.clone(), acceptor.clone());
        tokio::spawn(async move { run_one(stream, remote, slot, &peers, &acceptor).await });
    }
}

async fn run_one(
    stream: TcpStream,
    remote: std::net::SocketAddr,
    mut slot: Slot,
    peers: &TcpPeers,
    acceptor: &TlsAcceptor,
) {
    common::tunnel::tune_tcp(&stream);
    let deadline = peers.config().handshake_timeout;
    let ws = match tokio::time::timeout(deadline, common::tunnel::accept(stream, acceptor)).await {
        Ok(Ok(ws)) => ws,
        Ok(Err(e)) => {
            peers
                .stats
                .handshakes_failed
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            debug!(%remote, "TCP tunnel refused: {e}");
            return;
        }
        Err(_) => {
            peers
                .stats
                .handshakes_failed
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            debug!(%remote, "TCP tunnel cut: TLS and upgrade not done within {} s", deadline.as_secs());
            return;
        }
    };
    let (virtual_addr, tunnel) = peers.open(&mut slot, remote, ws);
    info!(%remote, %virtual_addr, "peer connected over TCP");
    let reason = tunnel.closed().await;
    peers.count_close(&reason);
    match &reason {
        common::tunnel::CloseReason::Protocol(why) | common::tunnel::CloseReason::Error(why) => {
            info!(%remote, "TCP tunnel ended ({}): {why}", reason.as_str())
        }
        _ => info!(%remote, "TCP tunnel ended ({})", reason.as_str()),
    }
    drop(slot);
}
