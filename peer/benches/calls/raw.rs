//! Raw quinn: plain endpoints with the same TLS 1.3 + ring configs the peer
//! links use (self-signed certs, pinned fingerprints), one stream one way
//! into a sink. The yardstick for the library and the CLI.
//!
//! Each [`Variant`] has its own server and client endpoint in this process.
//! [`SinkProcess`] runs the server side in a second process (this bench
//! executable started with [`SINK_FLAG`]), to show what splitting the two
//! ends into processes costs by itself.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use common::tls::{self, ClientKeyPolicy};
use common::{Fingerprint, Identity};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};

/// Size of the writes and reads of a bulk transfer.
pub const CHUNK: usize = 1 << 20;
/// Longest a bulk run may take before it counts as failed.
pub const RUN_LIMIT: Duration = Duration::from_secs(120);
/// Runs this executable as a raw sink process (see [`sink_process_main`]).
pub const SINK_FLAG: &str = "--raw-sink-process";
/// UDP socket buffer size of [`Variant::LibraryBuffers`] (the rendezvous
/// server's; `net.core.rmem_max` caps it).
const BIG_BUFFERS: usize = 4 << 20;

/// Transport settings of a raw connection (both ends).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// `quinn::TransportConfig::default()`, default socket buffers.
    Default,
    /// The windows of the peer library's peer links (`peer/src/endpoint.rs`),
    /// default socket buffers: what the library does.
    Library,
    /// The library's windows and 4 MiB UDP socket buffers.
    LibraryBuffers,
}

impl Variant {
    pub const ALL: [Self; 3] = [Self::Default, Self::Library, Self::LibraryBuffers];

    pub fn describe(self) -> &'static str {
        match self {
            Self::Default => "raw quinn, quinn's default transport and socket buffers",
            Self::Library => {
                "raw quinn, the peer library's windows (8 MiB stream, 16 MiB connection and send)"
            }
            Self::LibraryBuffers => "raw quinn, the library's windows + 4 MiB UDP socket buffers",
        }
    }

    fn transport(self) -> Arc<quinn::TransportConfig> {
        let mut t = quinn::TransportConfig::default();
        if self != Self::Default {
            t.stream_receive_window((8u32 << 20).into())
                .receive_window((16u32 << 20).into())
                .send_window(16 << 20);
        }
        Arc::new(t)
    }

    /// A loopback UDP socket with this variant's buffers.
    fn socket(self) -> Result<std::net::UdpSocket> {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0")?;
        if self == Self::LibraryBuffers {
            let s = socket2::SockRef::from(&socket);
            s.set_recv_buffer_size(BIG_BUFFERS)?;
            s.set_send_buffer_size(BIG_BUFFERS)?;
        }
        Ok(socket)
    }

    fn endpoint(self, server: Option<quinn::ServerConfig>) -> Result<quinn::Endpoint> {
        Ok(quinn::Endpoint::new(
            peer::endpoint_config(),
            server,
            self.socket()?,
            Arc::new(quinn::TokioRuntime),
        )?)
    }
}

/// The best rate seen per variant, and in two processes.
#[derive(Debug, Default)]
pub struct Best {
    pub rates: [f64; 3],
    pub two_processes: f64,
}

impl Best {
    pub fn add(&mut self, variant: Variant, rate: f64) {
        let slot = &mut self.rates[variant as usize];
        *slot = slot.max(rate);
    }

    pub fn get(&self, variant: Variant) -> f64 {
        self.rates[variant as usize]
    }

    /// The yardstick: the faster of plain quinn and quinn with the
    /// library's windows (not the bigger buffers, which no side uses yet).
    pub fn yardstick(&self) -> f64 {
        self.get(Variant::Default).max(self.get(Variant::Library))
    }
}

struct Lane {
    variant: Variant,
    client: quinn::Endpoint,
    server: quinn::Endpoint,
}

/// A server (a sink per stream) and a client endpoint per [`Variant`].
pub struct RawPair {
    client_id: Identity,
    server_fp: Fingerprint,
    lanes: Vec<Lane>,
}

impl Drop for RawPair {
    fn drop(&mut self) {
        for lane in &self.lanes {
            lane.server.close(0u32.into(), b"");
            lane.client.close(0u32.into(), b"");
        }
    }
}

fn server_config(id: &Identity, variant: Variant) -> Result<quinn::ServerConfig> {
    let tls = tls::server_config(id, ClientKeyPolicy::AnyKey, b"bench")?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(tls)?));
    config.transport_config(variant.transport());
    Ok(config)
}

impl RawPair {
    pub async fn new() -> Result<Self> {
        let server_id = Identity::generate()?;
        let mut lanes = vec![];
        for variant in Variant::ALL {
            let server = variant.endpoint(Some(server_config(&server_id, variant)?))?;
            tokio::spawn(serve(server.clone()));
            lanes.push(Lane {
                variant,
                client: variant.endpoint(None)?,
                server,
            });
        }
        Ok(Self {
            client_id: Identity::generate()?,
            server_fp: server_id.fingerprint(),
            lanes,
        })
    }

