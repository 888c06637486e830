//! Who is online at the other nodes: the presence directory, sans-IO.
//!
//! Every node announces its own names on the presence subject, each change
//! with the next number of its sequence ([`super::wire::Body::Up`] /
//! `Down`), and a heartbeat with its current number every
//! [`super::ClusterConfig::heartbeat`] (`Alive`), all in one ordered
//! stream. A node is alive for [`Directory::new`]'s lease after its last
//! message: a node that dies (SIGKILL, a cut network) takes its names
//! offline when its lease runs out. The lease is per node, not per name, so
//! keeping it costs one small message per node and heartbeat, whatever the
//! number of names.
//!
//! A receiver that sees a node for the first time, a newer process of it
//! (a greater `epoch`: its start time, then random bits), or a gap in its
//! sequence (NATS core delivers at most once) asks that node for its names,
//! page by page from a cursor ([`Action::Sync`]), keeps the changes that
//! arrive meanwhile, and replays those newer than the first page on top of
//! the pages. Each resync has a generation: a page of an older one is
//! dropped. Anything older than what was applied (an older epoch, an older
//! sequence number, an older send time) changes nothing, so a message
//! replayed from the bus can neither revive a name nor extend a dead
//! node's lease.
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
    /// Ask `node` for its names after `after` (from the start: `None`),
    /// for resync `generation`.
    Sync {
        /// The node.
        node: String,
        /// Which resync (hand it back with the page).
        generation: u64,
        /// The last name of the previous page.
        after: Option<String>,
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
    /// The newest send time seen (older messages do not extend the lease).
    sent_ms: u64,
    expires: Instant,
    names: HashMap<String, Online>,
    sync: Option<Sync>,
    /// A resync failed: the next heartbeat starts another.
    stale: bool,
}

