//! The pure decisions of a cluster run (`--nodes N`), unit-tested without
//! any network: argument checks, which node each peer uses (round-robin),
//! same-node and cross-node pairs, and the statistics of the report.

use std::time::Duration;

/// Most nodes one run starts (all on this machine).
pub(crate) const MAX_NODES: usize = 16;

/// What `--nodes` needs from the rest of the command line; `Err` is the
/// message for the user.
pub(crate) fn check_cluster(
    nodes: usize,
    peers: usize,
    bus: bool,
    external_server: bool,
) -> Result<(), String> {
    if !(1..=MAX_NODES).contains(&nodes) {
        return Err(format!("--nodes {nodes}: use 1 to {MAX_NODES}"));
    }
    if !bus {
        return Err(
            "--nodes needs --bus nats://USER:PASS@127.0.0.1:PORT (a running nats-server)".into(),
        );
    }
    if external_server {
        return Err("--nodes starts its own nodes: drop --server".into());
    }
    if peers < 2 * nodes {
        return Err(format!(
            "--peers {peers}: a run on {nodes} nodes needs at least {} (two per node, for same-node pairs)",
            2 * nodes
        ));
    }
    Ok(())
}

/// Whether `rendezvous --help` (its text) lists the `--store` flag.
pub(crate) fn help_lists_store(help: &str) -> bool {
    help.split(|c: char| c.is_whitespace() || c == ',' || c == '=' || c == '[')
        .any(|w| w == "--store")
}

/// The node peer `i` connects to: round-robin.
pub(crate) fn node_of(i: usize, nodes: usize) -> usize {
    i % nodes.max(1)
}

/// How many of `peers` peers use `node`.
pub(crate) fn peers_at(node: usize, peers: usize, nodes: usize) -> usize {
    peers.saturating_sub(node).div_ceil(nodes.max(1))
}

/// The `m`-th peer of `node` (wrapping over that node's peers).
pub(crate) fn peer_at(node: usize, m: usize, peers: usize, nodes: usize) -> usize {
    let count = peers_at(node, peers, nodes).max(1);
    node + nodes.max(1) * (m % count)
}

/// Same-node or cross-node: where the other party of a lookup or call is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Where {
    /// At the caller's own node.
    Same,
    /// At another node.
    Cross,
}

impl Where {
    /// The word used in the table and the JSON.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::Same => "same-node",
            Self::Cross => "cross-node",
        }
    }
}

/// The `k`-th call of a phase: (caller, callee). Same: the callee is the
/// caller's neighbour at its own node (±`nodes`); cross: the next (or
/// previous) peer, which round-robin puts at another node. `None` when no
/// such pair exists (cross on one node, or too few peers).
pub(crate) fn pair(k: usize, peers: usize, nodes: usize, at: Where) -> Option<(usize, usize)> {
    let step = match at {
        Where::Same => nodes,
        Where::Cross if nodes >= 2 => 1,
        Where::Cross => return None,
    };
    if peers < 2 * step || peers < 2 {
        return None;
    }
    let caller = k % peers;
    let callee = if caller + step < peers {
        caller + step
    } else {
        caller - step
    };
    Some((caller, callee))
}

/// A lookup from peer `from` of a name at its own node (`Same`) or at
/// another node (`Cross`), chosen by the random numbers `r1`, `r2`.
pub(crate) fn lookup_target(
    from: usize,
    r1: usize,
    r2: usize,
    peers: usize,
    nodes: usize,
    at: Where,
) -> Option<usize> {
    let home = node_of(from, nodes);
    let node = match at {
        Where::Same => home,
        Where::Cross if nodes >= 2 => (home + 1 + r1 % (nodes - 1)) % nodes,
        Where::Cross => return None,
    };
    Some(peer_at(node, r2, peers, nodes))
}

/// Median and 95th percentile of `times` (nearest rank), `None` if empty.
pub(crate) fn median_p95(times: &[Duration]) -> Option<(Duration, Duration)> {
    if times.is_empty() {
        return None;
    }
    let mut t = times.to_vec();
    t.sort();
    let rank = |q: f64| t[((t.len() as f64 * q).ceil() as usize).clamp(1, t.len()) - 1];
    Some((rank(0.5), rank(0.95)))
}

