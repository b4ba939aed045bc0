//! [`IdempotencyStore`]: one record per (method, caller, key).
//!
//! Every step is a single statement, and every contested step is atomic on its own:
//! `INSERT ... ON CONFLICT DO NOTHING` lets exactly one of many concurrent first requests
//! create the record, and a takeover is an `UPDATE` whose `WHERE` repeats what the taker read
//! (compare-and-set), so of several concurrent takers exactly one wins and the others re-read.
//! That holds on PostgreSQL (under READ COMMITTED a waiting `UPDATE` re-checks its `WHERE`
//! against the winner's committed row) and on SQLite (statements on the single writer run one
//! after another), so one algorithm serves both.

use std::marker::PhantomData;
use std::time::Duration;

use async_trait::async_trait;
use oms_application::idempotency::{
    Fingerprint, IdempotencyClaim, IdempotencyCompletion, IdempotencyScope, StoredOutcome,
};
use oms_application::ports::{BeginOutcome, IdempotencyStore, StoreError};
use oms_domain::Timestamp;
use sqlx::types::Json;
use uuid::Uuid;

use crate::sql::batch::Statement;
use crate::sql::{Args, Batch, Counts, Dialect, PartId, RowExt, Sql, UniqueIndex, json};
use oms_application::idempotency::rules::{KeyRecord, MAX_ROUNDS, Verdict, contention, judge};

pub(crate) struct SqlIdempotencyStore<D: Dialect> {
    sql: Sql<D>,
    dialect: PhantomData<D>,
}

impl<D: Dialect> SqlIdempotencyStore<D> {
    pub(crate) fn new(sql: Sql<D>) -> Self {
        Self {
            sql,
            dialect: PhantomData,
        }
    }

    /// Reads the record as committed; the one an insert conflicted with is (PostgreSQL's
    /// READ COMMITTED and SQLite's per-statement snapshots both see every earlier commit).
    async fn read(&self, scope: &IdempotencyScope) -> Result<Option<KeyRecord>, StoreError> {
        let row = D::query(
            "SELECT fingerprint, state, lease_token, locked_until, outcome, expires_at \
             FROM idempotency_keys WHERE method = $1 AND caller = $2 AND key = $3",
        )
        .arg(scope.method.as_str())
        .arg(scope.caller.as_str())
        .arg(scope.key.as_str())
        .fetch_optional(self.sql.reader())
        .await
        .map_err(D::classify)?;
        let Some(row) = row else {
            return Ok(None);
        };
        let decode = || -> Result<KeyRecord, sqlx::Error> {
            Ok(KeyRecord {
                fingerprint: row.col("fingerprint")?,
                state: row.col("state")?,
                lease_token: row.col::<Option<D::Id>>("lease_token")?.map(D::uuid),
                locked_until: row.col("locked_until")?,
                outcome: row
                    .col::<Option<Json<serde_json::Value>>>("outcome")?
                    .map(|Json(outcome)| outcome),
                expires_at: row.col("expires_at")?,
            })
        };
        decode().map(Some).map_err(D::classify)
    }
}

fn claim(scope: &IdempotencyScope, fingerprint: &Fingerprint, token: Uuid) -> BeginOutcome {
    BeginOutcome::Proceed(IdempotencyClaim {
        scope: scope.clone(),
        fingerprint: *fingerprint,
        lease_token: token,
    })
}

/// Marks the claim's record completed with `outcome`. Compares the lease token, so a request
/// whose lease was taken over cannot complete: it changes no row (see [`completed`]).
fn completion<'q, D: Dialect>(
    claim: &'q IdempotencyClaim,
    outcome: &StoredOutcome,
) -> Result<Statement<'q, D>, StoreError> {
    let outcome = json(outcome, "idempotency outcome")?;
    Ok(Statement {
        sql: "UPDATE idempotency_keys SET state = 'completed', outcome = $5, \
              lease_token = NULL, locked_until = NULL \
              WHERE method = $1 AND caller = $2 AND key = $3 AND lease_token = $4 \
              AND state = 'in_progress'"
            .to_owned(),
        bind: Box::new(move |query| {
            query
                .arg(claim.scope.method.as_str())
                .arg(claim.scope.caller.as_str())
                .arg(claim.scope.key.as_str())
                .arg(D::id(claim.lease_token))
                .arg(outcome)
        }),
    })
}

fn completed(rows: u64) -> Result<(), StoreError> {
    if rows == 1 {
        Ok(())
    } else {
        Err(StoreError::LeaseLost)
    }
}

/// The primary key of the records: a new record's insert violates it when the key is taken.
const KEY_TAKEN: UniqueIndex = UniqueIndex {
    name: "idempotency_keys_pkey",
    columns: "idempotency_keys.method",
};

/// A write's idempotency record that failed because the key is already recorded: another
/// request with this key committed first (see [`push_key`]).
pub(crate) fn key_taken<D: Dialect>(e: &sqlx::Error) -> bool {
    D::violates(e, &KEY_TAKEN)
}

/// What [`push_key`] asks of its part's count.
#[derive(Debug, Clone, Copy)]
pub(crate) struct KeyCheck(Option<PartId>);

impl KeyCheck {
    /// A claim's completion must change its record, for [`Batch::run_all_or_nothing`].
    pub(crate) fn expect<D: Dialect>(self, batch: &mut Batch<'_, D>) {
        if let Some(part) = self.0 {
            batch.expect(part, 1);
        }
    }

    /// `LeaseLost` when a claim's completion changed nothing (its lease was taken over).
    pub(crate) fn check(self, counts: &Counts) -> Result<(), StoreError> {
        match self.0 {
            Some(part) => completed(counts.of(part)),
            None => Ok(()),
        }
    }
}

