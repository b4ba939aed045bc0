//! SQLite: the embedded default, one file next to the host.

mod idempotency;
mod orders;
mod sagas;

use std::str::FromStr;

use oms_application::ports::StoreError;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Sqlite, SqlitePool, Transaction};

pub(crate) use idempotency::SqliteIdempotencyStore;
pub(crate) use orders::SqliteOrderStore;
pub(crate) use sagas::SqliteSagaStore;

use crate::errors::{transient, unexpected};
use crate::{DatabaseOptions, PersistenceError, SqlitePools, redact};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../../migrations/sqlite");

pub(crate) async fn open(
    url: &str,
    options: &DatabaseOptions,
) -> Result<SqlitePools, PersistenceError> {
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
        // Each connection to `:memory:` would be a database of its own, so one connection,
        // kept open forever (the database vanishes with its last connection), serves all.
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .acquire_timeout(options.acquire_timeout)
            .connect_with(connect_options)
            .await
            .map_err(connect_error)?;
        SqlitePools {
            reader: pool.clone(),
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
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(options.acquire_timeout)
            .connect_with(connect_options.clone())
            .await
            .map_err(connect_error)?;
        let reader = SqlitePoolOptions::new()
            .max_connections(options.max_connections.max(1))
            .acquire_timeout(options.acquire_timeout)
            .connect_with(connect_options)
            .await
            .map_err(connect_error)?;
        SqlitePools { reader, writer }
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

/// Starts a write transaction that takes the write lock up front. A deferred transaction
/// that reads first and writes later must upgrade its lock, and when another connection
/// wrote in between SQLite fails the upgrade at once with SQLITE_BUSY (the busy timeout does
/// not help); `BEGIN IMMEDIATE` waits for the lock (up to the busy timeout) instead.
pub(crate) async fn begin_write(
    writer: &SqlitePool,
) -> Result<Transaction<'static, Sqlite>, StoreError> {
    writer.begin_with("BEGIN IMMEDIATE").await.map_err(classify)
}

/// Classifies a SQLite driver error for the application.
pub(crate) fn classify(e: sqlx::Error) -> StoreError {
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use sqlx::{Connection, SqliteConnection};

    use super::*;

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
