//! Whom a `listen` accepts calls from, decided without any I/O.
//!
//! The server tells the callee the caller's name and key; the decision also
//! weighs what known_peers says about that name, so an allow-list entry is
//! bound to the key first seen for it, not just to the name a server reports.

use common::Fingerprint;

use crate::known_peers::Check;

/// A listener's rule for incoming calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Policy {
    /// Everyone may call (and so learns this peer's addresses).
    AcceptAll,
    /// Only these names, each with the key known_peers has for it (the first
    /// key seen is recorded).
    AllowList(Vec<String>),
}

/// What to answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Accept: send our candidates.
    Accept,
    /// Refuse, telling the caller why.
    Reject(String),
}

impl Policy {
    /// Decides on a call from `from` with key `key`, given what known_peers says.
    pub fn decide(&self, from: &str, key: &Fingerprint, known: Check) -> Decision {
        if let Check::Changed(old) = known {
            return Decision::Reject(format!(
                "the callee knows {from} with another key ({}..., now {}...)",
                old.short(),
                key.short()
            ));
        }
        match self {
            Self::AcceptAll => Decision::Accept,
            Self::AllowList(names) if names.iter().any(|n| n == from) => Decision::Accept,
            Self::AllowList(_) => {
                Decision::Reject(format!("{from} is not on the callee's allow-list"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_list_and_pinned_keys() {
        let key = Fingerprint([1; 32]);
        let other = Fingerprint([2; 32]);
        let list = Policy::AllowList(vec!["bob".into()]);
        assert_eq!(list.decide("bob", &key, Check::New), Decision::Accept);
        assert_eq!(list.decide("bob", &key, Check::Known), Decision::Accept);
        assert!(
            matches!(list.decide("bob", &key, Check::Changed(other)), Decision::Reject(r) if r.contains("another key"))
        );
        assert!(
            matches!(list.decide("eve", &key, Check::New), Decision::Reject(r) if r.contains("allow-list"))
        );
        assert_eq!(
            Policy::AcceptAll.decide("eve", &key, Check::New),
            Decision::Accept
        );
        assert!(matches!(
            Policy::AcceptAll.decide("eve", &key, Check::Changed(other)),
            Decision::Reject(_)
        ));
    }
}
