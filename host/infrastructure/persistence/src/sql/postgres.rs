//! PostgreSQL: the production database. Native UUIDs and JSONB, row locks, arrays for bulk
//! inserts and lists, advisory locks for keys, and LISTEN/NOTIFY for commit wake-ups.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use oms_application::ports::StoreError;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use sqlx::{AssertSqlSafe, Executor, PgConnection, PgPool, Postgres, Row};
use tokio::sync::watch;
use tracing::warn;
use uuid::Uuid;

use super::batch::{GUARD, Guarded, Part, PartId, Statement, shift_params};
use super::{Column, Concurrency, Dialect, Pools, Q, Rows, SqlDb, UniqueIndex};
use crate::errors::{transient, unexpected};
use crate::{DatabaseOptions, PersistenceError, redact};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../../migrations/postgres");

/// The PostgreSQL [`Dialect`].
#[derive(Debug)]
pub(crate) struct PostgresDialect;

impl SqlDb for Postgres {}

/// Connections of the pool whose commits do not wait for their flush ([`Pools::async_commit`]):
/// a process's relay runs one statement at a time.
const ASYNC_COMMIT_CONNECTIONS: u32 = 2;

/// Opens the pools (one serves reads and writes, a small one the bookkeeping commits that
/// need not wait for their flush) and runs the migrations.
pub(crate) async fn open(
    url: &str,
    options: &DatabaseOptions,
) -> Result<Pools<Postgres>, PersistenceError> {
    let connect_options: PgConnectOptions =
        url.parse().map_err(|source| PersistenceError::InvalidUrl {
            url: redact(url),
            source,
        })?;
    let connect_error = |source| PersistenceError::Connect {
        url: redact(url),
        source,
    };
    let pool = PgPoolOptions::new()
        .max_connections(options.max_connections)
        .acquire_timeout(options.acquire_timeout)
        // No ping before handing out a connection: it was a round trip per checkout, about a
        // third of an order's. A connection the server dropped fails its next statement
        // instead, which classifies as `Unavailable` (retryable), and the pool discards it.
        .test_before_acquire(false)
        .connect_with(connect_options.clone())
        .await
        .map_err(connect_error)?;
    MIGRATOR
        .run(&pool)
        .await
        .map_err(|source| PersistenceError::Migrate {
            url: redact(url),
            source,
        })?;
    // `synchronous_commit` is the server's (or the URL's) setting for every other connection;
    // these ask for `off` in their startup packet (no round trip). See `Pools::async_commit`
    // for why that is safe for what they write. Why it matters: one order at a time, the
    // relay's rounds (one per event) were two of an order's six flushes. Opened now, not on
    // the relay's first round, so that a connection pooler that refuses the startup parameter
    // fails the start instead of every round.
    let async_commit = PgPoolOptions::new()
        .max_connections(ASYNC_COMMIT_CONNECTIONS.min(options.max_connections))
        .acquire_timeout(options.acquire_timeout)
        .test_before_acquire(false)
        .connect_with(connect_options.options([
            ("synchronous_commit", "off"),
            // The relay's claim reads its candidates through the index in due order, never
            // as a bitmap scan. Until a young outbox is first analysed, the planner guesses
            // about as many candidates as a claim takes, so it fetched them all by a bitmap
            // and sorted them. Every row published since the last vacuum leaves index
            // entries behind, and a bitmap scan visits each one's heap page at every claim:
            // after a 10 s run at 32 clients (15,000 published events), 4,100 buffers and
            // 4-9 ms for a claim that found nothing. An index scan marks the dead entries it
            // meets (`kill_prior_tuple`), so that later claims skip their heap pages: 13
            // buffers and under 0.3 ms after the same run. Only the claim and the mark run
            // here, and neither wants a bitmap (the mark probes the primary key by id).
            ("enable_bitmapscan", "off"),
        ]))
        .await
        .map_err(connect_error)?;
    // A pooler that drops the parameter silently leaves these commits flushed: correct, only
    // slower, so say so instead of failing.
    let setting: String = sqlx::query_scalar("SHOW synchronous_commit")
        .fetch_one(&async_commit)
        .await
        .map_err(connect_error)?;
    if setting != "off" {
        warn!(
            %setting,
            "the relay's connections do not run with synchronous_commit = off: its \
             commits wait for their WAL flush (a connection pooler may have dropped the \
             startup parameter)"
        );
    }
    Ok(Pools {
        reader: pool.clone(),
        writer: pool,
        async_commit,
    })
}

