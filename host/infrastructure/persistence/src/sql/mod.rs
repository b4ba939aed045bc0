//! The SQL layer every store is written in, once for both databases.
//!
//! A store is generic over a [`Dialect`]: the handful of things PostgreSQL and SQLite do
//! differently, each answered in one place ([`postgres`], [`sqlite`]):
//!
//! - how ids are stored (`UUID` on PostgreSQL, canonical hyphenated `TEXT` on SQLite);
//! - how concurrent writers are kept apart ([`Concurrency`]): row locks and `SKIP LOCKED`
//!   claims, or one writer connection whose transactions take the write lock up front;
//! - how driver errors are classified into [`StoreError`] (one function per driver);
//! - bulk inserts and list parameters (`UNNEST` / `= ANY` arrays, or per-row statements and
//!   `json_each`), locks on keys that may not exist yet, and commit notifications.
//!
//! Everything else is shared: the SQL text (with `$N` placeholders, which sqlx's SQLite
//! driver accepts too), the row mapping, and JSON columns through [`sqlx::types::Json`]
//! (`JSONB` on PostgreSQL, `TEXT` on SQLite).
//!
//! sqlx's generic API needs a trait bound for every Rust type a query binds or reads
//! (`i64: Encode<'q, DB> + Type<DB>`, ...), and Rust does not carry such bounds from a trait
//! to its users. [`SqlDb`] names them once as supertraits ([`Bind`], [`Get`]), which Rust
//! does carry, so a store only says `D: Dialect` and binds with [`Args::arg`] and reads with
//! [`RowExt::col`]. (sqlx's `Any` driver would avoid the bounds by erasing every type to a
//! few variants; this keeps each driver's own types, e.g. native UUIDs and JSONB.)

pub(crate) mod batch;
pub(crate) mod coalesce;
pub(crate) mod group;
pub(crate) mod postgres;
pub(crate) mod sqlite;

pub(crate) use batch::{Batch, Counts, PartId};
pub use group::GroupCommitOptions;
pub(crate) use group::work;

use std::future::Future;
use std::sync::Arc;

use oms_application::ports::StoreError;
use serde::Serialize;
use serde_json::value::RawValue;
use sqlx::query::Query;
use sqlx::types::Json;
use sqlx::{
    AssertSqlSafe, ColumnIndex, Database, Decode, Encode, Executor, IntoArguments, Pool, Row,
    SqlSafeStr, Transaction, Type,
};
use tokio::sync::watch;
use uuid::Uuid;

/// `T` can be bound as a query parameter: a nameable form of `T: Encode<'t, DB> + Type<DB>`.
pub(crate) trait Bind<'t, T>: Database {
    fn bind_value<'q>(
        query: Query<'q, Self, Self::Arguments>,
        value: T,
    ) -> Query<'q, Self, Self::Arguments>;
}

impl<'t, DB: Database, T: Encode<'t, DB> + Type<DB>> Bind<'t, T> for DB {
    fn bind_value<'q>(
        query: Query<'q, Self, Self::Arguments>,
        value: T,
    ) -> Query<'q, Self, Self::Arguments> {
        query.bind(value)
    }
}

/// `T` can be read from a column: a nameable form of `T: Decode<'r, DB> + Type<DB>`.
pub(crate) trait Get<T>: Database {
    fn get(row: &Self::Row, column: &str) -> Result<T, sqlx::Error>;
}

impl<DB: Database, T> Get<T> for DB
where
    T: for<'r> Decode<'r, DB> + Type<DB>,
    for<'c> &'c str: ColumnIndex<DB::Row>,
{
    fn get(row: &Self::Row, column: &str) -> Result<T, sqlx::Error> {
        row.try_get(column)
    }
}

