//! The real binaries as an operator runs them: `rendezvous` and `peer`
//! started as child processes (optionally inside a network namespace),
//! followed through their `--json` events on stderr.
//!
//! [`bin`] builds the binaries once per test process with the same profile
//! as the test itself. A [`Proc`] collects every stderr line in a background
//! thread; [`Proc::wait_event`] waits for a matching event with a deadline
//! and, when it fails, says what the process printed. Dropping a [`Proc`]
//! kills it, so a failing test leaves no process behind.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Path of a workspace binary (`"rendezvous"`, `"peer"`, `"nfq-delay"`), built on first
/// use with the profile the tests were built with.
pub fn bin(name: &str) -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    let dir = BUILT.get_or_init(|| {
        // A test executable lives in <target>/<profile>/deps/, a binary of
        // this crate (the lab bench) in <target>/<profile>/.
        let exe = std::env::current_exe().expect("current exe");
        let parent = exe.parent().expect("executable in a directory");
        let profile_dir = if parent.file_name().is_some_and(|d| d == "deps") {
            parent.parent().expect("<target>/<profile>/deps")
        } else {
            parent
        }
        .to_owned();
        let release = profile_dir.file_name().is_some_and(|p| p == "release");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut build = Command::new(cargo);
        // The tests crate's own binaries (the lab's link delayer) too.
        build.args([
            "build",
            "-q",
            "-p",
            "rendezvous",
            "-p",
            "peer",
            "-p",
            "tests",
            "--bins",
        ]);
        if release {
            build.arg("--release");
        }
        // Cargo gives this process its package's variables (CARGO_MANIFEST_DIR,
        // CARGO_PKG_*, ...). Build scripts that track them (ring's does) would
        // see them change and rebuild the whole stack here, and again at the
        // next `cargo test`: build as a plain shell would.
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy();
            let per_package = [
                "CARGO_MANIFEST_",
                "CARGO_PKG_",
                "CARGO_CRATE_",
                "CARGO_BIN_",
            ]
            .iter()
            .any(|p| key.starts_with(p))
                || ["CARGO_PRIMARY_PACKAGE", "CARGO_TARGET_TMPDIR", "OUT_DIR"].contains(&&*key);
            if per_package {
                build.env_remove(&*key);
            }
        }
        let status = build
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("run cargo build");
        assert!(status.success(), "cargo build of the binaries failed");
        profile_dir
    });
    let path = dir.join(name);
    assert!(path.exists(), "{} was not built", path.display());
    path
}

/// A `Command` for `program`, run inside network namespace `netns` when given.
pub fn command(netns: Option<&str>, program: &Path) -> Command {
    match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(program);
            c
        }
        None => Command::new(program),
    }
}

