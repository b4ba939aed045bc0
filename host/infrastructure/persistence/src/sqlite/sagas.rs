//! `SagaStore` on SQLite. SQLite has no `SKIP LOCKED`; it needs none: claims and commits run
//! in `BEGIN IMMEDIATE` transactions on the single writer connection, so they are serialised
//! even across processes, and a claim sees every earlier claim.

use async_trait::async_trait;
use oms_application::ports::{Fence, SagaCommit, SagaStore, StepRecord, StepState, StoreError};
use oms_application::saga::{SagaId, SagaInstance, SagaStatus};
use oms_domain::{OrderId, Timestamp, Version};
use sqlx::SqliteConnection;
use sqlx::sqlite::SqliteRow;

use super::orders::write_order;
use super::{begin_write, classify};
use crate::SqlitePools;
use crate::mapping::{SagaInts, decode_saga, saga_columns, saga_from_row, saga_state};

/// SQLite names the violated unique index by its columns, not its name: this is how the
/// one-active-saga index (migration 0004) reports. The table has no other unique key on
/// `order_id` alone, so the text identifies that index.
const ONE_ACTIVE_VIOLATION: &str = "saga_instances.order_id";

/// The select list of a saga row, for `SELECT` and `RETURNING` alike.
macro_rules! saga_select {
    () => {
        concat!("id, order_id, state, ", saga_columns!())
    };
}

pub(crate) struct SqliteSagaStore {
    pools: SqlitePools,
}

impl SqliteSagaStore {
    pub(crate) fn new(pools: SqlitePools) -> Self {
        Self { pools }
    }
}

fn decode_sagas(rows: &[SqliteRow]) -> Result<Vec<SagaInstance>, StoreError> {
    rows.iter()
        .map(|r| saga_from_row(decode_saga(r).map_err(classify)?))
        .collect()
}

/// Classifies an error of a statement that may make a saga active: hitting the one-active
/// index means the order already has a running saga, which the caller must hear as such.
fn saga_write_error(e: sqlx::Error) -> StoreError {
    let one_active = e.as_database_error().is_some_and(|db| {
        db.kind() == sqlx::error::ErrorKind::UniqueViolation
            && db.message().contains(ONE_ACTIVE_VIOLATION)
    });
    if one_active {
        StoreError::SagaActive
    } else {
        classify(e)
    }
}

/// Inserts a new saga inside the caller's transaction (an order write that starts it).
pub(super) async fn insert_saga(
    conn: &mut SqliteConnection,
    saga: &SagaInstance,
) -> Result<(), StoreError> {
    let ints = SagaInts::of(saga)?;
    sqlx::query(
        "INSERT INTO saga_instances (id, kind, order_id, status, step_index, attempts, \
         next_attempt_at, deadline_at, last_error, state, version, created_at, updated_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
    )
    .bind(saga.id.to_string())
    .bind(saga.kind.as_str())
    .bind(saga.order_id.to_string())
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
    conn: &mut SqliteConnection,
    saga: SagaId,
    record: &StepRecord,
) -> Result<(), StoreError> {
    let call = record.call.as_ref();
    let finished = matches!(record.state, StepState::Succeeded | StepState::Failed);
    sqlx::query(
        "INSERT INTO saga_steps (saga_id, step, action, plugin_name, plugin_version, \
         plugin_digest, idempotency_key, status, attempts, last_error, started_at, finished_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12) \
         ON CONFLICT (saga_id, step, action) DO UPDATE SET \
         plugin_name = COALESCE(excluded.plugin_name, saga_steps.plugin_name), \
         plugin_version = COALESCE(excluded.plugin_version, saga_steps.plugin_version), \
         plugin_digest = COALESCE(excluded.plugin_digest, saga_steps.plugin_digest), \
         idempotency_key = excluded.idempotency_key, status = excluded.status, \
         attempts = excluded.attempts, last_error = excluded.last_error, \
         finished_at = excluded.finished_at",
    )
    .bind(saga.to_string())
    .bind(record.step)
    .bind(record.direction.as_str())
    .bind(call.map(|c| c.plugin.as_str()))
    .bind(call.map(|c| c.version.as_str()))
    .bind(call.map(|c| c.digest.as_str()))
    .bind(&record.idempotency_key)
    .bind(record.state.as_str())
    .bind(i64::from(record.attempts))
    .bind(record.last_error.as_deref())
    .bind(record.at.unix_millis())
    .bind(finished.then(|| record.at.unix_millis()))
    .execute(&mut *conn)
    .await
    .map_err(classify)?;
    Ok(())
}

#[async_trait]
impl SagaStore for SqliteSagaStore {
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
        // The write lock is taken at BEGIN, so no other claimer runs between our pick and
        // our update. Claiming leaves `version` alone: it changes who may commit, not the
        // saga.
        let mut tx = begin_write(&self.pools.writer).await?;
        let rows = sqlx::query(concat!(
            "UPDATE saga_instances SET lease_owner = ?1, lease_until = ?3 WHERE id IN (",
            "SELECT id FROM saga_instances WHERE status IN ('RUNNING', 'COMPENSATING') ",
            "AND next_attempt_at <= ?2 AND (lease_until IS NULL OR lease_until < ?2) ",
            "ORDER BY next_attempt_at LIMIT ?4) RETURNING ",
            saga_select!()
        ))
        .bind(owner)
        .bind(now.unix_millis())
        .bind(lease_until.unix_millis())
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await
        .map_err(classify)?;
        tx.commit().await.map_err(classify)?;
        let mut sagas = decode_sagas(&rows)?;
        // RETURNING has no defined order; hand them out most overdue first.
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
        let id = saga.id.to_string();
        let mut tx = begin_write(&self.pools.writer).await?;
        // The order first, the saga second, as on PostgreSQL (where it keeps the lock order of
        // an order write that starts a saga); here the write lock already serialises all.
        if let Some(order) = &commit.order {
            write_order(&mut tx, order).await?;
        }
        let updated = sqlx::query(
            "UPDATE saga_instances SET status = ?4, step_index = ?5, attempts = ?6, \
             next_attempt_at = ?7, deadline_at = ?8, last_error = ?9, state = ?10, \
             version = ?11, updated_at = ?12, lease_owner = ?13, lease_until = ?14 \
             WHERE id = ?1 AND version = ?2 \
             AND (lease_owner = ?3 OR (?3 IS NULL AND status = 'COMPENSATION_FAILED'))",
        )
        .bind(&id)
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
                sqlx::query_scalar("SELECT version FROM saga_instances WHERE id = ?1")
                    .bind(&id)
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
            " FROM saga_instances WHERE id = ?1"
        ))
        .bind(id.to_string())
        .fetch_optional(&self.pools.reader)
        .await
        .map_err(classify)?;
        row.map(|r| saga_from_row(decode_saga(&r).map_err(classify)?))
            .transpose()
    }

    async fn for_order(&self, order_id: OrderId) -> Result<Vec<SagaInstance>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            saga_select!(),
            " FROM saga_instances WHERE order_id = ?1 ORDER BY created_at, id"
        ))
        .bind(order_id.to_string())
        .fetch_all(&self.pools.reader)
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
            " FROM saga_instances WHERE status = ?1 ORDER BY created_at, id LIMIT ?2"
        ))
        .bind(status.as_str())
        .bind(i64::from(limit))
        .fetch_all(&self.pools.reader)
        .await
        .map_err(classify)?;
        decode_sagas(&rows)
    }
}