/// SQLSTATEs after which the same request may succeed if retried.
fn retryable_sqlstate(code: &str) -> bool {
    matches!(
        code,
        // serialization_failure, deadlock_detected: the transaction lost a race.
        "40001" | "40P01"
        // admin_shutdown, crash_shutdown, cannot_connect_now: the server is going away.
        | "57P01" | "57P02" | "57P03"
        // too_many_connections, out_of_memory, insufficient_resources.
        | "53300" | "53200" | "53000"
        // read_only_sql_transaction: connected to a standby during a failover.
        | "25006"
        // query_canceled (an operator's statement_timeout or a cancel request) and
        // lock_not_available (lock_timeout): the server was too busy this time, not a bug.
        | "57014" | "55P03"
    ) || code.starts_with("08") // connection_exception class
}

fn sqlstate(e: &sqlx::Error) -> Option<String> {
    e.as_database_error()
        .and_then(|db| db.code())
        .map(|code| code.into_owned())
}

/// The array type a column's values are bound as.
fn array_type(column: &Column) -> &'static str {
    match column {
        Column::Int(_) => "int4[]",
        Column::BigInt(_) => "int8[]",
        Column::Text(_) | Column::OptText(_) => "text[]",
        Column::OptBigInt(_) => "int8[]",
        Column::Id(_) => "uuid[]",
        Column::Json(_) => "jsonb[]",
        Column::Bytes(_) => "bytea[]",
    }
}

/// One statement for all rows: a round trip per row would dominate an order's write (an
/// order has up to 100 lines). The arrays are unnested in parallel; `WITH ORDINALITY` keeps
/// the rows in order, so generated ids follow it. `condition`, when given, must hold for any
/// row to be inserted (a batch's guard).
fn rows_statement<'q>(rows: Rows<'_>, condition: Option<&str>) -> Statement<'q, PostgresDialect> {
    let columns = rows.columns.join(", ");
    let mut arrays = String::new();
    for (n, values) in rows.values.iter().enumerate() {
        let sep = if n == 0 { "" } else { ", " };
        let _ = write!(arrays, "{sep}${}::{}", n + 1, array_type(values));
    }
    let sql = format!(
        "INSERT INTO {table} ({columns}) SELECT {columns} FROM UNNEST({arrays}) \
         WITH ORDINALITY AS r({columns}, ord){filter} ORDER BY ord {on_conflict}",
        table = rows.table,
        filter = condition.map(|c| format!(" WHERE {c}")).unwrap_or_default(),
        on_conflict = rows.on_conflict,
    );
    let values = rows.values;
    Statement {
        sql,
        bind: Box::new(move |mut query| {
            for column in values {
                query = bind_array(query, column);
            }
            query
        }),
    }
}

fn bind_array<'q>(query: Q<'q, PostgresDialect>, values: Column) -> Q<'q, PostgresDialect> {
    match values {
        Column::Int(v) => query.bind(v),
        Column::BigInt(v) => query.bind(v),
        Column::Text(v) => query.bind(v),
        Column::OptText(v) => query.bind(v),
        Column::OptBigInt(v) => query.bind(v),
        Column::Id(v) => query.bind(v),
        Column::Json(v) => query.bind(v),
        Column::Bytes(v) => query.bind(v),
    }
}

impl Dialect for PostgresDialect {
    type DB = Postgres;
    type Id = Uuid;

    const CONCURRENCY: Concurrency = Concurrency::RowLocks;
    const NOW: &'static str = "now()";
    const COUNTER: &'static str = "convert_from(value, 'UTF8')::bigint";
    const COUNTER_BYTES: (&'static str, &'static str) = ("convert_to((", ")::text, 'UTF8')");

    fn id(uuid: Uuid) -> Uuid {
        uuid
    }

    fn uuid(id: Uuid) -> Uuid {
        id
    }

    fn rows_affected(result: &sqlx::postgres::PgQueryResult) -> u64 {
        result.rows_affected()
    }

