//! SQLite: the embedded default, one file next to the host. UUIDs and JSON as text, one
//! writer connection, per-row inserts, `json_each` lists.

use std::str::FromStr;
use std::sync::Arc;

use oms_application::ports::StoreError;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::types::Json;
use sqlx::{AssertSqlSafe, Executor, Sqlite, SqliteConnection, SqlitePool};
use tokio::sync::watch;
use uuid::Uuid;
use uuid::fmt::Hyphenated;

use super::batch::{GUARD, Guarded, Part, PartId};
use super::{Column, Concurrency, Dialect, Pools, Q, Rows, SqlDb, UniqueIndex};
use crate::errors::{transient, unexpected};
use crate::{DatabaseOptions, PersistenceError, redact};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../../migrations/sqlite");

/// The SQLite [`Dialect`]. Ids are canonical lower-case hyphenated UUID text, which sorts
/// byte-wise exactly like the UUID, so "newest first" is `ORDER BY id DESC` here too.
#[derive(Debug)]
pub(crate) struct SqliteDialect;

impl SqlDb for Sqlite {}

/// Opens the reader pool and the single-connection writer pool (WAL, so readers run beside
/// the writer) and runs the migrations. An in-memory database gets one connection for both:
/// each connection to `:memory:` would be a database of its own.
pub(crate) async fn open(
    url: &str,
    options: &DatabaseOptions,
) -> Result<Pools<Sqlite>, PersistenceError> {
    let connect_options = SqliteConnectOptions::from_str(url)
        .map_err(|source| PersistenceError::InvalidUrl {
            url: redact(url),
            source,
        })?
        .create_if_missing(true)
        .foreign_keys(true)
        .busy_timeout(options.sqlite_busy_timeout);
    let connect_error = |source| PersistenceError::Connect {
        url: redact(url),
        source,
    };

    let in_memory = connect_options
        .get_filename()
        .to_string_lossy()
        .contains(":memory:")
        || url.contains("mode=memory");
    let pools = if in_memory {
        // One connection, kept open forever (the database vanishes with its last one).
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .acquire_timeout(options.acquire_timeout)
            .connect_with(connect_options)
            .await
            .map_err(connect_error)?;
        Pools {
            reader: pool.clone(),
            async_commit: pool.clone(),
            writer: pool,
        }
    } else {
        if let Some(dir) = connect_options.get_filename().parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir).map_err(|source| PersistenceError::CreateDir {
                path: dir.display().to_string(),
                source,
            })?;
        }
        // WAL: readers never block the writer nor the other way round. synchronous = FULL
        // (not NORMAL): an acknowledged order must survive a power cut, not only a crash.
        let connect_options = connect_options
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full);
        // One writer: writers queue fairly for this pool's connection instead of spinning in
        // SQLite's busy handler.
        // As on PostgreSQL, no ping per checkout (see `postgres::open`).
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .test_before_acquire(false)
            .acquire_timeout(options.acquire_timeout)
            .connect_with(connect_options.clone())
            .await
            .map_err(connect_error)?;
        let reader = SqlitePoolOptions::new()
            .max_connections(options.max_connections.max(1))
            .test_before_acquire(false)
            .acquire_timeout(options.acquire_timeout)
            .connect_with(connect_options)
            .await
            .map_err(connect_error)?;
        // Every commit is flushed: one connection writes, and switching `synchronous` on it
        // per transaction would risk an order's commit running unflushed.
        Pools {
            reader,
            async_commit: writer.clone(),
            writer,
        }
    };
    MIGRATOR
        .run(&pools.writer)
        .await
        .map_err(|source| PersistenceError::Migrate {
            url: redact(url),
            source,
        })?;
    Ok(pools)
}

