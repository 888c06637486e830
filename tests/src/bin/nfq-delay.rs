//! A one-way link delay for the NAT lab, where the kernel has no `tc netem`.
//!
//! `nfq-delay --queue N --delay-ms D [--loss-percent P]` binds NFQUEUE queue
//! N (in the network namespace it runs in) and gives each queued packet its
//! verdict D ms after it arrived, in arrival order; with a loss rate, that
//! share is dropped instead. The lab sends a link's packets to it with
//! `iptables -t mangle -A POSTROUTING -o IFACE -j NFQUEUE --queue-num N
//! --queue-bypass` (bypass: when no delayer is bound, packets pass).
//!
//! Prints `ready` on stdout once bound. Stops on SIGTERM/SIGKILL (the queue
//! unbinds when the socket closes) or after `--max-seconds` (default 3600).

use std::collections::VecDeque;
use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

struct Args {
    queue: u16,
    delay: Duration,
    loss: f64,
    max: Duration,
}

fn parse() -> Result<Args> {
    let mut args = Args {
        queue: 0,
        delay: Duration::from_millis(20),
        loss: 0.0,
        max: Duration::from_secs(3600),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--queue" => args.queue = value.parse()?,
            "--delay-ms" => args.delay = Duration::from_secs_f64(value.parse::<f64>()? / 1e3),
            "--loss-percent" => args.loss = value.parse::<f64>()? / 100.0,
            "--max-seconds" => args.max = Duration::from_secs_f64(value.parse()?),
            _ => bail!("unknown flag {flag}; usage: nfq-delay --queue N --delay-ms D [--loss-percent P] [--max-seconds S]"),
        }
    }
    Ok(args)
}

fn main() -> Result<()> {
    let args = parse()?;
    let mut queue = nfq::Queue::open().context("open NFQUEUE socket (root?)")?;
    queue
        .bind(args.queue)
        .with_context(|| format!("bind queue {}", args.queue))?;
    // Metadata only: verdicts never rewrite packets.
    queue.set_copy_range(args.queue, 0)?;
    queue.set_queue_max_len(args.queue, 20_000)?;
    // Overflow passes packets undelayed rather than dropping them silently.
    queue.set_fail_open(args.queue, true)?;
    queue.set_nonblocking(true);
    println!("ready");
    std::io::stdout().flush()?;

    let end = Instant::now() + args.max;
    let mut held: VecDeque<(Instant, nfq::Message)> = VecDeque::new();
    let mut rng_state = 0x9e37_79b9_7f4a_7c15u64 ^ u64::from(std::process::id());
    while Instant::now() < end {
        // Take everything waiting in the socket.
        loop {
            match queue.recv() {
                Ok(msg) => held.push_back((Instant::now() + args.delay, msg)),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e).context("receiving from the queue"),
            }
        }
        // Release what is due, in order.
        let now = Instant::now();
        while held.front().is_some_and(|(due, _)| *due <= now) {
            let Some((_, mut msg)) = held.pop_front() else {
                break;
            };
            // xorshift: a cheap, good-enough coin for loss.
            rng_state ^= rng_state << 13;
            rng_state ^= rng_state >> 7;
            rng_state ^= rng_state << 17;
            let coin = (rng_state >> 11) as f64 / (1u64 << 53) as f64;
            msg.set_verdict(if coin < args.loss {
                nfq::Verdict::Drop
            } else {
                nfq::Verdict::Accept
            });
            queue.verdict(msg).context("verdict")?;
        }
        // Sleep a little: until the next release, at most 500 µs (the socket
        // has no fd to poll through this crate; 0.5 ms jitter on 20 ms is fine).
        let nap = held
            .front()
            .map(|(due, _)| due.saturating_duration_since(Instant::now()))
            .unwrap_or(Duration::from_micros(500))
            .min(Duration::from_micros(500));
        std::thread::sleep(nap);
    }
    Ok(())
}
