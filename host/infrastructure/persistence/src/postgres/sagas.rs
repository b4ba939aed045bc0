//! `SagaStore` on PostgreSQL. Several host processes share one database: claims lock rows
//! with `FOR UPDATE SKIP LOCKED`, so two workers never lease the same saga, and every commit
//! is fenced by the saga's version and the committing worker's lease.

use async_trait::async_trait;
use oms_application::ports::{Fence, SagaCommit, SagaStore, StepRecord, StepState, StoreError};
use oms_application::saga::{SagaId, SagaInstance, SagaStatus};
use oms_domain::{OrderId, Timestamp, Version};
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, PgPool};

use super::classify;
use super::orders::write_order;
use crate::mapping::{SagaInts, decode_saga, saga_columns, saga_from_row, saga_state};

/// The unique partial index that admits one active saga per order (migration 0004).
const ONE_ACTIVE_INDEX: &str = "saga_instances_one_active_idx";

/// The select list of a saga row, for `SELECT` and `RETURNING` alike.
macro_rules! saga_select {
    () => {
        concat!(
            "id::text AS id, order_id::text AS order_id, state::text AS state, ",
            saga_columns!()
        )
    };
}

pub(crate) struct PgSagaStore {
    pool: PgPool,
}

impl PgSagaStore {
    pub(crate) fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

fn decode_sagas(rows: &[PgRow]) -> Result<Vec<SagaInstance>, StoreError> {
    rows.iter()
        .map(|r| saga_from_row(decode_saga(r).map_err(classify)?))
        .collect()
}

/// Classifies an error of a statement that may make a saga active: hitting the one-active
/// index means the order already has a running saga, which the caller must hear as such.
fn saga_write_error(e: sqlx::Error) -> StoreError {
    let one_active = e.as_database_error().is_some_and(|db| {
        db.kind() == sqlx::error::ErrorKind::UniqueViolation
            && db.constraint() == Some(ONE_ACTIVE_INDEX)
    });
    if one_active {
        StoreError::SagaActive
    } else {
        classify(e)
    }
}

/// Inserts a new saga inside the caller's transaction (an order write that starts it).
pub(super) async fn insert_saga(
    conn: &mut PgConnection,
    saga: &SagaInstance,
) -> Result<(), StoreError> {
    let ints = SagaInts::of(saga)?;
    sqlx::query(
        "INSERT INTO saga_instances (id, kind, order_id, status, step_index, attempts, \
         next_attempt_at, deadline_at, last_error, state, version, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10::jsonb, $11, $12, $13)",
    )
    .bind(saga.id.0)
    .bind(saga.kind.as_str())
    .bind(saga.order_id.as_uuid())
    .bind(saga.status.as_str())
    .bind(ints.step_index)
    .bind(ints.attempts)
    .bind(saga.next_attempt_at.unix_millis())
    .bind(saga.step_deadline.map(|t| t.unix_millis()))
    .bind(saga.last_error.as_deref())
    .bind(saga_state(saga)?)
    .bind(saga.version)
    .bind(saga.created_at.unix_millis())
    .bind(saga.updated_at.unix_millis())
    .execute(&mut *conn)
    .await
    .map_err(saga_write_error)?;
    Ok(())
}

/// Records one attempt of a step. `started_at` is the first attempt's time; the plugin build
/// is the last one that served a call (an attempt that never reached the plugin keeps it).
async fn upsert_step(
    conn: &mut PgConnection,
    saga: SagaId,
    record: &StepRecord,
) -> Result<(), StoreError> {
    let call = record.call.as_ref();
    let finished = matches!(record.state, StepState::Succeeded | StepState::Failed);
    sqlx::query(
        "INSERT INTO saga_steps (saga_id, step, action, plugin_name, plugin_version, \
         plugin_digest, idempotency_key, status, attempts, last_error, started_at, finished_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
         ON CONFLICT (saga_id, step, action) DO UPDATE SET \
         plugin_name = COALESCE(EXCLUDED.plugin_name, saga_steps.plugin_name), \
         plugin_version = COALESCE(EXCLUDED.plugin_version, saga_steps.plugin_version), \
         plugin_digest = COALESCE(EXCLUDED.plugin_digest, saga_steps.plugin_digest), \
         idempotency_key = EXCLUDED.idempotency_key, status = EXCLUDED.status, \
         attempts = EXCLUDED.attempts, last_error = EXCLUDED.last_error, \
         finished_at = EXCLUDED.finished_at",
    )
    .bind(saga.0)
    .bind(record.step)
    .bind(record.direction.as_str())
    .bind(call.map(|c| c.plugin.as_str()))
    .bind(call.map(|c| c.version.as_str()))
    .bind(call.map(|c| c.digest.as_str()))
    .bind(&record.idempotency_key)
    .bind(record.state.as_str())
    .bind(i32::try_from(record.attempts).unwrap_or(i32::MAX))
    .bind(record.last_error.as_deref())
    .bind(record.at.unix_millis())
    .bind(finished.then(|| record.at.unix_millis()))
    .execute(&mut *conn)
    .await
    .map_err(classify)?;
    Ok(())
}

#[async_trait]
impl SagaStore for PgSagaStore {
    async fn claim_due(
        &self,
        owner: &str,
        now: Timestamp,
        lease_until: Timestamp,
        limit: u32,
    ) -> Result<Vec<SagaInstance>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        // One statement: the subquery locks the due rows it picks and skips rows another
        // claimer has locked, and a row claimed (and committed) meanwhile is re-checked
        // against `lease_until` and dropped. Claiming leaves `version` alone: it changes who
        // may commit, not the saga.
        let rows = sqlx::query(concat!(
            "UPDATE saga_instances SET lease_owner = $1, lease_until = $3 WHERE id IN (",
            "SELECT id FROM saga_instances WHERE status IN ('RUNNING', 'COMPENSATING') ",
            "AND next_attempt_at <= $2 AND (lease_until IS NULL OR lease_until < $2) ",
            "ORDER BY next_attempt_at LIMIT $4 FOR UPDATE SKIP LOCKED) RETURNING ",
            saga_select!()
        ))
        .bind(owner)
        .bind(now.unix_millis())
        .bind(lease_until.unix_millis())
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(classify)?;
        let mut sagas = decode_sagas(&rows)?;
        // RETURNING has no order; hand them out most overdue first.
        sagas.sort_by_key(|s| (s.next_attempt_at, s.id));
        Ok(sagas)
    }

