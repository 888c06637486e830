//! Error replies shared by the request handlers and the [`crate::broker`].

use common::{validate_name, ErrorKind, Message};

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
