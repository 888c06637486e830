//! The watcher of a server link on the TCP tunnel (issue 11), one task per
//! link, ending with it:
//!
//! - **The tunnel dies** (the server went, a middlebox cut it): the link's
//!   QUIC connection is closed at once, so its owner reconnects now (a
//!   `listen` with its usual backoff) instead of after the idle timeout.
//! - **UDP works again** (`--transport auto` only): every
//!   [`crate::Timing::udp_retry_interval`] (the first after at most
//!   [`FIRST_CHECK`]) a UDP check goes to the server
//!   straight from the UDP socket; on an answer within [`CHECK_WAIT`] the
//!   tunnel is removed, so everything to the server (this link, other
//!   links, relayed calls' frames) goes over UDP again, nothing closed.
//!   The link then sends a request at once: the server's QUIC sees it
//!   from the UDP address and migrates the connection now, not at the next
//!   keep-alive. A `transport_changed` event says so.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::tunnel::{CloseReason, Tunnel};
use common::Message;
use tokio::sync::broadcast;
use tracing::{debug, info};

use crate::server_link::ServerLink;
use crate::udp::PathSocket;
use crate::{Event, Transport};

/// How long a UDP check waits for its answer.
pub(crate) const CHECK_WAIT: Duration = Duration::from_secs(1);

/// The first check comes sooner than the interval: a link may have gone
/// to TCP because a busy server dropped its first Initials, not because
/// UDP is blocked.
pub(crate) const FIRST_CHECK: Duration = Duration::from_secs(10);

/// What the watcher needs.
pub(crate) struct Watch {
    /// The link, without the owner's hold on it.
    pub(crate) link: ServerLink,
    /// Ends when the owner dropped its last clone of the link.
    pub(crate) dropped: tokio::sync::watch::Receiver<()>,
    pub(crate) udp: Arc<PathSocket>,
    /// The server's address (the tunnel's, and the UDP check's).
    pub(crate) addr: SocketAddr,
    pub(crate) tunnel: Tunnel,
    /// The tunnel's id in the socket's slot.
    pub(crate) id: u64,
    /// How often to check UDP; `None`: never (`--transport tcp`).
    pub(crate) retry: Option<Duration>,
    pub(crate) events: broadcast::Sender<Event>,
    /// A name to look up: the request that makes the server migrate.
    pub(crate) poke_name: String,
}

/// Starts the watcher.
pub(crate) fn spawn(watch: Watch) {
    tokio::spawn(watch.run());
}

impl Watch {
    async fn run(mut self) {
        let conn = self.link.conn.clone();
        let mut every = self.retry.map(|e| e.min(FIRST_CHECK));
        loop {
            let wait = every;
            every = self.retry;
            let retry = async move {
                match wait {
                    Some(every) => tokio::time::sleep(every).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = conn.closed() => return,
                // The owner let go: so does the watcher (and with its clone
                // of the connection, quinn closes it).
                Err(_) = self.dropped.changed() => return,
                reason = self.tunnel.closed() => {
                    if !self.tunnel_closed(reason) {
                        return;
                    }
                }
                () = retry => {
                    if self.udp_works().await {
                        self.move_to_udp(true);
                        return;
                    }
                }
            }
        }
    }

    /// The tunnel ended: closes the link if it died, follows a newer
    /// tunnel if one replaced it; `true` to go on watching.
    fn tunnel_closed(&mut self, reason: CloseReason) -> bool {
        if reason != CloseReason::Local {
            debug!(
                server = self.link.server(),
                reason = reason.as_str(),
                "the TCP tunnel to the server was lost: {reason:?}"
            );
            self.udp.tunnel.remove(Some(self.id));
            self.link
                .conn
                .close(common::error::close::DONE.into(), b"tunnel lost");
            return false;
        }
        if self.udp.tunnel.left_for_udp(self.id) {
            // Another link of ours found UDP working and removed it.
            self.move_to_udp(false);
            return false;
        }
        match self.udp.tunnel.live(self.addr) {
            Some((id, tunnel)) => {
                (self.id, self.tunnel) = (id, tunnel);
                true
            }
            // Gone for another reason: the link cannot go on over it.
            None => {
                self.link
                    .conn
                    .close(common::error::close::DONE.into(), b"tunnel lost");
                false
            }
        }
    }

    /// One UDP check: whether the server answered in time.
    async fn udp_works(&self) -> bool {
        let asked = async { self.udp.udp_check(self.addr).await.await };
        match tokio::time::timeout(CHECK_WAIT, asked).await {
            Ok(Ok((seen, _))) => {
                debug!(server = self.link.server(), %seen, "the UDP check was answered");
                true
            }
            _ => {
                debug!(server = self.link.server(), "no answer to the UDP check");
                false
            }
        }
    }

    /// Moves the link to UDP (removing the tunnel) and makes the server
    /// migrate at once; `announce`: this link found UDP working.
    fn move_to_udp(&self, announce: bool) {
        self.udp.tunnel.remove_for_udp(self.id);
        self.link.set_transport(Transport::Udp);
        let link = self.link.clone();
        let name = self.poke_name.clone();
        tokio::spawn(async move {
            let _ = link.request(&Message::Lookup { name }).await;
        });
        if announce {
            info!(
                server = self.link.server(),
                "UDP works again: the server link moved back from TCP"
            );
            let _ = self.events.send(Event::TransportChanged {
                server: self.link.server().to_owned(),
                transport: Transport::Udp.as_str().to_owned(),
            });
        }
    }
}
