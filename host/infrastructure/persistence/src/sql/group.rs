//! Group commit: concurrent write transactions of one process share one database commit.
//!
//! Every order write and saga step commit is a *job*: statements that must land together or
//! not at all. Run one by one, each job pays a commit, and with `synchronous_commit = on`
//! (PostgreSQL) or `synchronous = FULL` (SQLite) a commit waits for its WAL flush; SQLite
//! admits one writer at a time, so its jobs also queue for that flush one after another.
//!
//! Here a job is handed to a *commit lane*: a task with its own write transaction. A lane
//! takes every job queued while its previous group was committing (up to `max_group`), runs
//! them one after the other in one transaction, each inside its own savepoint, and commits
//! once: one WAL flush for the group. A job that fails (a lost lease, a version conflict, a
//! plugin key-value condition) is rolled back to its savepoint and answered with its error
//! at once; the others still commit. A job is answered `Ok` only after the group's commit
//! succeeded, so nothing a caller was told is durable can be lost; when the commit itself
//! fails, every job of the group hears the error, as each would have alone.
//!
//! The first job of a group runs without a savepoint: nothing else is in the transaction, so
//! its failure rolls the whole transaction back. A lone job (no concurrency) therefore costs
//! exactly what it did before grouping: `BEGIN`, its statements, `COMMIT`.
//!
//! Locks a job takes are held until its group commits, by the lane. A hot row (a flash
//! sale's stock counter) is thus taken once per group, not once per order: the other jobs
//! of the group update it inside the same transaction without waiting, and other lanes or
//! processes wait for one flush instead of one per order.
//!
//! Jobs own their data (`'static`): a lane runs a job to its end even when the caller that
//! queued it has gone (a gRPC client hung up), so a half-run job never leaves a shared
//! transaction in an unknown state.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures::FutureExt;
use futures::future::BoxFuture;
use oms_application::ports::StoreError;
use sqlx::{Executor, Pool};
use tokio::sync::{Mutex, mpsc, oneshot};

use super::{ConnOf, Dialect};

/// A job's statements, run on the lane's connection inside its transaction. An error rolls
/// back what the job wrote (and only that).
pub(crate) type Work<D> = Box<
    dyn for<'c> FnOnce(&'c mut ConnOf<D>) -> BoxFuture<'c, Result<(), StoreError>> + Send + 'static,
>;

/// Boxes `work` as a [`Work`] (the closure's signature is spelled out once here, which lets
/// callers write a plain closure).
pub(crate) fn work<D, F>(work: F) -> Work<D>
where
    D: Dialect,
    F: for<'c> FnOnce(&'c mut ConnOf<D>) -> BoxFuture<'c, Result<(), StoreError>> + Send + 'static,
{
    Box::new(work)
}

struct Job<D: Dialect> {
    work: Work<D>,
    done: oneshot::Sender<Result<(), StoreError>>,
}

/// How jobs are grouped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupCommitOptions {
    /// How many lanes (tasks, each with one connection while it commits) run groups side by
    /// side. One on SQLite whatever is asked: it has one writer.
    pub lanes: u32,
    /// The most jobs one commit carries; 1 turns grouping off: every job commits alone, in
    /// its own transaction on its caller's task, as many at once as the pool allows. `None`
    /// picks by database: 64 on SQLite, whose single writer makes every commit wait for the
    /// one before it; off on PostgreSQL, which already shares one WAL flush among commits
    /// that arrive together, and where one lane's statements, run one after the other,
    /// measured slower than parallel commits (docs/benchmarks.md).
    pub max_group: Option<u32>,
}

impl Default for GroupCommitOptions {
    fn default() -> Self {
        Self {
            lanes: 1,
            max_group: None,
        }
    }
}

/// The lanes of one database, and the queue that feeds them; or, with grouping off, the pool
/// each job commits on alone.
pub(crate) struct GroupCommit<D: Dialect>(Mode<D>);

enum Mode<D: Dialect> {
    Lanes(mpsc::Sender<Job<D>>),
    Off(Pool<D::DB>),
}

