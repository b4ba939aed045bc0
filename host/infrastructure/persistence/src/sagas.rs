//! [`SagaStore`]: saga instances and their steps. Several workers (and, on PostgreSQL,
//! several host processes) share one database: claims never hand one saga to two workers
//! ([`crate::sql::Concurrency`] says how), and every commit is fenced by the saga's version
//! and the committing worker's lease.

use std::marker::PhantomData;
use std::sync::Arc;

use async_trait::async_trait;
use oms_application::plugin_kv::KvChanges;
use oms_application::ports::{
    Fence, SagaCommit, SagaLease, SagaQuery, SagaStore, StepHistory, StepRecord, StepState,
    StoreError,
};
use oms_application::saga::{SagaId, SagaInstance, SagaStatus};
use oms_domain::{OrderId, OrderStatus, Timestamp, Version};
use serde_json::value::RawValue;
use sqlx::types::Json;
use sqlx::{AssertSqlSafe, Pool};

use crate::mapping::{SagaInts, decode_saga, saga_columns, saga_from_row};
use crate::orders::{OrderChecks, OwnedOrderWrite, push_order, write_error};
use crate::plugin_kv::{NewRecords, SummedAdds};
use crate::sql::batch::GUARD;
use crate::sql::coalesce::{Coalescer, Grouped, RunGroup};
use crate::sql::{
    Args, Batch, Column, ConnOf, Dialect, PartId, Q, RowExt, RowOf, Rows, Sql, UniqueIndex,
    current_version, json, work,
};

/// The unique partial index that admits one active saga per order (migration 0004).
const ONE_ACTIVE: UniqueIndex = UniqueIndex {
    name: "saga_instances_one_active_idx",
    columns: "saga_instances.order_id",
};

/// Saga commits keyed by the counter they update first: (namespace, key).
type CounterCoalescer = Coalescer<(String, String), Arc<OwnedSagaCommit>>;

pub(crate) struct SqlSagaStore<D: Dialect> {
    sql: Sql<D>,
    /// Where commits run bare, one statement each ([`Sql::bare_pool`]): the commits that
    /// would queue on one counter, sent together, and that pool. With commit lanes (SQLite,
    /// or grouping turned on) a lane's group already takes a hot row once.
    coalescer: Option<(Arc<CounterCoalescer>, Pool<D::DB>)>,
    dialect: PhantomData<D>,
}

impl<D: Dialect> SqlSagaStore<D> {
    pub(crate) fn new(sql: Sql<D>) -> Self {
        let coalescer = sql.bare_pool().map(|pool| {
            let runner_pool = pool.clone();
            let run_group: RunGroup<Arc<OwnedSagaCommit>> = Box::new(move |commits| {
                Box::pin(commit_coalesced::<D>(runner_pool.clone(), commits))
            });
            (Coalescer::new(MAX_COALESCED, run_group), pool.clone())
        });
        Self {
            sql,
            coalescer,
            dialect: PhantomData,
        }
    }
}

fn step_history<D: Dialect>(r: &RowOf<D>) -> Result<StepHistory, sqlx::Error> {
    let plugin: (Option<String>, Option<String>, Option<String>) = (
        r.col("plugin_name")?,
        r.col("plugin_version")?,
        r.col("plugin_digest")?,
    );
    let millis = |t: Option<i64>| t.map(Timestamp::from_unix_millis);
    Ok(StepHistory {
        step: r.col("step")?,
        direction: r.col("action")?,
        status: r.col("status")?,
        attempts: u32::try_from(r.col::<i32>("attempts")?).unwrap_or(0),
        last_error: r.col("last_error")?,
        plugin: match plugin {
            (Some(name), Some(version), Some(digest)) => Some((name, version, digest)),
            _ => None,
        },
        idempotency_key: r.col("idempotency_key")?,
        started_at: millis(r.col("started_at")?),
        finished_at: millis(r.col("finished_at")?),
    })
}

fn decode_sagas<D: Dialect>(rows: &[RowOf<D>]) -> Result<Vec<SagaInstance>, StoreError> {
    rows.iter()
        .map(|r| saga_from_row(decode_saga::<D>(r).map_err(D::classify)?))
        .collect()
}

/// Classifies an error of a statement that may make a saga active: hitting the one-active
/// index means the order already has a running saga, which the caller must hear as such.
pub(crate) fn saga_write_error<D: Dialect>(e: sqlx::Error) -> StoreError {
    if D::violates(&e, &ONE_ACTIVE) {
        StoreError::SagaActive
    } else {
        D::classify(e)
    }
}

/// Adds the insert of a new saga to an order write's batch (an order write that starts it),
/// leased to `lease`'s owner when the writer drives it itself; only when part `guard` (the
/// order's update) changed a row, when given.
pub(crate) fn push_saga<'q, D: Dialect>(
    batch: &mut Batch<'q, D>,
    saga: &'q SagaInstance,
    lease: Option<SagaLease<'q>>,
    guard: Option<PartId>,
) -> Result<PartId, StoreError> {
    const INSERT: &str = "INSERT INTO saga_instances (id, kind, order_id, status, step_index, \
        attempts, next_attempt_at, deadline_at, last_error, state, version, created_at, \
        updated_at, lease_owner, lease_until) ";
    const VALUES: &str = "$1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15";
    let progress = Progress::of(saga)?;
    let bind = move |query: Q<'q, D>| {
        progress
            .bind::<D>(
                query
                    .arg(D::id(saga.id.0))
                    .arg(saga.kind.as_str())
                    .arg(D::id(saga.order_id.as_uuid())),
            )
            .arg(saga.created_at.unix_millis())
            .arg(saga.updated_at.unix_millis())
            .arg(lease.map(|l| l.owner))
            .arg(lease.map(|l| l.until.unix_millis()))
    };
    Ok(match guard {
        None => batch.push(format!("{INSERT}VALUES ({VALUES})"), bind),
        Some(guard) => batch.push_guarded(
            guard,
            format!("{INSERT}SELECT {VALUES} WHERE {GUARD}"),
            bind,
        ),
    })
}

