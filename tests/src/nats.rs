//! A private nats-server for a test: on loopback, on a free port, with a
//! user and password, its own temp dir, killed when dropped.
//!
//! Outside CI a machine without `nats-server` skips the tests that need
//! one (with a printed reason); with `CI` set they fail instead.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running nats-server.
pub struct NatsServer {
    binary: PathBuf,
    port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
    /// The certificate and key files it serves TLS with, if any.
    tls: Option<(PathBuf, PathBuf)>,
}

const USER: &str = "rdv";
const PASS: &str = "bus-secret-for-tests";

fn binary() -> Option<PathBuf> {
    [
        "/usr/sbin/nats-server",
        "/usr/bin/nats-server",
        "/usr/local/bin/nats-server",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
}

impl NatsServer {
    /// Starts one, or (outside CI, without the binary) prints why not and
    /// returns `None`.
    pub fn start() -> Option<Self> {
        let mut server = Self::new()?;
        server.start_again();
        Some(server)
    }

    /// Like [`NatsServer::start`], serving TLS with this certificate and key (PEM).
    pub fn start_tls(cert_pem: &str, key_pem: &str) -> Option<Self> {
        let mut server = Self::new()?;
        let (cert, key) = (
            server.dir.path().join("cert.pem"),
            server.dir.path().join("key.pem"),
        );
        std::fs::write(&cert, cert_pem).expect("write cert");
        std::fs::write(&key, key_pem).expect("write key");
        server.tls = Some((cert, key));
        server.start_again();
        Some(server)
    }

    /// One not started yet: a free port and a temp dir (`None`, said why,
    /// without the binary outside CI).
    fn new() -> Option<Self> {
        let Some(binary) = binary() else {
            let why = "nats-server is not installed (Debian package nats-server)";
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must run the cluster tests: {why}"
            );
            eprintln!("skipped: {why}");
            return None;
        };
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        Some(Self {
            binary,
            port,
            child: None,
            dir: tempfile::tempdir().expect("tempdir"),
            tls: None,
        })
    }

    /// The URL nodes connect with (credentials included).
    pub fn url(&self) -> String {
        format!("nats://{USER}:{PASS}@127.0.0.1:{}", self.port)
    }

    /// Its address, without credentials.
    pub fn addr(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The user and password it takes.
    pub fn credentials(&self) -> (&'static str, &'static str) {
        (USER, PASS)
    }

    /// Stops it (SIGKILL) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port; waits until it takes connections.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "already running");
        let log = std::fs::File::create(self.dir.path().join("nats.log")).expect("log");
        let mut command = Command::new(&self.binary);
        command
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["--user", USER, "--pass", PASS]);
        if let Some((cert, key)) = &self.tls {
            command
                .arg("--tls")
                .arg("--tlscert")
                .arg(cert)
                .arg("--tlskey")
                .arg(key);
        }
        let child = command
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("nats-server starts");
        self.child = Some(child);
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nats-server did not start within 10 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}
