//! What flows over a call: byte pipes, echo, ping, and file transfer.
//!
//! Library functions so the CLI, the tests and the benchmarks use the same
//! code. Each works on one stream of a [`crate::Call`]; the stream's first
//! frame ([`PeerMessage`]) said which.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::framing::{read_frame, write_frame, FrameError, MAX_FRAME};
use common::PeerMessage;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::error::{Error, Result};

/// Largest piece moved at once. Pipes read their input and the stream in
/// pieces this big (each read returns what is there, so small interactive
/// writes still go out at once); fewer, larger pieces matter for
/// `tokio::io::{stdin, stdout}`, which hop to a blocking thread per call.
const CHUNK: usize = 256 * 1024;

fn proto(e: impl std::fmt::Display) -> Error {
    Error::Protocol(e.to_string())
}

/// Copies `input` to the stream and the stream to `output` at once, like
/// netcat. Each direction ends on its own (half-close). Returns
/// `(bytes_sent, bytes_received)` when both are done and the other side
/// has every byte we sent.
pub async fn pipe<R, W>(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    mut input: R,
    mut output: W,
) -> Result<(u64, u64)>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    // Each direction owns its halves and drops them when it ends, so a child
    // process behind `output` sees EOF as soon as the other side finished.
    let up = async move {
        let mut buf = vec![0u8; CHUNK];
        let mut sent = 0u64;
        loop {
            let n = input
                .read(&mut buf)
                .await
                .map_err(|e| Error::io("reading input", e))?;
            if n == 0 {
                break;
            }
            send.write_all(&buf[..n]).await.map_err(proto)?;
            sent += n as u64;
        }
        send.finish().map_err(proto)?;
        // Wait until the other side has it all: closing earlier could lose data.
        let _ = send.stopped().await;
        Ok::<_, Error>(sent)
    };
    let down = async move {
        let mut buf = vec![0u8; CHUNK];
        let mut received = 0u64;
        // `read` (not `read_chunk`) gathers every contiguous byte already
        // received into one write, instead of one write per QUIC frame.
        while let Some(n) = recv.read(&mut buf).await.map_err(proto)? {
            output
                .write_all(&buf[..n])
                .await
                .map_err(|e| Error::io("writing output", e))?;
            output
                .flush()
                .await
                .map_err(|e| Error::io("writing output", e))?;
            received += n as u64;
        }
        output
            .shutdown()
            .await
            .map_err(|e| Error::io("closing output", e))?;
        Ok::<_, Error>(received)
    };
    tokio::try_join!(up, down)
}

/// Sends every byte back until the other side finishes. Returns the byte count.
pub async fn echo(mut send: quinn::SendStream, mut recv: quinn::RecvStream) -> Result<u64> {
    let mut total = 0u64;
    while let Some(chunk) = recv.read_chunk(CHUNK, true).await.map_err(proto)? {
        total += chunk.bytes.len() as u64;
        send.write_chunk(chunk.bytes).await.map_err(proto)?;
    }
    send.finish().map_err(proto)?;
    let _ = send.stopped().await;
    Ok(total)
}

/// How long one answer frame (Pong, SendResult) may take to write: the
/// default [`crate::Timing::write_timeout`]. A caller that grants no
/// flow-control credit would otherwise park the task for good.
fn write_timeout() -> Duration {
    crate::Timing::default().write_timeout
}

/// Writes one answer frame within `timeout`.
async fn write_answer(
    send: &mut quinn::SendStream,
    msg: &PeerMessage,
    timeout: Duration,
) -> Result<()> {
    match tokio::time::timeout(timeout, write_frame(send, msg, MAX_FRAME)).await {
        Ok(written) => written.map_err(proto),
        Err(_) => {
            // Give up the stream: its unsent bytes are dropped, not queued.
            let _ = send.reset(0u32.into());
            Err(Error::Protocol(format!(
                "the other side took no answer within {} s",
                timeout.as_secs_f32()
            )))
        }
    }
}

/// Answers pings on a stream whose first frame was `Ping { seq }`. Each
/// Pong is written within [`crate::Timing::write_timeout`].
pub async fn answer_pings(
    first_seq: u64,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
) -> Result<u64> {
    answer_pings_within(first_seq, send, recv, write_timeout()).await
}

async fn answer_pings_within(
    first_seq: u64,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    timeout: Duration,
) -> Result<u64> {
    let mut seq = first_seq;
    let mut answered = 0;
    loop {
        write_answer(&mut send, &PeerMessage::Pong { seq }, timeout).await?;
        answered += 1;
        match read_frame::<PeerMessage, _>(&mut recv, MAX_FRAME).await {
            Ok(PeerMessage::Ping { seq: next }) => seq = next,
            Ok(other) => return Err(Error::Protocol(format!("expected Ping, got {other:?}"))),
            Err(FrameError::Closed) => break,
            Err(e) => return Err(proto(e)),
        }
    }
    let _ = send.finish();
    Ok(answered)
}

