//! The NATS driver of the cluster: connects, publishes this node's
//! presence in order, beats its heart, keeps the directory, and carries
//! requests to other nodes and their replies. Everything it decides is in
//! [`super::directory`] and [`super::wire`]; the server acts on what it
//! hands over as [`Incoming`].

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_nats::Subject;
use bytes::Bytes;
use common::Fingerprint;
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::directory::{Action, Change, Directory, Found};
use super::wire::{Body, BusKey, Envelope, Online};
use super::{bus_on_loopback, split_bus_url, BusAuth, ClusterConfig};
use crate::state::lock;

/// Names per snapshot page (~60 KiB).
const PAGE: usize = 1000;
/// Presence messages waiting for the bus; past it they are dropped, and
/// the other nodes resync on the gap this leaves in the sequence.
const OUTBOX: usize = 10_000;
/// Requests from other nodes waiting for the server.
const INBOX: usize = 4096;
/// How long a snapshot page may take.
const SYNC_TIMEOUT: Duration = Duration::from_secs(3);

/// Why the bus failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BusError {
    /// The URL or credentials are unusable.
    #[error("--bus: {0}")]
    Config(String),
    /// The bus could not be reached or refused us.
    #[error("cannot connect to the bus: {0}")]
    Connect(String),
    /// No node took the request (it is gone), or none answered in time.
    #[error("node {node} did not answer: {why}")]
    NoAnswer {
        /// The node asked.
        node: String,
        /// What happened.
        why: String,
    },
    /// The answer was not sealed for us, or not from that node.
    #[error("bad answer from node {0}")]
    BadAnswer(String),
}

/// What the bus hands the server.
#[derive(Debug)]
pub enum Incoming {
    /// Another node asks (an `Offer` or a `Dial`); answer with [`Cluster::reply`].
    Request {
        /// The node asking.
        from: String,
        /// What it asks.
        body: Box<Body>,
        /// Where the answer goes.
        reply: Subject,
    },
    /// Another node announced a name: if this node holds it from an older
    /// registration, that session is replaced.
    Came {
        /// The node.
        node: String,
        /// The announcement.
        online: Online,
    },
}

/// This node's presence and the directory of the others.
struct Books {
    seq: u64,
    /// This node's names, in name order (pages are cut by cursor).
    local: BTreeMap<String, Online>,
    directory: Directory,
}

/// This node's link to its cluster.
pub struct Cluster {
    config: ClusterConfig,
    client: async_nats::Client,
    key: BusKey,
    epoch: u64,
    presence: String,
    books: Mutex<Books>,
    outbox: mpsc::Sender<Vec<u8>>,
    incoming: mpsc::Sender<Incoming>,
    /// Bus messages refused (unsealed, another key, another subject, stale).
    refused: std::sync::atomic::AtomicU64,
    /// Told which names may have changed at the other nodes (`None`: any).
    on_change: std::sync::OnceLock<OnChange>,
}

