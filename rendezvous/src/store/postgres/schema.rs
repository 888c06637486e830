//! The versioned schema: created or migrated on start, inside one
//! transaction holding an advisory lock, so nodes starting at once migrate
//! one after the other and the later ones find the work done.
//!
//! `rdv_schema_version` has a row per applied version. A database whose
//! version is newer than [`VERSION`] is refused (an older binary must not
//! write under rules it does not know).

use deadpool_postgres::Client;

use super::connect::classify;
use crate::store::StoreError;

/// The schema version this binary writes.
pub(super) const VERSION: i32 = 1;

/// `pg_advisory_xact_lock` key of the migration ("rdv-schm").
const LOCK: i64 = 0x7264_762d_7363_686d;

/// Migration `i` takes the schema from version `i` to `i + 1`.
const MIGRATIONS: [&str; VERSION as usize] = [V1];

/// Version 1: the bindings, the count per key, and the batch claim.
///
/// `rdv_claim_batch` runs one group of claims (sorted by name by the
/// caller) in the caller's transaction. It first creates and locks every
/// key's count row in key order (two nodes' batches lock in one order, and
/// the cap holds across nodes), then for each claim reads the owner and
/// the count and inserts the name only if it is free and the key is below
/// its cap; the primary key decides a race with another node. It answers
/// the owner (after the insert) and the count before it, per claim, for
/// [`crate::store::check_claim`] to turn into the outcome.
const V1: &str = r#"
CREATE TABLE rdv_names (
    name text PRIMARY KEY,
    key bytea NOT NULL CHECK (octet_length(key) = 32),
    claimed_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE rdv_key_names (
    key bytea PRIMARY KEY,
    held integer NOT NULL
);
CREATE FUNCTION rdv_claim_batch(p_names text[], p_keys bytea[], p_max integer[],
                                OUT owners bytea[], OUT helds integer[])
LANGUAGE plpgsql AS $$
DECLARE
    i integer;
    cur bytea;
    n integer;
BEGIN
    owners := '{}';
    helds := '{}';
    INSERT INTO rdv_key_names (key, held)
        SELECT DISTINCT k, 0 FROM unnest(p_keys) AS k ORDER BY 1
        ON CONFLICT (key) DO NOTHING;
    PERFORM 1 FROM rdv_key_names WHERE key = ANY (p_keys) ORDER BY key FOR UPDATE;
    FOR i IN 1 .. coalesce(array_length(p_names, 1), 0) LOOP
        SELECT held INTO n FROM rdv_key_names WHERE key = p_keys[i];
        SELECT key INTO cur FROM rdv_names WHERE name = p_names[i];
        IF cur IS NULL AND n < p_max[i] THEN
            INSERT INTO rdv_names (name, key) VALUES (p_names[i], p_keys[i])
                ON CONFLICT (name) DO NOTHING;
            IF FOUND THEN
                UPDATE rdv_key_names SET held = held + 1 WHERE key = p_keys[i];
            ELSE
                -- Another node's commit won the race: its owner now shows.
                SELECT key INTO cur FROM rdv_names WHERE name = p_names[i];
            END IF;
        END IF;
        owners := array_append(owners, cur);
        helds := array_append(helds, n);
    END LOOP;
END
$$;
"#;

/// Creates or migrates the schema; returns the version found before.
pub(super) async fn migrate(client: &mut Client) -> Result<i32, StoreError> {
    let err = |e: tokio_postgres::Error| classify(&e);
    let tx = client.transaction().await.map_err(err)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK])
        .await
        .map_err(err)?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS rdv_schema_version (
             version integer PRIMARY KEY,
             applied_at timestamptz NOT NULL DEFAULT now())",
    )
    .await
    .map_err(err)?;
    let row = tx
        .query_one(
            "SELECT coalesce(max(version), 0) FROM rdv_schema_version",
            &[],
        )
        .await
        .map_err(err)?;
    let found: i32 = row.try_get(0).map_err(err)?;
    if found > VERSION {
        return Err(StoreError::Backend(format!(
            "the PostgreSQL schema is version {found}, newer than this rendezvous knows ({VERSION}): \
             a newer rendezvous migrated it; run that version on every node"
        )));
    }
    for version in found..VERSION {
        let index = usize::try_from(version).unwrap_or_default();
        tx.batch_execute(MIGRATIONS[index]).await.map_err(err)?;
        tx.execute(
            "INSERT INTO rdv_schema_version (version) VALUES ($1)",
            &[&(version + 1)],
        )
        .await
        .map_err(err)?;
    }
    tx.commit().await.map_err(err)?;
    Ok(found)
}
