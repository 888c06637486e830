//! The direct-call benchmark (issue 4), on loopback, in one run:
//!
//! 1. register and lookup latency, and `setup_ms` (the [`peer::Call`]'s
//!    `setup`, as in the `connected` event) over 100 calls: median and p95;
//! 2. bulk throughput of a direct call through the `peer` library (caller
//!    `Peer::call`, callee a `Listener` whose streams go to a sink) as a
//!    ratio to raw quinn between two endpoints of the same process, with the
//!    same TLS 1.3 + ring (goal ≥ 0.9);
//! 3. the same through the real binaries: `peer call NAME < input` to a
//!    `peer listen` whose stdout is `/dev/null`, against a real `rendezvous`
//!    on 127.0.0.1:0, as a ratio to the same raw quinn (goal ≥ 0.9, issue 14);
//! 4. the same direct call and a call forced onto the relay
//!    (`PathMode::Relay`, the in-process server's relay without its rate
//!    limit) between the same two peers: relayed ÷ direct (goal ≥ 0.5), the
//!    server's CPU per GiB relayed (goal ≤ 0.5 core-seconds), the relay's
//!    state per call (goal ≤ 2 KiB);
//! 5. a relayed call whose caller is on the TCP transport (issue 11): ÷
//!    direct (goal ≥ 0.3), ÷ the relay over UDP, and the server's CPU per
//!    GiB for it;
//! 6. TCP forwarded through the binaries (issue 13): one stream
//!    (`peer forward` → `listen --forward-to` → a TCP sink) ÷ the CLI pipe
//!    (goal ≥ 0.8), and 16 streams at once on one call, each stream's rate
//!    within 2× of their mean.
//!
//! Raw quinn is measured twice, with quinn's default transport and with the
//! peer library's windows; the ratios divide by the faster of all raw runs
//! (interleaved with the runs they are compared to, so both see the same
//! load on a shared machine).
//!
//! ```text
//! cargo bench -p peer --bench calls            # 100 calls, 3 × 256 MiB per side
//! cargo bench -p peer --bench calls -- --quick # 20 calls, 1 × 64 MiB (or BENCH_QUICK=1)
//! cargo bench -p peer --bench calls -- --forward-only [--quick]  # the CLI pipe and forwarding alone
//! BENCH_FORWARD_ONE=1 cargo bench -p peer --bench calls -- --forward-only  # not the 16 streams (to profile one)
//! ```
//!
//! The CLI part builds the binaries with `cargo build --release -p
//! rendezvous -p peer` first (set `BENCH_NO_BUILD=1` to use what is in
//! `target/release` as it is). Prints a markdown table. Not a test: nothing
//! here fails on a slow machine; it fails only when something does not work.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    missing_docs,
    unreachable_pub
)]

#[path = "calls/cli.rs"]
mod cli;
#[path = "calls/forward.rs"]
mod forward;
#[path = "calls/inproc.rs"]
mod inproc;
#[path = "calls/raw.rs"]
mod raw;
#[path = "calls/relay.rs"]
mod relay;
#[path = "calls/report.rs"]
mod report;

use anyhow::Result;
use raw::Variant;
use report::{mib_s, Row};

/// How much to measure.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Calls for setup_ms, lookups for their latency.
    pub calls: usize,
    /// Fresh registrations timed.
    pub registrations: usize,
    /// Bytes per bulk run.
    pub bulk: u64,
    /// Bulk runs per contender (the best counts).
    pub runs: usize,
}

impl Settings {
    fn from_env() -> (Self, bool) {
        let quick = std::env::args().any(|a| a == "--quick")
            || std::env::var_os("BENCH_QUICK").is_some_and(|v| !v.is_empty() && v != "0");
        let settings = if quick {
            Self {
                calls: 20,
                registrations: 10,
                bulk: 64 * report::MIB,
                runs: 1,
            }
        } else {
            Self {
                calls: 100,
                registrations: 30,
                bulk: 256 * report::MIB,
                runs: 3,
            }
        };
        (settings, quick)
    }
}