/// A saga's progress (`status`, `step_index`, `attempts`, `next_attempt_at`, `deadline_at`,
/// `last_error`, `state`, `version`), which the insert of a new saga and the update of a
/// commit both write, in that order, as parameters `$4` to `$11`.
struct Progress<'q> {
    saga: &'q SagaInstance,
    ints: SagaInts,
    state: Json<Box<RawValue>>,
}

impl<'q> Progress<'q> {
    /// Checks and encodes what can fail before anything is bound.
    fn of(saga: &'q SagaInstance) -> Result<Self, StoreError> {
        Ok(Self {
            saga,
            ints: SagaInts::of(saga)?,
            state: json(&saga.data, "saga state")?,
        })
    }

    fn bind<D: Dialect>(self, query: Q<'q, D>) -> Q<'q, D> {
        let saga = self.saga;
        query
            .arg(saga.status.as_str())
            .arg(self.ints.step_index)
            .arg(self.ints.attempts)
            .arg(saga.next_attempt_at.unix_millis())
            .arg(saga.step_deadline.map(|t| t.unix_millis()))
            .arg(saga.last_error.as_deref())
            .arg(self.state)
            .arg(saga.version)
    }
}

/// Records one attempt of each step in `records`, in one statement. `started_at` is the
/// first attempt's time; the plugin build is the last one that served a call (an attempt
/// that never reached the plugin keeps it). A step listed twice keeps its last record (one
/// statement cannot update a row twice).
fn push_steps<D: Dialect>(batch: &mut Batch<'_, D>, saga: SagaId, records: &[StepRecord]) {
    let last: Vec<&StepRecord> = records
        .iter()
        .enumerate()
        .filter(|(i, r)| {
            !records[i + 1..]
                .iter()
                .any(|later| later.step == r.step && later.direction == r.direction)
        })
        .map(|(_, r)| r)
        .collect();
    let text = |f: fn(&StepRecord) -> Option<&str>| {
        Column::OptText(last.iter().map(|r| f(r).map(str::to_owned)).collect())
    };
    batch.push_rows(
        Rows {
            table: "saga_steps",
            columns: &[
                "saga_id",
                "step",
                "action",
                "plugin_name",
                "plugin_version",
                "plugin_digest",
                "idempotency_key",
                "status",
                "attempts",
                "last_error",
                "started_at",
                "finished_at",
            ],
            values: vec![
                Column::Id(vec![saga.0; last.len()]),
                Column::Text(last.iter().map(|r| r.step.to_owned()).collect()),
                Column::Text(
                    last.iter()
                        .map(|r| r.direction.as_str().to_owned())
                        .collect(),
                ),
                text(|r| r.call.as_ref().map(|c| c.plugin.as_str())),
                text(|r| r.call.as_ref().map(|c| c.version.as_str())),
                text(|r| r.call.as_ref().map(|c| c.digest.as_str())),
                Column::Text(last.iter().map(|r| r.idempotency_key.clone()).collect()),
                Column::Text(last.iter().map(|r| r.state.as_str().to_owned()).collect()),
                // The column is 32 bits: an attempt count beyond that is recorded as the maximum.
                Column::Int(
                    last.iter()
                        .map(|r| i32::try_from(r.attempts).unwrap_or(i32::MAX))
                        .collect(),
                ),
                text(|r| r.last_error.as_deref()),
                Column::BigInt(last.iter().map(|r| r.at.unix_millis()).collect()),
                Column::OptBigInt(
                    last.iter()
                        .map(|r| {
                            matches!(r.state, StepState::Succeeded | StepState::Failed)
                                .then(|| r.at.unix_millis())
                        })
                        .collect(),
                ),
            ],
            on_conflict: "ON CONFLICT (saga_id, step, action) DO UPDATE SET \
                plugin_name = COALESCE(excluded.plugin_name, saga_steps.plugin_name), \
                plugin_version = COALESCE(excluded.plugin_version, saga_steps.plugin_version), \
                plugin_digest = COALESCE(excluded.plugin_digest, saga_steps.plugin_digest), \
                idempotency_key = excluded.idempotency_key, status = excluded.status, \
                attempts = excluded.attempts, last_error = excluded.last_error, \
                finished_at = excluded.finished_at",
        },
        None,
    );
}

/// What a saga commit writes ([`SagaStore::commit`]), owned: a group-commit job may outlive
/// the request that queued it, and a one-statement commit that fails its expectations is run
/// again in a transaction.
struct OwnedSagaCommit {
    saga: SagaInstance,
    expected_version: i64,
    /// The leaseholder, whose lease then lasts until `lease_until`; `None` for an operator
    /// resuming a parked saga, which it leaves unleased so that any worker claims it.
    owner: Option<String>,
    lease_until: Timestamp,
    steps: Vec<StepRecord>,
    order: Option<OwnedOrderWrite>,
}

impl OwnedSagaCommit {
    /// The plugins' key changes its steps made, step by step.
    fn kv(&self) -> Vec<&KvChanges> {
        self.steps
            .iter()
            .filter_map(|r| r.call.as_ref())
            .map(|call| call.kv.as_ref())
            .collect()
    }

