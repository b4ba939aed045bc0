//! The outbox queries of the relay, for PostgreSQL and SQLite.
//!
//! Claiming is a lease: one statement moves the claimed rows' `next_attempt_at` past the
//! lease, so no other relay (PostgreSQL: `FOR UPDATE SKIP LOCKED` makes concurrent claims
//! disjoint) takes them while this one publishes, and a relay that dies mid-batch only delays
//! its rows until the lease ends. No transaction stays open while the broker is called.
//!
//! Per-order ordering: a row is claimable only when no earlier unpublished row of the same
//! order exists. A failed row therefore blocks its order's later rows until it is published
//! or dead-lettered, and two relays can never publish one order's events out of order.

use oms_persistence::SqlitePools;
use sqlx::{PgPool, Row};
use uuid::Uuid;

use crate::db::Db;
use crate::error::MessagingError;

/// One claimed outbox row.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxRow {
    pub id: i64,
    pub event_id: Uuid,
    pub aggregate_id: String,
    pub event_type: String,
    pub schema_version: i32,
    pub payload: serde_json::Value,
    /// Extra message headers (a JSON object of strings).
    pub headers: serde_json::Value,
    pub occurred_at: i64,
    pub created_at: i64,
    /// Failed attempts so far.
    pub attempts: i32,
}

/// A row of `dead_letters`.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    /// The row's id in the outbox, which redrive restores.
    pub id: i64,
    pub event_id: Uuid,
    pub aggregate_id: String,
    pub event_type: String,
    pub attempts: i32,
    pub last_error: String,
    pub failed_at: i64,
    pub redriven_at: Option<i64>,
}

/// Outbox lag and dead-letter size, as read from the database.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Backlog {
    pub unpublished: i64,
    /// `created_at` of the oldest unpublished row.
    pub oldest_created_at: Option<i64>,
    /// Dead letters not yet redriven.
    pub dead_letters: i64,
}

const COLUMNS: &str = "id, event_id, aggregate_id, event_type, schema_version, payload, headers, \
                       occurred_at, created_at, attempts";

const CLAIM_WHERE: &str = "c.published_at IS NULL AND c.next_attempt_at <= $1 \
     AND NOT EXISTS (SELECT 1 FROM outbox p WHERE p.aggregate_id = c.aggregate_id \
                     AND p.published_at IS NULL AND p.id < c.id)";

impl Db {
    /// Leases up to `limit` due rows until `lease_until`; returns them in id order.
    pub(crate) async fn claim(
        &self,
        now: i64,
        lease_until: i64,
        limit: i64,
    ) -> Result<Vec<OutboxRow>, MessagingError> {
        let mut rows = match self {
            Db::Postgres(pool) => pg_claim(pool, now, lease_until, limit).await?,
            Db::Sqlite(pools) => sqlite_claim(pools, now, lease_until, limit).await?,
        };
        rows.sort_by_key(|r| r.id);
        Ok(rows)
    }

    pub(crate) async fn mark_published(&self, ids: &[i64], now: i64) -> Result<(), MessagingError> {
        if ids.is_empty() {
            return Ok(());
        }
        match self {
            Db::Postgres(pool) => {
                sqlx::query(
                    "UPDATE outbox SET published_at = $1, last_error = NULL WHERE id = ANY($2)",
                )
                .bind(now)
                .bind(ids)
                .execute(pool)
                .await?;
            }
            Db::Sqlite(pools) => {
                let mut tx = pools.writer.begin_with("BEGIN IMMEDIATE").await?;
                for id in ids {
                    sqlx::query(
                        "UPDATE outbox SET published_at = ?1, last_error = NULL WHERE id = ?2",
                    )
                    .bind(now)
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
            }
        }
        Ok(())
    }

    /// Records a failed attempt; the row becomes due again at `retry_at`.
    pub(crate) async fn mark_failed(
        &self,
        id: i64,
        error: &str,
        retry_at: i64,
    ) -> Result<(), MessagingError> {
        let sql = "UPDATE outbox SET attempts = attempts + 1, last_error = $1, \
                   next_attempt_at = $2 WHERE id = $3 AND published_at IS NULL";
        match self {
            Db::Postgres(pool) => {
                sqlx::query(sql)
                    .bind(error)
                    .bind(retry_at)
                    .bind(id)
                    .execute(pool)
                    .await?;
            }
            Db::Sqlite(pools) => {
                let mut tx = pools.writer.begin_with("BEGIN IMMEDIATE").await?;
                sqlx::query(sql)
                    .bind(error)
                    .bind(retry_at)
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
            }
        }
        Ok(())
    }

    /// Moves a row from the outbox to `dead_letters` (one transaction), which unblocks its
    /// order's later rows. A row dead-lettered again after a redrive updates its record.
    pub(crate) async fn dead_letter(
        &self,
        id: i64,
        attempts: i32,
        error: &str,
        now: i64,
    ) -> Result<(), MessagingError> {
        let insert = "INSERT INTO dead_letters (id, event_id, aggregate_id, event_type, \
             schema_version, payload, headers, occurred_at, attempts, last_error, failed_at) \
             SELECT id, event_id, aggregate_id, event_type, schema_version, payload, headers, \
             occurred_at, $1, $2, $3 FROM outbox WHERE id = $4 \
             ON CONFLICT (id) DO UPDATE SET attempts = excluded.attempts, \
             last_error = excluded.last_error, failed_at = excluded.failed_at, \
             redriven_at = NULL";
        let delete = "DELETE FROM outbox WHERE id = $1";
        match self {
            Db::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                bind_dead_letter(sqlx::query(insert), id, attempts, error, now)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(delete).bind(id).execute(&mut *tx).await?;
                tx.commit().await?;
            }
            Db::Sqlite(pools) => {
                let mut tx = pools.writer.begin_with("BEGIN IMMEDIATE").await?;
                bind_dead_letter(sqlx::query(insert), id, attempts, error, now)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(delete).bind(id).execute(&mut *tx).await?;
                tx.commit().await?;
            }
        }
        Ok(())
    }