    fn on(conn: &mut PgConnection) -> impl Executor<'_, Database = Postgres> {
        conn
    }

    fn on_pool(pool: &PgPool) -> impl Executor<'_, Database = Postgres> {
        pool
    }

    fn classify(e: sqlx::Error) -> StoreError {
        if let Some(store_error) = transient(&e) {
            return store_error;
        }
        match sqlstate(&e) {
            Some(code) if retryable_sqlstate(&code) => StoreError::Unavailable(e.to_string()),
            _ => unexpected(&e),
        }
    }

    fn lost_race(e: &sqlx::Error) -> bool {
        matches!(sqlstate(e).as_deref(), Some("40001" | "40P01"))
    }

    fn violates(e: &sqlx::Error, index: &UniqueIndex) -> bool {
        e.as_database_error().is_some_and(|db| {
            db.kind() == sqlx::error::ErrorKind::UniqueViolation
                && db.constraint() == Some(index.name)
        })
    }

    fn in_list(param: &str) -> String {
        format!("= ANY({param})")
    }

    fn bind_list<'q>(query: Q<'q, Self>, values: Column) -> Q<'q, Self> {
        bind_array(query, values)
    }

    fn list_rows(param: &str, alias: &str, column: &str) -> String {
        format!("unnest({param}) AS {alias}({column})")
    }

    async fn insert_rows(conn: &mut PgConnection, rows: Rows<'_>) -> Result<u64, sqlx::Error> {
        if rows.len() == 0 {
            return Ok(0);
        }
        Ok(rows_statement(rows, None)
            .query()
            .execute(conn)
            .await?
            .rows_affected())
    }

    const ONE_STATEMENT_BATCH: bool = true;

    /// One statement: each part a data-modifying CTE `p<N>` (`N` its position) returning a
    /// row per row it changed, and a select that counts them, part by part in order (which
    /// is also the order the parts run in: each count reads its part to the end before the
    /// next is read). A guarded part's condition reads its guard's rows.
    async fn run_batch<'q>(
        conn: &mut PgConnection,
        parts: Vec<Guarded<'q, Self>>,
        expected: &[(PartId, u64)],
    ) -> Result<Vec<u64>, sqlx::Error> {
        let mut counts = vec![0; parts.len()];
        // A guarded or expecting part needs the CTE form even alone.
        let guarded = !expected.is_empty() || parts.iter().any(|p| p.guard.is_some());
        let mut statements: Vec<(usize, Statement<'q, Self>)> = parts
            .into_iter()
            .enumerate()
            .filter_map(|(i, Guarded { part, guard })| {
                let condition = guard.map(|g| format!("EXISTS (SELECT 1 FROM p{})", g.0));
                match part {
                    Part::Statement(mut statement) => {
                        if let Some(condition) = condition {
                            statement.sql = statement.sql.replace(GUARD, &condition);
                        }
                        Some((i, statement))
                    }
                    Part::Rows(rows) if rows.len() == 0 => None,
                    Part::Rows(rows) => Some((i, rows_statement(rows, condition.as_deref()))),
                }
            })
            .collect();
        if statements.is_empty() {
            return Ok(counts);
        }
        // A lone statement needs no CTE (a guarded one has its guard beside it).
        if statements.len() == 1 && !guarded {
            if let Some((i, statement)) = statements.pop() {
                counts[i] = statement.query().execute(conn).await?.rows_affected();
            }
            return Ok(counts);
        }
        let mut with = String::from("WITH ");
        let mut select = String::from(" SELECT ");
        let mut offset = 0;
        let mut binders = Vec::with_capacity(statements.len());
        let mut owners = Vec::with_capacity(statements.len());
        for (n, (i, statement)) in statements.into_iter().enumerate() {
            let (sql, highest) = shift_params(&statement.sql, offset);
            offset += highest;
            let sep = if n == 0 { "" } else { ", " };
            let _ = write!(with, "{sep}p{i} AS ({sql} RETURNING 1)");
            let _ = write!(select, "{sep}(SELECT count(*) FROM p{i})");
            binders.push(statement.bind);
            owners.push(i);
        }
        if !expected.is_empty() {
            // Evaluated after every part has run to its end: a count that is off aborts the
            // statement, which undoes every part (see `batch`). A part left out (an empty
            // insert) changed no row.
            let met = expected
                .iter()
                .map(|(part, rows)| {
                    if owners.contains(&part.0) {
                        format!("(SELECT count(*) FROM p{}) = {rows}", part.0)
                    } else if *rows == 0 {
                        "true".to_owned()
                    } else {
                        "false".to_owned()
                    }
                })
                .collect::<Vec<_>>()
                .join(" AND ");
            let _ = write!(
                select,
                ", CASE WHEN {met} THEN 0 ELSE oms_batch_expectation_failed() END"
            );
        }
        with.push_str(&select);
        let mut query = Self::query(AssertSqlSafe(with));
        for bind in binders {
            query = bind(query);
        }
        let row = query.fetch_one(conn).await?;
        for (n, i) in owners.into_iter().enumerate() {
            let count: i64 = row.try_get(n)?;
            counts[i] = u64::try_from(count).unwrap_or(0);
        }
        Ok(counts)
    }

    /// Transaction-scoped advisory locks, one per name, taken in a fixed (sorted) order so
    /// that two transactions over overlapping names cannot deadlock. Unlike `SELECT ... FOR
    /// UPDATE` they also lock names that have no row yet.
    async fn lock_names(
        conn: &mut PgConnection,
        namespace: &str,
        names: &[String],
    ) -> Result<(), sqlx::Error> {
        Self::query(
            "SELECT pg_advisory_xact_lock(h) FROM ( \
               SELECT DISTINCT hashtextextended($1 || chr(1) || k, 7) AS h \
               FROM UNNEST($2::text[]) AS k ORDER BY h) AS ids",
        )
        .bind(namespace)
        .bind(names)
        .execute(conn)
        .await?;
        Ok(())
    }

    const NOTIFIES: bool = true;

    /// LISTEN on `channel`, reconnecting after errors. Polling covers any gap, so a lost
    /// notification only costs latency.
    async fn watch_notifications(
        pools: &Pools<Postgres>,
        channel: &'static str,
        on_payload: Arc<dyn Fn(&str) + Send + Sync>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        loop {
            let mut listener = match PgListener::connect_with(&pools.reader).await {
                Ok(l) => l,
                Err(e) => {
                    warn!(error = %e, "LISTEN connection failed; relying on polling");
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_secs(5)) => continue,
                        _ = shutdown.changed() => return,
                    }
                }
            };
            if let Err(e) = listener.listen(channel).await {
                warn!(error = %e, "LISTEN failed; relying on polling");
            }
            loop {
                tokio::select! {
                    n = listener.recv() => match n {
                        Ok(n) => on_payload(n.payload()),
                        Err(e) => { warn!(error = %e, "LISTEN connection lost"); break; }
                    },
                    _ = shutdown.changed() => return,
                }
            }
        }
    }
}

