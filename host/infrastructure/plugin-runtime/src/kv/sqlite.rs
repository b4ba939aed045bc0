//! [`KvStore`] on SQLite (table `plugin_kv`, migration `0002_plugin_kv.sql`).
//!
//! Atomicity: SQLite has one writer at a time. Batches run as `BEGIN IMMEDIATE` transactions
//! (the write lock is taken before the reads, so no other process can change the keys between
//! read and write), and an in-process mutex queues this process's writers so that they wait on
//! a cheap async lock instead of spinning in SQLite's busy handler.

use std::collections::HashMap;

use sqlx::SqlitePool;
use tokio::sync::Mutex;

use super::{BatchOutcome, BoundedAdd, Evaluation, KvStore, Swap, batch_keys, evaluate};
use crate::error::KvError;

/// The schema, for callers that do not run the migrations folder (tests, tools).
pub const SQLITE_SCHEMA: &str = include_str!("../../../../../migrations/sqlite/0002_plugin_kv.sql");

/// SQLite-backed store.
#[derive(Debug)]
pub struct SqliteKvStore {
    pool: SqlitePool,
    writer: Mutex<()>,
}

impl SqliteKvStore {
    /// Uses `pool`; the `plugin_kv` table must exist (run the migrations or [`Self::ensure_schema`]).
    pub fn new(pool: SqlitePool) -> Self {
        Self {
            pool,
            writer: Mutex::new(()),
        }
    }

    /// Creates the table if missing (idempotent).
    pub async fn ensure_schema(&self) -> Result<(), KvError> {
        sqlx::raw_sql(SQLITE_SCHEMA)
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn write_one(
        &self,
        namespace: &str,
        key: &str,
        value: Option<&[u8]>,
    ) -> Result<(), KvError> {
        let _writer = self.writer.lock().await;
        let q = match value {
            Some(v) => sqlx::query(
                "INSERT INTO plugin_kv (namespace, key, value) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (namespace, key) DO UPDATE SET value = excluded.value, \
                 updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')",
            )
            .bind(namespace)
            .bind(key)
            .bind(v),
            None => sqlx::query("DELETE FROM plugin_kv WHERE namespace = ?1 AND key = ?2")
                .bind(namespace)
                .bind(key),
        };
        q.execute(&self.pool).await.map_err(unavailable)?;
        Ok(())
    }
}

fn unavailable(e: sqlx::Error) -> KvError {
    KvError::Unavailable(e.to_string())
}

#[async_trait::async_trait]
impl KvStore for SqliteKvStore {
    async fn get(&self, namespace: &str, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        sqlx::query_scalar("SELECT value FROM plugin_kv WHERE namespace = ?1 AND key = ?2")
            .bind(namespace)
            .bind(key)
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)
    }

    async fn set(&self, namespace: &str, key: &str, value: &[u8]) -> Result<(), KvError> {
        self.write_one(namespace, key, Some(value)).await
    }

    async fn delete(&self, namespace: &str, key: &str) -> Result<(), KvError> {
        self.write_one(namespace, key, None).await
    }

    async fn batch(
        &self,
        namespace: &str,
        swaps: &[Swap],
        adds: &[BoundedAdd],
    ) -> Result<BatchOutcome, KvError> {
        let _writer = self.writer.lock().await;
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(unavailable)?;
        let mut current = HashMap::new();
        for key in batch_keys(swaps, adds) {
            let value: Option<Vec<u8>> =
                sqlx::query_scalar("SELECT value FROM plugin_kv WHERE namespace = ?1 AND key = ?2")
                    .bind(namespace)
                    .bind(&key)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(unavailable)?;
            if let Some(v) = value {
                current.insert(key, v);
            }
        }
        // Dropping `tx` on any early return rolls back.
        let (writes, outcome) = match evaluate(&current, swaps, adds)? {
            Evaluation::Refuse(outcome) => return Ok(outcome),
            Evaluation::Apply { writes, outcome } => (writes, outcome),
        };
        for w in writes {
            let q = match &w.value {
                Some(v) => sqlx::query(
                    "INSERT INTO plugin_kv (namespace, key, value) VALUES (?1, ?2, ?3) \
                     ON CONFLICT (namespace, key) DO UPDATE SET value = excluded.value, \
                     updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')",
                )
                .bind(namespace)
                .bind(&w.key)
                .bind(v.as_slice()),
                None => sqlx::query("DELETE FROM plugin_kv WHERE namespace = ?1 AND key = ?2")
                    .bind(namespace)
                    .bind(&w.key),
            };
            q.execute(&mut *tx).await.map_err(unavailable)?;
        }
        tx.commit().await.map_err(unavailable)?;
        Ok(outcome)
    }
}
