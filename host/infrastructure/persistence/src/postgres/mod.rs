//! PostgreSQL: the production store.

mod idempotency;
mod orders;
mod sagas;

use oms_application::ports::StoreError;
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

pub(crate) use idempotency::PgIdempotencyStore;
pub(crate) use orders::PgOrderStore;
pub(crate) use sagas::PgSagaStore;

use crate::errors::{transient, unexpected};
use crate::{DatabaseOptions, PersistenceError, redact};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../../migrations/postgres");

pub(crate) async fn open(url: &str, options: &DatabaseOptions) -> Result<PgPool, PersistenceError> {
    let connect_options: PgConnectOptions =
        url.parse().map_err(|source| PersistenceError::InvalidUrl {
            url: redact(url),
            source,
        })?;
    let pool = PgPoolOptions::new()
        .max_connections(options.max_connections)
        .acquire_timeout(options.acquire_timeout)
        .connect_with(connect_options)
        .await
        .map_err(|source| PersistenceError::Connect {
            url: redact(url),
            source,
        })?;
    MIGRATOR
        .run(&pool)
        .await
        .map_err(|source| PersistenceError::Migrate {
            url: redact(url),
            source,
        })?;
    Ok(pool)
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
    ) || code.starts_with("08") // connection_exception class
}

/// Classifies a PostgreSQL driver error for the application.
pub(crate) fn classify(e: sqlx::Error) -> StoreError {
    if let Some(store_error) = transient(&e) {
        return store_error;
    }
    match e.as_database_error().and_then(|db| db.code()) {
        Some(code) if retryable_sqlstate(&code) => StoreError::Unavailable(e.to_string()),
        _ => unexpected(&e),
    }
}

#[cfg(test)]
mod tests {
    use sqlx::{Connection, PgConnection};

    use super::*;
    use crate::testing::TestDatabase;

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
        assert!(matches!(classify(err), StoreError::Unavailable(_)));
        let bad = sqlx::query("SELECT nope FROM t")
            .execute(&mut a)
            .await
            .unwrap_err();
        assert!(matches!(classify(bad), StoreError::Corrupt(_)));
        drop((a, b));
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