/// Adds an order write's idempotency record to the write's batch: completes a claim (see
/// [`completion`]), or inserts the record already completed. The insert has no `ON CONFLICT`
/// clause: it is part of one statement with the rest of the write (PostgreSQL), which a taken
/// key must stop as a whole, before anything is written. On PostgreSQL a concurrent insert of
/// the same key waits for the first one's transaction and fails if it committed; on SQLite
/// the write lock taken at `BEGIN IMMEDIATE` orders them. Either way the violation is
/// reported as `KeyExists` ([`key_taken`]).
pub(crate) fn push_key<'q, D: Dialect>(
    batch: &mut Batch<'q, D>,
    write: &'q IdempotencyCompletion,
) -> Result<KeyCheck, StoreError> {
    match write {
        IdempotencyCompletion::Claimed { claim, outcome } => {
            let Statement { sql, bind } = completion::<D>(claim, outcome)?;
            Ok(KeyCheck(Some(batch.push(sql, bind))))
        }
        IdempotencyCompletion::Unclaimed {
            request,
            outcome,
            created_at,
            expires_at,
        } => {
            let fingerprint = request.fingerprint.to_hex();
            let outcome = json(outcome, "idempotency outcome")?;
            let (created_at, expires_at) = (created_at.unix_millis(), expires_at.unix_millis());
            batch.push(
                "INSERT INTO idempotency_keys (method, caller, key, fingerprint, state, outcome, \
                 created_at, expires_at) VALUES ($1, $2, $3, $4, 'completed', $5, $6, $7)",
                move |query| {
                    query
                        .arg(request.scope.method.as_str())
                        .arg(request.scope.caller.as_str())
                        .arg(request.scope.key.as_str())
                        .arg(fingerprint)
                        .arg(outcome)
                        .arg(created_at)
                        .arg(expires_at)
                },
            );
            Ok(KeyCheck(None))
        }
    }
}

#[async_trait]
impl<D: Dialect> IdempotencyStore for SqlIdempotencyStore<D> {
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
            let inserted = self
                .sql
                .write(
                    D::query(
                        "INSERT INTO idempotency_keys (method, caller, key, fingerprint, state, \
                         lease_token, locked_until, created_at, expires_at) \
                         VALUES ($1, $2, $3, $4, 'in_progress', $5, $6, $7, $8) \
                         ON CONFLICT (method, caller, key) DO NOTHING",
                    )
                    .arg(scope.method.as_str())
                    .arg(scope.caller.as_str())
                    .arg(scope.key.as_str())
                    .arg(fingerprint_hex.as_str())
                    .arg(D::id(token))
                    .arg(now.saturating_add(lease).unix_millis())
                    .arg(now_ms)
                    .arg(now.saturating_add(ttl).unix_millis()),
                )
                .await?;
            if D::rows_affected(&inserted) == 1 {
                return Ok(claim(scope, fingerprint, token));
            }
            // Deleted (released or swept) since the insert conflicted: try to insert again.
            let Some(record) = self.read(scope).await? else {
                continue;
            };
            match judge(&record, fingerprint, now_ms)? {
                Verdict::Answer(outcome) => return Ok(outcome),
                Verdict::TakeOver => {
                    let taken = self
                        .sql
                        .write(
                            D::query(
                                "UPDATE idempotency_keys SET fingerprint = $4, \
                                 state = 'in_progress', lease_token = $5, locked_until = $6, \
                                 outcome = NULL, created_at = $7, expires_at = $8 \
                                 WHERE method = $1 AND caller = $2 AND key = $3 AND state = $9 \
                                 AND lease_token IS NOT DISTINCT FROM $10 AND expires_at = $11",
                            )
                            .arg(scope.method.as_str())
                            .arg(scope.caller.as_str())
                            .arg(scope.key.as_str())
                            .arg(fingerprint_hex.as_str())
                            .arg(D::id(token))
                            .arg(now.saturating_add(lease).unix_millis())
                            .arg(now_ms)
                            .arg(now.saturating_add(ttl).unix_millis())
                            .arg(record.state.as_str())
                            .arg(record.lease_token.map(D::id))
                            .arg(record.expires_at),
                        )
                        .await?;
                    if D::rows_affected(&taken) == 1 {
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
        let updated = self
            .sql
            .write(completion::<D>(claim, outcome)?.query())
            .await?;
        completed(D::rows_affected(&updated))
    }

    async fn release(&self, claim: &IdempotencyClaim) -> Result<(), StoreError> {
        // Only an in-progress record under this very lease: never a completed one, never one
        // another request took over.
        self.sql
            .write(
                D::query(
                    "DELETE FROM idempotency_keys WHERE method = $1 AND caller = $2 \
                     AND key = $3 AND lease_token = $4 AND state = 'in_progress'",
                )
                .arg(claim.scope.method.as_str())
                .arg(claim.scope.caller.as_str())
                .arg(claim.scope.key.as_str())
                .arg(D::id(claim.lease_token)),
            )
            .await?;
        Ok(())
    }

    async fn sweep_expired(&self, now: Timestamp, limit: u32) -> Result<u64, StoreError> {
        // A bounded batch keeps each sweep's transaction and lock footprint small. The outer
        // `expires_at` check guards a row taken over (renewed) between the subquery's
        // snapshot and the delete.
        let deleted = self
            .sql
            .write(
                D::query(
                    "DELETE FROM idempotency_keys WHERE (method, caller, key) IN \
                     (SELECT method, caller, key FROM idempotency_keys \
                      WHERE expires_at <= $1 LIMIT $2) \
                     AND expires_at <= $1",
                )
                .arg(now.unix_millis())
                .arg(i64::from(limit)),
            )
            .await?;
        Ok(D::rows_affected(&deleted))
    }
}