    /// Puts a dead letter back into the outbox under its original id with a fresh attempt
    /// count, due now. Returns false when it was already redriven (and not dead again).
    pub(crate) async fn redrive(&self, id: i64, now: i64) -> Result<bool, MessagingError> {
        let insert = "INSERT INTO outbox (id, event_id, aggregate_id, event_type, \
             schema_version, payload, headers, occurred_at, created_at, attempts, \
             next_attempt_at) SELECT id, event_id, aggregate_id, event_type, schema_version, \
             payload, headers, occurred_at, $1, 0, $1 FROM dead_letters \
             WHERE id = $2 AND redriven_at IS NULL";
        let mark = "UPDATE dead_letters SET redriven_at = $1 WHERE id = $2";
        let exists = "SELECT 1 FROM dead_letters WHERE id = $1";
        macro_rules! run {
            ($tx:expr) => {{
                let mut tx = $tx;
                let found = sqlx::query(exists)
                    .bind(id)
                    .fetch_optional(&mut *tx)
                    .await?
                    .is_some();
                if !found {
                    return Err(MessagingError::UnknownDeadLetter(id));
                }
                let inserted = sqlx::query(insert)
                    .bind(now)
                    .bind(id)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                if inserted == 1 {
                    sqlx::query(mark)
                        .bind(now)
                        .bind(id)
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
                Ok(inserted == 1)
            }};
        }
        match self {
            Db::Postgres(pool) => run!(pool.begin().await?),
            Db::Sqlite(pools) => run!(pools.writer.begin_with("BEGIN IMMEDIATE").await?),
        }
    }

    /// Dead letters, newest failure first; `pending_only` hides redriven ones.
    pub(crate) async fn dead_letters(
        &self,
        pending_only: bool,
        limit: i64,
    ) -> Result<Vec<DeadLetter>, MessagingError> {
        let sql = format!(
            "SELECT id, event_id, aggregate_id, event_type, attempts, last_error, failed_at, \
             redriven_at FROM dead_letters {} ORDER BY failed_at DESC, id DESC LIMIT $1",
            if pending_only {
                "WHERE redriven_at IS NULL"
            } else {
                ""
            }
        );
        let sql = sqlx::AssertSqlSafe(sql);
        match self {
            Db::Postgres(pool) => {
                let rows = sqlx::query(sql).bind(limit).fetch_all(pool).await?;
                rows.iter()
                    .map(|r| {
                        Ok(DeadLetter {
                            id: r.try_get("id")?,
                            event_id: r.try_get("event_id")?,
                            aggregate_id: r.try_get::<Uuid, _>("aggregate_id")?.to_string(),
                            event_type: r.try_get("event_type")?,
                            attempts: r.try_get("attempts")?,
                            last_error: r.try_get("last_error")?,
                            failed_at: r.try_get("failed_at")?,
                            redriven_at: r.try_get("redriven_at")?,
                        })
                    })
                    .collect()
            }
            Db::Sqlite(pools) => {
                let rows = sqlx::query(sql)
                    .bind(limit)
                    .fetch_all(&pools.reader)
                    .await?;
                rows.iter()
                    .map(|r| {
                        Ok(DeadLetter {
                            id: r.try_get("id")?,
                            event_id: parse_uuid(&r.try_get::<String, _>("event_id")?)?,
                            aggregate_id: r.try_get("aggregate_id")?,
                            event_type: r.try_get("event_type")?,
                            attempts: r.try_get("attempts")?,
                            last_error: r.try_get("last_error")?,
                            failed_at: r.try_get("failed_at")?,
                            redriven_at: r.try_get("redriven_at")?,
                        })
                    })
                    .collect()
            }
        }
    }

    /// Deletes up to `limit` rows published before `cutoff`; returns how many.
    pub(crate) async fn prune(&self, cutoff: i64, limit: i64) -> Result<u64, MessagingError> {
        let sql = "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox \
                   WHERE published_at IS NOT NULL AND published_at < $1 ORDER BY id LIMIT $2)";
        let n = match self {
            Db::Postgres(pool) => sqlx::query(sql)
                .bind(cutoff)
                .bind(limit)
                .execute(pool)
                .await?
                .rows_affected(),
            Db::Sqlite(pools) => {
                let mut tx = pools.writer.begin_with("BEGIN IMMEDIATE").await?;
                let n = sqlx::query(sql)
                    .bind(cutoff)
                    .bind(limit)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                n.rows_affected()
            }
        };
        Ok(n)
    }

    pub(crate) async fn backlog(&self) -> Result<Backlog, MessagingError> {
        let sql = "SELECT (SELECT COUNT(*) FROM outbox WHERE published_at IS NULL) AS n, \
                   (SELECT MIN(created_at) FROM outbox WHERE published_at IS NULL) AS oldest, \
                   (SELECT COUNT(*) FROM dead_letters WHERE redriven_at IS NULL) AS dead";
        let row = match self {
            Db::Postgres(pool) => sqlx::query(sql).fetch_one(pool).await?,
            Db::Sqlite(pools) => {
                let row = sqlx::query(sql).fetch_one(&pools.reader).await?;
                return Ok(Backlog {
                    unpublished: row.try_get("n")?,
                    oldest_created_at: row.try_get("oldest")?,
                    dead_letters: row.try_get("dead")?,
                });
            }
        };
        Ok(Backlog {
            unpublished: row.try_get("n")?,
            oldest_created_at: row.try_get("oldest")?,
            dead_letters: row.try_get("dead")?,
        })
    }
}

fn bind_dead_letter<'q, DB: sqlx::Database>(
    q: sqlx::query::Query<'q, DB, <DB as sqlx::Database>::Arguments>,
    id: i64,
    attempts: i32,
    error: &'q str,
    now: i64,
) -> sqlx::query::Query<'q, DB, <DB as sqlx::Database>::Arguments>
where
    i32: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    q.bind(attempts).bind(error).bind(now).bind(id)
}