fn main() -> Result<()> {
    if std::env::args().any(|a| a == raw::SINK_FLAG) {
        return raw::sink_process_main();
    }
    if std::env::args().any(|a| a == relay::STATE_FLAG) {
        return relay::state_process_main();
    }
    // `RUST_LOG=peer=debug` and the like, to see why a call fails.
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .try_init();
    }
    let (settings, quick) = Settings::from_env();
    eprintln!(
        "calls bench: {} mode, {} calls, {} × {} MiB per contender",
        if quick { "quick" } else { "full" },
        settings.calls,
        settings.runs,
        settings.bulk / report::MIB
    );
    if std::env::args().any(|a| a == "--forward-only") {
        return forward_only(settings);
    }
    let runtime = tokio::runtime::Runtime::new()?;
    // Peers and endpoints dropped outside `block_on` still find the runtime.
    let _entered = runtime.enter();
    let raw = runtime.block_on(raw::RawPair::new())?;
    let sink_process = raw::SinkProcess::start()?;
    let mut best = raw::Best::default();

    let world = runtime.block_on(inproc::World::start())?;
    let mut rows = runtime.block_on(world.latencies(settings))?;
    let lib = runtime.block_on(world.throughput(settings, &raw, &sink_process, &mut best))?;
    drop(world);
    // The CLI runs in processes of its own; this thread waits on them, and
    // measures raw quinn again before each run.
    let cli = cli::throughput(settings, &mut |bytes| {
        best.add(
            Variant::Library,
            runtime.block_on(raw.push(Variant::Library, bytes))?,
        );
        let two = runtime.block_on(sink_process.push(bytes))?;
        best.two_processes = best.two_processes.max(two);
        Ok(())
    });
    drop(sink_process);

    let yardstick = best.yardstick();
    for variant in Variant::ALL {
        rows.push(Row::info(variant.describe(), mib_s(best.get(variant))));
    }
    rows.push(Row::info(
        "raw quinn, library windows, sink in a second process",
        format!(
            "{} = {:.2}× raw quinn",
            mib_s(best.two_processes),
            best.two_processes / yardstick
        ),
    ));
    rows.push(Row::ratio(
        "peer library direct call (Peer::call → Listener sink) ÷ raw quinn",
        lib.direct,
        yardstick,
        0.9,
    ));
    relay_rows(&mut rows, &lib);
    const CLI: &str = "peer CLI (`peer call` stdin → `peer listen` stdout) ÷ raw quinn";
    match cli {
        Ok(rates) => {
            rows.push(Row::ratio(CLI, rates.pipe, yardstick, 0.9));
            rows.push(Row::info(
                "peer CLI ÷ raw quinn with the sink in a second process",
                format!("{:.2}×", rates.pipe / best.two_processes),
            ));
            forward_rows(&mut rows, rates.pipe, &rates.forwarded);
        }
        Err(e) => rows.push(Row::failed(CLI, format!("not measured: {e:#}"), "≥ 0.9")),
    }
    report::print_table(&rows, settings);
    Ok(())
}

/// `--forward-only`: the CLI pipe and forwarded TCP, nothing else (to
/// work on forwarding without the rest's ~10 minutes).
fn forward_only(settings: Settings) -> Result<()> {
    let rates = cli::throughput(settings, &mut |_| Ok(()))?;
    let mut rows = vec![Row::info(
        "peer CLI (`peer call` stdin → `peer listen` stdout)",
        mib_s(rates.pipe),
    )];
    forward_rows(&mut rows, rates.pipe, &rates.forwarded);
    report::print_table(&rows, settings);
    Ok(())
}

