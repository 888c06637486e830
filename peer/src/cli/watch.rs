//! `peer watch NAME…`: each name's presence now and every change, until stopped.
//!
//! The states are `presence` events (printed by the event printer, in
//! order with `rendezvous_lost` / `rendezvous_restored`); this only waits
//! for the watch to end on an error it cannot recover from.

use peer::{Peer, Result};

pub(crate) async fn run(peer: &Peer, names: Vec<String>) -> Result<()> {
    let mut watcher = peer.watch(names)?;
    while let Some(update) = watcher.next().await {
        update?;
    }
    Ok(())
}