/// A running child process whose stderr is read line by line.
pub struct Proc {
    pub name: String,
    child: Child,
    events: Receiver<Value>,
    lines: Arc<Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Proc {
    /// Starts `cmd` with stderr captured; stdin and stdout are as the caller
    /// configured them on `cmd`.
    pub fn spawn(name: &str, mut cmd: Command) -> Self {
        cmd.stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        let stderr = child.stderr.take().expect("stderr piped");
        let (tx, events) = mpsc::channel();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    if v.get("event").is_some() {
                        let _ = tx.send(v);
                    }
                }
                sink.lock().unwrap().push(line);
            }
        });
        Self {
            name: name.to_owned(),
            child,
            events,
            lines,
            reader: Some(reader),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the process wrote to stderr so far.
    pub fn log(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// The next event (in order) for which `pred` holds, skipping others.
    /// Panics with the process's log when none comes within `timeout`.
    pub fn wait_event(&mut self, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        match self.try_wait_event(timeout, pred) {
            Ok(v) => v,
            Err(why) => panic!(
                "{}: {why}\n--- {} stderr ---\n{}",
                self.name,
                self.name,
                self.log()
            ),
        }
    }

    /// Like [`Proc::wait_event`] but returns why it failed instead of panicking.
    pub fn try_wait_event(
        &mut self,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Result<Value, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(v) if pred(&v) => return Ok(v),
                Ok(_) => continue,
                Err(RecvTimeoutError::Timeout) => {
                    return Err(format!("no matching event within {timeout:?}"))
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err("stderr closed (process exited) before the event".into())
                }
            }
        }
    }

    /// Waits for the next event named `event` (e.g. `"registered"`).
    pub fn wait_for(&mut self, timeout: Duration, event: &str) -> Value {
        self.wait_event(timeout, |v| v["event"] == event)
    }

    /// Waits for an `error` event of the given kind.
    pub fn wait_error(&mut self, timeout: Duration, kind: &str) -> Value {
        self.wait_event(timeout, |v| v["event"] == "error" && v["kind"] == kind)
    }

    /// All events received so far that were not consumed by a wait.
    pub fn drain_events(&mut self) -> Vec<Value> {
        self.events.try_iter().collect()
    }

    /// The not yet consumed events named `event` (e.g. every `pong` left).
    pub fn drain(&mut self, event: &str) -> Vec<Value> {
        self.events
            .try_iter()
            .filter(|v| v["event"] == event)
            .collect()
    }

    pub fn take_stdin(&mut self) -> ChildStdin {
        self.child.stdin.take().expect("stdin piped")
    }

    pub fn take_stdout(&mut self) -> ChildStdout {
        self.child.stdout.take().expect("stdout piped")
    }

    /// Waits (bounded) for the process to exit; panics with its log if it
    /// does not.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                // Let the reader finish so the log is complete.
                if let Some(r) = self.reader.take() {
                    let _ = r.join();
                }
                return status;
            }
            if Instant::now() >= deadline {
                panic!(
                    "{} did not exit within {timeout:?}\n--- stderr ---\n{}",
                    self.name,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Reads all of stdout to the end (bounded by `timeout`, then panics).
    pub fn read_stdout(&mut self, timeout: Duration) -> Vec<u8> {
        let mut out = self.take_stdout();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = out.read_to_end(&mut buf);
            let _ = tx.send(buf);
        });
        rx.recv_timeout(timeout).unwrap_or_else(|_| {
            panic!(
                "{}: stdout not closed within {timeout:?}\n{}",
                self.name,
                self.log()
            )
        })
    }

    /// SIGKILL, no chance to clean up (a crash or power cut).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM (a clean stop), then waits for the exit.
    pub fn terminate(&mut self, timeout: Duration) -> ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        self.wait_exit(timeout)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A `rendezvous` process and what it announced.
pub struct ServerProc {
    pub proc: Proc,
    pub addr: String,
    pub fingerprint: String,
    pub data_dir: PathBuf,
}

impl ServerProc {
    /// Starts `rendezvous --json` on `listen` with `data_dir`, plus `extra`
    /// flags, and waits for its `listening` event.
    pub fn start(netns: Option<&str>, listen: &str, data_dir: &Path, extra: &[&str]) -> Self {
        let mut cmd = command(netns, &bin("rendezvous"));
        cmd.args(["--json", "--listen", listen, "--data-dir"])
            .arg(data_dir)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        let mut proc = Proc::spawn("rendezvous", cmd);
        let ev = proc.wait_for(Duration::from_secs(20), "listening");
        Self {
            proc,
            addr: ev["addr"].as_str().expect("addr").to_owned(),
            fingerprint: ev["fingerprint"].as_str().expect("fingerprint").to_owned(),
            data_dir: data_dir.to_owned(),
        }
    }
}

/// How to run `peer` as one user: its own config dir (identity,
/// known_peers) and the server it trusts.
#[derive(Clone, Debug)]
pub struct PeerHome {
    pub dir: PathBuf,
    pub server: String,
    pub fingerprint: String,
    pub netns: Option<String>,
    /// Pass `--json` (default true).
    pub json: bool,
}

impl PeerHome {
    pub fn new(dir: PathBuf, server: &ServerProc) -> Self {
        std::fs::create_dir_all(&dir).expect("peer dir");
        Self {
            dir,
            server: server.addr.clone(),
            fingerprint: server.fingerprint.clone(),
            netns: None,
            json: true,
        }
    }

    /// `peer --server .. --server-fingerprint .. [--json] [--name NAME] ARGS`,
    /// stdin/stdout null unless the caller changes them.
    pub fn cmd(&self, name: Option<&str>, args: &[&str]) -> Command {
        let mut cmd = command(self.netns.as_deref(), &bin("peer"));
        cmd.env("XDG_CONFIG_HOME", &self.dir)
            .env_remove("PEER_SERVER")
            .env_remove("PEER_SERVER_FINGERPRINT")
            .env_remove("PEER_NAME")
            .env_remove("PEER_IDENTITY")
            // The machine's proxy settings are not the test's.
            .env_remove("HTTPS_PROXY")
            .env_remove("https_proxy")
            .env_remove("NO_PROXY")
            .env_remove("no_proxy")
            .args(["--server", &self.server])
            .args(["--server-fingerprint", &self.fingerprint]);
        if self.json {
            cmd.arg("--json");
        }
        if let Some(n) = name {
            cmd.args(["--name", n]);
        }
        cmd.args(args).stdin(Stdio::null()).stdout(Stdio::null());
        cmd
    }