    async fn commit(&self, commit: SagaCommit<'_>) -> Result<(), StoreError> {
        let saga = commit.saga;
        let ints = SagaInts::of(saga)?;
        // An ended saga lets go of its lease, so nothing reads it as still being worked on.
        let active = saga.status.is_active();
        // A worker commits under its lease; an operator (no owner) only a parked saga, which
        // it leaves unleased so that any worker claims it.
        let owner = match commit.fence {
            Fence::Lease(owner) => Some(owner),
            Fence::Parked => None,
        };
        let mut tx = self.pool.begin().await.map_err(classify)?;
        // The order first, the saga second: the same lock order as an order write that starts
        // a saga (order row, then the one-active index), so the two cannot deadlock.
        if let Some(order) = &commit.order {
            write_order(&mut tx, order).await?;
        }
        let updated = sqlx::query(
            "UPDATE saga_instances SET status = $4, step_index = $5, attempts = $6, \
             next_attempt_at = $7, deadline_at = $8, last_error = $9, state = $10::jsonb, \
             version = $11, updated_at = $12, lease_owner = $13, lease_until = $14 \
             WHERE id = $1 AND version = $2 \
             AND (lease_owner = $3 OR ($3 IS NULL AND status = 'COMPENSATION_FAILED'))",
        )
        .bind(saga.id.0)
        .bind(commit.expected_version)
        .bind(owner)
        .bind(saga.status.as_str())
        .bind(ints.step_index)
        .bind(ints.attempts)
        .bind(saga.next_attempt_at.unix_millis())
        .bind(saga.step_deadline.map(|t| t.unix_millis()))
        .bind(saga.last_error.as_deref())
        .bind(saga_state(saga)?)
        .bind(saga.version)
        .bind(saga.updated_at.unix_millis())
        .bind(owner.filter(|_| active))
        .bind(
            owner
                .filter(|_| active)
                .map(|_| commit.lease_until.unix_millis()),
        )
        .execute(&mut *tx)
        .await
        .map_err(saga_write_error)?;
        if updated.rows_affected() != 1 {
            // Moved on, or leased to another worker since our claim: the caller reloads.
            let current: Option<i64> =
                sqlx::query_scalar("SELECT version FROM saga_instances WHERE id = $1")
                    .bind(saga.id.0)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(classify)?;
            return Err(StoreError::VersionConflict {
                current: Version(current.unwrap_or(0)),
            });
        }
        if let Some(record) = commit.step {
            upsert_step(&mut tx, saga.id, record).await?;
        }
        // Dropping `tx` on any early return above rolls everything back.
        tx.commit().await.map_err(classify)
    }

    async fn get(&self, id: SagaId) -> Result<Option<SagaInstance>, StoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            saga_select!(),
            " FROM saga_instances WHERE id = $1"
        ))
        .bind(id.0)
        .fetch_optional(&self.pool)
        .await
        .map_err(classify)?;
        row.map(|r| saga_from_row(decode_saga(&r).map_err(classify)?))
            .transpose()
    }

    async fn for_order(&self, order_id: OrderId) -> Result<Vec<SagaInstance>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            saga_select!(),
            " FROM saga_instances WHERE order_id = $1 ORDER BY created_at, id"
        ))
        .bind(order_id.as_uuid())
        .fetch_all(&self.pool)
        .await
        .map_err(classify)?;
        decode_sagas(&rows)
    }

    async fn with_status(
        &self,
        status: SagaStatus,
        limit: u32,
    ) -> Result<Vec<SagaInstance>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            saga_select!(),
            " FROM saga_instances WHERE status = $1 ORDER BY created_at, id LIMIT $2"
        ))
        .bind(status.as_str())
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(classify)?;
        decode_sagas(&rows)
    }
}