/// How many jobs may wait for a lane before callers wait to queue theirs.
const QUEUE: usize = 4096;

const STOPPED: &str = "the commit lane stopped";

impl<D: Dialect> GroupCommit<D> {
    /// Starts the lanes on the current Tokio runtime. They end when the last handle is dropped.
    pub(crate) fn start(pool: Pool<D::DB>, options: GroupCommitOptions) -> Self {
        let max_group = options.max_group.unwrap_or(match D::CONCURRENCY {
            super::Concurrency::SingleWriter => 64,
            super::Concurrency::RowLocks => 1,
        });
        if max_group <= 1 {
            return Self(Mode::Off(pool));
        }
        let (jobs, queue) = mpsc::channel(QUEUE);
        let queue = Arc::new(Mutex::new(queue));
        let lanes = match D::CONCURRENCY {
            super::Concurrency::SingleWriter => 1,
            super::Concurrency::RowLocks => options.lanes.max(1),
        };
        let max_group = usize::try_from(max_group).unwrap_or(usize::MAX);
        for _ in 0..lanes {
            tokio::spawn(lane::<D>(pool.clone(), Arc::clone(&queue), max_group));
        }
        Self(Mode::Lanes(jobs))
    }

    /// Where work may run on a pooled connection without a transaction: with grouping off,
    /// when a batch is one statement.
    pub(crate) fn bare_pool(&self) -> Option<&Pool<D::DB>> {
        match &self.0 {
            Mode::Off(pool) if D::ONE_STATEMENT_BATCH => Some(pool),
            _ => None,
        }
    }

    /// [`Self::run`] for work that is one statement, atomic on its own: with grouping off it
    /// runs on a pooled connection without a transaction (see `Sql::commit_alone`).
    pub(crate) async fn run_alone(&self, work: Work<D>) -> Result<(), StoreError> {
        match self.bare_pool() {
            Some(pool) => run_bare::<D>(pool, work).await,
            None => self.run(work).await,
        }
    }

    /// `bare` on a pooled connection without a transaction where [`Self::run_alone`] would
    /// run its work so; `grouped` as [`Self::run`] otherwise (see `Sql::commit_bare_or_grouped`).
    pub(crate) async fn run_bare_or(
        &self,
        bare: Work<D>,
        grouped: Work<D>,
    ) -> Result<(), StoreError> {
        match self.bare_pool() {
            Some(pool) => run_bare::<D>(pool, bare).await,
            None => self.run(grouped).await,
        }
    }

    /// Runs `work` in the next group and waits for the group's commit; with grouping off, in
    /// a transaction of its own on the caller's task.
    pub(crate) async fn run(&self, work: Work<D>) -> Result<(), StoreError> {
        let jobs = match &self.0 {
            Mode::Lanes(jobs) => jobs,
            Mode::Off(pool) => {
                let mut tx = pool
                    .begin_with(D::CONCURRENCY.begin_write())
                    .await
                    .map_err(D::classify)?;
                work(&mut tx).await?;
                // Dropping `tx` on an error above rolled the work back.
                return tx.commit().await.map_err(D::classify);
            }
        };
        let (done, outcome) = oneshot::channel();
        jobs.send(Job { work, done })
            .await
            .map_err(|_| StoreError::Unavailable(STOPPED.to_owned()))?;
        outcome
            .await
            .unwrap_or_else(|_| Err(StoreError::Unavailable(STOPPED.to_owned())))
    }
}

/// Runs `work` on a connection of `pool`, outside any transaction.
async fn run_bare<D: Dialect>(pool: &Pool<D::DB>, work: Work<D>) -> Result<(), StoreError> {
    let mut conn = pool.acquire().await.map_err(D::classify)?;
    work(&mut conn).await
}

