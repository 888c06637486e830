//! The CLI's pipe between one stream of a call and this process's own
//! stdin and stdout, as fast as the call itself.
//!
//! [`crate::app::pipe`] works on any `AsyncRead`/`AsyncWrite`; on
//! `tokio::io::{stdin, stdout}` it moved bulk data at ~0.6× raw quinn
//! (issue 14): every read and write hopped to tokio's blocking pool and
//! back, every byte was copied twice more (into tokio's buffer, then
//! through std's line-buffered `Stdout`, which also scans for newlines).
//! Here one plain thread reads stdin and one writes stdout, each on a
//! duplicate of the descriptor (unbuffered), and the bytes cross without a
//! copy: what the reader read goes to quinn as is (`write_chunk`), what
//! quinn received goes to the writer as is (`read_chunks`), written with
//! `writev`. Each direction is bounded ([`QUEUE`] pieces in flight), so a
//! slow stdout stalls the stream by QUIC flow control, not by memory.

use std::io::{self, IoSlice, Read, Write};
use std::os::fd::AsFd;

use bytes::{Bytes, BytesMut};
use tokio::sync::{mpsc, oneshot};

use crate::error::{Error, Result};

/// Largest piece read from stdin at once (each read returns what is
/// there, so typed lines still go out at once).
const CHUNK: usize = 256 * 1024;
/// A read this much smaller than [`CHUNK`] is copied into a piece of its
/// own size, so many small (interactive) pieces waiting for their ack
/// don't each hold a whole [`CHUNK`].
const SMALL: usize = CHUNK / 8;
/// Pieces in flight each way between a thread and the call.
const QUEUE: usize = 16;
/// Most chunks one `read_chunks` takes (each about one packet's data).
const BATCH: usize = 64;
/// Most slices one `writev` is given (Linux's IOV_MAX is 1024).
const IOV_MAX: usize = 1024;

fn proto(e: impl std::fmt::Display) -> Error {
    Error::Protocol(e.to_string())
}

/// Copies stdin to the stream and the stream to stdout at once, like
/// netcat; each direction ends on its own (half-close). Returns
/// `(bytes_sent, bytes_received)` when both are done, the other side has
/// every byte we sent, and stdout has every byte we received.
pub async fn pipe_stdio(send: quinn::SendStream, recv: quinn::RecvStream) -> Result<(u64, u64)> {
    let stdin = io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| Error::io("opening stdin", e))?;
    let stdout = io::stdout()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| Error::io("opening stdout", e))?;
    pipe_threads(
        send,
        recv,
        std::fs::File::from(stdin),
        std::fs::File::from(stdout),
    )
    .await
}

/// [`pipe_stdio`] on any blocking reader and writer (tests use pipes).
pub async fn pipe_threads<R, W>(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    input: R,
    output: W,
) -> Result<(u64, u64)>
where
    R: Read + Send + 'static,
    W: Write + Send + 'static,
{
    let mut pieces = spawn_reader(input)?;
    let (batches, written) = spawn_writer(output)?;
    let up = async move {
        let mut sent = 0u64;
        while let Some(piece) = pieces.recv().await {
            let piece = piece.map_err(|e| Error::io("reading input", e))?;
            sent += piece.len() as u64;
            send.write_chunk(piece).await.map_err(proto)?;
        }
        send.finish().map_err(proto)?;
        // Wait until the other side has it all: closing earlier could lose data.
        let _ = send.stopped().await;
        Ok::<_, Error>(sent)
    };
    let down = async move {
        let mut received = 0u64;
        let mut chunks: [Bytes; BATCH] = std::array::from_fn(|_| Bytes::new());
        while let Some(n) = recv.read_chunks(&mut chunks).await.map_err(proto)? {
            let batch: Vec<Bytes> = chunks[..n].iter_mut().map(std::mem::take).collect();
            received += batch.iter().map(|c| c.len() as u64).sum::<u64>();
            if batches.send(batch).await.is_err() {
                // The writer stopped: it says why below.
                break;
            }
        }
        drop(batches);
        match written.await {
            Ok(Ok(())) => Ok::<_, Error>(received),
            Ok(Err(e)) => Err(Error::io("writing output", e)),
            Err(_) => Err(Error::Protocol("the output thread ended".into())),
        }
    };
    tokio::try_join!(up, down)
}

