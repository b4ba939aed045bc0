//! [`KvStore`] on PostgreSQL (table `plugin_kv`, migration `0002_plugin_kv.sql`).
//!
//! Atomicity: a batch runs in one transaction that first takes a transaction-scoped advisory
//! lock per key, in a fixed order. Advisory locks (unlike `SELECT ... FOR UPDATE`) also lock
//! keys that do not exist yet, which a counter's first increment or a reservation record's
//! "must be absent" condition needs. `set` and `delete` take the same lock so that they cannot
//! slip between a batch's read and its write.

use std::collections::HashMap;

use sqlx::{PgPool, Postgres, Transaction};

use super::{BatchOutcome, BoundedAdd, Evaluation, KvStore, Swap, batch_keys, evaluate};
use crate::error::KvError;

/// How often a batch is retried when PostgreSQL reports a deadlock or serialization failure
/// (possible only if advisory lock ids of different keys collide).
const RETRIES: usize = 5;

/// The schema, for callers that do not run the migrations folder (tests, tools).
pub const PG_SCHEMA: &str = include_str!("../../../../../migrations/postgres/0002_plugin_kv.sql");

/// PostgreSQL-backed store; cheap to clone (the pool is shared).
#[derive(Debug, Clone)]
pub struct PgKvStore {
    pool: PgPool,
}

impl PgKvStore {
    /// Uses `pool`; the `plugin_kv` table must exist (run the migrations or [`Self::ensure_schema`]).
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// Creates the table if missing (idempotent).
    pub async fn ensure_schema(&self) -> Result<(), KvError> {
        sqlx::raw_sql(PG_SCHEMA)
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn try_batch(
        &self,
        namespace: &str,
        swaps: &[Swap],
        adds: &[BoundedAdd],
    ) -> Result<Result<BatchOutcome, KvError>, sqlx::Error> {
        let keys = batch_keys(swaps, adds);
        let mut tx = self.pool.begin().await?;
        lock_keys(&mut tx, namespace, &keys).await?;
        let rows: Vec<(String, Vec<u8>)> = sqlx::query_as(
            "SELECT key, value FROM plugin_kv WHERE namespace = $1 AND key = ANY($2)",
        )
        .bind(namespace)
        .bind(&keys)
        .fetch_all(&mut *tx)
        .await?;
        let current: HashMap<String, Vec<u8>> = rows.into_iter().collect();
        // Dropping `tx` on an early return rolls back.
        let (writes, outcome) = match evaluate(&current, swaps, adds) {
            Err(e) => return Ok(Err(e)),
            Ok(Evaluation::Refuse(outcome)) => return Ok(Ok(outcome)),
            Ok(Evaluation::Apply { writes, outcome }) => (writes, outcome),
        };
        let (mut put_keys, mut put_values, mut del_keys) = (vec![], vec![], vec![]);
        for w in writes {
            match w.value {
                Some(v) => {
                    put_keys.push(w.key);
                    put_values.push(v);
                }
                None => del_keys.push(w.key),
            }
        }
        if !put_keys.is_empty() {
            sqlx::query(
                "INSERT INTO plugin_kv (namespace, key, value) \
                 SELECT $1, k, v FROM UNNEST($2::text[], $3::bytea[]) AS t(k, v) \
                 ON CONFLICT (namespace, key) DO UPDATE SET value = EXCLUDED.value, updated_at = now()",
            )
            .bind(namespace)
            .bind(&put_keys)
            .bind(&put_values)
            .execute(&mut *tx)
            .await?;
        }
        if !del_keys.is_empty() {
            sqlx::query("DELETE FROM plugin_kv WHERE namespace = $1 AND key = ANY($2)")
                .bind(namespace)
                .bind(&del_keys)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(Ok(outcome))
    }
}

/// Locks `keys` (sorted by the caller) for the rest of the transaction. The lock ids are
/// sorted too, so that two transactions always acquire overlapping locks in the same order.
async fn lock_keys(
    tx: &mut Transaction<'static, Postgres>,
    namespace: &str,
    keys: &[String],
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "SELECT pg_advisory_xact_lock(h) FROM ( \
           SELECT DISTINCT hashtextextended($1 || chr(1) || k, 7) AS h FROM UNNEST($2::text[]) AS k \
           ORDER BY h) AS ids",
    )
    .bind(namespace)
    .bind(keys)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

fn unavailable(e: sqlx::Error) -> KvError {
    KvError::Unavailable(e.to_string())
}

fn is_retryable(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if matches!(db.code().as_deref(), Some("40P01" | "40001")))
}

#[async_trait::async_trait]
impl KvStore for PgKvStore {
    async fn get(&self, namespace: &str, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        sqlx::query_scalar("SELECT value FROM plugin_kv WHERE namespace = $1 AND key = $2")
            .bind(namespace)
            .bind(key)
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)
    }

    async fn set(&self, namespace: &str, key: &str, value: &[u8]) -> Result<(), KvError> {
        let swap = Swap {
            key: key.to_string(),
            expected: None,
            new: Some(value.to_vec()),
        };
        self.write_one(namespace, swap).await
    }

    async fn delete(&self, namespace: &str, key: &str) -> Result<(), KvError> {
        let swap = Swap {
            key: key.to_string(),
            expected: None,
            new: None,
        };
        self.write_one(namespace, swap).await
    }

    async fn batch(
        &self,
        namespace: &str,
        swaps: &[Swap],
        adds: &[BoundedAdd],
    ) -> Result<BatchOutcome, KvError> {
        let mut attempt = 0;
        loop {
            match self.try_batch(namespace, swaps, adds).await {
                Ok(result) => return result,
                Err(e) if is_retryable(&e) && attempt < RETRIES => attempt += 1,
                Err(e) => return Err(unavailable(e)),
            }
        }
    }
}

impl PgKvStore {
    /// An unconditional write under the key's lock (`new: None` deletes).
    async fn write_one(&self, namespace: &str, swap: Swap) -> Result<(), KvError> {
        let run = async {
            let mut tx = self.pool.begin().await?;
            lock_keys(&mut tx, namespace, std::slice::from_ref(&swap.key)).await?;
            match &swap.new {
                Some(v) => {
                    sqlx::query(
                        "INSERT INTO plugin_kv (namespace, key, value) VALUES ($1, $2, $3) \
                         ON CONFLICT (namespace, key) DO UPDATE SET value = EXCLUDED.value, updated_at = now()",
                    )
                    .bind(namespace)
                    .bind(&swap.key)
                    .bind(v)
                    .execute(&mut *tx)
                    .await?;
                }
                None => {
                    sqlx::query("DELETE FROM plugin_kv WHERE namespace = $1 AND key = $2")
                        .bind(namespace)
                        .bind(&swap.key)
                        .execute(&mut *tx)
                        .await?;
                }
            }
            tx.commit().await
        };
        run.await.map_err(unavailable)
    }
}