/// One lane: takes what is queued, commits it as one group, and again.
async fn lane<D: Dialect>(
    pool: Pool<D::DB>,
    queue: Arc<Mutex<mpsc::Receiver<Job<D>>>>,
    max_group: usize,
) {
    loop {
        let mut group = Vec::new();
        {
            let mut queue = queue.lock().await;
            let Some(first) = queue.recv().await else {
                return;
            };
            group.push(first);
            while group.len() < max_group {
                match queue.try_recv() {
                    Ok(job) => group.push(job),
                    Err(_) => break,
                }
            }
        }
        // A panicking job (a bug) fails its group, whose callers hear that the lane stopped
        // (their answer channels are dropped); the lane itself goes on serving.
        if AssertUnwindSafe(commit_group::<D>(&pool, group))
            .catch_unwind()
            .await
            .is_err()
        {
            tracing::error!("a group commit panicked; its jobs failed");
        }
    }
}

/// Runs `group` in one transaction (see the module docs) and answers every job.
async fn commit_group<D: Dialect>(pool: &Pool<D::DB>, group: Vec<Job<D>>) {
    // Jobs whose work is in `tx`, waiting for its commit.
    let mut pending: Vec<oneshot::Sender<Result<(), StoreError>>> = Vec::new();
    let mut tx: Option<sqlx::Transaction<'static, D::DB>> = None;
    let mut jobs = group.into_iter();
    while let Some(job) = jobs.next() {
        let open = match tx.as_mut() {
            Some(open) => open,
            None => match pool.begin_with(D::CONCURRENCY.begin_write()).await {
                Ok(begun) => tx.insert(begun),
                Err(e) => {
                    let rest = std::iter::once(job.done).chain(jobs.map(|j| j.done));
                    fail_all(pending.into_iter().chain(rest), &D::classify(e));
                    return;
                }
            },
        };
        let alone = pending.is_empty();
        let (outcome, usable) = if alone {
            // Alone in the transaction: no savepoint; a failure rolls the whole transaction
            // back (below), and the next job begins a new one.
            ((job.work)(open).await, Ok(()))
        } else {
            in_savepoint::<D>(open, job.work).await
        };
        match outcome {
            Ok(()) => pending.push(job.done),
            Err(e) => {
                let _ = job.done.send(Err(e));
                if alone {
                    tx = None;
                }
            }
        }
        if let Err(e) = usable {
            // The savepoint statements failed (the connection broke): the transaction and
            // every job in it are lost, and the rest are not run.
            let rest = pending.into_iter().chain(jobs.map(|j| j.done));
            fail_all(rest, &e);
            return;
        }
    }
    let Some(tx) = tx else {
        return;
    };
    let outcome = tx.commit().await.map_err(D::classify);
    if outcome.is_ok() {
        tracing::debug!(jobs = pending.len(), "group committed");
    }
    answer_all(pending, &outcome);
}

/// Runs `work` inside a savepoint of the open transaction, rolled back to when the work
/// fails: the job's own outcome, and whether the transaction is still usable.
async fn in_savepoint<D: Dialect>(
    open: &mut ConnOf<D>,
    work: Work<D>,
) -> (Result<(), StoreError>, Result<(), StoreError>) {
    if let Err(e) = D::on(open).execute("SAVEPOINT group_job").await {
        let e = D::classify(e);
        return (Err(e.clone()), Err(e));
    }
    match work(open).await {
        Ok(()) => match D::on(open).execute("RELEASE SAVEPOINT group_job").await {
            Ok(_) => (Ok(()), Ok(())),
            Err(e) => {
                let e = D::classify(e);
                (Err(e.clone()), Err(e))
            }
        },
        Err(job_error) => {
            // Undo this job only; the jobs before it stay in the transaction.
            let undone = D::on(open)
                .execute("ROLLBACK TO SAVEPOINT group_job; RELEASE SAVEPOINT group_job")
                .await;
            (Err(job_error), undone.map(|_| ()).map_err(D::classify))
        }
    }
}

/// Answers every job in `jobs` with `error`.
fn fail_all(
    jobs: impl IntoIterator<Item = oneshot::Sender<Result<(), StoreError>>>,
    error: &StoreError,
) {
    answer_all(jobs, &Err(error.clone()));
}