/// What the stores need from an sqlx driver: every Rust type they bind or read, for both
/// drivers. Adding a type a store binds means adding it here (the compiler says so).
pub(crate) trait SqlDb:
    Database<Arguments: IntoArguments<Self>>
    // `Query::persistent(false)`, for a statement that must be planned afresh each run.
    + sqlx::database::HasStatementCache
    + for<'t> Bind<'t, i32>
    + for<'t> Bind<'t, i64>
    + for<'t> Bind<'t, Option<i64>>
    + for<'t> Bind<'t, &'t str>
    + for<'t> Bind<'t, String>
    + for<'t> Bind<'t, Option<&'t str>>
    + for<'t> Bind<'t, &'t [u8]>
    + for<'t> Bind<'t, Json<Box<RawValue>>>
    + Get<i32>
    + Get<Option<i32>>
    + Get<i64>
    + Get<Option<i64>>
    + Get<String>
    + Get<Option<String>>
    + Get<Vec<u8>>
    + Get<Json<serde_json::Value>>
    + Get<Option<Json<serde_json::Value>>>
{
}

/// A query of dialect `D`'s driver.
pub(crate) type Q<'q, D> = Query<'q, DbOf<D>, <DbOf<D> as Database>::Arguments>;
pub(crate) type DbOf<D> = <D as Dialect>::DB;
pub(crate) type ConnOf<D> = <DbOf<D> as Database>::Connection;
pub(crate) type RowOf<D> = <DbOf<D> as Database>::Row;
pub(crate) type ResultOf<D> = <DbOf<D> as Database>::QueryResult;

/// Binds a parameter (the next `$N`): [`Query::bind`] for the types [`SqlDb`] lists.
pub(crate) trait Args: Sized {
    type DB: Database;
    fn arg<'t, T>(self, value: T) -> Self
    where
        Self::DB: Bind<'t, T>;
}

impl<'q, DB: Database> Args for Query<'q, DB, DB::Arguments> {
    type DB = DB;
    fn arg<'t, T>(self, value: T) -> Self
    where
        DB: Bind<'t, T>,
    {
        DB::bind_value(self, value)
    }
}

/// Reads a column by name: [`Row::try_get`] for the types [`SqlDb`] lists.
pub(crate) trait RowExt: Row {
    fn col<T>(&self, column: &str) -> Result<T, sqlx::Error>
    where
        Self::Database: Get<T>;
}

impl<R: Row> RowExt for R {
    fn col<T>(&self, column: &str) -> Result<T, sqlx::Error>
    where
        R::Database: Get<T>,
    {
        <R::Database as Get<T>>::get(self, column)
    }
}

/// A value for a JSON column (`JSONB` / `TEXT`), serialised once.
pub(crate) fn json<T: Serialize>(value: &T, what: &str) -> Result<Json<Box<RawValue>>, StoreError> {
    serde_json::value::to_raw_value(value)
        .map(Json)
        .map_err(|e| StoreError::Corrupt(format!("encoding {what}: {e}")))
}

/// How a database keeps concurrent writers apart; it decides how claims lock, how a write
/// transaction starts, and how many saga workers are worth running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Concurrency {
    /// PostgreSQL: row locks. Several writers (and host processes) work in parallel; a claim
    /// skips rows another claimer has locked (`FOR UPDATE SKIP LOCKED`); a single statement
    /// is atomic on its own and runs without an explicit transaction.
    RowLocks,
    /// SQLite: one writer at a time. Every write goes through the single writer connection in
    /// a `BEGIN IMMEDIATE` transaction, which takes the write lock before the first read: a
    /// deferred transaction that read first would have to upgrade its lock, which SQLite
    /// refuses at once (SQLITE_BUSY) when another connection wrote in between; an immediate
    /// one waits for the lock (up to the busy timeout) instead. Claims need no row locks:
    /// the write lock serialises them, even across processes.
    SingleWriter,
}

