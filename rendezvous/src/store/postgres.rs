//! [`PgStore`]: bindings in PostgreSQL, shared by every node of a cluster.
//!
//! "First key wins" is the primary key of `rdv_names`: of two nodes
//! claiming one name at once, one insert wins and the other sees its
//! owner. The names a key holds are counted in `rdv_key_names`, whose row
//! is locked by the claim's transaction, so the cap holds across nodes. A
//! re-registration (the key already owns the name) is one read, no write.
//!
//! New names are committed in groups: claims queue to one committer task,
//! which takes up to [`MAX_BATCH`] of them, runs them in one transaction
//! (one call of `rdv_claim_batch`, see [`schema`]), commits, and only then
//! answers each one. While a group commits, the next one queues. A
//! serialization failure or deadlock is retried [`RETRIES`] times.
//!
//! Every wait is bounded ([`connect`]'s timeouts), so an outage answers
//! [`StoreError::Unavailable`] within seconds, and the pool reconnects by
//! itself when PostgreSQL is back. A claim whose commit outcome is unknown
//! (the connection broke during COMMIT) is answered `Unavailable` too: the
//! peer's retry finds the binding if it was committed.

mod connect;
mod schema;

pub(crate) use self::connect::URL_FORMS;

use std::time::Duration;

use common::Fingerprint;
use deadpool_postgres::Pool;
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use self::connect::{classify, is_conflict, pool_error, OP_TIMEOUT};
use super::{check_claim, Claim, NameStore, StoreError};

/// Most claims in one transaction.
const MAX_BATCH: usize = 512;
/// Claims waiting for the committer; past it a claim is refused
/// ([`StoreError::Unavailable`]: overloaded).
const QUEUE: usize = 8 * MAX_BATCH;
/// Runs of a group again after a serialization failure or deadlock.
const RETRIES: u32 = 3;
/// Longest a claim waits for its group's commit.
const CLAIM_WAIT: Duration = Duration::from_secs(10);

/// Name bindings in PostgreSQL (pooled connections, group commits).
pub struct PgStore {
    pool: Pool,
    queue: mpsc::Sender<Pending>,
    describe: String,
}

/// A claim of a name nobody owned when it was read, for the committer.
struct Pending {
    name: String,
    key: Fingerprint,
    max_names: usize,
    reply: oneshot::Sender<Result<Claim, StoreError>>,
}

impl PgStore {
    /// Connects to the database at `url` (`postgres://…`), creates or
    /// migrates the schema, and starts the committer (on the current tokio
    /// runtime). Fails if the database cannot be reached now.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let (config, tls) = connect::parse(url)?;
        let describe = connect::describe(&config);
        let pool = connect::pool(config, tls)?;
        let found = {
            let mut client = pool.get().await.map_err(pool_error)?;
            within("the schema migration", schema::migrate(&mut client)).await??
        };
        if found < schema::VERSION {
            info!(at = %describe, from = found, to = schema::VERSION, "name store schema migrated");
        }
        let (queue, pending) = mpsc::channel(QUEUE);
        tokio::spawn(committer(pool.clone(), pending));
        Ok(Self {
            pool,
            queue,
            describe,
        })
    }

    /// Where the store is (`postgres://USER@HOST:PORT/DB`, never the password).
    pub fn describe(&self) -> &str {
        &self.describe
    }

    async fn client(&self) -> Result<deadpool_postgres::Client, StoreError> {
        self.pool.get().await.map_err(pool_error)
    }
}

/// `fut`, or [`StoreError::Unavailable`] after [`OP_TIMEOUT`].
async fn within<T>(what: &str, fut: impl std::future::Future<Output = T>) -> Result<T, StoreError> {
    tokio::time::timeout(OP_TIMEOUT, fut).await.map_err(|_| {
        StoreError::Unavailable(format!(
            "PostgreSQL: {what} took longer than {OP_TIMEOUT:?}"
        ))
    })
}

/// A stored key as a fingerprint (anything but 32 bytes is bad data).
fn fingerprint(bytes: &[u8]) -> Result<Fingerprint, StoreError> {
    <[u8; 32]>::try_from(bytes)
        .map(Fingerprint)
        .map_err(|_| StoreError::Backend(format!("a stored key has {} bytes, not 32", bytes.len())))
}

#[async_trait::async_trait]
impl NameStore for PgStore {
    async fn claim(
        &self,
        name: &str,
        key: Fingerprint,
        max_names: usize,
    ) -> Result<Claim, StoreError> {
        if let Some(owner) = self.owner(name).await? {
            // Re-registration (or a taken name): read-only.
            return check_claim(Some(owner), name, key, 0, max_names);
        }
        let (reply, outcome) = oneshot::channel();
        let pending = Pending {
            name: name.to_owned(),
            key,
            max_names,
            reply,
        };
        self.queue.try_send(pending).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => StoreError::Unavailable(format!(
                "the name store is overloaded ({QUEUE} claims waiting for a commit)"
            )),
            mpsc::error::TrySendError::Closed(_) => {
                StoreError::Unavailable("the name store's committer has stopped".into())
            }
        })?;
        match tokio::time::timeout(CLAIM_WAIT, outcome).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(_)) => Err(StoreError::Unavailable(
                "the name store's committer has stopped".into(),
            )),
            Err(_) => Err(StoreError::Unavailable(format!(
                "no commit within {CLAIM_WAIT:?}"
            ))),
        }
    }

    async fn held(&self, key: Fingerprint) -> Result<usize, StoreError> {
        let client = self.client().await?;
        let row = within("a read", async {
            let stmt = client
                .prepare_cached("SELECT held FROM rdv_key_names WHERE key = $1")
                .await?;
            client.query_opt(&stmt, &[&key.0.as_slice()]).await
        })
        .await?
        .map_err(|e| classify(&e))?;
        let Some(row) = row else { return Ok(0) };
        let held: i32 = row.try_get(0).map_err(|e| classify(&e))?;
        usize::try_from(held).map_err(|_| StoreError::Backend(format!("a key holds {held} names")))
    }

    async fn owner(&self, name: &str) -> Result<Option<Fingerprint>, StoreError> {
        let client = self.client().await?;
        let row = within("a read", async {
            let stmt = client
                .prepare_cached("SELECT key FROM rdv_names WHERE name = $1")
                .await?;
            client.query_opt(&stmt, &[&name]).await
        })
        .await?
        .map_err(|e| classify(&e))?;
        let Some(row) = row else { return Ok(None) };
        let key: &[u8] = row.try_get(0).map_err(|e| classify(&e))?;
        fingerprint(key).map(Some)
    }
}

