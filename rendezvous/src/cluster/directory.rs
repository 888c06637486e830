//! Who is online at the other nodes: the presence directory, sans-IO.
//!
//! Every node announces its own names on the presence subject, each change
//! with the next number of its sequence ([`super::wire::Body::Up`] /
//! `Down`), and a heartbeat with its current number every
//! [`super::ClusterConfig::heartbeat`] (`Alive`). A node is alive for
//! [`Directory::new`]'s lease after its last message: a node that dies
//! (SIGKILL, a cut network) takes its names offline when its lease runs
//! out. The lease is per node, not per name, so keeping it costs one
//! small message per node and heartbeat, whatever the number of names.
//!
//! A receiver that sees a node for the first time, a new process of it
//! (another `epoch`), or a gap in its sequence (NATS core delivers at most
//! once) asks that node for its names, page by page ([`Action::Sync`]),
//! keeps the changes that arrive meanwhile, and replays those newer than
//! the first page on top of the pages. A message from before the node's
//! current number (a replay from the bus) changes nothing.
//!
//! A name online at two nodes at once (a `listen` moved, and the old
//! node has not yet seen the new one) resolves to the newest
//! registration: [`Online::since_ms`], then the node id.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::wire::Online;

/// What the driver does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Ask `node` for this page of its names.
    Sync {
        /// The node.
        node: String,
        /// The page (from 0).
        page: u32,
    },
    /// `node` announced `online`: if this node holds the name from an older
    /// registration, the newer one replaces it (close the local session).
    Came {
        /// The node.
        node: String,
        /// What it announced.
        online: Online,
    },
}

/// A change of one node's names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A name came online there.
    Up(Online),
    /// A name went offline there.
    Down(String),
}

/// A name found online at another node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// The node's id (its subject).
    pub node: String,
    /// Where that node takes relay frames.
    pub relay_addr: SocketAddr,
    /// The name's announcement.
    pub online: Online,
}

#[derive(Debug)]
struct Node {
    epoch: u64,
    relay_addr: Option<SocketAddr>,
    /// The last sequence number applied.
    seq: u64,
    expires: Instant,
    names: HashMap<String, Online>,
    sync: Option<Sync>,
}

/// A resync in progress.
#[derive(Debug, Default)]
struct Sync {
    /// The sequence number of the first page.
    base: Option<u64>,
    names: HashMap<String, Online>,
    /// Changes heard meanwhile.
    pending: Vec<(u64, Change)>,
}

/// The other nodes and their names.
#[derive(Debug)]
pub struct Directory {
    me: String,
    lease: Duration,
    nodes: HashMap<String, Node>,
}

/// Most changes kept while a resync runs (past it the resync starts over).
const MAX_PENDING: usize = 100_000;

impl Directory {
    /// A directory for node `me`, with nodes alive `lease` after their last message.
    pub fn new(me: impl Into<String>, lease: Duration) -> Self {
        Self {
            me: me.into(),
            lease,
            nodes: HashMap::new(),
        }
    }

    /// The node entry for a message from `node` in `epoch`, created (or
    /// reset, for a new epoch) as needed; `None` for this node's own.
    fn node(&mut self, node: &str, epoch: u64, now: Instant) -> Option<(&mut Node, bool)> {
        if node == self.me {
            return None;
        }
        let expires = now + self.lease;
        let fresh = match self.nodes.get(node) {
            Some(n) => n.epoch != epoch,
            None => true,
        };
        if fresh {
            self.nodes.insert(
                node.to_owned(),
                Node {
                    epoch,
                    relay_addr: None,
                    seq: 0,
                    expires,
                    names: HashMap::new(),
                    sync: None,
                },
            );
        }
        let entry = self.nodes.get_mut(node)?;
        entry.expires = expires;
        Some((entry, fresh))
    }

    /// A heartbeat from `node`.
    pub fn on_alive(
        &mut self,
        node: &str,
        epoch: u64,
        relay_addr: SocketAddr,
        seq: u64,
        now: Instant,
    ) -> Vec<Action> {
        let Some((entry, fresh)) = self.node(node, epoch, now) else {
            return vec![];
        };
        entry.relay_addr = Some(relay_addr);
        if entry.sync.is_none() && (fresh || entry.seq != seq) {
            entry.sync = Some(Sync::default());
            return vec![sync(node, 0)];
        }
        vec![]
    }

