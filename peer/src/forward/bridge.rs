//! One QUIC stream ↔ one TCP connection, bytes both ways, each direction
//! ending on its own (TCP FIN ↔ QUIC finish). Each direction moves at
//! most [`CHUNK`] bytes at a time and waits for the other end to take
//! them, so a stalled reader stalls only its own stream (QUIC flow
//! control per stream, TCP's window on the other side).

use std::io::IoSlice;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::FORWARD_ABORTED;
use crate::error::{Error, Result};

/// Largest piece read from TCP at once (as [`crate::app`]'s pipes).
const CHUNK: usize = 256 * 1024;
/// Most chunks taken from the stream at once (each about a packet's data).
const BATCH: usize = 64;

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
        // Without copies of our own: what TCP gave goes to quinn as is
        // (`write_chunk`), what quinn received goes to TCP as is (`writev`).
        let up = async move {
            let mut buf = BytesMut::new();
            let mut sent = 0u64;
            loop {
                buf.reserve(CHUNK);
                let n = tcp_in
                    .read_buf(&mut buf)
                    .await
                    .map_err(|e| Error::io("reading the TCP connection", e))?;
                if n == 0 {
                    break;
                }
                send.write_chunk(buf.split().freeze())
                    .await
                    .map_err(proto)?;
                sent += n as u64;
            }
            send.finish().map_err(proto)?;
            Ok::<_, Error>(sent)
        };
        let down = async move {
            let mut chunks: [Bytes; BATCH] = std::array::from_fn(|_| Bytes::new());
            let mut received = 0u64;
            while let Some(n) = recv.read_chunks(&mut chunks).await.map_err(proto)? {
                received += write_chunks(&mut tcp_out, &mut chunks[..n])
                    .await
                    .map_err(|e| Error::io("writing the TCP connection", e))?;
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

/// Writes every byte of `chunks` to `out` with as few `writev`s as it
/// takes; returns how many bytes that was.
async fn write_chunks(
    out: &mut (impl AsyncWrite + Unpin),
    chunks: &mut [Bytes],
) -> std::io::Result<u64> {
    let total = chunks.iter().map(|c| c.len() as u64).sum();
    let mut first = 0;
    while first < chunks.len() {
        if chunks[first].is_empty() {
            first += 1;
            continue;
        }
        let slices: Vec<IoSlice<'_>> = chunks[first..].iter().map(|c| IoSlice::new(c)).collect();
        let mut n = out.write_vectored(&slices).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while n > 0 {
            let c = &mut chunks[first];
            let take = n.min(c.len());
            let _ = c.split_to(take);
            n -= take;
            if c.is_empty() {
                first += 1;
            }
        }
    }
    Ok(total)
}

/// Gives up a stream both ways with [`FORWARD_ABORTED`].
pub(crate) fn abort(send: &mut quinn::SendStream, recv: &mut quinn::RecvStream) {
    let _ = send.reset(FORWARD_ABORTED.into());
    let _ = recv.stop(FORWARD_ABORTED.into());
}
