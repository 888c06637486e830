//! The real binaries: a `rendezvous` on 127.0.0.1:0, a `peer listen` whose
//! stdout is `/dev/null` (a sink), and `peer call` with a big file as its
//! stdin. The rate counts from the caller's `connected` event to its
//! `call_ended` (every byte sent and acknowledged by the listener's end).

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

use crate::Settings;

/// Longest a `cargo build` of the binaries may take.
const BUILD_LIMIT: Duration = Duration::from_secs(30 * 60);
/// Longest wait for a process to start, register or connect.
pub const START_LIMIT: Duration = Duration::from_secs(30);
/// Longest one transfer may take.
pub const RUN_LIMIT: Duration = Duration::from_secs(180);

/// What the real binaries measured.
pub struct CliRates {
    /// Best CLI pipe rate, bytes per second.
    pub pipe: f64,
    /// Forwarded TCP against the same server ([`crate::forward`]).
    pub forwarded: Result<crate::forward::Forwarded>,
}

/// Best CLI rate over `settings.runs`; `raw_again(bytes)` measures raw quinn
/// before each run, so the yardstick sees the same load. Then forwarded TCP.
pub fn throughput(
    settings: Settings,
    raw_again: &mut dyn FnMut(u64) -> Result<()>,
) -> Result<CliRates> {
    let dir = tempfile::tempdir()?;
    let bins = Binaries::find()?;
    let input = dir.path().join("input");
    write_input(&input, settings.bulk)?;
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home)?;
    let mut server = Proc::spawn(
        "rendezvous",
        bins.command(&bins.rendezvous, &home)
            .args(["--json", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path().join("server"))
            .args(["--register-rate", "1000/1000", "--call-rate", "1000/1000"])
            .stdin(Stdio::null())
            .stdout(Stdio::null()),
    )?;
    let (_, listening) = server.wait("listening", START_LIMIT)?;
    let field = |k: &str| -> Result<String> {
        listening[k]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("listening event without {k}: {listening}"))
    };
    let peer = |name: &str, args: &[&str]| -> Result<Command> {
        let mut cmd = bins.command(&bins.peer, &home);
        cmd.args(["--json", "--bind", "127.0.0.1:0", "--name", name])
            .args(["--server", &field("addr")?])
            .args(["--server-fingerprint", &field("fingerprint")?])
            .arg("--identity")
            .arg(dir.path().join(format!("{name}.pem")))
            .arg("--known-peers")
            .arg(dir.path().join(format!("{name}.known")))
            .args(args)
            .stdout(Stdio::null());
        Ok(cmd)
    };
    // Forwarding's peers are up all along; its single-stream runs take
    // turns with the pipe's, so both see the same load.
    let mut forwarding = crate::forward::Forwarding::start(&peer);
    let mut one = 0f64;
    let mut best = 0f64;
    for _ in 0..settings.runs {
        raw_again(settings.bulk)?;
        // The default `listen` mode serves one call on its stdio: one per run.
        let mut listener = Proc::spawn(
            "peer listen",
            peer("alice", &["listen"])?.stdin(Stdio::null()),
        )?;
        listener.wait("registered", START_LIMIT)?;
        let mut caller = Proc::spawn(
            "peer call",
            peer("bob", &["call", "alice"])?.stdin(std::fs::File::open(&input)?),
        )?;
        let (connected, _) = caller.wait("connected", START_LIMIT)?;
        let (ended, event) = caller.wait("call_ended", RUN_LIMIT)?;
        if event["bytes_sent"].as_u64() != Some(settings.bulk) {
            bail!(
                "peer call sent {} of {} bytes",
                event["bytes_sent"],
                settings.bulk
            );
        }
        best = best.max(settings.bulk as f64 / (ended - connected).as_secs_f64());
        let status = caller.finish(Duration::from_secs(10))?;
        if !status.success() {
            bail!("peer call exited with {status}:\n{}", caller.log());
        }
        listener.stop();
        if let Ok(f) = &forwarding {
            match f.one(settings.bulk) {
                Ok(rate) => one = one.max(rate),
                Err(e) => forwarding = Err(e),
            }
        }
    }
    let forwarded = forwarding.and_then(|f| {
        // One stream alone, to profile it: no sharing run.
        if std::env::var_os("BENCH_FORWARD_ONE").is_some() {
            f.stop();
            return Ok(crate::forward::Forwarded { one, each: vec![] });
        }
        let each = f.shared(settings.bulk);
        f.stop();
        Ok(crate::forward::Forwarded { one, each: each? })
    });
    server.stop();
    Ok(CliRates {
        pipe: best,
        forwarded,
    })
}

