//! A private PostgreSQL for a test (or a bench): `initdb` into a fresh temp
//! dir, `postgres` on a free loopback port with its socket in that dir,
//! torn down (killed, dir removed) on drop. [`PgServer::stop`] and
//! [`PgServer::start_again`] make an outage on the same data and port.
//!
//! The binaries come from Debian's `postgresql` package
//! (`/usr/lib/postgresql/VERSION/bin`, or `$PG_BIN`). When they are
//! missing, [`PgServer::start`] returns `None` after printing why, unless
//! `CI` is set: then it panics, so CI cannot pass by skipping. PostgreSQL
//! refuses to run as root: as root, the dir is given to the `postgres`
//! user and the programs run under its uid.
//!
//! Only std and tempfile: `rendezvous/benches/store.rs` includes this file.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::net::TcpListener;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Longest wait for the server to accept connections, or to exit.
const READY: Duration = Duration::from_secs(30);

/// A running private PostgreSQL.
pub struct PgServer {
    bin: PathBuf,
    data: PathBuf,
    sock: PathBuf,
    port: u16,
    /// The uid/gid it runs as (the `postgres` user when we are root).
    user: Option<(u32, u32)>,
    child: Option<Child>,
    /// Removed last (after the server is gone).
    _dir: tempfile::TempDir,
}

/// Says why there is no PostgreSQL: a panic under CI, else a printed skip.
fn missing(reason: &str) -> Option<PgServer> {
    if std::env::var_os("CI").is_some() {
        panic!("no PostgreSQL for the tests: {reason} (CI is set: install the Debian package postgresql, as .ci/run does)");
    }
    eprintln!("skipping: no PostgreSQL: {reason} (install the Debian package postgresql)");
    None
}

/// The folder holding `initdb` and `postgres`: `$PG_BIN`, else the newest
/// `/usr/lib/postgresql/*/bin`.
fn bin_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("PG_BIN") {
        return Some(PathBuf::from(dir));
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| {
            let e = e.ok()?;
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin)
}

/// The `postgres` user's uid and gid, from /etc/passwd.
fn postgres_user() -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    let line = passwd.lines().find(|l| l.starts_with("postgres:"))?;
    let mut fields = line.split(':').skip(2);
    Some((fields.next()?.parse().ok()?, fields.next()?.parse().ok()?))
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().expect("addr").port()
}

impl PgServer {
    /// A fresh database server, ready for connections; `None` (outside CI)
    /// when PostgreSQL is not installed.
    pub fn start() -> Option<Self> {
        let Some(bin) = bin_dir() else {
            return missing("no /usr/lib/postgresql/*/bin/initdb and no $PG_BIN");
        };
        let root = std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
        let user = match (root, postgres_user()) {
            (false, _) => None,
            (true, Some(user)) => Some(user),
            (true, None) => return missing("running as root and there is no postgres user"),
        };
        let dir = tempfile::Builder::new()
            .prefix("rdv-pg")
            .tempdir()
            .expect("tempdir");
        let data = dir.path().join("data");
        let sock = dir.path().join("sock");
        std::fs::create_dir(&sock).expect("socket dir");
        if let Some((uid, gid)) = user {
            for path in [dir.path(), &sock] {
                std::os::unix::fs::chown(path, Some(uid), Some(gid)).expect("chown to postgres");
            }
        }
        let mut server = Self {
            bin,
            data,
            sock,
            port: free_port(),
            user,
            child: None,
            _dir: dir,
        };
        let out = server
            .command("initdb")
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C"])
            .arg("-D")
            .arg(&server.data)
            .stdout(Stdio::null())
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        server.start_again();
        Some(server)
    }

    /// One of the PostgreSQL programs, as the user it runs as.
    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(self.bin.join(program));
        command
            .current_dir(self._dir.path())
            .env("LC_ALL", "C")
            .stdin(Stdio::null());
        if let Some((uid, gid)) = self.user {
            command.uid(uid).gid(gid);
        }
        command
    }

    /// `postgres://` URL of the `postgres` database (no TLS: loopback).
    pub fn url(&self) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/postgres?sslmode=disable",
            self.port
        )
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Starts the server on the same data dir and port (after [`stop`]),
    /// and waits until it accepts connections.
    ///
    /// [`stop`]: PgServer::stop
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "already running");
        let child = self
            .command("postgres")
            .arg("-D")
            .arg(&self.data)
            .arg("-k")
            .arg(&self.sock)
            .args(["-c", "listen_addresses=127.0.0.1", "-p"])
            .arg(self.port.to_string())
            .args(["-c", "max_connections=200", "-c", "shared_buffers=32MB"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start postgres");
        self.child = Some(child);
        self.wait_ready();
    }

    /// Polls `pg_isready` until the server accepts connections.
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY;
        loop {
            let ready = self
                .command("pg_isready")
                .args(["-q", "-h", "127.0.0.1", "-p"])
                .arg(self.port.to_string())
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                return;
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("postgres exited before it was ready: {status}");
                }
            }
            assert!(
                Instant::now() < deadline,
                "postgres not ready within {READY:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Fast shutdown (SIGINT: clients are disconnected, the data is
    /// flushed); waits for the server to exit.
    pub fn stop(&mut self) {
        if let Some(child) = self.child.take() {
            assert!(shutdown(child), "postgres did not stop within {READY:?}");
        }
    }

    /// The data dir (for a test that looks at it).
    pub fn data_dir(&self) -> &Path {
        &self.data
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            shutdown(child);
        }
    }
}

/// A fast shutdown (SIGINT: clients disconnected, data flushed, backends
/// ended with the postmaster), SIGKILL past [`READY`]; whether it stopped
/// by itself.
fn shutdown(mut child: Child) -> bool {
    let _ = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + READY;
    while child.try_wait().ok().flatten().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}
