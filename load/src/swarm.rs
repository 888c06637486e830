//! The load peers: lightweight rendezvous clients built from the `common`
//! crate's identity, TLS and framing, each with its own key, name and QUIC
//! connection, many connections sharing a few client endpoints (one per
//! 127.0.1.x source address).
//!
//! A session behaves like `peer listen` on the server link: it registers
//! with presence, accepts every call offer, and when its connection is lost
//! (a stateless reset from a restarted server, or a close) comes back with
//! jittered backoff: the first attempt after 0–1 s (`--reconnect-jitter`;
//! a restart's resets reach each peer at its next keep-alive, already spread
//! over 8 s), or, when the server closed the link, after a wait spread over
//! what the server asked for in its close (a second per 1,500 sessions by
//! default, as `peer listen` honours; `--close-jitter S` overrides it), then
//! a random wait up to a cap that doubles from 2 s to 30 s ("full jitter"),
//! at most 200 failed
//! attempts in a row. (A cap of 3 s, as `peer listen` has, is enough for
//! ten thousand peers; a hundred thousand reconnecting at once with it keep
//! a server busy refusing them.)

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use common::framing::{read_frame, write_frame, MAX_FRAME};
use common::tls::{self, PinnedServerVerifier};
use common::{Fingerprint, Identity, Message};
use quinn::crypto::rustls::QuicClientConfig;
use rand::Rng;

/// Every request and handshake of a load peer gives up after this.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// One load peer.
pub(crate) struct Client {
    /// Its name, `load-<i>`.
    pub(crate) name: String,
    config: quinn::ClientConfig,
    endpoint: quinn::Endpoint,
    /// Its connection while registered.
    pub(crate) conn: Mutex<Option<quinn::Connection>>,
}

impl Client {
    /// Its connection, if registered now.
    pub(crate) fn conn(&self) -> Option<quinn::Connection> {
        self.conn.lock().ok().and_then(|c| c.clone())
    }
}

/// Counters the sessions share.
#[derive(Default)]
pub(crate) struct Shared {
    /// Sessions registered now.
    pub(crate) registered: AtomicUsize,
    /// Registrations completed since the last [`Shared::new_epoch`].
    pub(crate) epoch_registrations: AtomicUsize,
    /// Offers the load peers accepted.
    pub(crate) offers: AtomicUsize,
    /// Longest first wait, in ms, before reconnecting after a lost link
    /// (`--reconnect-jitter`; the wait is uniform in 0..this).
    pub(crate) first_retry_ms: AtomicU64,
    /// The same after the server closed the link (`--close-jitter`): every
    /// peer learns of a shutdown at once, so they spread themselves out;
    /// after a reset they already are (each at its next keep-alive).
    /// [`FOLLOW_SERVER`]: the spread the server asked for in its close.
    pub(crate) close_retry_ms: AtomicU64,
    /// Why connections ended, by reason (`reset`, `timed_out`, `closed`, …).
    pub(crate) endings: Mutex<std::collections::BTreeMap<&'static str, usize>>,
}

impl Shared {
    /// Starts counting registrations (and endings) from zero (a restart).
    pub(crate) fn new_epoch(&self) {
        self.epoch_registrations.store(0, Ordering::SeqCst);
        if let Ok(mut e) = self.endings.lock() {
            e.clear();
        }
    }

    fn ended(&self, why: Option<quinn::ConnectionError>) {
        use quinn::ConnectionError as E;
        let why = match why {
            Some(E::Reset) => "reset",
            Some(E::TimedOut) => "timed_out",
            Some(E::ConnectionClosed(_) | E::ApplicationClosed(_)) => "closed_by_server",
            Some(E::LocallyClosed) | None => "local",
            Some(_) => "other",
        };
        if let Ok(mut e) = self.endings.lock() {
            *e.entry(why).or_default() += 1;
        }
    }
}

/// The transport of a load peer's server link: like `peer`'s (keep-alive
/// 8 s, idle timeout 20 s), trimmed like the server's so that a machine
/// holds both sides of many connections.
fn client_transport() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(Duration::from_secs(8)))
        .max_idle_timeout(Duration::from_secs(20).try_into().ok())
        .max_concurrent_uni_streams(0u32.into())
        .max_concurrent_bidi_streams(64u32.into())
        .stream_receive_window(65_536u32.into())
        .receive_window(262_144u32.into())
        .datagram_receive_buffer_size(None)
        .mtu_discovery_config(None)
        .enable_segmentation_offload(false);
    Arc::new(t)
}