fn answer_all(
    jobs: impl IntoIterator<Item = oneshot::Sender<Result<(), StoreError>>>,
    outcome: &Result<(), StoreError>,
) {
    for done in jobs {
        // The caller may have gone (its request was cancelled); the job ran all the same.
        let _ = done.send(outcome.clone());
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    //! The lanes on both real databases, with a scratch table: which jobs of a group land,
    //! what each hears, and that nothing is acknowledged before its commit.

    use sqlx::Pool;

    use super::*;
    use crate::sql::postgres::PostgresDialect;
    use crate::sql::sqlite::SqliteDialect;
    use crate::sql::{Args, RowExt};
    use crate::testing::{TestBackend, TestDatabase};

    /// Creates the scratch table.
    async fn scratch<D: Dialect>(pool: &Pool<D::DB>) {
        // `parent` is checked at commit only (deferred), which lets a test make a commit fail.
        D::on_pool(pool)
            .execute(
                "CREATE TABLE group_test (id BIGINT PRIMARY KEY, n BIGINT NOT NULL, \
                 parent BIGINT REFERENCES group_test (id) DEFERRABLE INITIALLY DEFERRED)",
            )
            .await
            .unwrap();
    }

    /// A job that inserts row `id` (with `parent`), then fails with `fail` if given.
    fn insert<D: Dialect>(id: i64, parent: Option<i64>, fail: Option<StoreError>) -> Work<D> {
        work::<D, _>(move |conn| {
            Box::pin(async move {
                D::query("INSERT INTO group_test (id, n, parent) VALUES ($1, 0, $2)")
                    .arg(id)
                    .arg(parent)
                    .execute(D::on(conn))
                    .await
                    .map_err(D::classify)?;
                fail.map_or(Ok(()), Err)
            })
        })
    }

    /// A job that takes one unit from row 1's `n`, refusing to go below zero, as a stock
    /// reservation does.
    fn take_one<D: Dialect>() -> Work<D> {
        work::<D, _>(|conn| {
            Box::pin(async move {
                let done = D::query("UPDATE group_test SET n = n - 1 WHERE id = 1 AND n >= 1")
                    .execute(D::on(conn))
                    .await
                    .map_err(D::classify)?;
                if D::rows_affected(&done) == 1 {
                    Ok(())
                } else {
                    Err(StoreError::KvConflict {
                        namespace: "test".to_owned(),
                        key: "n".to_owned(),
                    })
                }
            })
        })
    }

    /// Runs `works` as one group, as a lane would, and returns what each job heard.
    async fn as_one_group<D: Dialect>(
        pool: &Pool<D::DB>,
        works: Vec<Work<D>>,
    ) -> Vec<Result<(), StoreError>> {
        let mut answers = Vec::new();
        let mut group = Vec::new();
        for work in works {
            let (done, answer) = oneshot::channel();
            group.push(Job { work, done });
            answers.push(answer);
        }
        commit_group::<D>(pool, group).await;
        let mut heard = Vec::new();
        for answer in answers {
            heard.push(answer.await.unwrap());
        }
        heard
    }

    async fn ids<D: Dialect>(pool: &Pool<D::DB>) -> Vec<i64> {
        D::query("SELECT id FROM group_test ORDER BY id")
            .fetch_all(D::on_pool(pool))
            .await
            .unwrap()
            .iter()
            .map(|row| row.col::<i64>("id").unwrap())
            .collect()
    }

    async fn failing_jobs_are_undone_alone<D: Dialect>(pool: Pool<D::DB>) {
        // The first job fails (it ran bare: the whole transaction is rolled back and a new
        // one begun), then a later one fails (rolled back to its savepoint).
        let heard = as_one_group::<D>(
            &pool,
            vec![
                insert::<D>(1, None, Some(StoreError::LeaseLost)),
                insert::<D>(2, None, None),
                insert::<D>(3, None, Some(StoreError::SagaActive)),
                insert::<D>(4, None, None),
                // A statement error inside a savepoint (PostgreSQL aborts the transaction
                // until the rollback to the savepoint).
                insert::<D>(2, None, None),
                insert::<D>(5, None, None),
            ],
        )
        .await;
        assert_eq!(heard[0], Err(StoreError::LeaseLost));
        assert_eq!(heard[1], Ok(()));
        assert_eq!(heard[2], Err(StoreError::SagaActive));
        assert_eq!(heard[3], Ok(()));
        assert!(heard[4].is_err(), "duplicate id: {:?}", heard[4]);
        assert_eq!(heard[5], Ok(()));
        assert_eq!(ids::<D>(&pool).await, vec![2, 4, 5]);
    }

    async fn a_hot_row_is_never_overdrawn<D: Dialect>(pool: Pool<D::DB>) {
        D::query("INSERT INTO group_test (id, n) VALUES (1, 5)")
            .execute(D::on_pool(&pool))
            .await
            .unwrap();
        let heard = as_one_group::<D>(&pool, (0..8).map(|_| take_one::<D>()).collect()).await;
        let taken = heard.iter().filter(|h| h.is_ok()).count();
        assert_eq!(taken, 5, "{heard:?}");
        assert!(
            heard[5..]
                .iter()
                .all(|h| matches!(h, Err(StoreError::KvConflict { .. }))),
            "{heard:?}"
        );
        let left = D::query("SELECT n FROM group_test WHERE id = 1")
            .fetch_one(D::on_pool(&pool))
            .await
            .unwrap()
            .col::<i64>("n")
            .unwrap();
        assert_eq!(left, 0);
    }

    async fn a_failed_commit_fails_every_job<D: Dialect>(pool: Pool<D::DB>) {
        // Row 2's parent does not exist: the deferred check fails the commit, after every
        // job's statements succeeded. No job may hear `Ok`, and none of them landed.
        let heard = as_one_group::<D>(
            &pool,
            vec![
                insert::<D>(1, None, None),
                insert::<D>(2, Some(99), None),
                insert::<D>(3, None, None),
            ],
        )
        .await;
        assert!(heard.iter().all(Result::is_err), "{heard:?}");
        assert!(ids::<D>(&pool).await.is_empty());
    }

    async fn concurrent_callers_all_land<D: Dialect>(pool: Pool<D::DB>) {
        // Two lanes, then grouping off (every job commits alone, on its caller's task); a
        // failing job among them fails alone either way.
        for (lanes, max_group, first) in [(2, Some(8), 1), (1, Some(1), 101)] {
            let group =
                GroupCommit::<D>::start(pool.clone(), GroupCommitOptions { lanes, max_group });
            let calls = (first..first + 100).map(|id| {
                let fail = (id % 10 == 0).then_some(StoreError::LeaseLost);
                group.run(insert::<D>(id, None, fail))
            });
            let heard = futures::future::join_all(calls).await;
            let failed = heard.iter().filter(|h| h.is_err()).count();
            assert_eq!(failed, 10, "{heard:?}");
        }
        let landed: Vec<i64> = (1..=200).filter(|id| id % 10 != 0).collect();
        assert_eq!(ids::<D>(&pool).await, landed);
    }

    /// Runs `body` on a fresh database of each kind with the scratch table.
    macro_rules! on_both {
        ($name:ident) => {
            mod $name {
                use super::*;

                #[tokio::test]
                async fn postgres() {
                    let test_db = TestDatabase::new(TestBackend::Postgres).await.unwrap();
                    let db = test_db.connect().await.unwrap();
                    let pool = db.postgres().unwrap().clone();
                    scratch::<PostgresDialect>(&pool).await;
                    super::$name::<PostgresDialect>(pool).await;
                    db.close().await;
                    test_db.cleanup().await.unwrap();
                }

                #[tokio::test]
                async fn sqlite() {
                    let test_db = TestDatabase::new(TestBackend::Sqlite).await.unwrap();
                    let db = test_db.connect().await.unwrap();
                    let pool = db.sqlite().unwrap().writer.clone();
                    scratch::<SqliteDialect>(&pool).await;
                    super::$name::<SqliteDialect>(pool).await;
                    db.close().await;
                    test_db.cleanup().await.unwrap();
                }
            }
        };
    }

    on_both!(failing_jobs_are_undone_alone);
    on_both!(a_hot_row_is_never_overdrawn);
    on_both!(a_failed_commit_fails_every_job);
    on_both!(concurrent_callers_all_land);
}