/// Sends `count` pings, `interval` apart, calling `on_pong(seq, rtt)` for each
/// answer. A ping unanswered within `timeout` ends the run with an error.
pub async fn ping(
    call: &crate::Call,
    count: u64,
    interval: Duration,
    timeout: Duration,
    mut on_pong: impl FnMut(u64, Duration),
) -> Result<u64> {
    let mut stream: Option<(quinn::SendStream, quinn::RecvStream)> = None;
    let mut answered = 0;
    for seq in 0..count {
        if seq > 0 {
            tokio::time::sleep(interval).await;
        }
        let sent = Instant::now();
        let msg = PeerMessage::Ping { seq };
        let exchange = async {
            let (send, recv) = match stream.as_mut() {
                Some(s) => s,
                None => stream.insert(call.open(&msg).await?),
            };
            if seq > 0 {
                write_frame(send, &msg, MAX_FRAME).await.map_err(proto)?;
            }
            match read_frame::<PeerMessage, _>(recv, MAX_FRAME)
                .await
                .map_err(proto)?
            {
                PeerMessage::Pong { seq: s } if s == seq => Ok(()),
                other => Err(Error::Protocol(format!(
                    "expected Pong {seq}, got {other:?}"
                ))),
            }
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(Ok(())) => {
                answered += 1;
                on_pong(seq, sent.elapsed());
            }
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                return Err(Error::Unreachable {
                    name: call.peer.clone(),
                    tried: format!("ping {seq} not answered within {} s", timeout.as_secs_f32()),
                })
            }
        }
    }
    if let Some((mut send, _)) = stream {
        let _ = send.finish();
        let _ = send.stopped().await;
    }
    Ok(answered)
}

/// SHA-256 and size of a file.
pub async fn hash_file(path: &Path) -> Result<([u8; 32], u64)> {
    let mut file = tokio::fs::File::open(path)
        .await
        .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; CHUNK];
    let mut size = 0u64;
    loop {
        let n = file
            .read(&mut buf)
            .await
            .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
        size += n as u64;
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    Ok((out, size))
}

/// Sends the file at `path`; `progress(bytes_so_far)` after each chunk.
/// Returns the receiver's word on where it stored it.
pub async fn send_file(
    call: &crate::Call,
    path: &Path,
    mut progress: impl FnMut(u64),
) -> Result<String> {
    let (sha256, size) = hash_file(path).await?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "file".into());
    let (mut send, mut recv) = call
        .open(&PeerMessage::SendFile { name, size, sha256 })
        .await?;
    let mut file = tokio::fs::File::open(path)
        .await
        .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
    let mut buf = vec![0u8; CHUNK];
    let mut sent = 0u64;
    while sent < size {
        let n = file
            .read(&mut buf)
            .await
            .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        if n == 0 {
            return Err(Error::io(
                format!("{} shrank while sending", path.display()),
                std::io::ErrorKind::UnexpectedEof.into(),
            ));
        }
        let n = n.min((size - sent) as usize);
        send.write_all(&buf[..n]).await.map_err(proto)?;
        sent += n as u64;
        progress(sent);
    }
    send.finish().map_err(proto)?;
    match read_frame::<PeerMessage, _>(&mut recv, MAX_FRAME)
        .await
        .map_err(proto)?
    {
        PeerMessage::SendResult { ok: true, message } => Ok(message),
        PeerMessage::SendResult { ok: false, message } => Err(Error::Server {
            kind: common::ErrorKind::Rejected,
            message,
        }),
        other => Err(Error::Protocol(format!(
            "expected SendResult, got {other:?}"
        ))),
    }
}

/// A file name we accept from a sender: one plain path component, printable
/// (no control characters, no bidi controls that would make
/// `invoice\u{202e}fdp.exe` show as `invoiceexe.pdf`), not hidden, at most
/// 255 bytes. It is still only used inside the receive dir.
pub fn safe_file_name(name: &str) -> Option<&str> {
    let ok = !name.is_empty()
        && name.len() <= 255
        && !name.starts_with('.')
        && !name.contains(['/', '\\', '\0'])
        && !name.chars().any(common::text::is_unsafe_for_terminal)
        && Path::new(name).components().count() == 1;
    ok.then_some(name)
}

/// Receives one file into `dir`: written to a temp file, hashed, renamed into
/// place only if the hash matches. Never overwrites an existing file.
/// Answers the sender with `SendResult` (written within
/// [`crate::Timing::write_timeout`]), and returns the stored path.
pub async fn receive_file(
    header: PeerMessage,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    dir: &Path,
    max_size: u64,
) -> Result<(PathBuf, u64)> {
    receive_file_within(header, send, recv, dir, max_size, write_timeout()).await
}