/// What [`Cluster::on_change`] calls (never under the cluster's locks).
type OnChange = Box<dyn Fn(Option<&[String]>) + Send + Sync>;

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("node_id", &self.config.node_id)
            .finish_non_exhaustive()
    }
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Cluster {
    /// Connects to the bus and joins the cluster: `secret` is the bus key
    /// derived from the shared server key. The receiver gets what the
    /// server must act on.
    pub async fn connect(
        config: ClusterConfig,
        secret: [u8; 32],
    ) -> Result<(Arc<Self>, mpsc::Receiver<Incoming>), BusError> {
        let (servers, auth) = split_bus_url(&config.bus).map_err(BusError::Config)?;
        let mut options = async_nats::ConnectOptions::new()
            .name(format!("rendezvous {}", config.node_id))
            .connection_timeout(Duration::from_secs(3))
            .ping_interval(Duration::from_secs(5))
            .max_reconnects(None)
            .request_timeout(Some(Duration::from_secs(5)));
        if !bus_on_loopback(&servers) {
            options = options.require_tls(true);
        }
        if let Some(ca) = &config.ca {
            options = options.add_root_certificates(ca.clone()).require_tls(true);
        }
        options = match auth {
            BusAuth::UserPass(u, p) => options.user_and_password(u, p),
            BusAuth::Token(t) => options.token(t),
            BusAuth::None => options,
        };
        if let Some(creds) = &config.creds {
            options = options
                .credentials_file(creds)
                .await
                .map_err(|e| BusError::Config(format!("{}: {e}", creds.display())))?;
        }
        let client = async_nats::connect_with_options(servers.as_str(), options)
            .await
            .map_err(|e| BusError::Connect(e.to_string()))?;
        let presence = format!("{}.presence", config.prefix);
        let mine = format!("{}.node.{}", config.prefix, config.node_id);
        let subscribe = |subject: String| {
            let client = client.clone();
            async move {
                client
                    .subscribe(subject)
                    .await
                    .map_err(|e| BusError::Connect(e.to_string()))
            }
        };
        let presence_sub = subscribe(presence.clone()).await?;
        let node_sub = subscribe(mine.clone()).await?;
        let (outbox, outbox_rx) = mpsc::channel(OUTBOX);
        let (incoming, incoming_rx) = mpsc::channel(INBOX);
        let cluster = Arc::new(Self {
            books: Mutex::new(Books {
                seq: 0,
                local: BTreeMap::new(),
                directory: Directory::new(config.node_id.clone(), config.lease),
            }),
            key: BusKey::derive(secret),
            // Greater for a later start, so a replay of an older process
            // is told apart from a restart.
            epoch: (now_ms() << 16) | u64::from(rand::random::<u16>()),
            presence,
            client,
            config,
            outbox,
            incoming,
            refused: std::sync::atomic::AtomicU64::new(0),
            on_change: std::sync::OnceLock::new(),
        });
        info!(node = %cluster.config.node_id, relay = %cluster.config.node_addr, "joined the cluster bus");
        tokio::spawn(publish(
            cluster.client.clone(),
            cluster.presence.clone(),
            outbox_rx,
        ));
        tokio::spawn(heartbeat(Arc::downgrade(&cluster)));
        tokio::spawn(receive(Arc::downgrade(&cluster), presence_sub, node_sub));
        Ok((cluster, incoming_rx))
    }

    /// Calls `f` after the directory changed, with the names that may
    /// have changed (`None`: any, after a resync or a node's lease ran
    /// out): the watchers' feed. Set once; later calls are ignored.
    pub fn on_change(&self, f: impl Fn(Option<&[String]>) + Send + Sync + 'static) {
        let _ = self.on_change.set(Box::new(f));
    }

    fn changed(&self, names: Option<&[String]>) {
        if let Some(f) = self.on_change.get() {
            f(names);
        }
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.config.node_id
    }

    /// Where other nodes send this node relay frames.
    pub fn relay_addr(&self) -> std::net::SocketAddr {
        self.config.node_addr
    }

    fn seal(&self, subject: &str, body: Body) -> Vec<u8> {
        let envelope = Envelope {
            from: self.config.node_id.clone(),
            sent_ms: now_ms(),
            body,
        };
        self.key.seal(subject, &envelope)
    }

    /// Queues a presence message (sealed now, so in sequence order).
    fn announce(&self, books: &mut Books, change: Change) {
        books.seq += 1;
        let (seq, epoch) = (books.seq, self.epoch);
        let body = match change {
            Change::Up(online) => Body::Up { epoch, seq, online },
            Change::Down(name) => Body::Down { epoch, seq, name },
        };
        if self
            .outbox
            .try_send(self.seal(&self.presence, body))
            .is_err()
        {
            debug!(seq, "presence outbox full: the other nodes will resync");
        }
    }

    /// `name` registered a `listen` here with `fingerprint`.
    pub fn went_online(&self, name: &str, fingerprint: Fingerprint, invisible: bool) {
        let mut books = lock(&self.books);
        // Newer than any registration of it elsewhere, whatever the clocks
        // say: this one is the latest, and it must replace the others.
        let elsewhere = books.directory.newest_since(name, Instant::now());
        let since_ms = elsewhere.map_or(0, |s| s.saturating_add(1)).max(now_ms());
        let online = Online {
            name: name.to_owned(),
            fingerprint,
            since_ms,
            invisible,
        };
        books.local.insert(name.to_owned(), online.clone());
        self.announce(&mut books, Change::Up(online));
    }

    /// `name`'s `listen` here went away.
    pub fn went_offline(&self, name: &str) {
        let mut books = lock(&self.books);
        if books.local.remove(name).is_some() {
            self.announce(&mut books, Change::Down(name.to_owned()));
        }
    }

    /// When `name` registered here, if it is online here.
    pub fn local_since(&self, name: &str) -> Option<u64> {
        lock(&self.books).local.get(name).map(|o| o.since_ms)
    }

    /// Where `name` is online at another node.
    pub fn find(&self, name: &str) -> Option<Found> {
        lock(&self.books).directory.find(name, Instant::now())
    }

    /// Bus messages refused since start.
    pub fn refused(&self) -> u64 {
        self.refused.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Other live nodes, and the names online at them.
    pub fn counts(&self) -> (usize, usize) {
        lock(&self.books).directory.counts(Instant::now())
    }

    /// Asks `node` and waits up to `timeout` for its answer. Replies that
    /// do not open (someone else on the bus answering) are skipped.
    pub async fn request(
        &self,
        node: &str,
        body: Body,
        timeout: Duration,
    ) -> Result<Body, BusError> {
        let subject = format!("{}.node.{node}", self.config.prefix);
        let no_answer = |why: String| BusError::NoAnswer {
            node: node.to_owned(),
            why,
        };
        // While the bus is down a request would only wait out its timeout.
        if self.client.connection_state() != async_nats::connection::State::Connected {
            return Err(no_answer("the bus is down".into()));
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let inbox = self.client.new_inbox();
        let mut replies = self
            .client
            .subscribe(inbox.clone())
            .await
            .map_err(|e| no_answer(e.to_string()))?;
        let payload = Bytes::from(self.seal(&subject, body));
        self.client
            .publish_with_reply(subject, inbox, payload)
            .await
            .map_err(|e| no_answer(e.to_string()))?;
        loop {
            let reply = match tokio::time::timeout_at(deadline, replies.next()).await {
                Ok(Some(reply)) => reply,
                Ok(None) => return Err(no_answer("the bus closed".into())),
                Err(_) => return Err(no_answer(format!("no answer within {timeout:?}"))),
            };
            if reply.status == Some(async_nats::StatusCode::NO_RESPONDERS) {
                return Err(no_answer("no node listens on its subject".into()));
            }
            match self
                .key
                .open(reply.subject.as_str(), &reply.payload, now_ms())
            {
                Ok(envelope) if envelope.from == node => return Ok(envelope.body),
                _ => {
                    self.refused
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    debug!(%node, "skipped a reply not sealed by that node");
                }
            }
        }
    }

    /// Answers a request.
    pub async fn reply(&self, reply: Subject, body: Body) {
        let payload = Bytes::from(self.seal(reply.as_str(), body));
        if let Err(e) = self.client.publish(reply, payload).await {
            debug!("bus reply not sent: {e}");
        }
    }

    /// This node's names after `after`, one page.
    fn page(&self, after: Option<&str>) -> Body {
        let books = lock(&self.books);
        page_of(&books.local, books.seq, after, PAGE)
    }

    /// Performs the directory's actions (resyncs run as their own tasks).
    fn act(self: &Arc<Self>, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Sync {
                    node,
                    generation,
                    after,
                } => {
                    tokio::spawn(sync(self.clone(), node, generation, after));
                }
                Action::Came { node, online } => {
                    let _ = self.incoming.try_send(Incoming::Came { node, online });
                }
            }
        }
    }

    /// One message from the bus.
    fn on_message(self: &Arc<Self>, message: async_nats::Message) {
        let envelope = match self
            .key
            .open(message.subject.as_str(), &message.payload, now_ms())
        {
            Ok(envelope) => envelope,
            Err(e) => {
                self.refused
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                warn!(subject = %message.subject, "refused a bus message: {e}");
                return;
            }
        };
        let (from, now, sent) = (envelope.from, Instant::now(), envelope.sent_ms);
        let epoch_of = |body: &Body| match body {
            Body::Alive { epoch, .. } | Body::Up { epoch, .. } | Body::Down { epoch, .. } => {
                Some(*epoch)
            }
            _ => None,
        };
        if from == self.config.node_id && epoch_of(&envelope.body).is_some_and(|e| e != self.epoch)
        {
            warn!(node = %from, "another node announces itself with this node's id: give each node its own --node-id");
        }
        let mut touched = match &envelope.body {
            Body::Up { online, .. } => Some(Some(vec![online.name.clone()])),
            Body::Down { name, .. } => Some(Some(vec![name.clone()])),
            _ => None,
        };
        let actions = {
            let mut books = lock(&self.books);
            let d = &mut books.directory;
            let actions = match envelope.body {
                Body::Alive {
                    epoch,
                    relay_addr,
                    seq,
                } => {
                    let had = d.has_relay(&from);
                    let actions = d.on_alive(&from, (epoch, sent), relay_addr, seq, now);
                    // Its names are findable from its first heartbeat on.
                    if !had && d.has_relay(&from) {
                        touched = Some(None);
                    }
                    actions
                }
                Body::Up { epoch, seq, online } => {
                    d.on_change(&from, (epoch, sent), seq, Change::Up(online), now)
                }
                Body::Down { epoch, seq, name } => {
                    d.on_change(&from, (epoch, sent), seq, Change::Down(name), now)
                }
                body => {
                    drop(books);
                    self.on_request(from, body, message.reply);
                    return;
                }
            };
            relevant(&books, actions)
        };
        if let Some(names) = touched {
            self.changed(names.as_deref());
        }
        self.act(actions);
    }

    /// A request on this node's subject.
    fn on_request(self: &Arc<Self>, from: String, body: Body, reply: Option<Subject>) {
        let Some(reply) = reply else {
            debug!(%from, "a bus request without a reply subject");
            return;
        };
        match body {
            Body::SnapshotRequest { after } => {
                let this = self.clone();
                let answer = self.page(after.as_deref());
                tokio::spawn(async move { this.reply(reply, answer).await });
            }
            body @ (Body::Offer { .. } | Body::Dial { .. }) => {
                if self
                    .incoming
                    .try_send(Incoming::Request {
                        from,
                        body: Box::new(body),
                        reply,
                    })
                    .is_err()
                {
                    warn!("bus requests queue full: one dropped");
                }
            }
            _ => debug!(%from, "an unexpected bus message on this node's subject"),
        }
    }
}

