//! The state one [`crate::Peer`] and its tasks share: its identity and
//! socket, its event channel, known_peers, the one-shot server link and
//! where accepted calls go. Its own module, so the tasks that hold it
//! (the accept loop, the presence loop) need not import the handle.

use std::sync::Arc;

use common::Identity;
use tokio::sync::{broadcast, Mutex};

use crate::call::Call;
use crate::config::PeerConfig;
use crate::endpoint::Socket;
use crate::error::Result;
use crate::known_peers::KnownPeers;
use crate::server_link::ServerLink;
use crate::Event;

/// Everything a peer's handle and tasks share.
pub(crate) struct Inner {
    pub(crate) config: PeerConfig,
    pub(crate) identity: Arc<Identity>,
    pub(crate) socket: Socket,
    pub(crate) events: broadcast::Sender<Event>,
    pub(crate) known: KnownPeers,
    /// The nodes of [`PeerConfig::server`] and the one the peer is on
    /// (shared by the presence and the one-shot links).
    pub(crate) nodes: std::sync::Mutex<crate::ServerList>,
    /// The one-shot server link (lookup, call), made on first use.
    pub(crate) link: Mutex<Option<(ServerLink, bool)>>,
    /// Held while a `CallAs` registers the one-shot link.
    pub(crate) registering: Mutex<()>,
    /// Set once a server refused `CallAs` (it predates it): calls register
    /// first from then on.
    pub(crate) call_as_unsupported: std::sync::atomic::AtomicBool,
    /// The server refused [`common::Message::Approve`] (it predates it): not sent again.
    pub(crate) approve_unsupported: std::sync::atomic::AtomicBool,
    /// Set once the server refused `AcceptApproved` (it predates it).
    pub(crate) standing_unsupported: std::sync::atomic::AtomicBool,
    /// Where accepted calls go while listening.
    pub(crate) incoming: std::sync::Mutex<Option<tokio::sync::mpsc::Sender<Result<Call>>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Ends the accept loop, which holds a clone of the endpoint.
        self.socket
            .endpoint
            .close(common::error::close::DONE.into(), b"peer dropped");
    }
}