async fn receive_file_within(
    header: PeerMessage,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    dir: &Path,
    max_size: u64,
    timeout: Duration,
) -> Result<(PathBuf, u64)> {
    let result = receive_into(header, &mut recv, dir, max_size).await;
    let reply = match &result {
        Ok((path, _)) => PeerMessage::SendResult {
            ok: true,
            message: format!("stored as {}", path.display()),
        },
        Err(e) => PeerMessage::SendResult {
            ok: false,
            message: e.to_string(),
        },
    };
    if write_answer(&mut send, &reply, timeout).await.is_ok() {
        let _ = send.finish();
        let _ = tokio::time::timeout(timeout, send.stopped()).await;
    }
    result
}

async fn receive_into(
    header: PeerMessage,
    recv: &mut quinn::RecvStream,
    dir: &Path,
    max_size: u64,
) -> Result<(PathBuf, u64)> {
    let PeerMessage::SendFile { name, size, sha256 } = header else {
        return Err(Error::Protocol("expected SendFile".into()));
    };
    let refuse = |message: String| Error::Server {
        kind: common::ErrorKind::Rejected,
        message,
    };
    let Some(name) = safe_file_name(&name) else {
        let shown: String = name.chars().take(300).collect();
        let why = if name.chars().any(common::text::is_unsafe_for_terminal) {
            "it contains control or bidi (text direction) characters"
        } else {
            "it must be a plain file name (no folders, not hidden, at most 255 bytes)"
        };
        return Err(refuse(format!(
            "refused file name \"{}\": {why}",
            common::escape_for_terminal(&shown)
        )));
    };
    if size > max_size {
        let _ = recv.stop(0u32.into());
        return Err(refuse(format!(
            "file of {size} bytes is over the receiver's limit of {max_size}"
        )));
    }
    let tmp = dir.join(format!(".partial-{:016x}", rand::random::<u64>()));
    let outcome = write_verified(recv, &tmp, size, sha256).await;
    if let Err(e) = outcome {
        let _ = tokio::fs::remove_file(&tmp).await;
        return Err(e);
    }
    let target = free_path(dir, name);
    // hard_link + remove: fails instead of overwriting if the name was taken meanwhile.
    let linked = tokio::fs::hard_link(&tmp, &target).await;
    let _ = tokio::fs::remove_file(&tmp).await;
    linked.map_err(|e| Error::io(format!("storing {}", target.display()), e))?;
    Ok((target, size))
}

async fn write_verified(
    recv: &mut quinn::RecvStream,
    tmp: &Path,
    size: u64,
    sha256: [u8; 32],
) -> Result<()> {
    let mut file = tokio::fs::File::create(tmp)
        .await
        .map_err(|e| Error::io(format!("creating {}", tmp.display()), e))?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut got = 0u64;
    while let Some(chunk) = recv.read_chunk(CHUNK, true).await.map_err(proto)? {
        got += chunk.bytes.len() as u64;
        if got > size {
            return Err(Error::Protocol(format!(
                "sender sent more than the announced {size} bytes"
            )));
        }
        ctx.update(&chunk.bytes);
        file.write_all(&chunk.bytes)
            .await
            .map_err(|e| Error::io("writing the file", e))?;
    }
    if got != size {
        return Err(Error::Protocol(format!(
            "transfer ended after {got} of {size} bytes; nothing stored"
        )));
    }
    if ctx.finish().as_ref() != sha256 {
        return Err(Error::Protocol(
            "SHA-256 mismatch: the file was altered in transit; nothing stored".into(),
        ));
    }
    file.sync_all()
        .await
        .map_err(|e| Error::io("syncing the file", e))?;
    Ok(())
}

fn free_path(dir: &Path, name: &str) -> PathBuf {
    let first = dir.join(name);
    if !first.exists() {
        return first;
    }
    (1..10_000)
        .map(|i| dir.join(format!("{name}.{i}")))
        .find(|p| !p.exists())
        .unwrap_or(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_names_refused() {
        for bad in [
            "",
            "..",
            ".",
            "../x",
            "/etc/passwd",
            "a/b",
            "a\\b",
            ".hidden",
            "x\0y",
            "a\nb",
            &"x".repeat(256),
            "invoice\u{202e}fdp.exe",
            "a\u{2066}b",
            "a\u{200f}b",
            "a\u{61c}b",
            "a\u{1b}[31mb",
            "a\u{85}b",
        ] {
            assert!(safe_file_name(bad).is_none(), "{bad:?}");
        }
        for good in ["report.pdf", "a b.txt", "ünïcode.bin", "x..y"] {
            assert_eq!(safe_file_name(good), Some(good));
        }
    }
}

#[cfg(test)]
#[path = "app_flow_tests.rs"]
mod flow_tests;