impl Concurrency {
    /// The statement that starts a write transaction.
    pub(crate) fn begin_write(self) -> &'static str {
        match self {
            Self::RowLocks => "BEGIN",
            Self::SingleWriter => "BEGIN IMMEDIATE",
        }
    }

    /// The clause that ends a claim's row-picking subquery.
    pub(crate) fn claim_lock(self) -> &'static str {
        match self {
            Self::RowLocks => " FOR UPDATE SKIP LOCKED",
            Self::SingleWriter => "",
        }
    }

    /// The clause that keeps a row a commit checked (but does not write) from changing
    /// before the commit ends.
    pub(crate) fn share_lock(self) -> &'static str {
        match self {
            Self::RowLocks => " FOR SHARE",
            Self::SingleWriter => "",
        }
    }

    /// How many saga workers of one process can make progress at once; `None` for no limit.
    /// On a single writer, a second worker's claims would only queue behind the first's.
    pub(crate) fn max_saga_workers(self) -> Option<u32> {
        match self {
            Self::RowLocks => None,
            Self::SingleWriter => Some(1),
        }
    }
}

/// A unique index a write may hit, as each database reports a violation of it.
#[derive(Debug)]
pub(crate) struct UniqueIndex {
    /// Its name (PostgreSQL reports the constraint's name).
    pub name: &'static str,
    /// `table.column` as SQLite's message names it (SQLite reports the columns).
    pub columns: &'static str,
}

/// One column's values for a bulk insert or a list parameter.
#[derive(Debug)]
pub(crate) enum Column {
    /// `INTEGER`.
    Int(Vec<i32>),
    /// `BIGINT`.
    BigInt(Vec<i64>),
    Text(Vec<String>),
    /// `TEXT`, nullable.
    OptText(Vec<Option<String>>),
    /// `BIGINT`, nullable.
    OptBigInt(Vec<Option<i64>>),
    /// Ids, stored as the dialect stores ids.
    Id(Vec<Uuid>),
    Json(Vec<Json<Box<RawValue>>>),
    Bytes(Vec<Vec<u8>>),
}

impl Column {
    pub(crate) fn len(&self) -> usize {
        match self {
            Self::Int(v) => v.len(),
            Self::BigInt(v) => v.len(),
            Self::Text(v) => v.len(),
            Self::OptText(v) => v.len(),
            Self::OptBigInt(v) => v.len(),
            Self::Id(v) => v.len(),
            Self::Json(v) => v.len(),
            Self::Bytes(v) => v.len(),
        }
    }
}

/// Rows to insert in one go, column by column (every column as long as the first), in order:
/// rows with a generated id get ids in this order.
#[derive(Debug)]
pub(crate) struct Rows<'a> {
    pub table: &'static str,
    pub columns: &'static [&'static str],
    pub values: Vec<Column>,
    /// Appended to the insert as is (an `ON CONFLICT` clause, or empty).
    pub on_conflict: &'a str,
}

impl Rows<'_> {
    pub(crate) fn len(&self) -> usize {
        self.values.first().map_or(0, Column::len)
    }
}

