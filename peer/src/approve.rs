//! Telling the server whose calls a `listen` accepts anyway.
//!
//! The server limits call offers per callee, so a stranger ringing a user
//! cannot fill its stream slots. Callers the user has pre-approved are not
//! counted, so the same flood cannot lock its contacts out: after each
//! registration the listener sends their keys in [`Message::Approve`].
//! The keys are the known_peers entries (for an `--accept-from` list, only
//! those of the listed names), at most [`MAX_APPROVED`], in the order the
//! entries come (known_peers: oldest first), so strangers accepted later
//! cannot push early contacts out of the list. The server still holds each
//! approved key to its own per-(key, callee) offer bucket.
//!
//! Then [`Message::AcceptApproved`]: the server introduces these callers at
//! once, without offering their calls (it sends `Preapproved`, then `Dial`),
//! which saves each such call the round trip to the callee.

use std::sync::atomic::Ordering;

use common::messages::MAX_APPROVED;
use common::{ErrorKind, Fingerprint, Message};
use tracing::debug;

use crate::path::PathMode;
use crate::peer::Peer;
use crate::policy::Policy;
use crate::router::InitialsHeld;
use crate::server_link::ServerLink;

/// The keys `policy` accepts anyway, from the known_peers `entries`:
/// every known contact's for [`Policy::AcceptAll`], the listed names' for
/// [`Policy::AllowList`]; deduplicated, at most [`MAX_APPROVED`], the
/// first ones in the order given (never sorted).
pub(crate) fn pre_approved(policy: &Policy, entries: &[(String, Fingerprint)]) -> Vec<Fingerprint> {
    let mut out: Vec<Fingerprint> = Vec::new();
    for (name, fp) in entries {
        let listed = match policy {
            Policy::AcceptAll => true,
            Policy::AllowList(names) => names.iter().any(|n| n == name),
        };
        if listed && !out.contains(fp) {
            out.push(*fp);
        }
        if out.len() == MAX_APPROVED {
            break;
        }
    }
    out
}

/// Sends the pre-approved keys on `link`. A failure only costs the
/// contacts their exemption from the per-callee limits: logged, not fatal.
///
/// A server that predates [`Message::Approve`] answers it as a malformed
/// request (kind `protocol`) and closes the link; it is not asked again by
/// this peer, so the listener reconnects once instead of in a loop.
/// Returns the guard to hold while the standing answer is in force (see
/// [`accept_approved`]); `None` when there is none.
pub(crate) async fn send(peer: &Peer, link: &ServerLink, policy: &Policy) -> Option<InitialsHeld> {
    let unsupported = &peer.inner.approve_unsupported;
    if unsupported.load(Ordering::Relaxed) {
        return None;
    }
    let entries = match peer.inner.known.entries() {
        Ok(entries) => entries,
        Err(e) => {
            debug!("not sending approvals: {e}");
            return None;
        }
    };
    let fingerprints = pre_approved(policy, &entries);
    if fingerprints.is_empty() {
        return None;
    }
    match link.request(&Message::Approve { fingerprints }).await {
        Ok(Message::Approved { count }) => debug!(count, "pre-approved callers sent"),
        Ok(Message::Error {
            kind: ErrorKind::Protocol,
            message,
        }) => {
            debug!("the server does not take approvals ({message}); not sending them again");
            unsupported.store(true, Ordering::Relaxed);
            return None;
        }
        Ok(other) => {
            debug!("the server answered Approve with {}", other.kind_name());
            return None;
        }
        Err(e) => {
            debug!("approvals not sent: {e}");
            return None;
        }
    }
    accept_approved(peer, link).await
}

/// Tells the server to accept the approved callers' calls without asking
/// (`AcceptApproved`, with what our `Accept` would say), so their calls
/// save the round trip to us. We still check each against the policy, and
/// let in only its key. Like [`send`], a server that predates it is not
/// asked again.
///
/// While it is in force (the returned guard is held), QUIC Initials from
/// addresses no call knows are kept briefly instead of refused: such a
/// caller learns our address as we learn of its call, and its first
/// Initial can beat the news (on a LAN, or loopback); kept, it reaches the
/// call once the `Dial` makes its address a path.
async fn accept_approved(peer: &Peer, link: &ServerLink) -> Option<InitialsHeld> {
    let unsupported = &peer.inner.standing_unsupported;
    if unsupported.load(Ordering::Relaxed) {
        return None;
    }
    let hide = peer.inner.config.listen_path == PathMode::Relay;
    let candidates = match hide {
        true => vec![],
        false => peer.inner.socket.local_candidates(),
    };
    let standing = Message::AcceptApproved {
        candidates,
        hide_addresses: hide,
    };
    match link.request(&standing).await {
        Ok(Message::Approved { count }) => {
            debug!(count, "approved callers are accepted at once");
            return Some(peer.inner.socket.router.hold_initials());
        }
        Ok(Message::Error {
            kind: ErrorKind::Protocol,
            message,
        }) => {
            debug!("the server does not take standing answers ({message}); not sending them again");
            unsupported.store(true, Ordering::Relaxed);
        }
        Ok(other) => debug!(
            "the server answered AcceptApproved with {}",
            other.kind_name()
        ),
        Err(e) => debug!("standing answer not sent: {e}"),
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_contacts_or_the_allow_list_capped() {
        let entries: Vec<(String, Fingerprint)> = (0..=255u8)
            .map(|i| (format!("n{i}"), Fingerprint([i; 32])))
            .collect();
        assert_eq!(
            pre_approved(&Policy::AcceptAll, &entries).len(),
            MAX_APPROVED
        );
        let list = Policy::AllowList(vec!["n3".into(), "n7".into(), "stranger".into()]);
        assert_eq!(
            pre_approved(&list, &entries),
            vec![Fingerprint([3; 32]), Fingerprint([7; 32])]
        );
        assert!(pre_approved(&Policy::AcceptAll, &[]).is_empty());
    }

    /// The oldest entries win, in the given order: names recorded later
    /// (`a…` sorts before `z…`) do not push early contacts out.
    #[test]
    fn the_first_entries_are_kept_in_the_given_order() {
        let mut entries: Vec<(String, Fingerprint)> = (0..MAX_APPROVED as u8)
            .map(|i| (format!("z{i}"), Fingerprint([i; 32])))
            .collect();
        entries.push(("a-stranger".into(), Fingerprint([0xee; 32])));
        let want: Vec<Fingerprint> = entries[..MAX_APPROVED].iter().map(|(_, k)| *k).collect();
        assert_eq!(pre_approved(&Policy::AcceptAll, &entries), want);
    }
}
