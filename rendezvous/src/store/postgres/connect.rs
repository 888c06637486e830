//! From a `postgres://` URL to a pool: our timeouts on every connection,
//! the TLS choice, a description without the password for the logs, and
//! the mapping of driver errors onto [`StoreError`] (retryable or not).

use std::net::IpAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime};
use tokio_postgres::config::{Host, SslMode};
use tokio_postgres::error::SqlState;

use crate::store::StoreError;

/// Longest wait for a new connection (TCP, TLS and start-up).
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Longest wait for a free pooled connection.
pub(super) const POOL_WAIT: Duration = Duration::from_secs(2);
/// `statement_timeout`, set on every connection: the server cancels longer ones.
pub(super) const STATEMENT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest the client waits for any one operation (a dead link that
/// neither answers nor resets is noticed here), above the statement timeout.
pub(super) const OP_TIMEOUT: Duration = Duration::from_secs(6);
/// Connections in the pool.
const POOL_SIZE: usize = 16;

/// Whether connections use TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Tls {
    /// Plain: `sslmode=disable`, or every host on loopback or a Unix socket.
    Off,
    /// TLS required, the server's certificate checked against the system's
    /// trusted roots (or `SSL_CERT_FILE`).
    Required,
}

/// The accepted URL forms, for error messages.
pub(crate) const URL_FORMS: &str =
    "postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE[?sslmode=disable] (or postgresql://…)";

/// Parses `url` into a driver config with our timeouts and the TLS choice.
pub(super) fn parse(url: &str) -> Result<(tokio_postgres::Config, Tls), StoreError> {
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(StoreError::Backend(format!(
            "a PostgreSQL store is given as {URL_FORMS}"
        )));
    }
    let mut config = tokio_postgres::Config::from_str(url).map_err(|e| {
        StoreError::Backend(format!(
            "the PostgreSQL URL is not valid ({e}); expected {URL_FORMS}"
        ))
    })?;
    let tls = tls_choice(&config);
    if tls == Tls::Required {
        // Never fall back to plaintext off loopback (a downgrade).
        config.ssl_mode(SslMode::Require);
    }
    let ours = format!(
        "-c statement_timeout={} -c idle_in_transaction_session_timeout=10000",
        STATEMENT_TIMEOUT.as_millis()
    );
    let options = match config.get_options() {
        Some(theirs) if !theirs.is_empty() => format!("{theirs} {ours}"),
        _ => ours,
    };
    config
        .options(options)
        .application_name("rendezvous")
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_user_timeout(OP_TIMEOUT)
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(10));
    Ok((config, tls))
}

/// TLS unless `sslmode=disable`, or every host is loopback or a Unix
/// socket and TLS was not required.
pub(super) fn tls_choice(config: &tokio_postgres::Config) -> Tls {
    match config.get_ssl_mode() {
        SslMode::Disable => return Tls::Off,
        SslMode::Require => return Tls::Required,
        _ => {}
    }
    let local_host = |h: &Host| match h {
        Host::Unix(_) => true,
        Host::Tcp(name) => {
            name.eq_ignore_ascii_case("localhost")
                || name
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .parse::<IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        }
    };
    let local = config.get_hosts().iter().all(local_host)
        && config.get_hostaddrs().iter().all(IpAddr::is_loopback);
    if local {
        Tls::Off
    } else {
        Tls::Required
    }
}

/// `postgres://USER@HOST:PORT/DB`: where the store is, for the logs (no
/// password, whatever the URL held).
pub(super) fn describe(config: &tokio_postgres::Config) -> String {
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let host = match h {
                Host::Tcp(name) => name.clone(),
                Host::Unix(path) => path.display().to_string(),
            };
            match config.get_ports().get(i).or(config.get_ports().first()) {
                Some(port) => format!("{host}:{port}"),
                None => host,
            }
        })
        .collect();
    format!(
        "postgres://{}@{}/{}",
        config.get_user().unwrap_or(""),
        hosts.join(","),
        config.get_dbname().unwrap_or("")
    )
}

/// A pool of connections with our timeouts (none is opened yet).
pub(super) fn pool(config: tokio_postgres::Config, tls: Tls) -> Result<Pool, StoreError> {
    let manager = ManagerConfig {
        recycling_method: RecyclingMethod::Fast,
    };
    let manager = match tls {
        Tls::Off => Manager::from_config(config, tokio_postgres::NoTls, manager),
        Tls::Required => Manager::from_config(config, rustls_connector()?, manager),
    };
    Pool::builder(manager)
        .max_size(POOL_SIZE)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(POOL_WAIT))
        .create_timeout(Some(CONNECT_TIMEOUT))
        .recycle_timeout(Some(POOL_WAIT))
        .build()
        .map_err(|e| StoreError::Backend(format!("PostgreSQL pool: {e}")))
}

