//! Several nodes, one namespace: presence and call signalling between
//! rendezvous nodes over NATS (DESIGN §7).
//!
//! Each node has a subject of its own (`rdv.node.<id>`) and all share
//! one presence subject (`rdv.presence`). A node announces the names
//! that register a `listen` with it and their departures, in sequence,
//! plus a heartbeat; every node keeps the others' names in a
//! [`directory::Directory`], so a lookup or a call for a name online at
//! another node needs no bus round trip to find it. A call to such a name
//! goes to that node's subject: the caller's node brokers as on one node
//! ([`crate::broker`]), the callee's node asks the callee
//! (`handlers::remote`) and allocates its half of the relay call, and the
//! caller's node mirrors it, so relay frames go peer → caller's node →
//! callee's node → peer with the same per-party header checks on each.
//!
//! Every bus message is sealed ([`wire::BusKey`]) under a key derived
//! from the server key the nodes share: the bus's own credentials keep
//! strangers off it, and the seal keeps anyone on it from reading offers
//! and candidates or announcing a name.
//!
//! - [`wire`]: the messages and the seal (sans-IO).
//! - [`directory`]: the other nodes' names, leases and resyncs (sans-IO).
//! - `bus`: the NATS driver (connect, publish in order, heartbeats,
//!   requests and replies).

pub mod directory;
pub mod wire;

mod bus;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use bus::{BusError, Cluster, Incoming};

/// How a node joins its cluster.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// The NATS URL(s): `nats://[user:pass@|token@]host:port[,…]`
    /// (`tls://` for TLS).
    pub bus: String,
    /// A NATS credentials file (JWT + nkey seed), instead of URL credentials.
    pub creds: Option<PathBuf>,
    /// A PEM file of the CA(s) that sign the bus's TLS certificate, when
    /// not a public CA (a cluster's own).
    pub ca: Option<PathBuf>,
    /// This node's id (its subject): letters, digits, `-` and `_`.
    pub node_id: String,
    /// Where other nodes send this node relay frames (its UDP address as
    /// they reach it).
    pub node_addr: SocketAddr,
    /// How often this node says it is alive.
    pub heartbeat: Duration,
    /// How long after its last message a node counts as alive.
    pub lease: Duration,
    /// Subject prefix (one per cluster sharing a NATS).
    pub prefix: String,
}

impl ClusterConfig {
    /// A config with the default timings (heartbeat 2 s, lease 10 s).
    pub fn new(bus: String, node_id: String, node_addr: SocketAddr) -> Self {
        Self {
            bus,
            creds: None,
            ca: None,
            node_id,
            node_addr,
            heartbeat: Duration::from_secs(2),
            lease: Duration::from_secs(10),
            prefix: "rdv".into(),
        }
    }
}

/// Whether `id` can name a node (it becomes part of a NATS subject).
pub fn valid_node_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Credentials found in a bus URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BusAuth {
    /// None in the URL (a creds file, or an open bus on loopback).
    None,
    /// `user:pass@`.
    UserPass(String, String),
    /// `token@`.
    Token(String),
}

/// Splits the credentials out of a bus URL: the servers without them,
/// and what to authenticate with. `Err` says what is wrong.
pub fn split_bus_url(url: &str) -> Result<(String, BusAuth), String> {
    let mut auth = BusAuth::None;
    let mut servers = Vec::new();
    for part in url.split(',').map(str::trim) {
        let (scheme, rest) = match part.split_once("://") {
            Some((s, r)) if matches!(s, "nats" | "tls") => (s, r),
            Some((s, _)) => return Err(format!("unknown scheme {s:?}: use nats:// or tls://")),
            None => ("nats", part),
        };
        let host = match rest.rsplit_once('@') {
            Some((creds, host)) => {
                let found = match creds.split_once(':') {
                    Some((u, p)) => BusAuth::UserPass(u.to_owned(), p.to_owned()),
                    None => BusAuth::Token(creds.to_owned()),
                };
                if auth != BusAuth::None && auth != found {
                    return Err("every server of --bus must carry the same credentials".into());
                }
                auth = found;
                host
            }
            None => rest,
        };
        if host.is_empty() {
            return Err(format!("no host in {part:?}"));
        }
        servers.push(format!("{scheme}://{host}"));
    }
    Ok((servers.join(","), auth))
}

/// Whether every server of a (credential-free) bus URL is on loopback,
/// where TLS is not required.
pub fn bus_on_loopback(servers: &str) -> bool {
    servers.split(',').all(|s| {
        let host = s.split_once("://").map_or(s, |(_, h)| h);
        let host = host.rsplit_once(':').map_or(host, |(h, _)| h);
        let host = host.trim_start_matches('[').trim_end_matches(']');
        host == "localhost"
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_come_out_of_the_url() {
        assert_eq!(
            split_bus_url("nats://rdv:s3cret@127.0.0.1:4222"),
            Ok((
                "nats://127.0.0.1:4222".into(),
                BusAuth::UserPass("rdv".into(), "s3cret".into())
            ))
        );
        assert_eq!(
            split_bus_url("tls://tok@a:1,tls://tok@b:2"),
            Ok(("tls://a:1,tls://b:2".into(), BusAuth::Token("tok".into())))
        );
        assert_eq!(
            split_bus_url("nats://h:4222"),
            Ok(("nats://h:4222".into(), BusAuth::None))
        );
        assert!(split_bus_url("http://h").is_err());
        assert!(split_bus_url("nats://a@h,nats://b@h").is_err());
        assert!(split_bus_url("nats://u:p@").is_err());
    }

    #[test]
    fn tls_is_required_off_loopback() {
        assert!(bus_on_loopback("nats://127.0.0.1:4222,nats://localhost:1"));
        assert!(bus_on_loopback("nats://[::1]:4222"));
        assert!(!bus_on_loopback(
            "nats://127.0.0.1:4222,nats://10.0.0.2:4222"
        ));
        assert!(!bus_on_loopback("nats://nats.example:4222"));
    }

    #[test]
    fn node_ids_fit_a_subject() {
        assert!(valid_node_id("node-1_a"));
        assert!(!valid_node_id(""));
        assert!(!valid_node_id("a.b"));
        assert!(!valid_node_id("a*"));
        assert!(!valid_node_id(&"x".repeat(65)));
    }
}
