//! An established, authenticated peer connection and its streams.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use common::framing::{read_frame, write_frame, MAX_FRAME};
use common::{Fingerprint, PeerMessage};

use tokio::sync::watch;

use crate::error::{Error, Result};
use crate::path::Announced;
pub use crate::path::{Path, PathStatus};

/// A live call: a QUIC connection whose other end proved it holds the key
/// the server vouched for.
#[derive(Debug)]
pub struct Call {
    /// The connection (open more streams on it, or use the helpers).
    pub connection: quinn::Connection,
    /// The other side's name.
    pub peer: String,
    /// The other side's key.
    pub fingerprint: Fingerprint,
    /// How packets travel ([`Call::path`], [`Call::remote_addr`]).
    paths: CallPaths,
    /// From the call request (caller) or the offer (callee) to the authenticated connection.
    pub setup: Duration,
    /// Time spent first reaching the server (caller only; zero when already connected).
    pub server_time: Duration,
    first_stream: Mutex<Option<(quinn::SendStream, quinn::RecvStream)>>,
}

impl Call {
    pub(crate) fn new(
        connection: quinn::Connection,
        peer: String,
        fingerprint: Fingerprint,
        setup: Duration,
        paths: CallPaths,
    ) -> Self {
        Self {
            connection,
            peer,
            fingerprint,
            paths,
            setup,
            server_time: Duration::ZERO,
            first_stream: Mutex::new(None),
        }
    }

    pub(crate) fn with_first_stream(self, stream: (quinn::SendStream, quinn::RecvStream)) -> Self {
        *self.first_stream.lock().unwrap_or_else(|p| p.into_inner()) = Some(stream);
        self
    }

    /// Where the call's packets go now: the path task's choice, else what
    /// the handshake settled on.
    fn now(&self) -> PathStatus {
        match *self.paths.status.borrow() {
            s @ PathStatus::On(..) => s,
            _ => self.paths.settled,
        }
    }

    /// How the call's packets travel now (`Relay` while no path is known:
    /// the honest guess for a call no direct probe has answered).
    pub fn path(&self) -> Path {
        match self.now() {
            PathStatus::On(path, _) => path,
            _ => Path::Relay,
        }
    }

    /// The address the call's packets go to now: the other side's on a
    /// direct path, the relay's on a relayed one.
    pub fn remote_addr(&self) -> SocketAddr {
        match self.now() {
            PathStatus::On(_, addr) => common::candidates::canonical(addr),
            _ => common::candidates::canonical(self.connection.remote_address()),
        }
    }

    /// A watch of the call's path: changes when the call moves between
    /// direct paths and the relay.
    pub fn path_watch(&self) -> watch::Receiver<PathStatus> {
        self.paths.status.clone()
    }

    /// The `connected` event for this call.
    /// From now on a move of the call is reported as `path_changed`.
    pub fn connected_event(&self) -> crate::Event {
        let now = self.now();
        *self
            .paths
            .announced
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(now);
        crate::Event::Connected {
            peer: self.peer.clone(),
            fingerprint: self.fingerprint.to_string(),
            path: self.path().as_str().to_owned(),
            remote_addr: self.remote_addr().to_string(),
            setup_ms: self.setup.as_secs_f64() * 1000.0,
            server_ms: self.server_time.as_secs_f64() * 1000.0,
        }
    }

    /// Opens a stream for `purpose` (its first frame).
    pub async fn open(
        &self,
        purpose: &PeerMessage,
    ) -> Result<(quinn::SendStream, quinn::RecvStream)> {
        let (mut send, recv) = self
            .connection
            .open_bi()
            .await
            .map_err(|e| Error::Protocol(format!("opening a stream: {e}")))?;
        write_frame(&mut send, purpose, MAX_FRAME)
            .await
            .map_err(|e| Error::Protocol(e.to_string()))?;
        Ok((send, recv))
    }

    /// The next stream the other side opened, with its purpose; `None` when
    /// the connection ended.
    pub async fn accept(
        &self,
    ) -> Option<Result<(PeerMessage, quinn::SendStream, quinn::RecvStream)>> {
        let first = self
            .first_stream
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let (send, mut recv) = match first {
            Some(s) => s,
            None => self.connection.accept_bi().await.ok()?,
        };
        let header = tokio::time::timeout(
            Duration::from_secs(10),
            read_frame::<PeerMessage, _>(&mut recv, MAX_FRAME),
        )
        .await;
        Some(match header {
            Ok(Ok(msg)) => Ok((msg, send, recv)),
            Ok(Err(e)) => Err(Error::Protocol(format!("bad stream header: {e}"))),
            Err(_) => Err(Error::Protocol("stream header not received in time".into())),
        })
    }

    /// Closes the call (the other side sees a normal end).
    pub fn close(&self) {
        self.connection
            .close(common::error::close::DONE.into(), b"call ended");
        // Its addresses are free for the next call at once, not only when
        // its path task notices the close.
        if let Some((router, v)) = &self.paths.release {
            router.closing(*v);
        }
    }
}

/// A call's view of its paths.
#[derive(Debug)]
pub(crate) struct CallPaths {
    /// Where the path task sends its packets now.
    pub(crate) status: watch::Receiver<PathStatus>,
    /// The path `connected` and `path_changed` last reported.
    pub(crate) announced: Announced,
    /// The path the handshake settled on, for as long as the path task
    /// has chosen none (its probes were slower than the handshake).
    pub(crate) settled: PathStatus,
    /// The router and virtual address to release on close (none for a
    /// connection at a real address).
    pub(crate) release: Option<(std::sync::Arc<crate::router::Router>, SocketAddr)>,
}

impl CallPaths {
    /// A connection at a real address, on that direct path for good.
    pub(crate) fn fixed(remote: SocketAddr) -> Self {
        let on = PathStatus::On(Path::Direct, remote);
        Self {
            status: watch::channel(on).1,
            announced: Announced::default(),
            settled: on,
            release: None,
        }
    }
}

/// Dropping a call ends it, as dropping the last handle of a quinn
/// connection would (the call's path task holds one of its own).
impl Drop for Call {
    fn drop(&mut self) {
        self.close();
    }
}