/// A resync in progress.
#[derive(Debug)]
struct Sync {
    generation: u64,
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
    generations: u64,
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
            generations: 0,
        }
    }

    /// The entry of `node` for a message from its process `epoch`, sent at
    /// `sent_ms`, created or reset for a newer epoch; `None` for this
    /// node's own messages and for anything from an older epoch. The flag
    /// says it is new.
    fn node<'a>(
        nodes: &'a mut HashMap<String, Node>,
        (me, lease): (&str, Duration),
        node: &str,
        (epoch, sent_ms): (u64, u64),
        now: Instant,
    ) -> Option<(&'a mut Node, bool)> {
        if node == me {
            return None;
        }
        let fresh = match nodes.get(node) {
            Some(n) if epoch < n.epoch => return None,
            Some(n) => n.epoch != epoch,
            None => true,
        };
        if fresh {
            nodes.insert(
                node.to_owned(),
                Node {
                    epoch,
                    relay_addr: None,
                    seq: 0,
                    sent_ms: 0,
                    expires: now,
                    names: HashMap::new(),
                    sync: None,
                    stale: false,
                },
            );
        }
        let entry = nodes.get_mut(node)?;
        if sent_ms >= entry.sent_ms {
            entry.sent_ms = sent_ms;
            entry.expires = now + lease;
        }
        Some((entry, fresh))
    }

    /// Starts a resync of `node` (its entry is `entry`), with `pending` kept.
    fn start_sync(
        generations: &mut u64,
        node: &str,
        entry: &mut Node,
        pending: Vec<(u64, Change)>,
    ) -> Action {
        *generations += 1;
        entry.stale = false;
        entry.sync = Some(Sync {
            generation: *generations,
            base: None,
            names: HashMap::new(),
            pending,
        });
        Action::Sync {
            node: node.to_owned(),
            generation: *generations,
            after: None,
        }
    }

    /// A heartbeat from `node`, stamped (its process's epoch, sent at ms).
    pub fn on_alive(
        &mut self,
        node: &str,
        stamp: (u64, u64),
        relay_addr: SocketAddr,
        seq: u64,
        now: Instant,
    ) -> Vec<Action> {
        let Some((entry, fresh)) =
            Self::node(&mut self.nodes, (&self.me, self.lease), node, stamp, now)
        else {
            return vec![];
        };
        entry.relay_addr = Some(relay_addr);
        if entry.sync.is_none() && (fresh || entry.stale || seq > entry.seq) {
            return vec![Self::start_sync(&mut self.generations, node, entry, vec![])];
        }
        vec![]
    }

    /// A change at `node` with its sequence number, stamped as a heartbeat is.
    pub fn on_change(
        &mut self,
        node: &str,
        stamp: (u64, u64),
        seq: u64,
        change: Change,
        now: Instant,
    ) -> Vec<Action> {
        let Some((entry, fresh)) =
            Self::node(&mut self.nodes, (&self.me, self.lease), node, stamp, now)
        else {
            return vec![];
        };
        if let Some(sync_state) = &mut entry.sync {
            if sync_state.pending.len() >= MAX_PENDING {
                return vec![Self::start_sync(&mut self.generations, node, entry, vec![])];
            }
            sync_state.pending.push((seq, change));
            return vec![];
        }
        if fresh || entry.stale || seq > entry.seq.saturating_add(1) {
            let pending = vec![(seq, change)];
            return vec![Self::start_sync(
                &mut self.generations,
                node,
                entry,
                pending,
            )];
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
        generation: u64,
        seq: u64,
        names: Vec<Online>,
        more: bool,
    ) -> Vec<Action> {
        let Some(entry) = self.nodes.get_mut(node) else {
            return vec![];
        };
        let Some(sync_state) = entry.sync.as_mut().filter(|s| s.generation == generation) else {
            return vec![]; // an older resync's page
        };
        sync_state.base.get_or_insert(seq);
        let last = names.last().map(|o| o.name.clone());
        for online in names {
            sync_state.names.insert(online.name.clone(), online);
        }
        if let (true, Some(after)) = (more, last) {
            return vec![Action::Sync {
                node: node.to_owned(),
                generation,
                after: Some(after),
            }];
        }
        let Some(sync_state) = entry.sync.take() else {
            return vec![];
        };
        let base = sync_state.base.unwrap_or(seq);
        entry.names = sync_state.names;
        entry.seq = base;
        let mut pending = sync_state.pending;
        pending.sort_by_key(|(s, _)| *s);
        for (s, change) in pending.into_iter().filter(|(s, _)| *s > base) {
            entry.seq = entry.seq.max(s);
            apply(&mut entry.names, change);
        }
        entry
            .names
            .values()
            .map(|online| Action::Came {
                node: node.to_owned(),
                online: online.clone(),
            })
            .collect()
    }

    /// Resync `generation` of `node` failed (no answer): the next heartbeat
    /// starts another.
    pub fn sync_failed(&mut self, node: &str, generation: u64) {
        if let Some(entry) = self.nodes.get_mut(node) {
            if entry
                .sync
                .as_ref()
                .is_some_and(|s| s.generation == generation)
            {
                entry.sync = None;
                entry.stale = true;
            }
        }
    }

    /// The newest `since_ms` any other live node announced for `name`.
    pub fn newest_since(&self, name: &str, now: Instant) -> Option<u64> {
        self.find(name, now).map(|f| f.online.since_ms)
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

    /// Whether `node`'s relay address is known: its names are findable
    /// only from its first heartbeat on.
    pub fn has_relay(&self, node: &str) -> bool {
        self.nodes.get(node).is_some_and(|n| n.relay_addr.is_some())
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
    /// Epoch 1, sent at 1,000 ms.
    const E1: (u64, u64) = (1, 1000);

    fn online(name: &str, since_ms: u64) -> Online {
        Online {
            name: name.into(),
            fingerprint: Fingerprint([1; 32]),
            since_ms,
            invisible: false,
        }
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([192, 0, 2, 1], port))
    }

    /// The generation of the one `Sync` in `actions`, which starts from the top.
    fn sync_of(actions: &[Action], node: &str) -> u64 {
        match actions {
            [Action::Sync {
                node: n,
                generation,
                after: None,
            }] if n == node => *generation,
            other => panic!("expected a resync of {node}: {other:?}"),
        }
    }

    /// A directory that has synced node n2 (epoch 1) at sequence 0.
    fn synced(now: Instant) -> Directory {
        let mut d = Directory::new("n1", LEASE);
        let g = sync_of(&d.on_alive("n2", E1, addr(2), 0, now), "n2");
        d.on_page("n2", g, 0, vec![], false);
        d
    }

    #[test]
    fn changes_in_order_apply_and_a_replay_changes_nothing() {
        let now = Instant::now();
        let mut d = synced(now);
        let up = d.on_change("n2", E1, 1, Change::Up(online("alice", 5)), now);
        assert!(matches!(&up[..], [Action::Came { node, .. }] if node == "n2"));
        assert_eq!(d.find("alice", now).map(|f| f.relay_addr), Some(addr(2)));
        d.on_change("n2", E1, 2, Change::Down("alice".into()), now);
        assert_eq!(d.find("alice", now), None);
        // The Up replayed from the bus: older than the node's number.
        assert!(d
            .on_change("n2", E1, 1, Change::Up(online("alice", 5)), now)
            .is_empty());
        assert_eq!(d.find("alice", now), None);
        // A replayed heartbeat from before: no resync, no longer lease.
        assert!(d.on_alive("n2", E1, addr(2), 1, now).is_empty());
    }

    #[test]
    fn a_gap_resyncs_by_cursor_and_changes_heard_meanwhile_are_replayed_on_the_pages() {
        let now = Instant::now();
        let mut d = synced(now);
        // Sequence 1 was lost: 2 shows the gap.
        let a = d.on_change("n2", E1, 2, Change::Up(online("bob", 2)), now);
        let g = sync_of(&a, "n2");
        // While syncing: carol goes down (4) after the first page (cut at 3).
        d.on_change("n2", E1, 4, Change::Down("carol".into()), now);
        let next = d.on_page("n2", g, 3, vec![online("alice", 1), online("bob", 2)], true);
        assert_eq!(
            next,
            vec![Action::Sync {
                node: "n2".into(),
                generation: g,
                after: Some("bob".into())
            }]
        );
        d.on_page("n2", g, 4, vec![online("carol", 3)], false);
        assert!(d.find("alice", now).is_some());
        assert!(d.find("bob", now).is_some());
        assert_eq!(
            d.find("carol", now),
            None,
            "the change after page 0 applies"
        );
        // In step again: 5 applies directly.
        let a = d.on_change("n2", E1, 5, Change::Down("bob".into()), now);
        assert!(a.is_empty());
        assert_eq!(d.find("bob", now), None);
    }

    #[test]
    fn a_page_of_an_older_resync_is_dropped() {
        let now = Instant::now();
        let mut d = synced(now);
        let old = sync_of(
            &d.on_change("n2", E1, 3, Change::Up(online("a", 1)), now),
            "n2",
        );
        // The node restarts (a newer epoch) while the old resync runs.
        let new = sync_of(&d.on_alive("n2", (2, 2000), addr(2), 0, now), "n2");
        assert_ne!(old, new);
        assert!(d
            .on_page("n2", old, 9, vec![online("ghost", 1)], false)
            .is_empty());
        assert_eq!(d.find("ghost", now), None);
        d.on_page("n2", new, 0, vec![online("b", 2)], false);
        assert!(d.find("b", now).is_some());
    }

    #[test]
    fn a_dead_node_takes_its_names_offline_at_the_end_of_its_lease() {
        let now = Instant::now();
        let mut d = synced(now);
        d.on_change("n2", E1, 1, Change::Up(online("alice", 1)), now);
        let later = now + Duration::from_secs(5);
        d.on_alive("n2", (1, 6000), addr(2), 1, later);
        assert!(d.find("alice", later + Duration::from_secs(9)).is_some());
        // A heartbeat replayed from before the last one extends nothing.
        d.on_alive("n2", (1, 3000), addr(2), 1, later + Duration::from_secs(9));
        let end = later + LEASE;
        assert_eq!(d.find("alice", end), None, "lease over: offline");
        assert_eq!(d.expire(end), vec!["n2".to_owned()]);
        assert_eq!(d.counts(end), (0, 0));
    }

    #[test]
    fn a_restarted_node_is_synced_again_and_its_old_process_is_ignored() {
        let now = Instant::now();
        let mut d = synced(now);
        d.on_change("n2", E1, 1, Change::Up(online("alice", 1)), now);
        // A new process (epoch 2): its old names are forgotten, it is synced.
        let g = sync_of(&d.on_alive("n2", (2, 5000), addr(2), 0, now), "n2");
        assert_eq!(d.find("alice", now), None);
        d.on_page("n2", g, 0, vec![], false);
        assert!(
            d.on_alive("n2", (2, 5001), addr(2), 0, now).is_empty(),
            "in step"
        );
        // The old process's messages (a replay) change nothing now.
        assert!(d.on_alive("n2", (1, 9000), addr(2), 7, now).is_empty());
        assert!(d
            .on_change("n2", (1, 9000), 2, Change::Up(online("zombie", 1)), now)
            .is_empty());
        assert_eq!(d.find("zombie", now), None);
        // Missed changes: the heartbeat's number is ahead.
        sync_of(&d.on_alive("n2", (2, 5002), addr(2), 3, now), "n2");
    }

    #[test]
    fn a_failed_resync_is_retried_at_the_next_heartbeat_without_overflow() {
        let now = Instant::now();
        let mut d = synced(now);
        let g = sync_of(
            &d.on_change("n2", E1, 5, Change::Up(online("a", 1)), now),
            "n2",
        );
        d.sync_failed("n2", g);
        // A change before the retry starts one (no arithmetic on a sentinel).
        let again = d.on_change("n2", E1, 6, Change::Up(online("b", 1)), now);
        sync_of(&again, "n2");
    }

    #[test]
    fn the_newest_registration_wins_and_own_messages_are_ignored() {
        let now = Instant::now();
        let mut d = synced(now);
        let g = sync_of(&d.on_alive("n3", E1, addr(3), 0, now), "n3");
        d.on_page("n3", g, 0, vec![], false);
        d.on_change("n2", E1, 1, Change::Up(online("alice", 10)), now);
        d.on_change("n3", E1, 1, Change::Up(online("alice", 20)), now);
        assert_eq!(d.find("alice", now).map(|f| f.node), Some("n3".into()));
        assert_eq!(d.newest_since("alice", now), Some(20));
        assert!(d.on_alive("n1", E1, addr(1), 0, now).is_empty());
        assert!(d
            .on_change("n1", E1, 1, Change::Up(online("zed", 1)), now)
            .is_empty());
        assert_eq!(d.find("zed", now), None);
    }

    #[test]
    fn names_are_found_from_the_first_heartbeat_on() {
        let now = Instant::now();
        let mut d = Directory::new("n1", LEASE);
        let g = sync_of(
            &d.on_change("n2", E1, 1, Change::Up(online("alice", 1)), now),
            "n2",
        );
        d.on_page("n2", g, 1, vec![online("alice", 1)], false);
        assert!(!d.has_relay("n2"));
        assert_eq!(d.find("alice", now), None, "no relay address yet");
        d.on_alive("n2", E1, addr(2), 1, now);
        assert!(d.has_relay("n2"));
        assert!(d.find("alice", now).is_some());
    }
}