    /// A change at `node` with its sequence number.
    pub fn on_change(
        &mut self,
        node: &str,
        epoch: u64,
        seq: u64,
        change: Change,
        now: Instant,
    ) -> Vec<Action> {
        let Some((entry, fresh)) = self.node(node, epoch, now) else {
            return vec![];
        };
        if let Some(sync_state) = &mut entry.sync {
            if sync_state.pending.len() >= MAX_PENDING {
                entry.sync = Some(Sync::default());
                return vec![sync(node, 0)];
            }
            sync_state.pending.push((seq, change));
            return vec![];
        }
        if fresh || seq > entry.seq + 1 {
            entry.sync = Some(Sync {
                pending: vec![(seq, change)],
                ..Sync::default()
            });
            return vec![sync(node, 0)];
        }
        if seq <= entry.seq {
            return vec![]; // a duplicate or a replay
        }
        entry.seq = seq;
        apply(&mut entry.names, change)
            .map(|online| Action::Came {
                node: node.to_owned(),
                online,
            })
            .into_iter()
            .collect()
    }

    /// A page of `node`'s names (the answer to [`Action::Sync`]).
    pub fn on_page(
        &mut self,
        node: &str,
        page: u32,
        seq: u64,
        names: Vec<Online>,
        more: bool,
    ) -> Vec<Action> {
        let Some(entry) = self.nodes.get_mut(node) else {
            return vec![];
        };
        let Some(sync_state) = &mut entry.sync else {
            return vec![];
        };
        sync_state.base.get_or_insert(seq);
        for online in names {
            sync_state.names.insert(online.name.clone(), online);
        }
        if more {
            return vec![sync(node, page.saturating_add(1))];
        }
        let Some(sync_state) = entry.sync.take() else {
            return vec![];
        };
        let base = sync_state.base.unwrap_or(seq);
        entry.names = sync_state.names;
        entry.seq = base;
        let mut pending = sync_state.pending;
        pending.sort_by_key(|(s, _)| *s);
        let mut actions = Vec::new();
        for (s, change) in pending.into_iter().filter(|(s, _)| *s > base) {
            entry.seq = entry.seq.max(s);
            if let Some(online) = apply(&mut entry.names, change) {
                actions.push(Action::Came {
                    node: node.to_owned(),
                    online,
                });
            }
        }
        for online in entry.names.values() {
            actions.push(Action::Came {
                node: node.to_owned(),
                online: online.clone(),
            });
        }
        actions
    }

    /// A resync of `node` failed (no answer): the next heartbeat retries.
    pub fn sync_failed(&mut self, node: &str) {
        if let Some(entry) = self.nodes.get_mut(node) {
            entry.sync = None;
            // Make the next heartbeat see a gap.
            entry.seq = u64::MAX;
        }
    }

    /// Forgets nodes whose lease ran out (and with them their names);
    /// returns their ids.
    pub fn expire(&mut self, now: Instant) -> Vec<String> {
        let dead: Vec<String> = self
            .nodes
            .iter()
            .filter(|(_, n)| n.expires <= now)
            .map(|(id, _)| id.clone())
            .collect();
        for id in &dead {
            self.nodes.remove(id);
        }
        dead
    }

    /// Where `name` is online at another live node (the newest registration).
    pub fn find(&self, name: &str, now: Instant) -> Option<Found> {
        self.nodes
            .iter()
            .filter(|(_, n)| n.expires > now)
            .filter_map(|(id, n)| Some((id, n.relay_addr?, n.names.get(name)?)))
            .max_by(|a, b| (a.2.since_ms, a.0).cmp(&(b.2.since_ms, b.0)))
            .map(|(id, relay_addr, online)| Found {
                node: id.clone(),
                relay_addr,
                online: online.clone(),
            })
    }

    /// Live nodes known, and the names online at them.
    pub fn counts(&self, now: Instant) -> (usize, usize) {
        self.nodes
            .values()
            .filter(|n| n.expires > now)
            .fold((0, 0), |(nodes, names), n| {
                (nodes + 1, names + n.names.len())
            })
    }
}

fn sync(node: &str, page: u32) -> Action {
    Action::Sync {
        node: node.to_owned(),
        page,
    }
}