/// Publishes queued presence messages, in order.
async fn publish(client: async_nats::Client, subject: String, mut outbox: mpsc::Receiver<Vec<u8>>) {
    while let Some(payload) = outbox.recv().await {
        if let Err(e) = client.publish(subject.clone(), Bytes::from(payload)).await {
            debug!("presence not published: {e}");
        }
    }
}

/// Says this node is alive, and forgets nodes that stopped saying so.
async fn heartbeat(cluster: std::sync::Weak<Cluster>) {
    let period = match cluster.upgrade() {
        Some(c) => c.config.heartbeat,
        None => return,
    };
    let mut tick = tokio::time::interval(period);
    loop {
        tick.tick().await;
        let Some(cluster) = cluster.upgrade() else {
            return;
        };
        let dead = {
            let mut books = lock(&cluster.books);
            let dead = books.directory.expire(Instant::now());
            // Through the ordered outbox, after every change it counts.
            let body = Body::Alive {
                epoch: cluster.epoch,
                relay_addr: cluster.config.node_addr,
                seq: books.seq,
            };
            let sealed = cluster.seal(&cluster.presence, body);
            if cluster.outbox.try_send(sealed).is_err() {
                debug!("heartbeat not queued: the bus is not taking messages");
            }
            dead
        };
        if !dead.is_empty() {
            cluster.changed(None);
        }
        for node in dead {
            info!(%node, "node lease ran out: its names are offline");
        }
    }
}