fn parse_uuid(s: &str) -> Result<Uuid, MessagingError> {
    Uuid::parse_str(s).map_err(|e| MessagingError::Invalid(format!("bad uuid {s:?}: {e}")))
}

async fn pg_claim(
    pool: &PgPool,
    now: i64,
    lease_until: i64,
    limit: i64,
) -> Result<Vec<OutboxRow>, MessagingError> {
    let sql = format!(
        "UPDATE outbox SET next_attempt_at = $2 WHERE id IN (SELECT c.id FROM outbox c \
         WHERE {CLAIM_WHERE} ORDER BY c.id LIMIT $3 FOR UPDATE SKIP LOCKED) \
         RETURNING {COLUMNS}"
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(now)
        .bind(lease_until)
        .bind(limit)
        .fetch_all(pool)
        .await?;
    rows.iter()
        .map(|r| {
            Ok(OutboxRow {
                id: r.try_get("id")?,
                event_id: r.try_get("event_id")?,
                aggregate_id: r.try_get::<Uuid, _>("aggregate_id")?.to_string(),
                event_type: r.try_get("event_type")?,
                schema_version: r.try_get("schema_version")?,
                payload: r.try_get("payload")?,
                headers: r.try_get("headers")?,
                occurred_at: r.try_get("occurred_at")?,
                created_at: r.try_get("created_at")?,
                attempts: r.try_get("attempts")?,
            })
        })
        .collect()
}

async fn sqlite_claim(
    pools: &SqlitePools,
    now: i64,
    lease_until: i64,
    limit: i64,
) -> Result<Vec<OutboxRow>, MessagingError> {
    let sql = format!(
        "UPDATE outbox SET next_attempt_at = $2 WHERE id IN (SELECT c.id FROM outbox c \
         WHERE {CLAIM_WHERE} ORDER BY c.id LIMIT $3) RETURNING {COLUMNS}"
    );
    let mut tx = pools.writer.begin_with("BEGIN IMMEDIATE").await?;
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(now)
        .bind(lease_until)
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
    tx.commit().await?;
    rows.iter()
        .map(|r| {
            // Text that is not JSON stays a string: the payload then fails to encode and the
            // row is dead-lettered instead of failing every claim.
            let json = |col: &str| -> Result<serde_json::Value, MessagingError> {
                let text: String = r.try_get(col)?;
                Ok(serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)))
            };
            Ok(OutboxRow {
                id: r.try_get("id")?,
                event_id: parse_uuid(&r.try_get::<String, _>("event_id")?)?,
                aggregate_id: r.try_get("aggregate_id")?,
                event_type: r.try_get("event_type")?,
                schema_version: r.try_get("schema_version")?,
                payload: json("payload")?,
                headers: json("headers")?,
                occurred_at: r.try_get("occurred_at")?,
                created_at: r.try_get("created_at")?,
                attempts: r.try_get("attempts")?,
            })
        })
        .collect()
}