/// Binds row `row` of `values`.
fn bind_one<'q>(query: Q<'q, SqliteDialect>, values: &Column, row: usize) -> Q<'q, SqliteDialect> {
    match values {
        Column::Int(v) => query.bind(v[row]),
        Column::BigInt(v) => query.bind(v[row]),
        Column::Text(v) => query.bind(v[row].as_str()),
        Column::OptText(v) => query.bind(v[row].as_deref()),
        Column::OptBigInt(v) => query.bind(v[row]),
        Column::Id(v) => query.bind(v[row].hyphenated()),
        Column::Json(v) => query.bind(&v[row]),
        Column::Bytes(v) => query.bind(v[row].as_slice()),
    }
}

impl Dialect for SqliteDialect {
    type DB = Sqlite;
    type Id = Hyphenated;

    const CONCURRENCY: Concurrency = Concurrency::SingleWriter;
    const NOW: &'static str = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')";
    const COUNTER: &'static str = "CAST(CAST(value AS TEXT) AS INTEGER)";
    const COUNTER_BYTES: (&'static str, &'static str) = ("CAST(CAST((", ") AS TEXT) AS BLOB)");

    fn id(uuid: Uuid) -> Hyphenated {
        uuid.hyphenated()
    }

    fn uuid(id: Hyphenated) -> Uuid {
        id.into_uuid()
    }

    fn rows_affected(result: &sqlx::sqlite::SqliteQueryResult) -> u64 {
        result.rows_affected()
    }

    fn on(conn: &mut SqliteConnection) -> impl Executor<'_, Database = Sqlite> {
        conn
    }

    fn on_pool(pool: &SqlitePool) -> impl Executor<'_, Database = Sqlite> {
        pool
    }

    fn classify(e: sqlx::Error) -> StoreError {
        if let Some(store_error) = transient(&e) {
            return store_error;
        }
        let primary_code = e
            .as_database_error()
            .and_then(|db| db.code())
            .and_then(|code| code.parse::<i32>().ok())
            // Extended result codes carry the primary code in their low byte.
            .map(|code| code & 0xff);
        match primary_code {
            // SQLITE_BUSY, SQLITE_LOCKED: another writer held the lock past the busy timeout.
            // SQLITE_IOERR, SQLITE_FULL, SQLITE_CANTOPEN: the disk, not the request.
            Some(5 | 6 | 10 | 13 | 14) => StoreError::Unavailable(e.to_string()),
            _ => unexpected(&e),
        }
    }

    /// Never: write transactions hold the database's write lock from their first statement,
    /// so they cannot deadlock or lose a serialization race.
    fn lost_race(_: &sqlx::Error) -> bool {
        false
    }

    /// SQLite names the violated unique index by its columns, not its name.
    fn violates(e: &sqlx::Error, index: &UniqueIndex) -> bool {
        e.as_database_error().is_some_and(|db| {
            db.kind() == sqlx::error::ErrorKind::UniqueViolation
                && db.message().contains(index.columns)
        })
    }

    /// One JSON array parameter: one statement for any list length, and no dynamic
    /// `IN (?, ?, ...)` text.
    fn in_list(param: &str) -> String {
        format!("IN (SELECT value FROM json_each({param}))")
    }

    /// The list as a JSON array (ids as hyphenated text, like the columns they match).
    fn bind_list<'q>(query: Q<'q, Self>, values: Column) -> Q<'q, Self> {
        match values {
            Column::Int(v) => query.bind(Json(v)),
            Column::BigInt(v) => query.bind(Json(v)),
            Column::Text(v) => query.bind(Json(v)),
            Column::OptText(v) => query.bind(Json(v)),
            Column::OptBigInt(v) => query.bind(Json(v)),
            Column::Id(v) => query.bind(Json(v)),
            Column::Json(v) => query.bind(Json(v)),
            Column::Bytes(v) => query.bind(Json(v)),
        }
    }

    fn list_rows(param: &str, alias: &str, column: &str) -> String {
        format!("(SELECT value AS {column} FROM json_each({param})) AS {alias}")
    }

    /// No round trips to save: the parts run one after the other in the caller's
    /// transaction, a guarded one only when its guard changed a row. `Batch` compares the
    /// counts with what is expected; the caller rolls the transaction back when one is off.
    async fn run_batch<'q>(
        conn: &mut SqliteConnection,
        parts: Vec<Guarded<'q, Self>>,
        _expected: &[(PartId, u64)],
    ) -> Result<Vec<u64>, sqlx::Error> {
        let mut counts: Vec<u64> = Vec::with_capacity(parts.len());
        for Guarded { part, guard } in parts {
            if guard.is_some_and(|g| counts.get(g.0).is_none_or(|&n| n == 0)) {
                counts.push(0);
                continue;
            }
            counts.push(match part {
                Part::Statement(mut statement) => {
                    statement.sql = statement.sql.replace(GUARD, "1");
                    statement.query().execute(&mut *conn).await?.rows_affected()
                }
                Part::Rows(rows) => Self::insert_rows(conn, rows).await?,
            });
        }
        Ok(counts)
    }

    const ONE_STATEMENT_BATCH: bool = false;

    /// One prepared statement per row: the calls are in-process, so there are no round trips
    /// to save, and the statement is prepared once per connection.
    async fn insert_rows(conn: &mut SqliteConnection, rows: Rows<'_>) -> Result<u64, sqlx::Error> {
        if rows.len() == 0 {
            return Ok(0);
        }
        let placeholders = (1..=rows.values.len())
            .map(|n| format!("${n}"))
            .collect::<Vec<_>>()
            .join(", ");
        let sql: Arc<str> = format!(
            "INSERT INTO {} ({}) VALUES ({placeholders}) {}",
            rows.table,
            rows.columns.join(", "),
            rows.on_conflict
        )
        .into();
        let mut inserted = 0;
        for row in 0..rows.len() {
            let mut query = Self::query(AssertSqlSafe(Arc::clone(&sql)));
            for values in &rows.values {
                query = bind_one(query, values, row);
            }
            inserted += query.execute(&mut *conn).await?.rows_affected();
        }
        Ok(inserted)
    }

    /// Nothing to do: write transactions begin with `BEGIN IMMEDIATE`, which already holds
    /// the whole database's write lock.
    async fn lock_names(
        _: &mut SqliteConnection,
        _: &str,
        _: &[String],
    ) -> Result<(), sqlx::Error> {
        Ok(())
    }

    /// Nothing to listen to: SQLite has no notifications. One process writes at a time and
    /// wakes its relay in-process; other processes' rows are found by polling.
    const NOTIFIES: bool = false;

    async fn watch_notifications(
        _: &Pools<Sqlite>,
        _: &'static str,
        _: Arc<dyn Fn(&str) + Send + Sync>,
        _: watch::Receiver<bool>,
    ) {
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use sqlx::{Connection, SqliteConnection};

    use super::*;

    fn classify(e: sqlx::Error) -> StoreError {
        SqliteDialect::classify(e)
    }

    #[tokio::test]
    async fn busy_is_unavailable_and_bad_sql_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let options = SqliteConnectOptions::new()
            .filename(dir.path().join("t.db"))
            .create_if_missing(true)
            .busy_timeout(Duration::ZERO);
        let mut a = SqliteConnection::connect_with(&options).await.unwrap();
        let mut b = SqliteConnection::connect_with(&options).await.unwrap();
        sqlx::query("CREATE TABLE t (x INTEGER)")
            .execute(&mut a)
            .await
            .unwrap();
        sqlx::query("BEGIN IMMEDIATE")
            .execute(&mut a)
            .await
            .unwrap();
        let busy = sqlx::query("BEGIN IMMEDIATE")
            .execute(&mut b)
            .await
            .unwrap_err();
        assert!(matches!(classify(busy), StoreError::Unavailable(_)));
        let bad = sqlx::query("SELECT nope FROM t")
            .execute(&mut b)
            .await
            .unwrap_err();
        assert!(matches!(classify(bad), StoreError::Corrupt(_)));
    }
}