/// Applies a change; the announcement if it was an `Up`.
fn apply(names: &mut HashMap<String, Online>, change: Change) -> Option<Online> {
    match change {
        Change::Up(online) => {
            names.insert(online.name.clone(), online.clone());
            Some(online)
        }
        Change::Down(name) => {
            names.remove(&name);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::Fingerprint;

    const LEASE: Duration = Duration::from_secs(10);

    fn online(name: &str, since_ms: u64) -> Online {
        Online {
            name: name.into(),
            fingerprint: Fingerprint([1; 32]),
            since_ms,
        }
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([192, 0, 2, 1], port))
    }

    /// A directory that has synced node n2 (epoch 1) at sequence 0.
    fn synced(now: Instant) -> Directory {
        let mut d = Directory::new("n1", LEASE);
        assert_eq!(d.on_alive("n2", 1, addr(2), 0, now), vec![sync("n2", 0)]);
        d.on_page("n2", 0, 0, vec![], false);
        d
    }

    #[test]
    fn changes_in_order_apply_and_a_replay_changes_nothing() {
        let now = Instant::now();
        let mut d = synced(now);
        let up = d.on_change("n2", 1, 1, Change::Up(online("alice", 5)), now);
        assert!(matches!(&up[..], [Action::Came { node, .. }] if node == "n2"));
        assert_eq!(d.find("alice", now).map(|f| f.relay_addr), Some(addr(2)));
        d.on_change("n2", 1, 2, Change::Down("alice".into()), now);
        assert_eq!(d.find("alice", now), None);
        // The Up replayed from the bus: older than the node's number.
        assert!(d
            .on_change("n2", 1, 1, Change::Up(online("alice", 5)), now)
            .is_empty());
        assert_eq!(d.find("alice", now), None);
    }

    #[test]
    fn a_gap_resyncs_and_changes_heard_meanwhile_are_replayed_on_the_pages() {
        let now = Instant::now();
        let mut d = synced(now);
        // Sequence 1 was lost: 2 shows the gap.
        let a = d.on_change("n2", 1, 2, Change::Up(online("bob", 2)), now);
        assert_eq!(a, vec![sync("n2", 0)]);
        // While syncing: carol goes down (4) after the first page (cut at 3).
        d.on_change("n2", 1, 4, Change::Down("carol".into()), now);
        let next = d.on_page("n2", 0, 3, vec![online("alice", 1), online("bob", 2)], true);
        assert_eq!(next, vec![sync("n2", 1)]);
        d.on_page("n2", 1, 4, vec![online("carol", 3)], false);
        assert!(d.find("alice", now).is_some());
        assert!(d.find("bob", now).is_some());
        assert_eq!(
            d.find("carol", now),
            None,
            "the change after page 0 applies"
        );
        // In step again: 5 applies directly.
        let a = d.on_change("n2", 1, 5, Change::Down("bob".into()), now);
        assert!(a.is_empty());
        assert_eq!(d.find("bob", now), None);
    }

    #[test]
    fn a_dead_node_takes_its_names_offline_at_the_end_of_its_lease() {
        let now = Instant::now();
        let mut d = synced(now);
        d.on_change("n2", 1, 1, Change::Up(online("alice", 1)), now);
        let later = now + Duration::from_secs(5);
        d.on_alive("n2", 1, addr(2), 1, later);
        assert!(d.find("alice", later + Duration::from_secs(9)).is_some());
        let end = later + LEASE;
        assert_eq!(d.find("alice", end), None, "lease over: offline");
        assert_eq!(d.expire(end), vec!["n2".to_owned()]);
        assert_eq!(d.counts(end), (0, 0));
    }

    #[test]
    fn a_restarted_node_is_synced_again_and_a_heartbeat_gap_resyncs() {
        let now = Instant::now();
        let mut d = synced(now);
        d.on_change("n2", 1, 1, Change::Up(online("alice", 1)), now);
        // A new process (epoch 2): its old names are forgotten, it is synced.
        assert_eq!(d.on_alive("n2", 2, addr(2), 0, now), vec![sync("n2", 0)]);
        assert_eq!(d.find("alice", now), None);
        d.on_page("n2", 0, 0, vec![], false);
        assert!(d.on_alive("n2", 2, addr(2), 0, now).is_empty(), "in step");
        assert_eq!(
            d.on_alive("n2", 2, addr(2), 3, now),
            vec![sync("n2", 0)],
            "missed changes"
        );
    }

    #[test]
    fn the_newest_registration_wins_and_own_messages_are_ignored() {
        let now = Instant::now();
        let mut d = synced(now);
        d.on_alive("n3", 1, addr(3), 0, now);
        d.on_page("n3", 0, 0, vec![], false);
        d.on_change("n2", 1, 1, Change::Up(online("alice", 10)), now);
        d.on_change("n3", 1, 1, Change::Up(online("alice", 20)), now);
        assert_eq!(d.find("alice", now).map(|f| f.node), Some("n3".into()));
        assert!(d.on_alive("n1", 1, addr(1), 0, now).is_empty());
        assert!(d
            .on_change("n1", 1, 1, Change::Up(online("zed", 1)), now)
            .is_empty());
        assert_eq!(d.find("zed", now), None);
    }
}