/// `n` clients named `load-0` … with fresh keys (generated on every core),
/// spread round-robin over `endpoints`.
pub(crate) async fn make_clients(
    n: usize,
    server: Fingerprint,
    endpoints: &[quinn::Endpoint],
) -> Result<Vec<Arc<Client>>> {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let provider = tls::provider();
    let transport = client_transport();
    let mut jobs = tokio::task::JoinSet::new();
    for t in 0..threads {
        let (provider, transport) = (provider.clone(), transport.clone());
        jobs.spawn_blocking(move || -> Result<Vec<(usize, quinn::ClientConfig)>> {
            (t..n)
                .step_by(threads)
                .map(|i| {
                    let id = Identity::generate()?;
                    let mut tls = rustls::ClientConfig::builder_with_provider(provider.clone())
                        .with_protocol_versions(&[&rustls::version::TLS13])?
                        .dangerous()
                        .with_custom_certificate_verifier(PinnedServerVerifier::new(server))
                        .with_client_auth_cert(vec![id.cert()], id.private_key())?;
                    tls.alpn_protocols = vec![tls::SERVER_ALPN.to_vec()];
                    tls.resumption = rustls::client::Resumption::disabled();
                    let mut cc =
                        quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls)?));
                    cc.transport_config(transport.clone());
                    Ok((i, cc))
                })
                .collect()
        });
    }
    let mut configs: Vec<Option<quinn::ClientConfig>> = (0..n).map(|_| None).collect();
    while let Some(done) = jobs.join_next().await {
        for (i, cc) in done?? {
            configs[i] = Some(cc);
        }
    }
    configs
        .into_iter()
        .enumerate()
        .map(|(i, cc)| {
            Ok(Arc::new(Client {
                name: format!("load-{i}"),
                config: cc.ok_or_else(|| anyhow!("missing config {i}"))?,
                endpoint: endpoints[i % endpoints.len()].clone(),
                conn: Mutex::new(None),
            }))
        })
        .collect()
}

/// One client endpoint per source address 127.0.1.1 … 127.0.1.`sources`,
/// with 4 MiB socket buffers (bursts of handshakes).
pub(crate) fn endpoints(sources: u8) -> Result<Vec<quinn::Endpoint>> {
    (0..sources)
        .map(|s| {
            let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 1, s + 1));
            let socket = std::net::UdpSocket::bind(SocketAddr::new(ip, 0))?;
            let sock = socket2::SockRef::from(&socket);
            let _ = sock.set_recv_buffer_size(4 << 20);
            let _ = sock.set_send_buffer_size(4 << 20);
            // As a peer's endpoint: the fixed bit is never greased.
            let mut endpoint_config = quinn::EndpointConfig::default();
            endpoint_config.grease_quic_bit(false);
            Ok(quinn::Endpoint::new(
                endpoint_config,
                None,
                socket,
                Arc::new(quinn::TokioRuntime),
            )?)
        })
        .collect()
}

/// One request on its own stream, one answer (bounded by a timeout).
pub(crate) async fn request(conn: &quinn::Connection, msg: &Message) -> Result<Message> {
    tokio::time::timeout(REQUEST_TIMEOUT, async {
        let (mut send, mut recv) = conn.open_bi().await?;
        write_frame(&mut send, msg, MAX_FRAME).await?;
        send.finish()?;
        Ok(read_frame(&mut recv, MAX_FRAME).await?)
    })
    .await
    .map_err(|_| anyhow!("request timed out"))?
}

/// `msgs` as concurrent requests on one connection: all written first (so
/// they share packets), then all answers read. Bounded by a timeout.
pub(crate) async fn requests(conn: &quinn::Connection, msgs: &[Message]) -> Result<Vec<Message>> {
    tokio::time::timeout(REQUEST_TIMEOUT, async {
        let mut pending = Vec::with_capacity(msgs.len());
        for msg in msgs {
            let (mut send, recv) = conn.open_bi().await?;
            write_frame(&mut send, msg, MAX_FRAME).await?;
            send.finish()?;
            pending.push(recv);
        }
        let mut answers = Vec::with_capacity(msgs.len());
        for mut recv in pending {
            answers.push(read_frame(&mut recv, MAX_FRAME).await?);
        }
        Ok(answers)
    })
    .await
    .map_err(|_| anyhow!("requests timed out"))?
}

/// One handshake with the server and an immediate close: how long setting
/// up the server link takes (with a Retry round trip when the server asks).
pub(crate) async fn handshake_time(c: &Client, server: SocketAddr) -> Result<Duration> {
    let start = std::time::Instant::now();
    let conn = connect(c, server).await?;
    let took = start.elapsed();
    conn.close(0u32.into(), b"measured");
    Ok(took)
}

