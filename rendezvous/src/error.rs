//! Why the server could not start: [`ServerError`], shared by the server
//! and the endpoint it builds (`transport`).

use std::net::SocketAddr;

use thiserror::Error;

use crate::store::StoreError;

/// Why the server could not start.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The key could not be loaded or created.
    #[error(transparent)]
    Identity(#[from] common::IdentityError),
    /// The name store could not be opened.
    #[error("cannot open the name store in the data dir: {0}")]
    Store(#[from] StoreError),
    /// The data dir could not be created.
    #[error("data dir {path}: {source}")]
    DataDir {
        /// The folder.
        path: std::path::PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The UDP socket could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The mapping check port asked for (`--mapping-port PORT`) could not
    /// be bound.
    #[error("cannot listen on {addr} for the mapping check port (--mapping-port): {source}; choose another port, or --mapping-port off")]
    MappingBind {
        /// The address.
        addr: SocketAddr,
        /// What the OS said.
        source: std::io::Error,
    },
    /// TLS or QUIC configuration failed.
    #[error("configuration: {0}")]
    Config(String),
    /// The cluster bus could not be joined (`--bus`).
    #[error(transparent)]
    Bus(#[from] crate::cluster::BusError),
}
