//! One QUIC stream ↔ one TCP connection, bytes both ways, each direction
//! ending on its own (TCP FIN ↔ QUIC finish). Each direction moves at
//! most [`CHUNK`] bytes at a time and waits for the other end to take
//! them, so a stalled reader stalls only its own stream (QUIC flow
//! control per stream, TCP's window on the other side).

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::FORWARD_ABORTED;
use crate::error::{Error, Result};

/// Largest piece moved at once (as [`crate::app`]'s pipes).
const CHUNK: usize = 256 * 1024;

fn proto(e: impl std::fmt::Display) -> Error {
    Error::Protocol(e.to_string())
}

/// Bridges `tcp` and the stream until both directions are done. Returns
/// `(bytes to the stream, bytes from the stream)`. On an error in either
/// direction both are cut: the stream is reset and stopped with
/// [`FORWARD_ABORTED`], and the TCP connection is reset (no FIN that
/// would look like a clean end).
pub async fn bridge(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    mut tcp: TcpStream,
) -> Result<(u64, u64)> {
    let _ = tcp.set_nodelay(true);
    let outcome = {
        let (mut tcp_in, mut tcp_out) = tcp.split();
        let (send, recv) = (&mut send, &mut recv);
        let up = async move {
            let mut buf = vec![0u8; CHUNK];
            let mut sent = 0u64;
            loop {
                let n = tcp_in
                    .read(&mut buf)
                    .await
                    .map_err(|e| Error::io("reading the TCP connection", e))?;
                if n == 0 {
                    break;
                }
                send.write_all(&buf[..n]).await.map_err(proto)?;
                sent += n as u64;
            }
            send.finish().map_err(proto)?;
            Ok::<_, Error>(sent)
        };
        let down = async move {
            let mut buf = vec![0u8; CHUNK];
            let mut received = 0u64;
            while let Some(n) = recv.read(&mut buf).await.map_err(proto)? {
                tcp_out
                    .write_all(&buf[..n])
                    .await
                    .map_err(|e| Error::io("writing the TCP connection", e))?;
                received += n as u64;
            }
            tcp_out
                .shutdown()
                .await
                .map_err(|e| Error::io("closing the TCP connection", e))?;
            Ok::<_, Error>(received)
        };
        tokio::try_join!(up, down)
    };
    if outcome.is_err() {
        abort(&mut send, &mut recv);
        // Linger 0: close with a reset.
        let _ = tcp.set_zero_linger();
    }
    outcome
}

/// Gives up a stream both ways with [`FORWARD_ABORTED`].
pub(crate) fn abort(send: &mut quinn::SendStream, recv: &mut quinn::RecvStream) {
    let _ = send.reset(FORWARD_ABORTED.into());
    let _ = recv.stop(FORWARD_ABORTED.into());
}