/// The committer: one group of queued claims per transaction, until the
/// store is dropped.
async fn committer(pool: Pool, mut pending: mpsc::Receiver<Pending>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while pending.recv_many(&mut batch, MAX_BATCH).await > 0 {
        // A claimant that gave up needs no commit.
        batch.retain(|p| !p.reply.is_closed());
        let outcomes = commit_group(&pool, &batch).await;
        for (p, outcome) in batch.drain(..).zip(outcomes) {
            let _ = p.reply.send(outcome);
        }
    }
}

/// Why one run of a group failed.
enum Failed {
    /// A serialization failure or deadlock: run it again.
    Conflict(String),
    /// Anything else, for every claim of the group.
    Store(StoreError),
}

/// Runs `group` (retrying conflicts); an outcome per claim, in order.
async fn commit_group(pool: &Pool, group: &[Pending]) -> Vec<Result<Claim, StoreError>> {
    if group.is_empty() {
        return Vec::new();
    }
    // By name (then arrival): a deterministic order of the row locks.
    let mut order: Vec<usize> = (0..group.len()).collect();
    order.sort_by(|&a, &b| group[a].name.cmp(&group[b].name));
    let mut tries = 0;
    let error = loop {
        let run = within("a group commit", run_group(pool, group, &order)).await;
        match run {
            Ok(Ok(rows)) => return outcomes(group, &order, rows),
            Ok(Err(Failed::Conflict(why))) if tries < RETRIES => {
                tries += 1;
                warn!(
                    tries,
                    "name store group conflicted, running it again: {why}"
                );
            }
            Ok(Err(Failed::Conflict(why))) => {
                break StoreError::Unavailable(format!("conflicts after {RETRIES} retries: {why}"))
            }
            Ok(Err(Failed::Store(e))) | Err(e) => break e,
        }
    };
    warn!(claims = group.len(), "name store group failed: {error}");
    group.iter().map(|_| Err(copy(&error))).collect()
}

/// The same error again (one per claim of a failed group).
fn copy(e: &StoreError) -> StoreError {
    match e {
        StoreError::Unavailable(s) => StoreError::Unavailable(s.clone()),
        other => StoreError::Backend(other.to_string()),
    }
}

/// Owner after the claim and count before it, per claim in `order`.
type Rows = (Vec<Option<Vec<u8>>>, Vec<i32>);

/// One transaction: the batch claim, then COMMIT.
async fn run_group(pool: &Pool, group: &[Pending], order: &[usize]) -> Result<Rows, Failed> {
    let db = |e: tokio_postgres::Error| {
        if is_conflict(&e) {
            Failed::Conflict(e.to_string())
        } else {
            Failed::Store(classify(&e))
        }
    };
    let mut client = pool.get().await.map_err(|e| Failed::Store(pool_error(e)))?;
    let names: Vec<&str> = order.iter().map(|&i| group[i].name.as_str()).collect();
    let keys: Vec<&[u8]> = order.iter().map(|&i| group[i].key.0.as_slice()).collect();
    let max: Vec<i32> = order
        .iter()
        .map(|&i| i32::try_from(group[i].max_names).unwrap_or(i32::MAX))
        .collect();
    let tx = client.transaction().await.map_err(db)?;
    let stmt = tx
        .prepare_cached("SELECT owners, helds FROM rdv_claim_batch($1, $2, $3)")
        .await
        .map_err(db)?;
    let row = tx
        .query_one(&stmt, &[&names, &keys, &max])
        .await
        .map_err(db)?;
    let rows: Rows = (row.try_get(0).map_err(db)?, row.try_get(1).map_err(db)?);
    tx.commit().await.map_err(db)?;
    Ok(rows)
}

/// The committed rows as each claim's outcome, by [`check_claim`].
fn outcomes(
    group: &[Pending],
    order: &[usize],
    (owners, helds): Rows,
) -> Vec<Result<Claim, StoreError>> {
    let mut out: Vec<Option<Result<Claim, StoreError>>> = group.iter().map(|_| None).collect();
    for (pos, &i) in order.iter().enumerate() {
        let p = &group[i];
        let outcome =
            match (owners.get(pos), helds.get(pos)) {
                (Some(owner), Some(&held)) => owner
                    .as_deref()
                    .map(fingerprint)
                    .transpose()
                    .and_then(|owner| {
                        // No owner: the function inserted the name exactly
                        // when the key was below its cap. An owner: it was
                        // bound before, or another node's commit won the race.
                        let held = usize::try_from(held).unwrap_or(usize::MAX);
                        check_claim(owner, &p.name, p.key, held, p.max_names)
                    }),
                _ => Err(StoreError::Backend(
                    "rdv_claim_batch answered too few rows".into(),
                )),
            };
        out[i] = Some(outcome);
    }
    out.into_iter()
        .map(|o| o.unwrap_or_else(|| Err(StoreError::Backend("no outcome".into()))))
        .collect()
}
