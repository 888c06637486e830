//! Presence beyond this node: who registered a `listen` here, told to the
//! rest of the cluster, and who is online at the other nodes.
//!
//! The registry ([`crate::registry`]) is this node's own presence. The
//! [`Presence`] trait is what the handlers tell and ask about the others:
//! on a single node, [`LocalPresence`] (nothing to tell, nobody elsewhere);
//! in a cluster, [`crate::cluster::Cluster`] (announced on the bus, the
//! other nodes' names from its directory). Call signalling to another node
//! is the cluster's own business (`handlers::remote`), not presence.

use common::Fingerprint;

use crate::cluster::directory::Found;

/// What the handlers tell and ask about presence beyond this node.
pub trait Presence: Send + Sync + 'static {
    /// `name` registered a `listen` here with `fingerprint` (called under
    /// the registry lock, so arrivals and departures keep their order);
    /// `invisible`: callable, but shown offline to lookups and watchers.
    fn went_online(&self, name: &str, fingerprint: Fingerprint, invisible: bool);
    /// `name`'s `listen` here went away (under the registry lock too).
    fn went_offline(&self, name: &str);
    /// Where `name` is online at another node, if it is.
    fn find(&self, name: &str) -> Option<Found>;
}

/// One node: nothing to tell, nobody elsewhere.
#[derive(Debug, Default, Clone, Copy)]
pub struct LocalPresence;

impl Presence for LocalPresence {
    fn went_online(&self, _name: &str, _fingerprint: Fingerprint, _invisible: bool) {}

    fn went_offline(&self, _name: &str) {}

    fn find(&self, _name: &str) -> Option<Found> {
        None
    }
}

impl Presence for crate::cluster::Cluster {
    fn went_online(&self, name: &str, fingerprint: Fingerprint, invisible: bool) {
        crate::cluster::Cluster::went_online(self, name, fingerprint, invisible);
    }

    fn went_offline(&self, name: &str) {
        crate::cluster::Cluster::went_offline(self, name);
    }

    fn find(&self, name: &str) -> Option<Found> {
        crate::cluster::Cluster::find(self, name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_single_node_knows_nobody_elsewhere() {
        let local: &dyn Presence = &LocalPresence;
        local.went_online("alice", Fingerprint([1; 32]), false);
        assert_eq!(
            local.find("alice"),
            None,
            "its own names are the registry's"
        );
        local.went_offline("alice");
    }
}
