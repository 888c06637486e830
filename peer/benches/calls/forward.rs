//! TCP forwarded through the real binaries: `peer forward` →
//! `peer listen --forward-to` in front of a TCP sink of this process,
//! against the same `rendezvous` as the CLI pipe. One stream alone (its
//! rate against the CLI pipe's), then 16 at once on the one call, each
//! with the bulk size (each stream's rate against their mean). A stream's rate counts from the
//! moment its client starts writing to the sink's end of file.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::cli::{Proc, RUN_LIMIT, START_LIMIT};
use crate::Settings;

/// Streams at once in the sharing run.
pub const STREAMS: usize = 16;

/// What the forwarding runs measured, bytes per second.
pub struct Forwarded {
    /// One forwarded stream alone (best of the runs).
    pub one: f64,
    /// Each of [`STREAMS`] streams at once.
    pub each: Vec<f64>,
}

/// Runs both measurements; `peer(name, args)` is a `peer` command as the
/// CLI pipe's runs use.
pub fn measure(
    settings: Settings,
    peer: &dyn Fn(&str, &[&str]) -> Result<Command>,
) -> Result<Forwarded> {
    let sink = Sink::start()?;
    let target = sink.addr.to_string();
    let mut listener = Proc::spawn(
        "peer listen --forward-to",
        peer(
            "carol",
            &["listen", "--forward-to", &target, "--accept-any"],
        )?
        .stdin(Stdio::null()),
    )?;
    listener.wait("registered", START_LIMIT)?;
    let mut forward = Proc::spawn(
        "peer forward",
        peer("dave", &["forward", "127.0.0.1:0", "carol"])?.stdin(Stdio::null()),
    )?;
    let (_, ev) = forward.wait("forwarding", START_LIMIT)?;
    let addr: SocketAddr = ev["local_addr"]
        .as_str()
        .ok_or_else(|| anyhow!("forwarding event without local_addr: {ev}"))?
        .parse()?;
    forward.wait("connected", START_LIMIT)?;
    let mut one = 0f64;
    for _ in 0..settings.runs {
        one = one.max(push(&sink, addr, &[settings.bulk])?[0]);
    }
    let each = push(&sink, addr, &[settings.bulk; STREAMS])?;
    forward.stop();
    listener.stop();
    Ok(Forwarded { one, each })
}

/// Sends `sizes[i]` bytes on stream `i`, all at once; returns each
/// stream's rate (in the order they finished).
fn push(sink: &Sink, addr: SocketAddr, sizes: &[u64]) -> Result<Vec<f64>> {
    let start = Instant::now();
    let clients: Vec<_> = sizes
        .iter()
        .map(|&size| std::thread::spawn(move || send(addr, size)))
        .collect();
    let mut rates = Vec::new();
    let mut got = Vec::new();
    for _ in sizes {
        let (bytes, at) = sink
            .done
            .recv_timeout(RUN_LIMIT)
            .context("a forwarded stream did not end in time")?;
        got.push(bytes);
        rates.push(bytes as f64 / (at - start).as_secs_f64());
    }
    for c in clients {
        c.join().map_err(|_| anyhow!("client thread panicked"))??;
    }
    let mut want = sizes.to_vec();
    want.sort_unstable();
    got.sort_unstable();
    if got != want {
        bail!("the sink got {got:?} bytes, not {want:?}");
    }
    Ok(rates)
}

/// One client: `size` bytes of a pattern, then FIN, then waits for the
/// other side's FIN (the stream is done both ways).
fn send(addr: SocketAddr, size: u64) -> Result<()> {
    let mut conn = TcpStream::connect(addr)?;
    conn.set_read_timeout(Some(RUN_LIMIT))?;
    let block: Vec<u8> = (0..256 * 1024).map(|i: u32| (i * 7 % 251) as u8).collect();
    let mut left = size;
    while left > 0 {
        let n = left.min(block.len() as u64) as usize;
        conn.write_all(&block[..n])?;
        left -= n as u64;
    }
    conn.shutdown(Shutdown::Write)?;
    let mut rest = Vec::new();
    conn.read_to_end(&mut rest)?;
    Ok(())
}

/// A TCP sink: each connection is read to its end; `done` gets its byte
/// count and the time of its end of file.
struct Sink {
    addr: SocketAddr,
    done: Receiver<(u64, Instant)>,
}

impl Sink {
    fn start() -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let (tx, done) = mpsc::channel();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let tx = tx.clone();
                std::thread::spawn(move || {
                    let _ = conn.set_read_timeout(Some(Duration::from_secs(180)));
                    let mut buf = vec![0u8; 256 * 1024];
                    let mut total = 0u64;
                    while let Ok(n) = conn.read(&mut buf) {
                        if n == 0 {
                            let _ = tx.send((total, Instant::now()));
                            break;
                        }
                        total += n as u64;
                    }
                });
            }
        });
        Ok(Self { addr, done })
    }
}