    /// Spawns `peer` with [`PeerHome::cmd`].
    /// The config dir `dir/who` of a peer given the nodes `servers` (all
    /// of one cluster: one fingerprint), as `--server A,B,…`.
    pub fn for_nodes(dir: &Path, who: &str, servers: &[&ServerProc]) -> Self {
        let mut home = Self::new(dir.join(who), servers[0]);
        home.server = servers
            .iter()
            .map(|s| s.addr.as_str())
            .collect::<Vec<_>>()
            .join(",");
        home
    }

    pub fn spawn(&self, label: &str, name: Option<&str>, args: &[&str]) -> Proc {
        Proc::spawn(label, self.cmd(name, args))
    }

    /// Runs a one-shot `peer` command to the end (bounded) and returns its
    /// exit status, stdout and events.
    pub fn run(&self, name: Option<&str>, args: &[&str], timeout: Duration) -> Output {
        let mut cmd = self.cmd(name, args);
        cmd.stdout(Stdio::piped());
        let mut p = Proc::spawn(&format!("peer {}", args.join(" ")), cmd);
        let stdout = p.read_stdout(timeout);
        let status = p.wait_exit(timeout);
        Output {
            status,
            stdout,
            events: p.drain_events(),
            log: p.log(),
        }
    }
}

/// What a finished one-shot command left behind.
#[derive(Debug)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub events: Vec<Value>,
    pub log: String,
}

impl Output {
    /// The first event named `event`; panics with the log if there is none.
    pub fn event(&self, event: &str) -> &Value {
        self.events
            .iter()
            .find(|v| v["event"] == event)
            .unwrap_or_else(|| panic!("no {event:?} event in:\n{}", self.log))
    }

    /// The kind of the `error` event, if any.
    pub fn error_kind(&self) -> Option<&str> {
        self.events
            .iter()
            .find(|v| v["event"] == "error")
            .and_then(|v| v["kind"].as_str())
    }
}

/// A server on 127.0.0.1 with its own temp dir, where each user gets a
/// [`PeerHome`] of their own.
pub struct LocalWorld {
    pub dir: tempfile::TempDir,
    pub server: ServerProc,
}

impl LocalWorld {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let server = ServerProc::start(None, "127.0.0.1:0", &dir.path().join("server"), &[]);
        Self { dir, server }
    }

    /// The config dir and server settings of user `who`.
    pub fn home(&self, who: &str) -> PeerHome {
        PeerHome::new(self.dir.path().join(who), &self.server)
    }

    /// `NAME listen ARGS` as user NAME, waited until registered.
    pub fn listen(&self, name: &str, args: &[&str]) -> (PeerHome, Proc) {
        let home = self.home(name);
        let mut all = vec!["listen"];
        all.extend_from_slice(args);
        let mut l = home.spawn(name, Some(name), &all);
        l.wait_for(Duration::from_secs(30), "registered");
        (home, l)
    }

    /// Restarts the server on the same address and data dir, after a
    /// SIGKILL (`kill`) or a clean SIGTERM stop (which must exit 0).
    pub fn restart(&mut self, kill: bool) {
        if kill {
            self.server.proc.kill();
        } else {
            let status = self.server.proc.terminate(Duration::from_secs(20));
            assert!(status.success(), "clean stop exits 0: {status:?}");
        }
        self.start_again();
    }

    /// Starts the server again (same address, data dir) after it was
    /// stopped; the key lives in the data dir, so the fingerprint is the same.
    pub fn start_again(&mut self) {
        let (addr, data) = (self.server.addr.clone(), self.server.data_dir.clone());
        let fp = self.server.fingerprint.clone();
        self.server = ServerProc::start(None, &addr, &data, &[]);
        assert_eq!(self.server.fingerprint, fp, "the key lives in the data dir");
    }
}

impl Default for LocalWorld {
    fn default() -> Self {
        Self::new()
    }
}