/// Forwarded TCP (`peer forward` → `listen --forward-to`): one stream
/// against the CLI pipe, and how evenly 16 at once share one call.
fn forward_rows(rows: &mut Vec<Row>, pipe: f64, forwarded: &Result<forward::Forwarded>) {
    const ONE: &str = "one forwarded TCP stream (`peer forward` → `listen --forward-to` → TCP sink) ÷ peer CLI pipe";
    let f = match forwarded {
        Ok(f) => f,
        Err(e) => {
            rows.push(Row::failed(ONE, format!("not measured: {e:#}"), "≥ 0.8"));
            return;
        }
    };
    rows.push(Row::ratio(ONE, f.one, pipe, 0.8));
    if f.each.is_empty() {
        return; // BENCH_FORWARD_ONE
    }
    let mean = f.each.iter().sum::<f64>() / f.each.len() as f64;
    let (lo, hi) = f
        .each
        .iter()
        .fold((f64::MAX, 0f64), |(lo, hi), r| (lo.min(*r), hi.max(*r)));
    // Equal sizes, one start: all bytes over the time to the last end.
    rows.push(Row::info(
        format!(
            "{} forwarded streams at once on one call: mean per stream; together (all bytes ÷ time to the last end)",
            forward::STREAMS
        ),
        format!("{}; {}", mib_s(mean), mib_s(lo * f.each.len() as f64)),
    ));
    let mut sorted = f.each.clone();
    sorted.sort_by(f64::total_cmp);
    let each: Vec<String> = sorted
        .iter()
        .map(|r| format!("{:.0}", r / report::MIB as f64))
        .collect();
    rows.push(Row::info(
        "each forwarded stream's rate, slowest first, MiB/s",
        each.join(", "),
    ));
    // Each within 2× of the mean, both ways: the worse of max ÷ mean and mean ÷ min.
    rows.push(Row::at_most(
        format!(
            "{} streams at once: slowest {:.2}× / fastest {:.2}× the mean; worst ratio either way",
            forward::STREAMS,
            lo / mean,
            hi / mean
        ),
        (hi / mean).max(mean / lo),
        2.0,
        "×",
    ));
}

/// The TCP transport's rows: a relayed call whose caller's link (and relay
/// traffic) runs over the TLS/WebSocket tunnel, against direct and
/// against the relay over UDP; the server's CPU per GiB for it.
fn tcp_rows(rows: &mut Vec<Row>, t: &inproc::Throughput) {
    rows.push(Row::ratio(
        "relayed call, caller on the TCP transport (TLS + WebSocket to the server) ÷ direct call",
        t.over_tcp,
        t.direct,
        0.3,
    ));
    rows.push(Row::info(
        "relayed call, caller on TCP ÷ relayed call on UDP",
        format!("{} = {:.2}×", mib_s(t.over_tcp), t.over_tcp / t.relayed),
    ));
    let gib = t.relayed_bytes as f64 / (1u64 << 30) as f64;
    rows.push(Row::info(
        "relay CPU with the caller on TCP (TLS, WebSocket, the relay), core-seconds per GiB",
        format!("{:.2}", t.tcp_cpu.as_secs_f64() / gib),
    ));
}

/// The relay's rows: relayed throughput against direct between the same
/// two peers, the server's CPU per GiB relayed, its state per call.
fn relay_rows(rows: &mut Vec<Row>, t: &inproc::Throughput) {
    rows.push(Row::ratio(
        "peer library relayed call (`PathMode::Relay`, the relay's rate limit off) ÷ direct call, same peers",
        t.relayed,
        t.direct,
        0.5,
    ));
    let gib = t.relayed_bytes as f64 / (1u64 << 30) as f64;
    let per_gib = t.relay_cpu.as_secs_f64() / gib;
    rows.push(Row::at_most(
        format!(
            "relay CPU: the in-process server's threads (per-thread schedstat) over {:.2} GiB relayed one way, core-seconds per GiB",
            gib
        ),
        per_gib,
        0.5,
        "",
    ));
    tcp_rows(rows, t);
    rows.push(Row::at_most(
        "relay state per call: `rendezvous::relay::CALL_ENTRY_SIZE`, bytes",
        rendezvous::relay::CALL_ENTRY_SIZE as f64,
        2048.0,
        " B",
    ));
    const RSS: &str = "relay table RSS growth per call (10,000 allocations in a fresh process)";
    match relay::state_rss_growth() {
        Ok(bytes) => rows.push(Row::at_most(
            RSS,
            bytes as f64 / f64::from(relay::ALLOCATIONS),
            2048.0,
            " B",
        )),
        Err(e) => rows.push(Row::failed(RSS, format!("not measured: {e:#}"), "≤ 2048")),
    }
}