    /// The counter a commit that may be coalesced with others updates first (`sql::coalesce`):
    /// when its plugin changes besides new records are all counter adds, and there is one.
    fn hot_counter(&self) -> Option<(String, String)> {
        let adds = crate::plugin_kv::counter_adds(&self.kv())?;
        let first = adds.first()?;
        Some((first.namespace.to_owned(), first.key.to_owned()))
    }
}

/// A saga commit's batch, in lock order: the order, the saga, its steps, the plugins' new
/// records. Then come the plugins' other keys: by [`commit_saga`], one statement each, or as
/// parts of this batch by [`commit_saga_in_one_statement`].
struct SagaBatch<'q, D: Dialect> {
    batch: Batch<'q, D>,
    order_checks: Option<OrderChecks>,
    saga_part: PartId,
    new_records: NewRecords<'q>,
    kv: Vec<&'q KvChanges>,
}

impl<'q, D: Dialect> SagaBatch<'q, D> {
    fn of(commit: &'q OwnedSagaCommit) -> Result<Self, StoreError> {
        let OwnedSagaCommit {
            saga,
            expected_version,
            owner,
            lease_until,
            steps,
            order,
        } = commit;
        let (expected_version, lease_until) = (*expected_version, *lease_until);
        let owner = owner.as_deref();
        // An ended saga lets go of its lease, so nothing reads it as still being worked on.
        let active = saga.status.is_active();
        let mut batch = Batch::default();
        // The order first, the saga second: the same lock order as an order write that
        // starts a saga (order row, then the one-active index), so the two cannot deadlock.
        let order_checks = order
            .as_ref()
            .map(|order| push_order::<D>(&mut batch, &order.borrow()))
            .transpose()?;
        let progress = Progress::of(saga)?;
        let saga_part = batch.push(
            "UPDATE saga_instances SET status = $4, step_index = $5, attempts = $6, \
             next_attempt_at = $7, deadline_at = $8, last_error = $9, state = $10, \
             version = $11, updated_at = $12, lease_owner = $13, lease_until = $14 \
             WHERE id = $1 AND version = $2 \
             AND (lease_owner = $3 OR ($3 IS NULL AND status = 'COMPENSATION_FAILED'))",
            move |query| {
                progress
                    .bind::<D>(query.arg(D::id(saga.id.0)).arg(expected_version).arg(owner))
                    .arg(saga.updated_at.unix_millis())
                    .arg(owner.filter(|_| active))
                    .arg(owner.filter(|_| active).map(|_| lease_until.unix_millis()))
            },
        );
        push_steps::<D>(&mut batch, saga.id, steps);
        let kv = commit.kv();
        let new_records = crate::plugin_kv::push_new::<D>(&mut batch, &kv);
        Ok(Self {
            batch,
            order_checks,
            saga_part,
            new_records,
            kv,
        })
    }
}

impl<'q, D: Dialect> SagaBatch<'q, D> {
    /// The batch, expecting every count [`commit_saga`] checks: the order's, the saga's and
    /// the new records'. Without the plugins' other keys.
    fn expecting_all(self) -> Batch<'q, D> {
        let mut batch = self.batch;
        if let Some(checks) = &self.order_checks {
            checks.expect(&mut batch);
        }
        batch.expect(self.saga_part, 1);
        self.new_records.expect(&mut batch);
        batch
    }
}

/// A saga commit's statements, inside the caller's transaction (see [`SagaStore::commit`]):
/// the [`SagaBatch`], then the plugins' other keys. On error the caller must roll back.
async fn commit_saga<D: Dialect>(
    conn: &mut ConnOf<D>,
    commit: &OwnedSagaCommit,
) -> Result<(), StoreError> {
    let SagaBatch {
        batch,
        order_checks,
        saga_part,
        new_records,
        kv,
    } = SagaBatch::<D>::of(commit)?;
    let owner = commit.owner.as_deref();
    let counts = batch.run(conn).await.map_err(write_error::<D>)?;
    // The saga's update ran in the same statement as the order's (PostgreSQL), against the
    // same snapshot: it changed the row exactly when the saga was still at `expected_version`
    // and leased to `owner`.
    let saga_held = counts.of(saga_part) == 1;
    if let (Some(checks), Some(order)) = (order_checks, commit.order.as_ref()) {
        match checks.check::<D>(conn, order.borrow().order, &counts).await {
            // The order moved, but so may have the saga: a worker whose copy of the saga is
            // stale (another worker took it over while its step ran long, or its own last
            // commit landed though its answer was lost) must hear that it no longer owns
            // the saga. Told "the order moved", it would lay its stale steps onto an order
            // that already has them, and call the provider again for nothing.
            Err(StoreError::VersionConflict { .. }) if owner.is_some() && !saga_held => {
                return Err(StoreError::LeaseLost);
            }
            other => other?,
        }
    }
    if !saga_held {
        // A worker's saga moved on, or was leased to another worker since its claim: the
        // worker no longer owns it and must stop (repeating the step would only call the
        // provider again for nothing).
        if owner.is_some() {
            return Err(StoreError::LeaseLost);
        }
        // An operator's view of a parked saga is stale: it reloads.
        let current = current_version::<D>(conn, "saga_instances", commit.saga.id.0).await?;
        return Err(StoreError::VersionConflict {
            current: Version(current.unwrap_or(0)),
        });
    }
    new_records.check::<D>(conn, &counts).await?;
    // Last: a hot key (a stock counter many orders take from) is locked from its write
    // until the commit, so it is written as late as possible.
    crate::plugin_kv::apply_rest::<D>(conn, &kv).await
}