/// rustls on ring with the system's trusted roots.
fn rustls_connector() -> Result<tokio_postgres_rustls::MakeRustlsConnect, StoreError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(found.certs);
    if roots.is_empty() {
        return Err(StoreError::Backend(
            "no trusted CA certificates to check the PostgreSQL server with: install the system's CA certificates, point SSL_CERT_FILE at the CA's PEM file, or use sslmode=disable on a private network".into(),
        ));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| StoreError::Backend(format!("TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

/// A serialization failure or deadlock: the transaction can be run again.
pub(super) fn is_conflict(e: &tokio_postgres::Error) -> bool {
    e.code().is_some_and(|c| {
        *c == SqlState::T_R_SERIALIZATION_FAILURE || *c == SqlState::T_R_DEADLOCK_DETECTED
    })
}

/// A driver error as a store error: no SQLSTATE (the connection broke or
/// timed out) or a state of "try later" (connection exception, shutdown,
/// cancelled by the statement timeout, out of resources, conflicts) is
/// [`StoreError::Unavailable`]; the rest is [`StoreError::Backend`].
pub(super) fn classify(e: &tokio_postgres::Error) -> StoreError {
    let Some(code) = e.code() else {
        return StoreError::Unavailable(format!("PostgreSQL: {e}"));
    };
    let text = match e.as_db_error() {
        Some(db) => format!("PostgreSQL: {} ({})", db.message(), code.code()),
        None => format!("PostgreSQL: {e}"),
    };
    let state = code.code();
    let retryable = ["08", "40", "53", "57", "58"]
        .iter()
        .any(|class| state.starts_with(class))
        || *code == SqlState::LOCK_NOT_AVAILABLE;
    if retryable {
        StoreError::Unavailable(text)
    } else {
        StoreError::Backend(text)
    }
}

/// A pool error as a store error (a wait or connect timeout, a refused or
/// lost connection: [`StoreError::Unavailable`]).
pub(super) fn pool_error(e: PoolError) -> StoreError {
    match e {
        PoolError::Timeout(what) => StoreError::Unavailable(format!(
            "no PostgreSQL connection in time ({what:?}; waits {POOL_WAIT:?}, connects {CONNECT_TIMEOUT:?})"
        )),
        PoolError::Backend(e) => classify(&e),
        PoolError::Closed => StoreError::Unavailable("the PostgreSQL pool is closed".into()),
        other => StoreError::Backend(format!("PostgreSQL pool: {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tls_of(url: &str) -> Tls {
        parse(url).expect("parses").1
    }

    #[test]
    fn tls_is_required_off_loopback_unless_disabled() {
        assert_eq!(tls_of("postgres://u@127.0.0.1:5432/db"), Tls::Off);
        assert_eq!(tls_of("postgres://u@localhost/db"), Tls::Off);
        assert_eq!(tls_of("postgres://u@[::1]:5432/db"), Tls::Off);
        assert_eq!(tls_of("postgresql://u@%2Frun%2Fpostgresql/db"), Tls::Off);
        assert_eq!(tls_of("postgres://u@db.example.net/db"), Tls::Required);
        assert_eq!(tls_of("postgres://u@10.0.0.5/db"), Tls::Required);
        assert_eq!(
            tls_of("postgres://u@db.example.net/db?sslmode=disable"),
            Tls::Off
        );
        assert_eq!(
            tls_of("postgres://u@127.0.0.1/db?sslmode=require"),
            Tls::Required
        );
        // Off loopback, `prefer` would fall back to plaintext: made `require`.
        let (config, _) = parse("postgres://u@db.example.net/db?sslmode=prefer").expect("parses");
        assert_eq!(config.get_ssl_mode(), SslMode::Require);
    }

    #[test]
    fn other_forms_are_refused_and_the_password_is_never_described() {
        for bad in ["mysql://u@h/db", "host=h user=u", "redb", ""] {
            let e = parse(bad).expect_err(bad).to_string();
            assert!(e.contains("postgres://"), "{bad}: {e}");
        }
        let (config, _) = parse("postgres://rdv:s3cret@10.1.2.3:6543/names").expect("parses");
        let shown = describe(&config);
        assert_eq!(shown, "postgres://rdv@10.1.2.3:6543/names");
        assert!(!shown.contains("s3cret"));
    }

    #[test]
    fn our_timeouts_are_on_every_connection() {
        let (config, _) =
            parse("postgres://u@127.0.0.1/db?options=-c%20search_path%3Dx").expect("parses");
        let options = config.get_options().expect("options");
        assert!(options.starts_with("-c search_path=x "), "{options}");
        assert!(options.contains("statement_timeout=5000"), "{options}");
        assert_eq!(config.get_connect_timeout(), Some(&CONNECT_TIMEOUT));
    }
}