    /// One fresh connection of `variant`, `bytes` one way; bytes per second.
    pub async fn push(&self, variant: Variant, bytes: u64) -> Result<f64> {
        let lane = self
            .lanes
            .iter()
            .find(|l| l.variant == variant)
            .context("no lane for this variant")?;
        let to = lane.server.local_addr()?;
        connect_and_push(
            &lane.client,
            &self.client_id,
            self.server_fp,
            to,
            variant,
            bytes,
        )
        .await
    }
}

async fn connect_and_push(
    client: &quinn::Endpoint,
    id: &Identity,
    server_fp: Fingerprint,
    to: SocketAddr,
    variant: Variant,
    bytes: u64,
) -> Result<f64> {
    let tls = tls::client_config(id, server_fp, b"bench")?;
    let mut config = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls)?));
    config.transport_config(variant.transport());
    let conn = tokio::time::timeout(RUN_LIMIT, client.connect_with(config, to, "bench")?)
        .await
        .context("raw handshake took too long")??;
    let (send, recv) = conn.open_bi().await?;
    let rate = push(send, recv, bytes).await;
    conn.close(0u32.into(), b"");
    rate
}

/// Accepts connections and sinks every stream, while the endpoint lives.
async fn serve(endpoint: quinn::Endpoint) {
    while let Some(incoming) = endpoint.accept().await {
        tokio::spawn(async move {
            let conn = incoming.await.ok()?;
            while let Ok((send, recv)) = conn.accept_bi().await {
                tokio::spawn(sink(send, recv));
            }
            Some(())
        });
    }
}

/// Reads `recv` to its end, then finishes `send` (the sender's "all read").
pub async fn sink(mut send: quinn::SendStream, mut recv: quinn::RecvStream) -> Option<u64> {
    let mut total = 0u64;
    while let Some(chunk) = recv.read_chunk(CHUNK, false).await.ok()? {
        total += chunk.bytes.len() as u64;
    }
    send.finish().ok()?;
    Some(total)
}

/// Writes `bytes` on `send` and waits until the other side has read them
/// all (its sink finishes its half at the end). Returns bytes per second.
pub async fn push(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    bytes: u64,
) -> Result<f64> {
    let buf = vec![0x5au8; CHUNK];
    let start = Instant::now();
    let run = async {
        let mut left = bytes;
        while left > 0 {
            let n = left.min(CHUNK as u64) as usize;
            send.write_all(&buf[..n]).await?;
            left -= n as u64;
        }
        send.finish()?;
        recv.read_to_end(64).await?;
        anyhow::Ok(())
    };
    tokio::time::timeout(RUN_LIMIT, run)
        .await
        .context("bulk run took too long")??;
    Ok(bytes as f64 / start.elapsed().as_secs_f64())
}

/// The sink in a process of its own, with the library's windows.
pub struct SinkProcess {
    child: Child,
    addr: SocketAddr,
    fingerprint: Fingerprint,
    client: quinn::Endpoint,
    client_id: Identity,
}

impl SinkProcess {
    /// Starts this executable with [`SINK_FLAG`] and reads its address.
    pub fn start() -> Result<Self> {
        let mut child = Command::new(std::env::current_exe()?)
            .arg(SINK_FLAG)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting the raw sink process")?;
        let stdout = child.stdout.take().context("stdout not piped")?;
        // One line: "ADDR FINGERPRINT" (read on a thread, so a wait is bounded).
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .context("the raw sink process did not say where it listens")?;
        let mut words = line.split_whitespace();
        let (Some(addr), Some(fp)) = (words.next(), words.next()) else {
            return Err(anyhow!("raw sink process said {line:?}"));
        };
        Ok(Self {
            child,
            addr: addr.parse()?,
            fingerprint: fp.parse()?,
            client: Variant::Library.endpoint(None)?,
            client_id: Identity::generate()?,
        })
    }

    pub async fn push(&self, bytes: u64) -> Result<f64> {
        let (client, id) = (&self.client, &self.client_id);
        connect_and_push(
            client,
            id,
            self.fingerprint,
            self.addr,
            Variant::Library,
            bytes,
        )
        .await
    }
}

impl Drop for SinkProcess {
    fn drop(&mut self) {
        // Closing its stdin ends it; kill it if it lingers.
        drop(self.child.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The raw sink process: a quinn server with the library's windows that
/// prints "ADDR FINGERPRINT" and sinks streams until its stdin closes
/// (or an hour passes).
pub fn sink_process_main() -> Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let id = Identity::generate()?;
        let server = Variant::Library.endpoint(Some(server_config(&id, Variant::Library)?))?;
        println!("{} {}", server.local_addr()?, id.fingerprint());
        tokio::spawn(serve(server.clone()));
        let stdin_closed = tokio::task::spawn_blocking(|| {
            let mut sink = vec![];
            let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
        });
        let _ = tokio::time::timeout(Duration::from_secs(3600), stdin_closed).await;
        server.close(0u32.into(), b"");
        anyhow::Ok(())
    })?;
    runtime.shutdown_timeout(Duration::from_millis(100));
    Ok(())
}