/// [`commit_saga`] as one statement outside any transaction, where the batch is one
/// statement ([`Dialect::ONE_STATEMENT_BATCH`]): the plugins' counter adds join the batch as
/// its last parts, and every count [`commit_saga`] checks is expected of the statement, which
/// aborts and writes nothing when one is off. `false` when it could not commit so: another
/// kind of plugin key change (not tried), or an expectation failed (nothing written). The
/// caller then runs [`commit_saga`] in a transaction, which answers the precise error, or
/// commits what one statement cannot: a first add, which creates its counter.
///
/// Why: a step commit was `BEGIN`, the batch, an `UPDATE` per stock counter and `COMMIT`,
/// four round trips, and a hot SKU's counter row stayed locked from its `UPDATE` until the
/// host's `COMMIT` arrived, however long the host took to send it under load. As one
/// statement it is one round trip, and the row is held only while the server commits.
async fn commit_saga_in_one_statement<D: Dialect>(
    conn: &mut ConnOf<D>,
    commit: &OwnedSagaCommit,
) -> Result<bool, StoreError> {
    let saga_batch = SagaBatch::<D>::of(commit)?;
    let kv = saga_batch.kv.clone();
    let mut batch = saga_batch.expecting_all();
    if !crate::plugin_kv::push_adds::<D>(&mut batch, &kv) {
        return Ok(false);
    }
    let counts = batch
        .run_all_or_nothing(conn)
        .await
        .map_err(write_error::<D>)?;
    Ok(counts.is_some())
}

/// A saga commit on a connection of its own, outside any transaction: one statement where it
/// can be ([`commit_saga_in_one_statement`]), else [`commit_saga`] in a transaction.
async fn commit_bare<D: Dialect>(
    conn: &mut ConnOf<D>,
    commit: &OwnedSagaCommit,
) -> Result<(), StoreError> {
    if commit_saga_in_one_statement::<D>(conn, commit).await? {
        return Ok(());
    }
    let mut tx = sqlx::Connection::begin_with(&mut *conn, D::CONCURRENCY.begin_write())
        .await
        .map_err(D::classify)?;
    commit_saga::<D>(&mut tx, commit).await?;
    // Dropping `tx` on an error above rolled the commit back.
    tx.commit().await.map_err(D::classify)
}

/// The most saga commits one coalesced statement carries. A commit binds a few dozen
/// parameters: this many stay far below PostgreSQL's 65,535.
const MAX_COALESCED: usize = 32;

/// Commits a group of saga commits of one counter (`sql::coalesce`). A group of one (nothing
/// was in flight when it came) is committed as [`commit_bare`]. In a larger one, the commits
/// whose counter adds sum ([`SummedAdds`]) go as one statement that updates each counter once,
/// all or nothing; the others, and all of them when that statement is refused (a bound
/// crossed, a lease lost, an order moved: it cannot tell whose), are handed back to their
/// callers, which commit them alone, each hearing its own outcome. A refused group costs a
/// statement more than committing its commits alone; where many commits queue for one
/// counter it is rare (a stock running out refuses the groups at its end).
async fn commit_coalesced<D: Dialect>(
    pool: Pool<D::DB>,
    commits: Vec<Arc<OwnedSagaCommit>>,
) -> Vec<Grouped<Arc<OwnedSagaCommit>>> {
    if let [commit] = commits.as_slice() {
        return vec![Grouped::Done(commit_alone::<D>(&pool, commit).await)];
    }
    let mut summed = SummedAdds::default();
    let together: Vec<bool> = commits
        .iter()
        .map(|commit| {
            crate::plugin_kv::counter_adds(&commit.kv()).is_some_and(|adds| summed.join(&adds))
        })
        .collect();
    let group: Vec<&OwnedSagaCommit> = commits
        .iter()
        .zip(&together)
        .filter(|&(_, &together)| together)
        .map(|(commit, _)| commit.as_ref())
        .collect();
    let landed = group.len() > 1
        && match pool.acquire().await {
            Ok(mut conn) => commit_together::<D>(&mut conn, &group, summed)
                .await
                .unwrap_or(false),
            Err(_) => false,
        };
    let landed_n = if landed { group.len() } else { 0 };
    let coalesced = |outcome: &'static str, n: usize| {
        metrics::counter!("oms_saga_commits_coalesced_total", "outcome" => outcome)
            .increment(n as u64);
    };
    coalesced("together", landed_n);
    coalesced("alone", commits.len() - landed_n);
    commits
        .into_iter()
        .zip(together)
        .map(|(commit, together)| {
            if landed && together {
                Grouped::Done(Ok(()))
            } else {
                Grouped::Alone(commit)
            }
        })
        .collect()
}