/// A QUIC connection to the server as `c`, handshake done (bounded).
async fn connect(c: &Client, server: SocketAddr) -> Result<quinn::Connection> {
    let connecting = c
        .endpoint
        .connect_with(c.config.clone(), server, tls::SERVER_NAME)?;
    tokio::time::timeout(REQUEST_TIMEOUT, connecting)
        .await
        .map_err(|_| anyhow!("handshake timed out"))?
        .map_err(Into::into)
}

async fn connect_and_register(
    c: &Client,
    server: SocketAddr,
    shared: &Shared,
) -> Result<quinn::Connection> {
    let conn = connect(c, server).await?;
    let register = Message::Register {
        name: c.name.clone(),
        presence: true,
    };
    match request(&conn, &register).await? {
        Message::Registered { .. } => {}
        other => bail!("register {}: {other:?}", c.name),
    }
    *c.conn.lock().map_err(|_| anyhow!("poisoned"))? = Some(conn.clone());
    shared.registered.fetch_add(1, Ordering::SeqCst);
    shared.epoch_registrations.fetch_add(1, Ordering::SeqCst);
    Ok(conn)
}

/// Answers call offers like a `listen` that accepts everyone.
async fn serve_offers(conn: quinn::Connection, shared: Arc<Shared>) {
    while let Ok((mut send, mut recv)) = conn.accept_bi().await {
        let shared = shared.clone();
        tokio::spawn(async move {
            let offer = tokio::time::timeout(
                REQUEST_TIMEOUT,
                read_frame::<Message, _>(&mut recv, MAX_FRAME),
            )
            .await;
            if let Ok(Ok(Message::IncomingCall { .. })) = offer {
                let accept = Message::Accept {
                    candidates: vec![],
                    hide_addresses: false,
                };
                if write_frame(&mut send, &accept, MAX_FRAME).await.is_ok() {
                    shared.offers.fetch_add(1, Ordering::Relaxed);
                    // The Dial frame follows; read it so the stream ends cleanly.
                    let _ = tokio::time::timeout(
                        REQUEST_TIMEOUT,
                        read_frame::<Message, _>(&mut recv, MAX_FRAME),
                    )
                    .await;
                }
                let _ = send.finish();
            }
        });
    }
}

/// How long to spread the first reconnection after a link ended `why`, in
/// ms, when the server closed it (`None` otherwise).
fn close_spread_ms(why: Option<&quinn::ConnectionError>, shared: &Shared) -> Option<u64> {
    use quinn::ConnectionError as E;
    let reason = match why? {
        E::ApplicationClosed(c) => &c.reason[..],
        E::ConnectionClosed(_) => &[][..],
        _ => return None,
    };
    Some(match shared.close_retry_ms.load(Ordering::Relaxed) {
        FOLLOW_SERVER => common::error::close::reconnect_spread(reason).as_millis() as u64,
        ms => ms,
    })
}

/// [`Shared::close_retry_ms`]: take the spread from the server's close reason.
pub(crate) const FOLLOW_SERVER: u64 = u64::MAX;

/// A peer's whole life: register, answer offers, and after a lost
/// connection come back with jittered backoff. Ends when `stop` is set or
/// after 200 failed attempts in a row.
pub(crate) async fn session(
    c: Arc<Client>,
    server: Arc<Mutex<SocketAddr>>,
    shared: Arc<Shared>,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut failures = 0u32;
    // Set when the server closed the link: the longest first wait, in ms.
    let mut close_spread: Option<u64> = None;
    while !*stop.borrow() && failures < 200 {
        let addr = server
            .lock()
            .map(|a| *a)
            .unwrap_or(([127, 0, 0, 1], 0).into());
        match connect_and_register(&c, addr, &shared).await {
            Ok(conn) => {
                failures = 0;
                let mut stop = stop.clone();
                tokio::select! {
                    () = serve_offers(conn.clone(), shared.clone()) => {}
                    _ = conn.closed() => {}
                    _ = stop.changed() => {}
                }
                shared.registered.fetch_sub(1, Ordering::SeqCst);
                let why = conn.close_reason();
                close_spread = close_spread_ms(why.as_ref(), &shared);
                shared.ended(why);
                if let Ok(mut slot) = c.conn.lock() {
                    *slot = None;
                }
            }
            Err(_) => failures += 1,
        }
        // The first wait after a lost link is uniform in 0..--reconnect-jitter
        // (after a server close: 0..the spread the server asked for);
        // after failures, full jitter under a cap doubling from 2 s to 30 s.
        let cap = match failures {
            0 => close_spread
                .unwrap_or_else(|| shared.first_retry_ms.load(Ordering::Relaxed))
                .max(1),
            n => (1000u64 << n.min(5)).min(30_000),
        };
        let wait = rand::thread_rng().gen_range(0..cap);
        tokio::time::sleep(Duration::from_millis(wait)).await;
    }
}