/// For tests of plans: the most rows any step of an `EXPLAIN (ANALYZE, FORMAT JSON)` plan
/// handled (those it passed on and those its filters dropped, times its loops), and that
/// step's node type.
#[cfg(test)]
pub(crate) fn widest_step(plan: &serde_json::Value) -> (f64, String) {
    let mut steps = vec![&plan[0]["Plan"]];
    let mut widest = (0.0, String::new());
    while let Some(step) = steps.pop() {
        let per_loop: f64 = [
            "Actual Rows",
            "Rows Removed by Filter",
            "Rows Removed by Join Filter",
        ]
        .iter()
        .filter_map(|field| step[field].as_f64())
        .sum();
        let handled = per_loop * step["Actual Loops"].as_f64().unwrap_or(1.0);
        if handled > widest.0 {
            widest = (handled, step["Node Type"].to_string());
        }
        steps.extend(step["Plans"].as_array().into_iter().flatten());
    }
    widest
}

#[cfg(test)]
mod tests {
    use sqlx::{Connection, PgConnection};

    use super::*;
    use crate::testing::TestDatabase;

    fn classify(e: sqlx::Error) -> StoreError {
        PostgresDialect::classify(e)
    }

    /// Two SERIALIZABLE transactions that read and write the same row: the second writer
    /// fails with 40001, which must come out as retryable.
    #[tokio::test]
    async fn serialization_failure_is_unavailable() {
        let test_db = TestDatabase::postgres().await.unwrap();
        let mut a = PgConnection::connect(test_db.url()).await.unwrap();
        let mut b = PgConnection::connect(test_db.url()).await.unwrap();
        sqlx::query("CREATE TABLE t (x INTEGER)")
            .execute(&mut a)
            .await
            .unwrap();
        sqlx::query("INSERT INTO t VALUES (1)")
            .execute(&mut a)
            .await
            .unwrap();
        for conn in [&mut a, &mut b] {
            sqlx::query("BEGIN ISOLATION LEVEL SERIALIZABLE")
                .execute(&mut *conn)
                .await
                .unwrap();
            sqlx::query("SELECT x FROM t")
                .execute(&mut *conn)
                .await
                .unwrap();
        }
        sqlx::query("UPDATE t SET x = 2")
            .execute(&mut a)
            .await
            .unwrap();
        sqlx::query("COMMIT").execute(&mut a).await.unwrap();
        let err = sqlx::query("UPDATE t SET x = 3")
            .execute(&mut b)
            .await
            .unwrap_err();
        assert!(PostgresDialect::lost_race(&err));
        assert!(matches!(classify(err), StoreError::Unavailable(_)));
        let bad = sqlx::query("SELECT nope FROM t")
            .execute(&mut a)
            .await
            .unwrap_err();
        assert!(!PostgresDialect::lost_race(&bad));
        assert!(matches!(classify(bad), StoreError::Corrupt(_)));
        drop((a, b));
        test_db.cleanup().await.unwrap();
    }