/// [`commit_bare`] on a connection of `pool`.
async fn commit_alone<D: Dialect>(
    pool: &Pool<D::DB>,
    commit: &OwnedSagaCommit,
) -> Result<(), StoreError> {
    let mut conn = pool.acquire().await.map_err(D::classify)?;
    commit_bare::<D>(&mut conn, commit).await
}

/// `commits` as one statement, outside any transaction: each one's batch with every count
/// [`commit_saga`] checks expected, then `summed`, one update per counter. `false` when a
/// count was off: nothing was written.
async fn commit_together<'q, D: Dialect>(
    conn: &mut ConnOf<D>,
    commits: &[&'q OwnedSagaCommit],
    summed: SummedAdds<'q>,
) -> Result<bool, StoreError> {
    let mut batch = Batch::default();
    for commit in commits {
        batch.append(SagaBatch::<D>::of(commit)?.expecting_all());
    }
    summed.push(&mut batch);
    let counts = batch
        .run_all_or_nothing(conn)
        .await
        .map_err(write_error::<D>)?;
    Ok(counts.is_some())
}

#[async_trait]
impl<D: Dialect> SagaStore for SqlSagaStore<D> {
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
        // One statement: the subquery picks due rows that no live worker leases (with row
        // locks, it skips rows another claimer has locked, and a row claimed and committed
        // meanwhile is re-checked against `lease_until` and dropped). Claiming leaves
        // `version` alone: it changes who may commit, not the saga.
        let sql = format!(
            concat!(
                "UPDATE saga_instances SET lease_owner = $1, lease_until = $3 WHERE id IN (",
                "SELECT id FROM saga_instances WHERE status IN ('RUNNING', 'COMPENSATING') ",
                "AND next_attempt_at <= $2 AND (lease_until IS NULL OR lease_until < $2) ",
                "ORDER BY next_attempt_at LIMIT $4{lock}) RETURNING ",
                saga_columns!()
            ),
            lock = D::CONCURRENCY.claim_lock()
        );
        let rows = self
            .sql
            .write_returning(
                D::query(AssertSqlSafe(sql))
                    .arg(owner)
                    .arg(now.unix_millis())
                    .arg(lease_until.unix_millis())
                    .arg(i64::from(limit)),
            )
            .await?;
        let mut sagas = decode_sagas::<D>(&rows)?;
        // RETURNING has no defined order; hand them out most overdue first.
        sagas.sort_by_key(|s| (s.next_attempt_at, s.id));
        Ok(sagas)
    }

    async fn renew_lease(
        &self,
        id: SagaId,
        owner: &str,
        version: i64,
        until: Timestamp,
    ) -> Result<(), StoreError> {
        // A plain statement, not a group-commit job: a heartbeat changes who may commit and
        // until when, which a crash may forget (the lease then just runs out sooner).
        let renewed = self
            .sql
            .write(
                D::query(
                    "UPDATE saga_instances SET lease_until = $4 \
                     WHERE id = $1 AND version = $2 AND lease_owner = $3",
                )
                .arg(D::id(id.0))
                .arg(version)
                .arg(owner)
                .arg(until.unix_millis()),
            )
            .await?;
        if D::rows_affected(&renewed) == 1 {
            Ok(())
        } else {
            Err(StoreError::LeaseLost)
        }
    }

    async fn wake(&self, id: SagaId, now: Timestamp) -> Result<bool, StoreError> {
        // A plain statement: if a crash forgets it, the saga runs at its own schedule.
        let woken = self
            .sql
            .write(
                D::query(
                    "UPDATE saga_instances SET next_attempt_at = $2 \
                     WHERE id = $1 AND status IN ('RUNNING', 'COMPENSATING') \
                     AND next_attempt_at > $2",
                )
                .arg(D::id(id.0))
                .arg(now.unix_millis()),
            )
            .await?;
        Ok(D::rows_affected(&woken) == 1)
    }

    async fn commit(&self, commit: SagaCommit<'_>) -> Result<(), StoreError> {
        let commit = Arc::new(OwnedSagaCommit {
            saga: commit.saga.clone(),
            expected_version: commit.expected_version,
            owner: match commit.fence {
                Fence::Lease(owner) => Some(owner.to_owned()),
                Fence::Parked => None,
            },
            lease_until: commit.lease_until,
            steps: commit.steps.to_vec(),
            order: commit.order.as_ref().map(OwnedOrderWrite::of),
        });
        // A commit that takes from a counter waits for the one in flight on that counter, and
        // goes with the others that waited (`sql::coalesce`).
        let coalesce = self
            .coalescer
            .as_ref()
            .and_then(|coalescer| commit.hot_counter().map(|counter| (coalescer, counter)));
        if let Some(((coalescer, pool), counter)) = coalesce {
            return match coalescer.run(counter, commit).await {
                Grouped::Done(outcome) => outcome,
                Grouped::Alone(commit) => commit_alone::<D>(pool, &commit).await,
            };
        }
        let grouped = {
            let commit = Arc::clone(&commit);
            work::<D, _>(move |conn| Box::pin(async move { commit_saga::<D>(conn, &commit).await }))
        };
        // One statement on a connection of its own where nothing is grouped; otherwise
        // committed with whatever other writes are queued (`sql::group`).
        let bare = work::<D, _>(move |conn| {
            Box::pin(async move { commit_bare::<D>(conn, &commit).await })
        });
        self.sql.commit_bare_or_grouped(bare, grouped).await
    }

    async fn get(&self, id: SagaId) -> Result<Option<SagaInstance>, StoreError> {
        let row = D::query(concat!(
            "SELECT ",
            saga_columns!(),
            " FROM saga_instances WHERE id = $1"
        ))
        .arg(D::id(id.0))
        .fetch_optional(self.sql.reader())
        .await
        .map_err(D::classify)?;
        row.map(|r| saga_from_row(decode_saga::<D>(&r).map_err(D::classify)?))
            .transpose()
    }

    async fn for_order(&self, order_id: OrderId) -> Result<Vec<SagaInstance>, StoreError> {
        let rows = D::query(concat!(
            "SELECT ",
            saga_columns!(),
            " FROM saga_instances WHERE order_id = $1 ORDER BY created_at, id"
        ))
        .arg(D::id(order_id.as_uuid()))
        .fetch_all(self.sql.reader())
        .await
        .map_err(D::classify)?;
        decode_sagas::<D>(&rows)
    }

    async fn find(&self, query: &SagaQuery) -> Result<Vec<SagaInstance>, StoreError> {
        let sql = format!(
            "SELECT {} FROM saga_instances WHERE status {} \
             AND ($2 IS NULL OR kind = $2) AND ($3 IS NULL OR updated_at < $3) \
             ORDER BY created_at, id LIMIT $4",
            saga_columns!(),
            D::in_list("$1")
        );
        let statuses = query.statuses.iter().map(|s| s.as_str().to_owned());
        let rows = D::bind_list(
            D::query(AssertSqlSafe(sql)),
            Column::Text(statuses.collect()),
        )
        .arg(query.kind.map(|k| k.as_str()))
        .arg(query.updated_before.map(|t| t.unix_millis()))
        .arg(i64::from(query.limit))
        .fetch_all(self.sql.reader())
        .await
        .map_err(D::classify)?;
        decode_sagas::<D>(&rows)
    }

    async fn steps(&self, id: SagaId) -> Result<Vec<StepHistory>, StoreError> {
        let rows = D::query(
            "SELECT step, action, status, attempts, last_error, plugin_name, plugin_version, \
             plugin_digest, idempotency_key, started_at, finished_at \
             FROM saga_steps WHERE saga_id = $1 ORDER BY started_at, step, action",
        )
        .arg(D::id(id.0))
        .fetch_all(self.sql.reader())
        .await
        .map_err(D::classify)?;
        rows.iter()
            .map(|r| step_history::<D>(r).map_err(D::classify))
            .collect()
    }

    async fn plugin_builds_in_use(&self) -> Result<Vec<(String, String)>, StoreError> {
        // Through `orders_status_id_idx` and the saga indexes: only open orders (and the
        // sagas still running on terminal ones: a compensation may outlive its order's
        // status) are read.
        let sql = format!(
            "SELECT DISTINCT st.plugin_name, st.plugin_digest \
             FROM orders o \
             JOIN saga_instances si ON si.order_id = o.id \
             JOIN saga_steps st ON st.saga_id = si.id \
             WHERE (o.status {} OR si.status {}) \
             AND st.plugin_name IS NOT NULL AND st.plugin_digest IS NOT NULL \
             ORDER BY st.plugin_name, st.plugin_digest",
            D::in_list("$1"),
            D::in_list("$2")
        );
        let open = OrderStatus::ALL
            .iter()
            .filter(|s| !s.is_terminal())
            .map(|s| s.as_str().to_owned());
        let unfinished = [
            SagaStatus::Running,
            SagaStatus::Compensating,
            SagaStatus::CompensationFailed,
        ]
        .iter()
        .map(|s| s.as_str().to_owned());
        let query = D::bind_list(D::query(AssertSqlSafe(sql)), Column::Text(open.collect()));
        let rows = D::bind_list(query, Column::Text(unfinished.collect()))
            .fetch_all(self.sql.reader())
            .await
            .map_err(D::classify)?;
        rows.iter()
            .map(|r| Ok((r.col("plugin_name")?, r.col("plugin_digest")?)))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(D::classify)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::BTreeMap;

    use oms_application::plugin_kv::{Expect, KeyChange, KeyEffect, Swap};
    use oms_application::ports::{OrderWrite, PluginCall, StepDirection};
    use oms_application::saga::SagaKind;
    use oms_application::testing::sample_order;
    use oms_domain::Order;

    use super::*;
    use crate::sql::postgres::PostgresDialect;
    use crate::testing::TestDatabase;

    const NS: &str = "local-stock";

    /// A reservation of `delta` units on `counter` under record `rsv/1`, as local-stock's
    /// reserve buffers it.
    fn reserve(counter: &str, delta: i64) -> StepRecord {
        reserve_as("rsv/1", counter, delta)
    }

    /// [`reserve`] under record `record`.
    fn reserve_as(record: &str, counter: &str, delta: i64) -> StepRecord {
        let kv = KvChanges {
            namespace: NS.into(),
            keys: BTreeMap::from([
                (
                    record.to_owned(),
                    KeyChange {
                        expect: Expect::Value(None),
                        effect: KeyEffect::Put(b"held".to_vec()),
                    },
                ),
                (
                    counter.to_owned(),
                    KeyChange {
                        expect: Expect::Anything,
                        effect: KeyEffect::Add {
                            delta,
                            min: Some(0),
                            max: None,
                        },
                    },
                ),
            ]),
        };
        StepRecord {
            step: "reserve-inventory",
            direction: StepDirection::Forward,
            call: Some(PluginCall {
                plugin: NS.into(),
                version: "1.0.0".into(),
                digest: "sha256:x".into(),
                kv: Arc::new(kv),
                host_only: true,
            }),
            idempotency_key: "saga:x:reserve-inventory:reserve".into(),
            state: StepState::Succeeded,
            attempts: 1,
            last_error: None,
            at: Timestamp::from_unix_millis(3_000),
        }
    }

    /// The one-statement commit itself (PostgreSQL), not its fallback: a reservation lands
    /// in it with its counter; a bound crossed, a counter not there yet and a lost lease each
    /// answer `false` with nothing of the step written (which is what sends the commit to the
    /// transactional path). The store's tests (`tests/step_kv.rs`) pass either way, through
    /// the fallback; this one fails if the statement itself never commits.
    #[tokio::test]
    async fn one_statement_commit_lands_whole_or_writes_nothing() {
        let test_db = TestDatabase::postgres().await.unwrap();
        let db = test_db.connect().await.unwrap();
        let claimed = claimed_sagas(&db, 1).await.pop().unwrap();
        let seed = Swap {
            key: "stock/A".into(),
            expected: None,
            new: Some(b"5".to_vec()),
        };
        db.plugin_kv().batch(NS, &[seed], &[]).await.unwrap();
        let commit = |owner: &str, step: StepRecord| next_step(&claimed, owner, step);
        let kv = db.plugin_kv();
        let mut conn = db.postgres().unwrap().acquire().await.unwrap();
        for (why, refused) in [
            ("a bound crossed", commit("w1", reserve("stock/A", -6))),
            (
                "a counter not there yet",
                commit("w1", reserve("stock/B", 1)),
            ),
            ("a lost lease", commit("w2", reserve("stock/A", -2))),
        ] {
            let done = commit_saga_in_one_statement::<PostgresDialect>(&mut conn, &refused)
                .await
                .unwrap();
            assert!(!done, "{why}: committed");
            assert_eq!(kv.get(NS, "rsv/1").await.unwrap(), None, "{why}");
            assert_eq!(
                kv.get(NS, "stock/A").await.unwrap().as_deref(),
                Some(&b"5"[..])
            );
            assert_eq!(kv.get(NS, "stock/B").await.unwrap(), None, "{why}");
            assert_eq!(
                db.sagas().get(claimed.id).await.unwrap(),
                Some(claimed.clone())
            );
        }
        let accepted = commit("w1", reserve("stock/A", -2));
        assert!(
            commit_saga_in_one_statement::<PostgresDialect>(&mut conn, &accepted)
                .await
                .unwrap()
        );
        assert_eq!(
            kv.get(NS, "rsv/1").await.unwrap().as_deref(),
            Some(&b"held"[..])
        );
        assert_eq!(
            kv.get(NS, "stock/A").await.unwrap().as_deref(),
            Some(&b"3"[..])
        );
        assert_eq!(db.sagas().get(claimed.id).await.unwrap().unwrap().step, 1);
        drop(conn);
        db.close().await;
        test_db.cleanup().await.unwrap();
    }

    /// `n` place-order sagas of new orders, claimed by `w1`.
    async fn claimed_sagas(db: &crate::Database, n: u32) -> Vec<SagaInstance> {
        let now = Timestamp::from_unix_millis(1_000);
        for _ in 0..n {
            let (order, _) = Order::place(sample_order(), OrderId::generate(), now);
            let saga = SagaInstance::start(SagaKind::PlaceOrder, order.id(), now);
            db.orders()
                .save(OrderWrite {
                    order: &order,
                    expected_version: None,
                    outbox: &[],
                    idempotency: None,
                    start_saga: Some(&saga),
                    lease_saga_to: None,
                })
                .await
                .unwrap();
        }
        let lease_until = Timestamp::from_unix_millis(100_000);
        db.sagas()
            .claim_due("w1", Timestamp::from_unix_millis(2_000), lease_until, n)
            .await
            .unwrap()
    }

    /// `claimed`'s next step, committed by `owner` with `step`.
    fn next_step(claimed: &SagaInstance, owner: &str, step: StepRecord) -> Arc<OwnedSagaCommit> {
        let mut next = claimed.clone();
        next.step += 1;
        next.version += 1;
        Arc::new(OwnedSagaCommit {
            saga: next,
            expected_version: claimed.version,
            owner: Some(owner.to_owned()),
            lease_until: Timestamp::from_unix_millis(100_000),
            steps: vec![step],
            order: None,
        })
    }

    /// How many transactions wrote the rows of `sagas` (PostgreSQL's `xmin`).
    async fn writers(pool: &sqlx::PgPool, sagas: &[SagaInstance]) -> i64 {
        let ids: Vec<uuid::Uuid> = sagas.iter().map(|s| s.id.0).collect();
        sqlx::query_scalar(
            "SELECT count(DISTINCT xmin::text) FROM saga_instances WHERE id = ANY($1)",
        )
        .bind(ids)
        .fetch_one(pool)
        .await
        .unwrap()
    }

    /// Commits `commits` as one group of their counter, and the ones handed back alone, as
    /// `SqlSagaStore::commit` does: what each heard, and whether it was handed back.
    async fn as_one_group(
        pool: &sqlx::PgPool,
        commits: Vec<Arc<OwnedSagaCommit>>,
    ) -> Vec<(Result<(), StoreError>, bool)> {
        let grouped = commit_coalesced::<PostgresDialect>(pool.clone(), commits).await;
        let each = grouped.into_iter().map(|grouped| async move {
            match grouped {
                Grouped::Done(outcome) => (outcome, false),
                Grouped::Alone(commit) => {
                    (commit_alone::<PostgresDialect>(pool, &commit).await, true)
                }
            }
        });
        futures::future::join_all(each).await
    }

    /// A give of `delta` (no bound) on `counter` under `record`, as a release.
    fn give_as(record: &str, counter: &str, delta: i64) -> StepRecord {
        let mut give = reserve_as(record, counter, delta);
        if let Some(call) = give.call.as_mut() {
            let mut changes = (*call.kv).clone();
            if let Some(change) = changes.keys.get_mut(counter) {
                change.effect = KeyEffect::Add {
                    delta,
                    min: None,
                    max: None,
                };
            }
            call.kv = Arc::new(changes);
        }
        give
    }

    /// Coalesced commits (PostgreSQL): commits that take from one counter land in one
    /// statement, which updates the counter once. When the statement is refused (a lost lease
    /// though the sum fits; a sum that crosses the bound) every commit is handed back, runs
    /// alone and hears its own outcome, and the counter is never overdrawn. A give cannot be
    /// summed with takes: handed back, while the takes still land together.
    #[tokio::test]
    async fn commits_waiting_for_one_counter_land_together_or_each_alone() {
        let test_db = TestDatabase::postgres().await.unwrap();
        let db = test_db.connect().await.unwrap();
        let pool = db.postgres().unwrap().clone();
        let kv = db.plugin_kv();
        let seed = Swap {
            key: "stock/A".into(),
            expected: None,
            new: Some(b"20".to_vec()),
        };
        kv.batch(NS, &[seed], &[]).await.unwrap();
        let stock = || async { kv.get(NS, "stock/A").await.unwrap().unwrap() };
        let takes = |sagas: &[SagaInstance], prefix: &str, n: i64| {
            sagas
                .iter()
                .enumerate()
                .map(|(i, saga)| {
                    next_step(
                        saga,
                        "w1",
                        reserve_as(&format!("rsv/{prefix}{i}"), "stock/A", -n),
                    )
                })
                .collect::<Vec<_>>()
        };

        // Four takes of 2 from 20: one statement, one transaction, the counter at 12.
        let sagas = claimed_sagas(&db, 4).await;
        let heard = as_one_group(&pool, takes(&sagas, "a", 2)).await;
        assert_eq!(heard, vec![(Ok(()), false); 4]);
        assert_eq!(stock().await, b"12");
        assert_eq!(
            writers(&pool, &sagas).await,
            1,
            "one statement wrote the four steps"
        );

        // Three takes of 1, the second by a worker that lost its lease: the sum fits, but the
        // statement is refused, and each runs alone.
        let sagas = claimed_sagas(&db, 3).await;
        let mut commits = takes(&sagas, "b", 1);
        commits[1] = next_step(&sagas[1], "w2", reserve_as("rsv/b1", "stock/A", -1));
        let heard = as_one_group(&pool, commits).await;
        assert_eq!(
            heard,
            vec![
                (Ok(()), true),
                (Err(StoreError::LeaseLost), true),
                (Ok(()), true)
            ]
        );
        assert_eq!(stock().await, b"10");
        assert_eq!(kv.get(NS, "rsv/b1").await.unwrap(), None);
        let landed = [sagas[0].clone(), sagas[2].clone()];
        assert_eq!(writers(&pool, &landed).await, 2, "each landed alone");

        // Two takes of 1 and a give of 5: the takes land together, the give alone.
        let sagas = claimed_sagas(&db, 3).await;
        let mut commits = takes(&sagas[..2], "c", 1);
        commits.push(next_step(&sagas[2], "w1", give_as("rsv/c2", "stock/A", 5)));
        let heard = as_one_group(&pool, commits).await;
        assert_eq!(
            heard,
            vec![(Ok(()), false), (Ok(()), false), (Ok(()), true)]
        );
        assert_eq!(stock().await, b"13");
        assert_eq!(writers(&pool, &sagas[..2]).await, 1);

        // Three takes of 5 from 13: refused together; alone, two land and one hears its
        // conflict; never below zero.
        let sagas = claimed_sagas(&db, 3).await;
        let heard = as_one_group(&pool, takes(&sagas, "d", 5)).await;
        assert_eq!(
            heard.iter().filter(|(h, _)| h.is_ok()).count(),
            2,
            "{heard:?}"
        );
        assert!(
            heard.iter().all(|(h, alone)| *alone
                && match h {
                    Ok(()) => true,
                    Err(StoreError::KvConflict { key, .. }) => key == "stock/A",
                    Err(_) => false,
                }),
            "{heard:?}"
        );
        assert_eq!(stock().await, b"3");
        db.close().await;
        test_db.cleanup().await.unwrap();
    }
}
