//! The close-reason parser (`common::error::close`): a peer reads the
//! reconnect spread out of the server's QUIC close reason.
#![no_main]

use std::time::Duration;

use common::error::close::{
    reconnect_spread, shutdown_reason, shutdown_spread, MAX_SHUTDOWN_SPREAD,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|reason: &[u8]| {
    if let Some(spread) = shutdown_spread(reason) {
        assert!(spread <= MAX_SHUTDOWN_SPREAD);
        let again = shutdown_spread(&shutdown_reason(spread));
        assert_eq!(again, Some(spread), "a parsed spread survives its reason");
    }
    let spread = reconnect_spread(reason);
    assert!(spread <= MAX_SHUTDOWN_SPREAD.max(Duration::from_secs(1)));
});
