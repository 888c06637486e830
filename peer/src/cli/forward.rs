//! `peer forward LOCAL_ADDR NAME`: TCP connections to LOCAL_ADDR become
//! streams of one kept call to NAME ([`peer::forward::Forwarder`]).

use peer::forward::{ForwardConfig, Forwarder};
use peer::{Error, Peer, Result};
use tokio::net::TcpListener;

use crate::CallFlags;

pub(crate) async fn run(
    peer: &Peer,
    local_addr: &str,
    name: &str,
    flags: &CallFlags,
) -> Result<()> {
    common::validate_name(name)?;
    let listener = TcpListener::bind(local_addr)
        .await
        .map_err(|e| Error::io(format!("listening on TCP {local_addr}"), e))?;
    let config = ForwardConfig {
        call: flags.options(),
        ..ForwardConfig::default()
    };
    let forwarder = Forwarder::new(peer.clone(), name, config);
    // Call at start so the first connection finds the call up; a failure
    // is reported (`error` event) and the next connection calls again.
    let warm = forwarder.clone();
    tokio::spawn(async move {
        let _ = warm.connect().await;
    });
    forwarder.serve(listener).await;
    Ok(())
}
