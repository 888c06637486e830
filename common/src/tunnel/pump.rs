//! The two tasks that run a tunnel, and the handle the socket wrappers use.
//!
//! The **writer** takes datagrams from the [`SendQueue`] (dropping those
//! that waited too long) and writes one WebSocket message each, flushing
//! when the queue is empty. A write that makes no progress for
//! [`PumpLimits::write_stall`] ends the tunnel: the other end stopped
//! reading (slow-reader protection; its queue only drops meanwhile, so it
//! harms nobody else). The **reader** hands every binary message to the
//! owner's channel (waiting when it is full: TCP's flow control then slows
//! this one sender, nobody else) and ends the tunnel on a text message, an
//! oversized frame (refused from its header), the other end's close, or
//! [`PumpLimits::idle`] without a datagram (pings do not count).
//!
//! Either task ending ends both; [`Tunnel::closed`] says why.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, watch, Notify};
use tokio_tungstenite::tungstenite::error::CapacityError;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

use super::queue::{Budget, Pushed, QueueLimits, SendQueue};

/// The timeouts and queue of a tunnel.
#[derive(Debug, Clone)]
pub struct PumpLimits {
    /// Longest time without a message from the other end.
    pub idle: Duration,
    /// Longest a write may make no progress.
    pub write_stall: Duration,
    /// The send queue's limits.
    pub queue: QueueLimits,
    /// Bytes this tunnel's queue shares with others', if any.
    pub budget: Option<Arc<Budget>>,
}

impl Default for PumpLimits {
    fn default() -> Self {
        Self {
            idle: Duration::from_secs(30),
            write_stall: Duration::from_secs(10),
            queue: QueueLimits::default(),
            budget: None,
        }
    }
}

/// Why a tunnel ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// [`Tunnel::close`] was called.
    Local,
    /// The other end closed it.
    Remote,
    /// Nothing arrived for [`PumpLimits::idle`].
    Idle,
    /// A write made no progress for [`PumpLimits::write_stall`].
    WriteStall,
    /// The other end broke the protocol (text, or a frame over the limit).
    Protocol(String),
    /// The connection failed.
    Error(String),
}

impl CloseReason {
    /// A short word for logs and metrics labels.
    pub fn as_str(&self) -> &'static str {
        match self {
            CloseReason::Local => "local",
            CloseReason::Remote => "remote",
            CloseReason::Idle => "idle",
            CloseReason::WriteStall => "write_stall",
            CloseReason::Protocol(_) => "protocol",
            CloseReason::Error(_) => "error",
        }
    }
}

/// Counters of one tunnel.
#[derive(Debug, Default)]
pub struct TunnelStats {
    /// Payload bytes received.
    pub bytes_in: AtomicU64,
    /// Payload bytes written.
    pub bytes_out: AtomicU64,
    /// Datagrams received.
    pub datagrams_in: AtomicU64,
    /// Datagrams written.
    pub datagrams_out: AtomicU64,
    /// Datagrams dropped: queue full, too large, or waited too long.
    pub dropped: AtomicU64,
}

struct Shared {
    queue: Mutex<SendQueue>,
    wake: Notify,
    closed: watch::Sender<Option<CloseReason>>,
    stats: TunnelStats,
}

impl Shared {
    fn end(&self, reason: CloseReason) {
        self.closed.send_if_modified(|r| {
            if r.is_none() {
                *r = Some(reason);
                true
            } else {
                false
            }
        });
        self.wake.notify_one();
    }
}

/// A running tunnel: what the socket wrappers send through. Cheap to clone.
#[derive(Clone)]
pub struct Tunnel {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Tunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tunnel")
            .field("closed", &*self.shared.closed.borrow())
            .finish_non_exhaustive()
    }
}

impl Tunnel {
    /// Queues one datagram; never waits. A refused one is dropped, as a
    /// full UDP socket would.
    pub fn send(&self, datagram: &[u8]) -> Pushed {
        if self.is_closed() {
            self.shared.stats.dropped.fetch_add(1, Ordering::Relaxed);
            return Pushed::Full;
        }
        let pushed = self
            .shared
            .queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Instant::now(), datagram);
        if pushed == Pushed::Queued {
            self.shared.wake.notify_one();
        } else {
            self.shared.stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
        pushed
    }

    /// Ends the tunnel (the writer sends a WebSocket close).
    pub fn close(&self) {
        self.shared.end(CloseReason::Local);
    }

    /// Whether it ended.
    pub fn is_closed(&self) -> bool {
        self.shared.closed.borrow().is_some()
    }

    /// Waits until it ended, and says why.
    pub async fn closed(&self) -> CloseReason {
        let mut rx = self.shared.closed.subscribe();
        loop {
            if let Some(reason) = rx.borrow_and_update().clone() {
                return reason;
            }
            if rx.changed().await.is_err() {
                return CloseReason::Local;
            }
        }
    }

    /// Its counters.
    pub fn stats(&self) -> &TunnelStats {
        &self.shared.stats
    }
}