/// The input: `bytes` of a repeating, not all-zero pattern.
fn write_input(path: &Path, bytes: u64) -> Result<()> {
    let block: Vec<u8> = (0..1 << 20).map(|i: u32| (i * 7 % 251) as u8).collect();
    let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut left = bytes;
    while left > 0 {
        let n = left.min(block.len() as u64) as usize;
        file.write_all(&block[..n])?;
        left -= n as u64;
    }
    file.flush()?;
    Ok(())
}

/// The two release binaries.
struct Binaries {
    rendezvous: PathBuf,
    peer: PathBuf,
}

impl Binaries {
    /// Builds them (`cargo build --release -p rendezvous -p peer`) unless
    /// `BENCH_NO_BUILD` is set, then finds them next to this bench's
    /// profile dir (`<target>/release`).
    fn find() -> Result<Self> {
        let exe = std::env::current_exe()?;
        // <target>/release/deps/calls-<hash>
        let dir = exe
            .parent()
            .and_then(Path::parent)
            .context("bench executable outside <target>/<profile>/deps")?
            .to_owned();
        if std::env::var_os("BENCH_NO_BUILD").is_none() {
            build()?;
        }
        let bins = Self {
            rendezvous: dir.join("rendezvous"),
            peer: dir.join("peer"),
        };
        for b in [&bins.rendezvous, &bins.peer] {
            if !b.exists() {
                bail!(
                    "{} is missing: build it with `cargo build --release -p rendezvous -p peer`",
                    b.display()
                );
            }
        }
        eprintln!(
            "calls bench: CLI binaries {} and {}",
            bins.rendezvous.display(),
            bins.peer.display()
        );
        Ok(bins)
    }

    /// `program` with a private HOME and none of the user's `PEER_*` settings.
    fn command(&self, program: &Path, home: &Path) -> Command {
        let mut cmd = Command::new(program);
        cmd.env("HOME", home).env("XDG_CONFIG_HOME", home);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("PEER_")
                || key.to_string_lossy().starts_with("RENDEZVOUS_")
            {
                cmd.env_remove(key);
            }
        }
        cmd
    }
}

/// `cargo build --release -p rendezvous -p peer`, bounded in time.
fn build() -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    eprintln!("calls bench: cargo build --release -p rendezvous -p peer");
    let mut child = Command::new(cargo)
        .args(["build", "--release", "-p", "rendezvous", "-p", "peer"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::null())
        .spawn()
        .context("starting cargo build")?;
    let deadline = Instant::now() + BUILD_LIMIT;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("cargo build took over {BUILD_LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    if !status.success() {
        bail!("cargo build --release -p rendezvous -p peer failed ({status})");
    }
    Ok(())
}

/// A child process whose `--json` stderr is read line by line, each event
/// stamped with the time it was read.
pub struct Proc {
    name: &'static str,
    child: Child,
    events: Receiver<(Instant, Value)>,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Proc {
    pub fn spawn(name: &'static str, cmd: &mut Command) -> Result<Self> {
        let mut child = cmd
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        let stderr = child.stderr.take().context("stderr not piped")?;
        let (tx, events) = mpsc::channel();
        let lines = Arc::new(Mutex::new(vec![]));
        let log = lines.clone();
        // Ends when the process closes its stderr (it exited or was killed).
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let now = Instant::now();
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    let _ = tx.send((now, v));
                }
                log.lock().unwrap_or_else(|p| p.into_inner()).push(line);
            }
        });
        Ok(Self {
            name,
            child,
            events,
            lines,
        })
    }

    fn log(&self) -> String {
        self.lines
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .join("\n")
    }

    /// The next `event` (skipping others); an `error` event or the deadline fails.
    pub fn wait(&mut self, event: &str, limit: Duration) -> Result<(Instant, Value)> {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok((at, v)) if v["event"] == event => return Ok((at, v)),
                Ok((_, v)) if v["event"] == "error" => {
                    bail!("{}: {v}\n{}", self.name, self.log())
                }
                Ok(_) => {}
                Err(_) => bail!(
                    "{}: no {event} event within {limit:?}; its stderr:\n{}",
                    self.name,
                    self.log()
                ),
            }
        }
    }

    /// Waits for the process to exit by itself, killing it after `limit`.
    fn finish(&mut self, limit: Duration) -> Result<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.child.kill()?;
        bail!(
            "{} did not exit within {limit:?}:\n{}",
            self.name,
            self.log()
        )
    }

    /// SIGTERM (a clean stop), then SIGKILL if it lingers.
    pub fn stop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = Command::new("kill")
                .args(["-TERM", &self.child.id().to_string()])
                .status();
            if self.finish(Duration::from_secs(5)).is_err() {
                let _ = self.child.wait();
            }
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
