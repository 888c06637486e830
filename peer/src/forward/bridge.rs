//! One QUIC stream ↔ one TCP connection, bytes both ways, each direction
//! ending on its own (TCP FIN ↔ QUIC finish).
//!
//! The TCP side runs on an I/O thread of its own ([`io_runtime`]), the
//! QUIC side where the call's tasks run: the call's encryption and the
//! TCP system calls then overlap, as the CLI pipe's stdin/stdout threads
//! do (on one thread, one forwarded stream moved ~0.73× the CLI pipe).
//! The two sides hand each other pieces without copies, at most
//! [`QUEUE`] in flight each way, so a stalled reader stalls only its own
//! stream (QUIC flow control per stream, TCP's window on the other side).
//! The streams of one call take turns at its send buffer ([`Turns`]).

use std::io::IoSlice;
use std::sync::OnceLock;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use super::turns::Turns;
use super::FORWARD_ABORTED;
use crate::error::{Error, Result};

/// Largest piece read from TCP at once (as [`crate::app`]'s pipes).
const CHUNK: usize = 256 * 1024;
/// Most chunks taken from the stream at once (each about a packet's data).
const BATCH: usize = 64;
/// Pieces in flight each way between the two sides of one connection.
const QUEUE: usize = 8;

fn proto(e: impl std::fmt::Display) -> Error {
    Error::Protocol(e.to_string())
}

/// What one side tells the other.
enum Piece<T> {
    /// Bytes.
    Data(T),
    /// The end of this direction, cleanly (FIN, or the stream finished).
    End,
}

/// The I/O thread's runtime, started on first use; `None` if it could not
/// be (then the TCP side runs with the QUIC side).
fn io_runtime() -> Option<tokio::runtime::Handle> {
    static IO: OnceLock<Option<tokio::runtime::Handle>> = OnceLock::new();
    IO.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        let started = std::thread::Builder::new()
            .name("peer-tcp-io".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build();
                match runtime {
                    Ok(rt) => {
                        let _ = tx.send(Some(rt.handle().clone()));
                        rt.block_on(std::future::pending::<()>());
                    }
                    Err(_) => {
                        let _ = tx.send(None);
                    }
                }
            });
        started.ok().and_then(|_| rx.recv().ok().flatten())
    })
    .clone()
}

/// Bridges `tcp` and the stream until both directions are done. Returns
/// `(bytes to the stream, bytes from the stream)`. On an error in either
/// direction both are cut: the stream is reset and stopped with
/// [`FORWARD_ABORTED`], and the TCP connection is reset (no FIN that
/// would look like a clean end). `turns` is the call's ([`super::prepare_call`]).
pub async fn bridge(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    tcp: TcpStream,
    turns: &Turns,
) -> Result<(u64, u64)> {
    let mut writer = turns.writer();
    let (up_tx, mut up_rx) = mpsc::channel::<Piece<Bytes>>(QUEUE);
    let (down_tx, down_rx) = mpsc::channel::<Piece<Vec<Bytes>>>(QUEUE);
    // Registered again with the reactor of the runtime that runs it.
    let std = tcp
        .into_std()
        .map_err(|e| Error::io("the TCP connection", e))?;
    let task = async move {
        let tcp = TcpStream::from_std(std).map_err(|e| Error::io("the TCP connection", e))?;
        tcp_side(tcp, up_tx, down_rx).await
    };
    let tcp_side = match io_runtime() {
        Some(io) => io.spawn(task),
        None => tokio::spawn(task),
    };
    let quic = {
        let (send, recv) = (&mut send, &mut recv);
        let up = async move {
            let mut sent = 0u64;
            loop {
                match up_rx.recv().await {
                    Some(Piece::Data(piece)) => {
                        sent += piece.len() as u64;
                        writer.write(send, piece).await.map_err(proto)?;
                    }
                    Some(Piece::End) => break,
                    // The TCP side failed; it says why.
                    None => return Err(Error::Protocol("the TCP side ended".into())),
                }
            }
            send.finish().map_err(proto)?;
            Ok::<_, Error>(sent)
        };
        let down = async move {
            let mut chunks: [Bytes; BATCH] = std::array::from_fn(|_| Bytes::new());
            let mut received = 0u64;
            while let Some(n) = recv.read_chunks(&mut chunks).await.map_err(proto)? {
                let batch: Vec<Bytes> = chunks[..n].iter_mut().map(std::mem::take).collect();
                received += batch.iter().map(|c| c.len() as u64).sum::<u64>();
                if down_tx.send(Piece::Data(batch)).await.is_err() {
                    return Err(Error::Protocol("the TCP side ended".into()));
                }
            }
            let _ = down_tx.send(Piece::End).await;
            Ok::<_, Error>(received)
        };
        tokio::try_join!(up, down)
    };
    let tcp_result = match &quic {
        // The TCP side ends when both its directions have (it shuts its
        // write side down after the last byte).
        Ok(_) => tcp_side.await,
        // Dropping our ends of the channels tells the TCP side to reset.
        Err(_) => Ok(Ok(())),
    };
    let outcome = match (quic, tcp_result) {
        (Ok(counts), Ok(Ok(()))) => Ok(counts),
        (Ok(_), Ok(Err(e))) => Err(e),
        (Ok(_), Err(_)) => Err(Error::Protocol("the TCP side panicked".into())),
        (Err(e), _) => Err(e),
    };
    if outcome.is_err() {
        abort(&mut send, &mut recv);
    }
    outcome
}

