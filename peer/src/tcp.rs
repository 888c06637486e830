//! Opening the TCP tunnel to the server (issue 11): a TCP connection to
//! the server's TCP port (the same number as its UDP port), directly or
//! through an HTTP proxy (`CONNECT`, [`crate::proxy`]), then TLS 1.3 pinned
//! to the server's fingerprint and the WebSocket upgrade
//! ([`common::tunnel::connect`]), then the tunnel's pumps.
//!
//! Failures map onto the contract's kinds: a wrong key is
//! `bad_fingerprint`, anything else `server_unreachable` with a reason
//! that says it was over TCP (and through which proxy).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::tunnel::{self, PumpLimits, Tunnel, TunnelError};
use common::Fingerprint;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tracing::debug;

use crate::error::{Error, Result};
use crate::proxy::{self, ProxyAnswer, ProxyConfig};

/// Datagrams the tunnel may hold for the socket before its reader waits.
const INBOX: usize = 256;

/// A running tunnel and where its datagrams arrive.
pub(crate) struct Opened {
    pub(crate) tunnel: Tunnel,
    pub(crate) inbox: mpsc::Receiver<Bytes>,
}

/// Where the tunnel goes.
pub(crate) struct Target<'a> {
    /// The server as configured (`HOST:PORT`): the proxy's `CONNECT`
    /// target and the upgrade's `Host`.
    pub(crate) server: &'a str,
    /// Its resolved address (TCP port = UDP port).
    pub(crate) addr: SocketAddr,
    pub(crate) fingerprint: Fingerprint,
    pub(crate) proxy: Option<&'a ProxyConfig>,
}

/// Opens the tunnel to `target` within `timeout`.
pub(crate) async fn open(target: &Target<'_>, timeout: Duration) -> Result<Opened> {
    let unreachable = |reason: String| Error::ServerUnreachable {
        server: target.server.to_owned(),
        reason,
    };
    let host = proxy::split_host_port(target.server)
        .map(|(h, _)| h)
        .unwrap_or_else(|| target.addr.ip().to_string());
    let proxy = target
        .proxy
        .filter(|p| !p.no_proxy.matches(&host, Some(target.addr.ip())));
    let via = proxy
        .map(|p| format!(" through the proxy {}", p.addr()))
        .unwrap_or_default();
    let opening = async {
        let stream = match proxy {
            None => TcpStream::connect(target.addr)
                .await
                .map_err(|e| unreachable(format!("TCP connect to {}: {e}", target.addr)))?,
            Some(p) => {
                let connect_to = proxy::join_host_port(&host, target.addr.port());
                through_proxy(p, &connect_to)
                    .await
                    .map_err(|why| unreachable(format!("over TCP{via}: {why}")))?
            }
        };
        tunnel::tune_tcp(&stream);
        let tls = common::tls::tunnel_client_config(target.fingerprint)
            .map_err(|e| Error::Protocol(format!("TLS config: {e}")))?;
        let ws = tunnel::connect(stream, Arc::new(tls), target.server)
            .await
            .map_err(|e| match e {
                TunnelError::BadFingerprint => Error::BadServerFingerprint {
                    server: target.server.to_owned(),
                    expected: target.fingerprint.to_string(),
                },
                other => unreachable(format!("over TCP{via}: {other}")),
            })?;
        let (tx, inbox) = mpsc::channel(INBOX);
        let tunnel = tunnel::pump::spawn(ws, PumpLimits::default(), tx, |b| b);
        debug!(server = target.server, %via, "TCP tunnel open");
        Ok(Opened { tunnel, inbox })
    };
    match tokio::time::timeout(timeout, opening).await {
        Ok(result) => result,
        Err(_) => Err(unreachable(format!(
            "no TCP tunnel{via} within {} s",
            timeout.as_secs_f32()
        ))),
    }
}

/// A TCP connection to `target` (`host:port`) through `proxy`'s `CONNECT`.
/// The caller bounds it in time; the proxy's answer is bounded in size.
async fn through_proxy(
    proxy: &ProxyConfig,
    target: &str,
) -> std::result::Result<TcpStream, String> {
    let mut stream = TcpStream::connect((proxy.host.as_str(), proxy.port))
        .await
        .map_err(|e| format!("cannot connect to the proxy: {e}"))?;
    let request = proxy::connect_request(target, proxy.credentials.as_ref());
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("writing CONNECT: {e}"))?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let room = proxy::MAX_RESPONSE
            .saturating_sub(buf.len())
            .min(chunk.len());
        let n = stream
            .read(&mut chunk[..room.max(1)])
            .await
            .map_err(|e| format!("reading the proxy's answer: {e}"))?;
        if n == 0 {
            return Err("the proxy closed the connection before answering CONNECT".into());
        }
        buf.extend_from_slice(&chunk[..n]);
        match proxy::parse_answer(&buf) {
            ProxyAnswer::Partial => continue,
            ProxyAnswer::Open(head) if head == buf.len() => return Ok(stream),
            // The server speaks only after our TLS hello: bytes past the
            // head are the proxy's, and would corrupt the TLS stream.
            ProxyAnswer::Open(_) => return Err("the proxy sent data after its answer".into()),
            ProxyAnswer::Refused(code, reason) => {
                return Err(format!(
                    "the proxy refused CONNECT {target}: {code} {reason}"
                ))
            }
            ProxyAnswer::Bad(why) => return Err(format!("the proxy's answer: {why}")),
        }
    }
}

#[cfg(test)]
#[path = "tcp_tests.rs"]
mod tests;
