//! Error replies shared by the request handlers and the [`crate::broker`].

use common::{validate_name, ErrorKind, Message};

use crate::store::StoreError;

/// `Err(reply)` when `name` breaks the name rules.
// An early return's `Err` is the reply itself (a `Message`, ~140 bytes since
// it carries relay tickets): the cold path, once per request; boxing it
// would only add an allocation.
#[allow(clippy::result_large_err)]
pub(crate) fn check_name(name: &str) -> Result<(), Message> {
    validate_name(name).map_err(|e| Message::error(ErrorKind::InvalidName, e.to_string()))
}

/// The reply for a source over its rate limit.
pub(crate) fn rate_limited(what: &str) -> Message {
    Message::error(
        ErrorKind::RateLimited,
        format!("too many {what} from your address; slow down"),
    )
}

/// What a peer is told when the name store gives no answer.
pub(crate) const STORE_UNAVAILABLE: &str =
    "the name store is unavailable; try again in a few seconds";

/// The reply when the name store failed (not a refusal): `unavailable` when
/// a retry can help, else `internal`. Never `not_found`: the name may
/// exist. The details stay in the server's log.
pub(crate) fn store_failed(e: &StoreError) -> Message {
    if e.is_retryable() {
        Message::error(ErrorKind::Unavailable, STORE_UNAVAILABLE)
    } else {
        Message::error(
            ErrorKind::Internal,
            "the server's name store failed; tell its operator",
        )
    }
}