/// Starts the reader and writer of `ws`; every datagram received goes to
/// `deliver` as `wrap(bytes)`.
pub fn spawn<S, T>(
    ws: WebSocketStream<S>,
    limits: PumpLimits,
    deliver: mpsc::Sender<T>,
    wrap: impl Fn(Bytes) -> T + Send + 'static,
) -> Tunnel
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    T: Send + 'static,
{
    let shared = Arc::new(Shared {
        queue: Mutex::new(SendQueue::with_budget(limits.queue, limits.budget)),
        wake: Notify::new(),
        closed: watch::channel(None).0,
        stats: TunnelStats::default(),
    });
    let (sink, stream) = ws.split();
    tokio::spawn(write_loop(sink, shared.clone(), limits.write_stall));
    tokio::spawn(read_loop(
        stream,
        shared.clone(),
        limits.idle,
        deliver,
        wrap,
    ));
    Tunnel { shared }
}

type Sink<S> = futures_util::stream::SplitSink<WebSocketStream<S>, Message>;
type Source<S> = futures_util::stream::SplitStream<WebSocketStream<S>>;

async fn write_loop<S>(mut sink: Sink<S>, shared: Arc<Shared>, stall: Duration)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut closed = shared.closed.subscribe();
    let mut unflushed = false;
    let reason = loop {
        if closed.borrow().is_some() {
            break None;
        }
        let next = {
            let mut queue = shared.queue.lock().unwrap_or_else(|p| p.into_inner());
            let before = queue.dropped_stale;
            let next = queue.pop(Instant::now());
            let stale = queue.dropped_stale - before;
            if stale > 0 {
                shared.stats.dropped.fetch_add(stale, Ordering::Relaxed);
            }
            next
        };
        let step = match next {
            Some(datagram) => {
                let len = datagram.len() as u64;
                let sent = tokio::time::timeout(stall, sink.feed(Message::Binary(datagram))).await;
                if matches!(sent, Ok(Ok(()))) {
                    shared.stats.bytes_out.fetch_add(len, Ordering::Relaxed);
                    shared.stats.datagrams_out.fetch_add(1, Ordering::Relaxed);
                    unflushed = true;
                }
                sent
            }
            None if unflushed => {
                unflushed = false;
                tokio::time::timeout(stall, sink.flush()).await
            }
            None => {
                tokio::select! {
                    () = shared.wake.notified() => {}
                    _ = closed.changed() => {}
                }
                continue;
            }
        };
        match step {
            Ok(Ok(())) => {}
            Ok(Err(e)) => break Some(ws_reason(e)),
            Err(_) => break Some(CloseReason::WriteStall),
        }
    };
    match reason {
        Some(reason) => shared.end(reason),
        // Ended by the reader or the owner: say goodbye, briefly.
        None => {
            let _ = tokio::time::timeout(Duration::from_secs(1), sink.close()).await;
        }
    }
}

async fn read_loop<S, T>(
    mut stream: Source<S>,
    shared: Arc<Shared>,
    idle: Duration,
    deliver: mpsc::Sender<T>,
    wrap: impl Fn(Bytes) -> T,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut closed = shared.closed.subscribe();
    // Only datagrams count as activity: pings alone do not hold a tunnel.
    let mut deadline = tokio::time::Instant::now() + idle;
    let reason = loop {
        let next = tokio::select! {
            next = tokio::time::timeout_at(deadline, stream.next()) => next,
            _ = closed.changed() => break None,
        };
        if matches!(next, Ok(Some(Ok(Message::Binary(_))))) {
            deadline = tokio::time::Instant::now() + idle;
        }
        match next {
            Err(_) => break Some(CloseReason::Idle),
            Ok(None) | Ok(Some(Ok(Message::Close(_)))) => break Some(CloseReason::Remote),
            Ok(Some(Ok(Message::Binary(bytes)))) => {
                shared
                    .stats
                    .bytes_in
                    .fetch_add(bytes.len() as u64, Ordering::Relaxed);
                shared.stats.datagrams_in.fetch_add(1, Ordering::Relaxed);
                let send = tokio::select! {
                    sent = deliver.send(wrap(bytes)) => sent,
                    _ = closed.changed() => break None,
                };
                if send.is_err() {
                    break Some(CloseReason::Local);
                }
            }
            Ok(Some(Ok(Message::Text(_)))) => {
                break Some(CloseReason::Protocol("a text message".into()))
            }
            Ok(Some(Ok(_))) => {} // ping, pong: the library answers pings
            Ok(Some(Err(e))) => break Some(ws_reason(e)),
        }
    };
    if let Some(reason) = reason {
        shared.end(reason);
    }
}

fn ws_reason(e: WsError) -> CloseReason {
    match e {
        WsError::ConnectionClosed | WsError::AlreadyClosed => CloseReason::Remote,
        WsError::Capacity(CapacityError::MessageTooLong { size, max_size }) => {
            CloseReason::Protocol(format!("a {size}-byte message (at most {max_size})"))
        }
        WsError::Protocol(p) => CloseReason::Protocol(p.to_string()),
        other => CloseReason::Error(other.to_string()),
    }
}