/// What PostgreSQL and SQLite do differently. Implemented by [`postgres::PostgresDialect`]
/// and [`sqlite::SqliteDialect`].
pub(crate) trait Dialect: Send + Sync + Sized + 'static {
    type DB: SqlDb
        + for<'t> Bind<'t, Self::Id>
        + for<'t> Bind<'t, Option<Self::Id>>
        + Get<Self::Id>
        + Get<Option<Self::Id>>;
    /// How an id (UUID) is bound and read.
    type Id: Send;

    const CONCURRENCY: Concurrency;
    /// The current time as `plugin_kv.updated_at` stores it.
    const NOW: &'static str;
    /// `plugin_kv.value` (ASCII decimal bytes) as an integer, for a counter's add in SQL.
    const COUNTER: &'static str;
    /// An integer expression as `plugin_kv.value` stores a counter.
    const COUNTER_BYTES: (&'static str, &'static str);

    fn id(uuid: Uuid) -> Self::Id;
    fn uuid(id: Self::Id) -> Uuid;

    /// How many rows a statement changed.
    fn rows_affected(result: &ResultOf<Self>) -> u64;

    /// Runs queries on a connection (or a transaction, which derefs to one).
    fn on(conn: &mut ConnOf<Self>) -> impl Executor<'_, Database = Self::DB>;
    /// Runs queries on a pooled connection.
    fn on_pool(pool: &Pool<Self::DB>) -> impl Executor<'_, Database = Self::DB>;

    /// Classifies a driver error: what may succeed on retry is `Unavailable`, anything else
    /// is a bug (`Corrupt`).
    fn classify(e: sqlx::Error) -> StoreError;
    /// The transaction lost a race with another one (deadlock, serialization failure) and
    /// may simply be run again.
    fn lost_race(e: &sqlx::Error) -> bool;
    /// The error is a violation of `index`.
    fn violates(e: &sqlx::Error, index: &UniqueIndex) -> bool;

    /// "is in the list bound as `param`" (see [`Self::bind_list`]), after a column name.
    fn in_list(param: &str) -> String;
    /// Binds a list for [`Self::in_list`].
    fn bind_list<'q>(query: Q<'q, Self>, values: Column) -> Q<'q, Self>;
    /// The list bound as `param` (see [`Self::bind_list`]) as a row source `alias`, one row
    /// per element in column `column`, after `FROM`.
    fn list_rows(param: &str, alias: &str, column: &str) -> String;
    /// Runs a batch's parts in order on `conn` and answers how many rows each changed (see
    /// [`batch`]). Where the batch is one statement ([`Self::ONE_STATEMENT_BATCH`]) it aborts
    /// when a part changes another number of rows than `expected` says; elsewhere the caller
    /// compares the counts.
    fn run_batch<'q>(
        conn: &mut ConnOf<Self>,
        parts: Vec<batch::Guarded<'q, Self>>,
        expected: &[(batch::PartId, u64)],
    ) -> impl Future<Output = Result<Vec<u64>, sqlx::Error>> + Send;
    /// Whether [`Self::run_batch`] sends one statement, which is atomic on its own: a write
    /// that is one batch then needs no transaction (`BEGIN` and `COMMIT` are round trips too).
    const ONE_STATEMENT_BATCH: bool;
    /// Inserts `rows`, in order. Returns how many were inserted (fewer than given when
    /// `on_conflict` skipped some).
    fn insert_rows(
        conn: &mut ConnOf<Self>,
        rows: Rows<'_>,
    ) -> impl Future<Output = Result<u64, sqlx::Error>> + Send;
    /// Locks `names` within `namespace` until the transaction on `conn` ends, whether rows of
    /// those names exist or not (a counter's first increment, a record that must be absent).
    fn lock_names(
        conn: &mut ConnOf<Self>,
        namespace: &str,
        names: &[String],
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send;
    /// Whether the database delivers notifications between processes (PostgreSQL's
    /// LISTEN/NOTIFY); where it does not, [`Self::watch_notifications`] returns at once.
    const NOTIFIES: bool;
    /// Calls `on_payload` with the payload of every notification on `channel` until
    /// `shutdown`; returns at once where there are none.
    fn watch_notifications(
        pools: &Pools<Self::DB>,
        channel: &'static str,
        on_payload: Arc<dyn Fn(&str) + Send + Sync>,
        shutdown: watch::Receiver<bool>,
    ) -> impl Future<Output = ()> + Send;

    /// A query in this dialect's driver.
    fn query(sql: impl SqlSafeStr) -> Q<'static, Self> {
        sqlx::query(sql)
    }
}