/// A thread reading `input` into pieces until EOF or an error (sent last).
fn spawn_reader<R: Read + Send + 'static>(
    mut input: R,
) -> Result<mpsc::Receiver<io::Result<Bytes>>> {
    let (tx, rx) = mpsc::channel(QUEUE);
    std::thread::Builder::new()
        .name("peer-stdin".into())
        .spawn(move || {
            let mut buf = BytesMut::zeroed(CHUNK);
            loop {
                let piece = match input.read(&mut buf) {
                    Ok(0) => return,
                    Ok(n) if n < SMALL => Ok(Bytes::copy_from_slice(&buf[..n])),
                    Ok(n) => {
                        let mut full = std::mem::replace(&mut buf, BytesMut::zeroed(CHUNK));
                        full.truncate(n);
                        Ok(full.freeze())
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => Err(e),
                };
                let last = piece.is_err();
                if tx.blocking_send(piece).is_err() || last {
                    return;
                }
            }
        })
        .map_err(|e| Error::io("starting the input thread", e))?;
    Ok(rx)
}

/// How the output thread ended, once its sender is gone.
type Written = oneshot::Receiver<io::Result<()>>;

/// A thread writing every batch it is given to `output`, gathering what is
/// queued into one `writev`; says how it ended once the sender is gone.
fn spawn_writer<W: Write + Send + 'static>(
    mut output: W,
) -> Result<(mpsc::Sender<Vec<Bytes>>, Written)> {
    let (tx, mut rx) = mpsc::channel::<Vec<Bytes>>(QUEUE);
    let (done, written) = oneshot::channel();
    std::thread::Builder::new()
        .name("peer-stdout".into())
        .spawn(move || {
            let result = (|| {
                while let Some(mut batch) = rx.blocking_recv() {
                    while let Ok(more) = rx.try_recv() {
                        batch.extend(more);
                    }
                    write_all_chunks(&mut output, &batch)?;
                }
                output.flush()
            })();
            let _ = done.send(result);
        })
        .map_err(|e| Error::io("starting the output thread", e))?;
    Ok((tx, written))
}

/// Writes every byte of `chunks`, in order, with as few `writev`s as the
/// writer allows.
fn write_all_chunks(output: &mut impl Write, chunks: &[Bytes]) -> io::Result<()> {
    // The first chunk not wholly written, and how much of it was.
    let (mut i, mut off) = (0, 0);
    while i < chunks.len() {
        if chunks[i].len() == off {
            (i, off) = (i + 1, 0);
            continue;
        }
        let slices: Vec<IoSlice<'_>> = std::iter::once(&chunks[i][off..])
            .chain(chunks[i + 1..].iter().map(|c| &c[..]))
            .take(IOV_MAX)
            .map(IoSlice::new)
            .collect();
        let mut n = match output.write_vectored(&slices) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        while n > 0 {
            let left = chunks[i].len() - off;
            if n < left {
                off += n;
                break;
            }
            n -= left;
            (i, off) = (i + 1, 0);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Takes at most `step` bytes per call, like a pipe that is nearly full.
    struct Trickle {
        got: Vec<u8>,
        step: usize,
        calls: usize,
    }

    impl Write for Trickle {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.write_vectored(&[IoSlice::new(buf)])
        }

        fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            self.calls += 1;
            let mut n = 0;
            for b in bufs {
                let take = b.len().min(self.step - n);
                self.got.extend_from_slice(&b[..take]);
                n += take;
                if n == self.step {
                    break;
                }
            }
            Ok(n)
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn chunks(sizes: &[usize]) -> (Vec<Bytes>, Vec<u8>) {
        let mut all = vec![];
        let chunks = sizes
            .iter()
            .map(|&n| {
                let start = all.len();
                all.extend((start..start + n).map(|k| (k % 251) as u8));
                Bytes::copy_from_slice(&all[start..])
            })
            .collect();
        (chunks, all)
    }

    #[test]
    fn every_byte_in_order_whatever_each_writev_takes() {
        let (chunks, all) = chunks(&[5, 0, 1200, 1, 0, 3000, 7]);
        for step in [1, 2, 5, 6, 1199, 1201, 4000, 100_000] {
            let mut out = Trickle {
                got: vec![],
                step,
                calls: 0,
            };
            write_all_chunks(&mut out, &chunks).expect("written");
            assert_eq!(out.got, all, "step {step}");
        }
    }

    #[test]
    fn one_writev_for_a_whole_batch() {
        let (chunks, all) = chunks(&[1200; 40]);
        let mut out = Trickle {
            got: vec![],
            step: usize::MAX,
            calls: 0,
        };
        write_all_chunks(&mut out, &chunks).expect("written");
        assert_eq!((out.got, out.calls), (all, 1));
    }

    #[test]
    fn a_writer_taking_nothing_is_an_error_not_a_loop() {
        let (chunks, _) = chunks(&[10]);
        let mut out = Trickle {
            got: vec![],
            step: 0,
            calls: 0,
        };
        let err = write_all_chunks(&mut out, &chunks).expect_err("write zero");
        assert_eq!(err.kind(), io::ErrorKind::WriteZero);
    }

    #[tokio::test]
    async fn the_reader_sends_small_reads_as_small_pieces() {
        let input: &[u8] = b"hello\n";
        let mut pieces = spawn_reader(io::Cursor::new(input.to_vec())).expect("thread");
        let piece = pieces.recv().await.expect("a piece").expect("read");
        assert_eq!(&piece[..], input);
        assert!(pieces.recv().await.is_none(), "EOF ends the pieces");
    }
}