/// Reads both subscriptions until the cluster is dropped.
async fn receive(
    cluster: std::sync::Weak<Cluster>,
    mut presence: async_nats::Subscriber,
    mut node: async_nats::Subscriber,
) {
    loop {
        let message = tokio::select! {
            m = presence.next() => m,
            m = node.next() => m,
        };
        let (Some(message), Some(cluster)) = (message, cluster.upgrade()) else {
            return;
        };
        cluster.on_message(message);
    }
}

/// The names of `local` after `after` (in name order), at most `size`,
/// as a snapshot page at sequence `seq`.
fn page_of(local: &BTreeMap<String, Online>, seq: u64, after: Option<&str>, size: usize) -> Body {
    use std::ops::Bound;
    let from = match after {
        Some(name) => Bound::Excluded(name),
        None => Bound::Unbounded,
    };
    let mut names = local.range::<str, _>((from, Bound::Unbounded));
    let chunk: Vec<Online> = names.by_ref().take(size).map(|(_, o)| o.clone()).collect();
    Body::Snapshot {
        seq,
        more: names.next().is_some(),
        names: chunk,
    }
}

/// Keeps the actions the server must see: an announcement matters only
/// for a name this node holds too (it may have to give it up).
fn relevant(books: &Books, actions: Vec<Action>) -> Vec<Action> {
    actions
        .into_iter()
        .filter(|a| match a {
            Action::Came { online, .. } => books.local.contains_key(&online.name),
            Action::Sync { .. } => true,
        })
        .collect()
}