/// The pools of one database. PostgreSQL: one pool for reads and writes, and a small one for
/// the commits that need not wait for their flush. SQLite: many reader connections and the
/// single writer connection (see `Concurrency::SingleWriter`), which also takes those commits.
#[derive(Debug)]
pub struct Pools<DB: Database> {
    /// For reads.
    pub reader: Pool<DB>,
    /// For every write whose commit must be on disk before it is acknowledged.
    pub writer: Pool<DB>,
    /// For bookkeeping writes whose loss in a database crash only repeats work that is
    /// idempotent downstream: the relay's leases and published marks (lost, an event is
    /// published again; delivery is at least once and consumers deduplicate). PostgreSQL
    /// commits these with `synchronous_commit = off`: the commit returns without waiting for
    /// its WAL flush, which the next flushed commit (any order's) or the WAL writer (within
    /// three `wal_writer_delay`s) does. Only a database crash in that window loses them; a host
    /// crash loses nothing. Its connections also plan without bitmap scans, for the claim's
    /// sake (`sql::postgres::open` says why). On SQLite this is the writer.
    ///
    /// Consumers' dedup records are not among them: a consumer commits its broker offsets
    /// once they are written, so a lost record would not be redelivered, and the event would
    /// be handled with no trace of it.
    pub async_commit: Pool<DB>,
}

// By hand: a derive would demand `DB: Clone`, which the driver types are not.
impl<DB: Database> Clone for Pools<DB> {
    fn clone(&self) -> Self {
        Self {
            reader: self.reader.clone(),
            writer: self.writer.clone(),
            async_commit: self.async_commit.clone(),
        }
    }
}

impl<DB: Database> Pools<DB> {
    pub(crate) async fn close(&self) {
        self.reader.close().await;
        self.writer.close().await;
        self.async_commit.close().await;
    }
}

/// A store's handle on the database: where reads and writes go.
pub(crate) struct Sql<D: Dialect> {
    pub pools: Pools<D::DB>,
    group: Arc<group::GroupCommit<D>>,
}

impl<D: Dialect> Clone for Sql<D> {
    fn clone(&self) -> Self {
        Self {
            pools: self.pools.clone(),
            group: Arc::clone(&self.group),
        }
    }
}

impl<D: Dialect> Sql<D> {
    /// Starts the commit lanes (on the current Tokio runtime) beside the pools.
    pub(crate) fn new(pools: Pools<D::DB>, group_commit: GroupCommitOptions) -> Self {
        let group = Arc::new(group::GroupCommit::start(
            pools.writer.clone(),
            group_commit,
        ));
        Self { pools, group }
    }

    /// Runs `work` as one atomic write, committed together with the other writes queued at
    /// the time (see [`group`]); returns once it is durable, or with its error (nothing of it
    /// written).
    pub(crate) async fn commit_grouped(&self, work: group::Work<D>) -> Result<(), StoreError> {
        self.group.run(work).await
    }

    /// [`Self::commit_grouped`] for `work` that is atomic on its own (one statement: see
    /// [`Dialect::ONE_STATEMENT_BATCH`]). When nothing is grouped it runs without `BEGIN`
    /// and `COMMIT`, two round trips fewer; in a group it is one more job.
    pub(crate) async fn commit_alone(&self, work: group::Work<D>) -> Result<(), StoreError> {
        self.group.run_alone(work).await
    }

    /// Runs `bare` on a pooled connection outside any transaction where nothing is grouped
    /// and a batch is one statement ([`Dialect::ONE_STATEMENT_BATCH`]): it commits its own
    /// statements, and opens a transaction itself where it needs one. Otherwise `grouped` is
    /// the next group's job, as [`Self::commit_grouped`].
    pub(crate) async fn commit_bare_or_grouped(
        &self,
        bare: group::Work<D>,
        grouped: group::Work<D>,
    ) -> Result<(), StoreError> {
        self.group.run_bare_or(bare, grouped).await
    }

    /// The pool commits run on without a transaction, one statement each, where nothing is
    /// grouped and a batch is one statement (see [`Self::commit_bare_or_grouped`]).
    pub(crate) fn bare_pool(&self) -> Option<&Pool<D::DB>> {
        self.group.bare_pool()
    }