/// Core-µs one node spent per operation: its CPU seconds over the phase,
/// over the operations the whole cluster completed (0 when none).
pub(crate) fn core_us_per_op(cpu_secs: f64, ops: usize) -> f64 {
    if ops == 0 {
        return 0.0;
    }
    cpu_secs.max(0.0) * 1e6 / ops as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(r: Result<(), String>) -> String {
        r.err().unwrap_or_default()
    }

    #[test]
    fn cluster_arguments_are_checked() {
        assert!(check_cluster(2, 2000, true, false).is_ok());
        assert!(check_cluster(1, 2, true, false).is_ok());
        assert!(err(check_cluster(0, 2000, true, false)).contains("--nodes 0"));
        assert!(check_cluster(MAX_NODES + 1, 2000, true, false).is_err());
        assert!(err(check_cluster(2, 2000, false, false)).contains("--bus"));
        assert!(err(check_cluster(2, 2000, true, true)).contains("--server"));
        assert!(err(check_cluster(3, 5, true, false)).contains("at least 6"));
    }

    #[test]
    fn store_flag_is_found_in_help_only_as_a_flag() {
        assert!(help_lists_store(
            "      --store <URL>\n          Where names live"
        ));
        assert!(help_lists_store("  --store=URL"));
        assert!(!help_lists_store(
            "      --data-dir <DATA_DIR>\n  the store of names"
        ));
        assert!(!help_lists_store("      --store-timeout <MS>"));
    }

    #[test]
    fn round_robin_spreads_peers_evenly() {
        let (peers, nodes) = (2001, 2);
        let mut count = [0usize; 2];
        for i in 0..peers {
            count[node_of(i, nodes)] += 1;
        }
        assert_eq!(count, [1001, 1000]);
        assert_eq!(peers_at(0, peers, nodes), 1001);
        assert_eq!(peers_at(1, peers, nodes), 1000);
        assert_eq!(node_of(7, 1), 0);
        for m in 0..3000 {
            for node in 0..nodes {
                let p = peer_at(node, m, peers, nodes);
                assert!(p < peers);
                assert_eq!(node_of(p, nodes), node);
            }
        }
    }

    #[test]
    fn pairs_are_at_one_node_or_at_two() {
        for (peers, nodes) in [(2000, 2), (2001, 2), (7, 3), (10, 1), (6, 3)] {
            for k in 0..3 * peers {
                let (a, b) = pair(k, peers, nodes, Where::Same).expect("same pair");
                assert!(a < peers && b < peers && a != b, "{peers} {nodes} {k}");
                assert_eq!(node_of(a, nodes), node_of(b, nodes));
                assert_eq!(a, k % peers, "every peer calls in turn");
                match pair(k, peers, nodes, Where::Cross) {
                    Some((a, b)) => {
                        assert!(nodes >= 2 && a < peers && b < peers);
                        assert_ne!(node_of(a, nodes), node_of(b, nodes));
                    }
                    None => assert_eq!(nodes, 1),
                }
            }
        }
        assert_eq!(pair(0, 3, 2, Where::Same), None, "too few peers");
    }

    #[test]
    fn lookup_targets_are_where_asked() {
        let (peers, nodes) = (1000, 3);
        for from in 0..peers {
            for r in 0..5 {
                let same = lookup_target(from, r, r * 31, peers, nodes, Where::Same);
                let same = same.expect("same");
                assert_eq!(node_of(same, nodes), node_of(from, nodes));
                let cross = lookup_target(from, r, r * 17, peers, nodes, Where::Cross);
                let cross = cross.expect("cross");
                assert!(cross < peers);
                assert_ne!(node_of(cross, nodes), node_of(from, nodes));
            }
        }
        assert_eq!(lookup_target(3, 0, 0, 10, 1, Where::Cross), None);
    }

    #[test]
    fn median_and_p95_by_nearest_rank() {
        let ms = |v: u64| Duration::from_millis(v);
        assert_eq!(median_p95(&[]), None);
        assert_eq!(median_p95(&[ms(4)]), Some((ms(4), ms(4))));
        let times: Vec<Duration> = (1..=100).rev().map(ms).collect();
        assert_eq!(median_p95(&times), Some((ms(50), ms(95))));
        let times: Vec<Duration> = [5, 1, 3].into_iter().map(ms).collect();
        assert_eq!(median_p95(&times), Some((ms(3), ms(5))));
    }

    #[test]
    fn cpu_per_operation() {
        assert_eq!(core_us_per_op(0.5, 1000), 500.0);
        assert_eq!(core_us_per_op(0.5, 0), 0.0);
        assert_eq!(core_us_per_op(-0.1, 10), 0.0);
    }
}