/// Fetches one page of `node`'s names for resync `generation`.
async fn sync(cluster: Arc<Cluster>, node: String, generation: u64, after: Option<String>) {
    let body = Body::SnapshotRequest { after };
    match cluster.request(&node, body, SYNC_TIMEOUT).await {
        Ok(Body::Snapshot { seq, names, more }) => {
            let actions = {
                let mut books = lock(&cluster.books);
                let actions = books.directory.on_page(&node, generation, seq, names, more);
                relevant(&books, actions)
            };
            // The pages are applied together, with the last one.
            if !more {
                cluster.changed(None);
            }
            cluster.act(actions);
        }
        other => {
            debug!(%node, "resync failed: {other:?}");
            lock(&cluster.books)
                .directory
                .sync_failed(&node, generation);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_follow_the_cursor_so_a_name_leaving_mid_resync_skips_no_other() {
        let online = |n: &str| Online {
            name: n.into(),
            fingerprint: Fingerprint([1; 32]),
            since_ms: 1,
            invisible: false,
        };
        let mut local: BTreeMap<String, Online> = ["a", "b", "c", "d", "e"]
            .iter()
            .map(|n| (n.to_string(), online(n)))
            .collect();
        let names = |body: &Body| match body {
            Body::Snapshot { names, more, .. } => (
                names.iter().map(|o| o.name.clone()).collect::<Vec<_>>(),
                *more,
            ),
            _ => panic!("not a page"),
        };
        let first = page_of(&local, 7, None, 2);
        assert_eq!(names(&first), (vec!["a".to_string(), "b".into()], true));
        // "a" leaves between pages: the next page still starts after "b".
        local.remove("a");
        let second = page_of(&local, 8, Some("b"), 2);
        assert_eq!(names(&second), (vec!["c".to_string(), "d".into()], true));
        let last = page_of(&local, 8, Some("d"), 2);
        assert_eq!(names(&last), (vec!["e".to_string()], false));
    }
}
