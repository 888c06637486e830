//! Which rendezvous node to use (`--server A,B,C`), without I/O.
//!
//! The list names nodes of one cluster (one server key, one namespace).
//! Each entry is `HOST:PORT`; a name that resolves to several addresses is
//! several nodes, in the order the resolver gave them, after the nodes of
//! the entries before it. A **round** tries every node once: it starts at
//! the node the peer is on (it worked: stay there), or right after it when
//! that node was [lost](ServerList::lost), and wraps around, so a lost node
//! comes last. Resolving and connecting are the server link's; this type
//! only decides the order.

use std::net::SocketAddr;
use std::time::Duration;

/// Most entries in one list: a round stays bounded.
pub const MAX_ENTRIES: usize = 16;

/// Most nodes one entry (a DNS name) contributes to a round.
pub const MAX_ADDRS_PER_ENTRY: usize = 8;

/// Why a `--server` value is not a list of `HOST:PORT`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServerListError {
    /// Nothing at all.
    #[error("--server is empty: give HOST:PORT[,HOST:PORT…]")]
    Empty,
    /// `A,,B` or a trailing comma.
    #[error("--server entry {position} is empty (a stray comma?): give HOST:PORT[,HOST:PORT…]")]
    EmptyEntry {
        /// 1-based position in the list.
        position: usize,
    },
    /// An entry that is not `HOST:PORT`.
    #[error("--server entry {entry:?} is not HOST:PORT: {reason}")]
    Garbled {
        /// The entry as given.
        entry: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// More than [`MAX_ENTRIES`] entries.
    #[error("--server lists {0} nodes; at most {MAX_ENTRIES}")]
    TooMany(usize),
}

/// One node of a round: the entry it came from and one of its addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// Position of its entry in the list.
    pub index: usize,
    /// The entry as given (`HOST:PORT`: the TLS name and proxy target of
    /// the TCP tunnel).
    pub entry: String,
    /// The address to reach it at.
    pub addr: SocketAddr,
}

impl Node {
    /// How events and errors name it: the entry, plus the address when
    /// the entry is a name (one name may be several nodes).
    pub fn name(&self) -> String {
        match self.entry.parse::<SocketAddr>() {
            Ok(a) if a == self.addr => self.entry.clone(),
            _ => format!("{} ({})", self.entry, self.addr),
        }
    }
}

/// The nodes of `--server` and where the peer is among them.
#[derive(Debug, Clone)]
pub struct ServerList {
    entries: Vec<String>,
    /// The node that last worked (or was lost), by address.
    at: Option<Node>,
    /// Whether `at` was lost: the next round starts after it.
    lost: bool,
    /// Nodes in the last round.
    seen: usize,
}

impl ServerList {
    /// Parses `HOST:PORT[,HOST:PORT…]` (spaces around entries allowed).
    pub fn parse(list: &str) -> Result<Self, ServerListError> {
        if list.trim().is_empty() {
            return Err(ServerListError::Empty);
        }
        let entries: Vec<String> = list.split(',').map(|e| e.trim().to_owned()).collect();
        if entries.len() > MAX_ENTRIES {
            return Err(ServerListError::TooMany(entries.len()));
        }
        for (i, entry) in entries.iter().enumerate() {
            check_entry(entry, i + 1)?;
        }
        Ok(Self {
            seen: entries.len(),
            entries,
            at: None,
            lost: false,
        })
    }

    /// The entries, in order (each to be resolved for [`ServerList::round`]).
    pub fn entries(&self) -> &[String] {
        &self.entries
    }

    /// Whether another node than the one the peer is on may be tried
    /// (several entries, or a name with several addresses).
    pub fn several(&self) -> bool {
        self.entries.len() > 1 || self.seen > 1
    }

    /// The order to try the nodes in this round, given each entry's
    /// resolved addresses (`resolved[i]` for entry `i`; empty when it did
    /// not resolve). Addresses of the socket's family (`ipv4`) are used
    /// when an entry has any, at most [`MAX_ADDRS_PER_ENTRY`] of it; an
    /// address already listed is not listed again.
    pub fn round(&mut self, resolved: &[Vec<SocketAddr>], ipv4: bool) -> Vec<Node> {
        let mut nodes: Vec<Node> = Vec::new();
        for (index, (entry, addrs)) in self.entries.iter().zip(resolved).enumerate() {
            let same: Vec<SocketAddr> = addrs
                .iter()
                .copied()
                .filter(|a| a.is_ipv4() == ipv4)
                .collect();
            let usable = if same.is_empty() { addrs.clone() } else { same };
            for addr in usable.into_iter().take(MAX_ADDRS_PER_ENTRY) {
                if nodes.iter().all(|n| n.addr != addr) {
                    nodes.push(Node {
                        index,
                        entry: entry.clone(),
                        addr,
                    });
                }
            }
        }
        self.seen = nodes.len();
        let start = match &self.at {
            None => 0,
            Some(at) => match nodes.iter().position(|n| n.addr == at.addr) {
                Some(p) if self.lost => p + 1,
                Some(p) => p,
                // Its address went away: the first node of its entry or after.
                None => nodes.iter().position(|n| n.index >= at.index).unwrap_or(0),
            },
        };
        let len = nodes.len();
        if len > 0 {
            nodes.rotate_left(start % len);
        }
        nodes
    }

    /// The time to spread a return over after a clean shutdown of the node
    /// that asked for `asked`: all of it when that node is the only one
    /// (its peers would meet it as a herd), a tenth of it when another
    /// node is listed (most of them go there, not back to it).
    pub fn shutdown_spread(&self, asked: Duration) -> Duration {
        if self.several() {
            asked / 10
        } else {
            asked
        }
    }

    /// `node` worked: later rounds start there.
    pub fn connected(&mut self, node: &Node) {
        self.at = Some(node.clone());
        self.lost = false;
    }

    /// The peer lost `node` (or it failed a request): the next round
    /// starts with the node after it and tries it last.
    pub fn lost(&mut self, node: &Node) {
        self.at = Some(node.clone());
        self.lost = true;
    }
}

/// `HOST:PORT` with a non-zero port; an IPv6 address in brackets.
fn check_entry(entry: &str, position: usize) -> Result<(), ServerListError> {
    let garbled = |reason| ServerListError::Garbled {
        entry: entry.to_owned(),
        reason,
    };
    if entry.is_empty() {
        return Err(ServerListError::EmptyEntry { position });
    }
    if entry.contains("://") || entry.contains('/') {
        return Err(garbled("no scheme or path, just HOST:PORT"));
    }
    if entry.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(garbled("it contains a space"));
    }
    let (host, port) = match entry.strip_prefix('[') {
        Some(rest) => {
            let (host, after) = rest.split_once(']').ok_or_else(|| garbled("no ']'"))?;
            let port = after
                .strip_prefix(':')
                .ok_or_else(|| garbled("no :PORT after the IPv6 address"))?;
            if host.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(garbled("not an IPv6 address inside the brackets"));
            }
            (host, port)
        }
        None => {
            let (host, port) = entry.rsplit_once(':').ok_or_else(|| garbled("no :PORT"))?;
            if host.contains(':') {
                return Err(garbled("an IPv6 address goes in brackets: [ADDR]:PORT"));
            }
            (host, port)
        }
    };
    if host.is_empty() {
        return Err(garbled("no host"));
    }
    match port.parse::<u16>() {
        Ok(0) => Err(garbled("port 0")),
        Ok(_) => Ok(()),
        Err(_) => Err(garbled("the port is not a number from 1 to 65535")),
    }
}

#[cfg(test)]
#[path = "server_list_tests.rs"]
mod tests;