    /// A statement cut off by `statement_timeout` is load, not a bug: retryable.
    #[tokio::test]
    async fn statement_timeout_is_unavailable() {
        let test_db = TestDatabase::postgres().await.unwrap();
        let mut conn = PgConnection::connect(test_db.url()).await.unwrap();
        sqlx::query("SET statement_timeout = 10")
            .execute(&mut conn)
            .await
            .unwrap();
        let err = sqlx::query("SELECT pg_sleep(5)")
            .execute(&mut conn)
            .await
            .unwrap_err();
        assert!(matches!(classify(err), StoreError::Unavailable(_)));
        drop(conn);
        test_db.cleanup().await.unwrap();
    }

    /// A batch run all or nothing is one statement that aborts itself when a part's count is
    /// off: nothing of it stays written although no transaction surrounds it, and the
    /// connection goes on (it is not left in a failed transaction). With every count as
    /// expected it commits and answers them.
    #[tokio::test]
    async fn a_batch_run_all_or_nothing_writes_nothing_when_a_count_is_off() {
        use crate::sql::{Args, Batch};
        let test_db = TestDatabase::postgres().await.unwrap();
        let db = test_db.connect().await.unwrap();
        let mut conn = db.postgres().unwrap().acquire().await.unwrap();
        sqlx::query("CREATE TABLE t (x INTEGER PRIMARY KEY)")
            .execute(&mut *conn)
            .await
            .unwrap();
        // The update reads the table as the statement found it: it changes no row.
        let batch = |update_changes: u64| {
            let mut batch = Batch::<PostgresDialect>::default();
            let insert = batch.push("INSERT INTO t VALUES ($1)", |q| q.arg(1_i32));
            let update = batch.push("UPDATE t SET x = x WHERE x = $1", |q| q.arg(1_i32));
            batch.expect(insert, 1);
            batch.expect(update, update_changes);
            (batch, insert)
        };
        let rows = || sqlx::query_scalar::<_, i64>("SELECT count(*) FROM t");
        let (refused, _) = batch(1);
        assert!(
            refused
                .run_all_or_nothing(&mut conn)
                .await
                .unwrap()
                .is_none()
        );
        assert_eq!(rows().fetch_one(&mut *conn).await.unwrap(), 0);
        let (accepted, insert) = batch(0);
        let counts = accepted
            .run_all_or_nothing(&mut conn)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(counts.of(insert), 1);
        assert_eq!(rows().fetch_one(&mut *conn).await.unwrap(), 1);
        drop(conn);
        db.close().await;
        test_db.cleanup().await.unwrap();
    }

    #[test]
    fn pool_exhaustion_is_unavailable() {
        assert!(matches!(
            classify(sqlx::Error::PoolTimedOut),
            StoreError::Unavailable(_)
        ));
    }
}
