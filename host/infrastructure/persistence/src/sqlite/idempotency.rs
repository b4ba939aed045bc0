//! `IdempotencyStore` on SQLite.
//!
//! SQLite has one writer at a time, so `begin` is simply read-decide-write inside one
//! `BEGIN IMMEDIATE` transaction: no other writer can change the record between the read
//! and the write. The compare-and-set `WHERE` clauses are kept anyway, so the statements
//! mean the same as on PostgreSQL.

use std::time::Duration;

use async_trait::async_trait;
use oms_application::idempotency::{
    Fingerprint, IdempotencyClaim, IdempotencyScope, StoredOutcome,
};
use oms_application::ports::{BeginOutcome, IdempotencyStore, StoreError};
use oms_domain::Timestamp;
use sqlx::{Row, SqliteConnection, SqlitePool};
use uuid::Uuid;

use super::{begin_write, classify};
use crate::idempotency_rules::{KeyRecord, Verdict, judge};
use crate::mapping::plus;

pub(crate) struct SqliteIdempotencyStore {
    writer: SqlitePool,
}

impl SqliteIdempotencyStore {
    pub(crate) fn new(writer: SqlitePool) -> Self {
        Self { writer }
    }
}

fn token_text(token: Uuid) -> String {
    token.to_string()
}

/// Marks the claim's record completed with `outcome`, inside the caller's transaction.
pub(super) async fn complete_claim(
    conn: &mut SqliteConnection,
    claim: &IdempotencyClaim,
    outcome: &StoredOutcome,
) -> Result<(), StoreError> {
    let updated = sqlx::query(
        "UPDATE idempotency_keys SET state = 'completed', outcome = ?5, lease_token = NULL, \
         locked_until = NULL \
         WHERE method = ?1 AND caller = ?2 AND key = ?3 AND lease_token = ?4 \
         AND state = 'in_progress'",
    )
    .bind(&claim.scope.method)
    .bind(&claim.scope.caller)
    .bind(claim.scope.key.as_str())
    .bind(token_text(claim.lease_token))
    .bind(outcome.to_json())
    .execute(&mut *conn)
    .await
    .map_err(classify)?;
    if updated.rows_affected() == 1 {
        Ok(())
    } else {
        Err(StoreError::LeaseLost)
    }
}

async fn read(
    conn: &mut SqliteConnection,
    scope: &IdempotencyScope,
) -> Result<Option<KeyRecord>, StoreError> {
    let row = sqlx::query(
        "SELECT fingerprint, state, lease_token, locked_until, outcome, expires_at \
         FROM idempotency_keys WHERE method = ?1 AND caller = ?2 AND key = ?3",
    )
    .bind(&scope.method)
    .bind(&scope.caller)
    .bind(scope.key.as_str())
    .fetch_optional(&mut *conn)
    .await
    .map_err(classify)?;
    let Some(row) = row else {
        return Ok(None);
    };
    let lease_token: Option<String> = row.try_get("lease_token").map_err(classify)?;
    let lease_token = lease_token
        .map(|t| Uuid::try_parse(&t))
        .transpose()
        .map_err(|e| StoreError::Corrupt(format!("idempotency lease token: {e}")))?;
    Ok(Some(KeyRecord {
        fingerprint: row.try_get("fingerprint").map_err(classify)?,
        state: row.try_get("state").map_err(classify)?,
        lease_token,
        locked_until: row.try_get("locked_until").map_err(classify)?,
        outcome: row.try_get("outcome").map_err(classify)?,
        expires_at: row.try_get("expires_at").map_err(classify)?,
    }))
}

#[async_trait]
impl IdempotencyStore for SqliteIdempotencyStore {
    async fn begin(
        &self,
        scope: &IdempotencyScope,
        fingerprint: &Fingerprint,
        now: Timestamp,
        lease: Duration,
        ttl: Duration,
    ) -> Result<BeginOutcome, StoreError> {
        let now_ms = now.unix_millis();
        let token = Uuid::now_v7();
        let mut tx = begin_write(&self.writer).await?;
        // Upsert that only replaces a dead record (`judge` decides); an absent one is
        // inserted. Both under the write lock taken by BEGIN IMMEDIATE.
        let record = read(&mut tx, scope).await?;
        let cas = match &record {
            None => None,
            Some(record) => match judge(record, fingerprint, now_ms)? {
                // Nothing written: the transaction ends without a change.
                Verdict::Answer(outcome) => return Ok(outcome),
                Verdict::TakeOver => Some(record),
            },
        };
        let sql = match cas {
            None => {
                "INSERT INTO idempotency_keys (method, caller, key, fingerprint, state, \
                 lease_token, locked_until, created_at, expires_at) \
                 VALUES (?1, ?2, ?3, ?4, 'in_progress', ?5, ?6, ?7, ?8)"
            }
            Some(_) => {
                "UPDATE idempotency_keys SET fingerprint = ?4, state = 'in_progress', \
                 lease_token = ?5, locked_until = ?6, outcome = NULL, created_at = ?7, \
                 expires_at = ?8 \
                 WHERE method = ?1 AND caller = ?2 AND key = ?3 AND state = ?9 \
                 AND lease_token IS ?10 AND expires_at = ?11"
            }
        };
        let mut statement = sqlx::query(sql)
            .bind(&scope.method)
            .bind(&scope.caller)
            .bind(scope.key.as_str())
            .bind(fingerprint.to_hex())
            .bind(token_text(token))
            .bind(plus(now, lease))
            .bind(now_ms)
            .bind(plus(now, ttl));
        if let Some(old) = cas {
            statement = statement
                .bind(old.state.clone())
                .bind(old.lease_token.map(token_text))
                .bind(old.expires_at);
        }
        let written = statement.execute(&mut *tx).await.map_err(classify)?;
        if written.rows_affected() != 1 {
            // Impossible under the write lock; refuse rather than hand out a false claim.
            return Err(StoreError::Unavailable(
                "idempotency record changed under the write lock".into(),
            ));
        }
        tx.commit().await.map_err(classify)?;
        Ok(BeginOutcome::Proceed(IdempotencyClaim {
            scope: scope.clone(),
            fingerprint: *fingerprint,
            lease_token: token,
        }))
    }

    async fn complete(
        &self,
        claim: &IdempotencyClaim,
        outcome: &StoredOutcome,
        _now: Timestamp,
    ) -> Result<(), StoreError> {
        let mut conn = self.writer.acquire().await.map_err(classify)?;
        complete_claim(&mut conn, claim, outcome).await
    }

    async fn release(&self, claim: &IdempotencyClaim) -> Result<(), StoreError> {
        sqlx::query(
            "DELETE FROM idempotency_keys WHERE method = ?1 AND caller = ?2 AND key = ?3 \
             AND lease_token = ?4 AND state = 'in_progress'",
        )
        .bind(&claim.scope.method)
        .bind(&claim.scope.caller)
        .bind(claim.scope.key.as_str())
        .bind(token_text(claim.lease_token))
        .execute(&self.writer)
        .await
        .map_err(classify)?;
        Ok(())
    }

    async fn sweep_expired(&self, now: Timestamp, limit: u32) -> Result<u64, StoreError> {
        // A bounded batch: the single writer connection is not held for long.
        let deleted = sqlx::query(
            "DELETE FROM idempotency_keys WHERE rowid IN \
             (SELECT rowid FROM idempotency_keys WHERE expires_at <= ?1 LIMIT ?2)",
        )
        .bind(now.unix_millis())
        .bind(i64::from(limit))
        .execute(&self.writer)
        .await
        .map_err(classify)?;
        Ok(deleted.rows_affected())
    }
}