/// The TCP side of one connection: reads to `up`, writes what `down`
/// brings; on an error, or when the QUIC side goes without saying the
/// direction ended, the connection is reset.
async fn tcp_side(
    mut tcp: TcpStream,
    up: mpsc::Sender<Piece<Bytes>>,
    mut down: mpsc::Receiver<Piece<Vec<Bytes>>>,
) -> Result<()> {
    let _ = tcp.set_nodelay(true);
    let outcome = {
        let (mut tcp_in, mut tcp_out) = tcp.split();
        let reading = async move {
            let mut buf = BytesMut::new();
            loop {
                buf.reserve(CHUNK);
                let n = tcp_in
                    .read_buf(&mut buf)
                    .await
                    .map_err(|e| Error::io("reading the TCP connection", e))?;
                let piece = match n {
                    0 => Piece::End,
                    _ => Piece::Data(buf.split().freeze()),
                };
                let end = matches!(piece, Piece::End);
                if up.send(piece).await.is_err() {
                    return Err(Error::Protocol("the stream ended".into()));
                }
                if end {
                    return Ok::<_, Error>(());
                }
            }
        };
        let writing = async move {
            loop {
                match down.recv().await {
                    Some(Piece::Data(mut batch)) => write_chunks(&mut tcp_out, &mut batch)
                        .await
                        .map_err(|e| Error::io("writing the TCP connection", e))?,
                    Some(Piece::End) => break,
                    None => return Err(Error::Protocol("the stream ended".into())),
                }
            }
            tcp_out
                .shutdown()
                .await
                .map_err(|e| Error::io("closing the TCP connection", e))
        };
        tokio::try_join!(reading, writing)
    };
    if outcome.is_err() {
        // Linger 0: close with a reset.
        let _ = tcp.set_zero_linger();
    }
    outcome.map(|_| ())
}

/// Writes every byte of `chunks` to `out` with as few `writev`s as it
/// takes.
async fn write_chunks(
    out: &mut (impl AsyncWrite + Unpin),
    chunks: &mut [Bytes],
) -> std::io::Result<()> {
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
    Ok(())
}

/// Gives up a stream both ways with [`FORWARD_ABORTED`].
pub(crate) fn abort(send: &mut quinn::SendStream, recv: &mut quinn::RecvStream) {
    let _ = send.reset(FORWARD_ABORTED.into());
    let _ = recv.stop(FORWARD_ABORTED.into());
}
