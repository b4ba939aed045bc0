//! `IdempotencyStore` on PostgreSQL.
//!
//! Every step is a single statement in its own transaction, and every contested step is
//! atomic on its own: `INSERT ... ON CONFLICT DO NOTHING` lets exactly one of many concurrent
//! first requests create the record, and a takeover is an `UPDATE` whose `WHERE` repeats
//! what the taker read (under READ COMMITTED a waiting `UPDATE` re-checks its `WHERE` against
//! the winner's committed row, so losers update nothing and re-read).

use std::time::Duration;

use async_trait::async_trait;
use oms_application::idempotency::{
    Fingerprint, IdempotencyClaim, IdempotencyScope, StoredOutcome,
};
use oms_application::ports::{BeginOutcome, IdempotencyStore, StoreError};
use oms_domain::Timestamp;
use sqlx::{PgConnection, PgPool, Row};
use uuid::Uuid;

use super::classify;
use crate::idempotency_rules::{KeyRecord, MAX_ROUNDS, Verdict, contention, judge};
use crate::mapping::plus;

pub(crate) struct PgIdempotencyStore {
    pool: PgPool,
}

impl PgIdempotencyStore {
    pub(crate) fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    async fn read(&self, scope: &IdempotencyScope) -> Result<Option<KeyRecord>, StoreError> {
        let row = sqlx::query(
            "SELECT fingerprint, state, lease_token, locked_until, outcome::text AS outcome, \
             expires_at FROM idempotency_keys WHERE method = $1 AND caller = $2 AND key = $3",
        )
        .bind(&scope.method)
        .bind(&scope.caller)
        .bind(scope.key.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(classify)?;
        row.map(|row| {
            Ok(KeyRecord {
                fingerprint: row.try_get("fingerprint")?,
                state: row.try_get("state")?,
                lease_token: row.try_get("lease_token")?,
                locked_until: row.try_get("locked_until")?,
                outcome: row.try_get("outcome")?,
                expires_at: row.try_get("expires_at")?,
            })
        })
        .transpose()
        .map_err(classify)
    }
}

fn claim(scope: &IdempotencyScope, fingerprint: &Fingerprint, token: Uuid) -> BeginOutcome {
    BeginOutcome::Proceed(IdempotencyClaim {
        scope: scope.clone(),
        fingerprint: *fingerprint,
        lease_token: token,
    })
}

/// Marks the claim's record completed with `outcome`, inside the caller's transaction.
/// Compares the lease token, so a request whose lease was taken over cannot complete.
pub(super) async fn complete_claim(
    conn: &mut PgConnection,
    claim: &IdempotencyClaim,
    outcome: &StoredOutcome,
) -> Result<(), StoreError> {
    let updated = sqlx::query(
        "UPDATE idempotency_keys SET state = 'completed', outcome = $5::jsonb, \
         lease_token = NULL, locked_until = NULL \
         WHERE method = $1 AND caller = $2 AND key = $3 AND lease_token = $4 \
         AND state = 'in_progress'",
    )
    .bind(&claim.scope.method)
    .bind(&claim.scope.caller)
    .bind(claim.scope.key.as_str())
    .bind(claim.lease_token)
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

#[async_trait]
impl IdempotencyStore for PgIdempotencyStore {
    async fn begin(
        &self,
        scope: &IdempotencyScope,
        fingerprint: &Fingerprint,
        now: Timestamp,
        lease: Duration,
        ttl: Duration,
    ) -> Result<BeginOutcome, StoreError> {
        let now_ms = now.unix_millis();
        let fingerprint_hex = fingerprint.to_hex();
        for _ in 0..MAX_ROUNDS {
            let token = Uuid::now_v7();
            let inserted = sqlx::query(
                "INSERT INTO idempotency_keys (method, caller, key, fingerprint, state, \
                 lease_token, locked_until, created_at, expires_at) \
                 VALUES ($1, $2, $3, $4, 'in_progress', $5, $6, $7, $8) \
                 ON CONFLICT (method, caller, key) DO NOTHING",
            )
            .bind(&scope.method)
            .bind(&scope.caller)
            .bind(scope.key.as_str())
            .bind(&fingerprint_hex)
            .bind(token)
            .bind(plus(now, lease))
            .bind(now_ms)
            .bind(plus(now, ttl))
            .execute(&self.pool)
            .await
            .map_err(classify)?;
            if inserted.rows_affected() == 1 {
                return Ok(claim(scope, fingerprint, token));
            }
            // Deleted (released or swept) since the insert conflicted: try to insert again.
            let Some(record) = self.read(scope).await? else {
                continue;
            };
            match judge(&record, fingerprint, now_ms)? {
                Verdict::Answer(outcome) => return Ok(outcome),
                Verdict::TakeOver => {
                    let taken = sqlx::query(
                        "UPDATE idempotency_keys SET fingerprint = $4, state = 'in_progress', \
                         lease_token = $5, locked_until = $6, outcome = NULL, created_at = $7, \
                         expires_at = $8 \
                         WHERE method = $1 AND caller = $2 AND key = $3 AND state = $9 \
                         AND lease_token IS NOT DISTINCT FROM $10 AND expires_at = $11",
                    )
                    .bind(&scope.method)
                    .bind(&scope.caller)
                    .bind(scope.key.as_str())
                    .bind(&fingerprint_hex)
                    .bind(token)
                    .bind(plus(now, lease))
                    .bind(now_ms)
                    .bind(plus(now, ttl))
                    .bind(&record.state)
                    .bind(record.lease_token)
                    .bind(record.expires_at)
                    .execute(&self.pool)
                    .await
                    .map_err(classify)?;
                    if taken.rows_affected() == 1 {
                        return Ok(claim(scope, fingerprint, token));
                    }
                    // Another request took it over first: look again.
                }
            }
        }
        Err(contention())
    }

    async fn complete(
        &self,
        claim: &IdempotencyClaim,
        outcome: &StoredOutcome,
        _now: Timestamp,
    ) -> Result<(), StoreError> {
        let mut conn = self.pool.acquire().await.map_err(classify)?;
        complete_claim(&mut conn, claim, outcome).await
    }

    async fn release(&self, claim: &IdempotencyClaim) -> Result<(), StoreError> {
        // Only an in-progress record under this very lease: never a completed one, never one
        // another request took over.
        sqlx::query(
            "DELETE FROM idempotency_keys WHERE method = $1 AND caller = $2 AND key = $3 \
             AND lease_token = $4 AND state = 'in_progress'",
        )
        .bind(&claim.scope.method)
        .bind(&claim.scope.caller)
        .bind(claim.scope.key.as_str())
        .bind(claim.lease_token)
        .execute(&self.pool)
        .await
        .map_err(classify)?;
        Ok(())
    }

    async fn sweep_expired(&self, now: Timestamp, limit: u32) -> Result<u64, StoreError> {
        // A bounded batch keeps each sweep's transaction and lock footprint small. The outer
        // `expires_at` check guards a row taken over (renewed) between the subquery's
        // snapshot and the delete.
        let deleted = sqlx::query(
            "DELETE FROM idempotency_keys WHERE (method, caller, key) IN \
             (SELECT method, caller, key FROM idempotency_keys WHERE expires_at <= $1 LIMIT $2) \
             AND expires_at <= $1",
        )
        .bind(now.unix_millis())
        .bind(i64::from(limit))
        .execute(&self.pool)
        .await
        .map_err(classify)?;
        Ok(deleted.rows_affected())
    }
}