    /// Where reads run.
    pub(crate) fn reader(&self) -> impl Executor<'_, Database = D::DB> {
        D::on_pool(&self.pools.reader)
    }

    /// Starts a write transaction (see [`Concurrency::begin_write`]).
    pub(crate) async fn begin_write(&self) -> Result<Transaction<'static, D::DB>, StoreError> {
        Self::begin_write_on(&self.pools.writer).await
    }

    async fn begin_write_on(pool: &Pool<D::DB>) -> Result<Transaction<'static, D::DB>, StoreError> {
        pool.begin_with(D::CONCURRENCY.begin_write())
            .await
            .map_err(D::classify)
    }

    /// Runs one writing statement: on its own where it is atomic alone, in a write
    /// transaction on a single writer (where it would otherwise start as a reader).
    pub(crate) async fn write(&self, query: Q<'_, D>) -> Result<ResultOf<D>, StoreError> {
        match D::CONCURRENCY {
            Concurrency::RowLocks => query
                .execute(D::on_pool(&self.pools.writer))
                .await
                .map_err(D::classify),
            Concurrency::SingleWriter => {
                let mut tx = self.begin_write().await?;
                let done = query.execute(D::on(&mut tx)).await.map_err(D::classify)?;
                tx.commit().await.map_err(D::classify)?;
                Ok(done)
            }
        }
    }

    /// [`Self::write`] for a statement that returns rows (`UPDATE ... RETURNING`).
    pub(crate) async fn write_returning(
        &self,
        query: Q<'_, D>,
    ) -> Result<Vec<RowOf<D>>, StoreError> {
        self.write_returning_on(&self.pools.writer, query).await
    }

    /// [`Self::write_returning`] for bookkeeping that may commit without waiting for its flush
    /// (see [`Pools::async_commit`]).
    pub(crate) async fn write_returning_async_commit(
        &self,
        query: Q<'_, D>,
    ) -> Result<Vec<RowOf<D>>, StoreError> {
        self.write_returning_on(&self.pools.async_commit, query)
            .await
    }

    async fn write_returning_on(
        &self,
        pool: &Pool<D::DB>,
        query: Q<'_, D>,
    ) -> Result<Vec<RowOf<D>>, StoreError> {
        match D::CONCURRENCY {
            Concurrency::RowLocks => query.fetch_all(D::on_pool(pool)).await.map_err(D::classify),
            Concurrency::SingleWriter => {
                let mut tx = Self::begin_write_on(pool).await?;
                let rows = query.fetch_all(D::on(&mut tx)).await.map_err(D::classify)?;
                tx.commit().await.map_err(D::classify)?;
                Ok(rows)
            }
        }
    }
}

/// The `version` of row `id` of `table` as the transaction on `conn` sees it, or `None` when
/// the row is gone: what a compare-and-set that changed nothing lost to.
pub(crate) async fn current_version<D: Dialect>(
    conn: &mut ConnOf<D>,
    table: &'static str,
    id: Uuid,
) -> Result<Option<i64>, StoreError> {
    // `table` is one of the stores' own table names, never input.
    D::query(AssertSqlSafe(format!(
        "SELECT version FROM {table} WHERE id = $1"
    )))
    .arg(D::id(id))
    .fetch_optional(D::on(conn))
    .await
    .map_err(D::classify)?
    .map(|row| row.col::<i64>("version"))
    .transpose()
    .map_err(D::classify)
}

/// Reads a JSON column leniently: a stored text that is not JSON (SQLite stores JSON as
/// text, so tampering can put anything there) comes back as a JSON string instead of failing
/// the whole read.
pub(crate) fn lenient_json<R>(row: &R, column: &str) -> Result<serde_json::Value, sqlx::Error>
where
    R: Row,
    R::Database: SqlDb,
{
    match row.col::<Json<serde_json::Value>>(column) {
        Ok(Json(value)) => Ok(value),
        Err(_) => row.col::<String>(column).map(serde_json::Value::String),
    }
}
