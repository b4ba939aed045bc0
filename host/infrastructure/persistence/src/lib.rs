//! The application's ports on PostgreSQL (production) and SQLite (the embedded default):
//! [`OrderStore`], [`IdempotencyStore`], [`SagaStore`], [`OutboxStore`],
//! [`ProcessedEventStore`] and [`PluginKvStore`], one owner per table.
//!
//! [`connect`] picks the database by URL scheme, opens the pools, runs the embedded migrations
//! (`migrations/postgres` or `migrations/sqlite`) and hands back a [`Database`] holding every
//! store. Nothing outside this crate touches the pools or SQL.
//!
//! Each store is written once (`orders.rs`, `idempotency.rs`, `sagas.rs`, `outbox.rs`,
//! `processed_events.rs`, `plugin_kv.rs`, `plugin_releases.rs`), generic over the small `sql::Dialect` trait that
//! holds what the two databases do differently (`sql/postgres.rs`, `sql/sqlite.rs`), including
//! the one function per driver that classifies its errors into [`StoreError`]. The row mapping
//! (`mapping`) is shared; the idempotency decision rules live in the application
//! (`oms_application::idempotency::rules`), which the in-memory test store applies too.

mod errors;
mod idempotency;
mod mapping;
mod orders;
mod outbox;
mod plugin_kv;
mod plugin_releases;
mod processed_events;
mod sagas;
mod sql;
#[cfg(feature = "testing")]
pub mod testing;

use std::sync::Arc;
use std::time::Duration;

use oms_application::ports::{
    IdempotencyStore, OrderStore, OutboxStore, PluginKvStore, PluginReleaseStore,
    ProcessedEventStore, SagaStore,
};
use sqlx::{PgPool, Postgres, Sqlite};

pub use errors::PersistenceError;
pub use outbox::CHANGES_CHANNEL;
pub use sql::{GroupCommitOptions, Pools};

use oms_application::ports::StoreError;

use crate::idempotency::SqlIdempotencyStore;
use crate::orders::SqlOrderStore;
use crate::outbox::SqlOutboxStore;
use crate::plugin_kv::SqlPluginKvStore;
use crate::plugin_releases::SqlPluginReleaseStore;
use crate::processed_events::SqlProcessedEventStore;
use crate::sagas::SqlSagaStore;
use crate::sql::postgres::{self, PostgresDialect};
use crate::sql::sqlite::{self, SqliteDialect};
use crate::sql::{Concurrency, Dialect, Sql};

/// Pool sizes and timeouts. The defaults suit one host process on a small machine.
#[derive(Debug, Clone)]
pub struct DatabaseOptions {
    /// PostgreSQL: the pool size. SQLite: the number of reader connections (writes always go
    /// through one writer connection, see [`SqlitePools`]).
    pub max_connections: u32,
    /// How long a request waits for a free connection before failing as unavailable.
    pub acquire_timeout: Duration,
    /// SQLite only: how long a statement waits for another connection's (or process's) write
    /// lock before failing with SQLITE_BUSY.
    pub sqlite_busy_timeout: Duration,
    /// How concurrent order writes and saga commits share database commits.
    pub group_commit: GroupCommitOptions,
}

impl Default for DatabaseOptions {
    fn default() -> Self {
        Self {
            max_connections: 16,
            acquire_timeout: Duration::from_secs(10),
            sqlite_busy_timeout: Duration::from_secs(5),
            group_commit: GroupCommitOptions::default(),
        }
    }
}

/// The SQLite pools. SQLite admits one writer at a time; funnelling every write transaction
/// through a single connection (`writer`, one connection, transactions begun with
/// `BEGIN IMMEDIATE`) makes writers queue fairly in the pool instead of spinning in SQLite's
/// busy handler, while WAL mode lets the `reader` connections run alongside.
pub type SqlitePools = Pools<Sqlite>;
/// The PostgreSQL pools: see [`Pools`].
pub type PostgresPools = Pools<Postgres>;

/// The raw pools, for [`Database::postgres`] and [`Database::sqlite`].
#[derive(Debug, Clone)]
enum Backend {
    Postgres(PostgresPools),
    Sqlite(SqlitePools),
}

/// A migrated database and every store over it. Cheap to clone.
#[derive(Clone)]
pub struct Database {
    backend: Backend,
    concurrency: Concurrency,
    orders: Arc<dyn OrderStore>,
    idempotency: Arc<dyn IdempotencyStore>,
    sagas: Arc<dyn SagaStore>,
    outbox: Arc<dyn OutboxStore>,
    processed_events: Arc<dyn ProcessedEventStore>,
    plugin_kv: Arc<dyn PluginKvStore>,
    plugin_releases: Arc<dyn PluginReleaseStore>,
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Database")
            .field("backend", &self.backend)
            .finish_non_exhaustive()
    }
}

impl Database {
    /// Every store, written once, over `D`'s pools.
    fn with_stores<D: Dialect>(
        pools: Pools<D::DB>,
        backend: Backend,
        options: &DatabaseOptions,
    ) -> Self {
        let sql = Sql::<D>::new(pools, options.group_commit);
        Self {
            backend,
            concurrency: D::CONCURRENCY,
            orders: Arc::new(SqlOrderStore::new(sql.clone())),
            idempotency: Arc::new(SqlIdempotencyStore::new(sql.clone())),
            sagas: Arc::new(SqlSagaStore::new(sql.clone())),
            outbox: Arc::new(SqlOutboxStore::new(sql.clone())),
            processed_events: Arc::new(SqlProcessedEventStore::new(sql.clone())),
            plugin_kv: Arc::new(SqlPluginKvStore::new(sql.clone())),
            plugin_releases: Arc::new(SqlPluginReleaseStore::new(sql)),
        }
    }

    pub fn orders(&self) -> Arc<dyn OrderStore> {
        Arc::clone(&self.orders)
    }

    pub fn idempotency(&self) -> Arc<dyn IdempotencyStore> {
        Arc::clone(&self.idempotency)
    }

    /// Saga instances and their steps; safe to share between host processes on PostgreSQL.
    pub fn sagas(&self) -> Arc<dyn SagaStore> {
        Arc::clone(&self.sagas)
    }

    /// The outbox as the relay uses it (the order store writes its rows).
    pub fn outbox(&self) -> Arc<dyn OutboxStore> {
        Arc::clone(&self.outbox)
    }

    /// Consumers' record of handled events.
    pub fn processed_events(&self) -> Arc<dyn ProcessedEventStore> {
        Arc::clone(&self.processed_events)
    }

    /// The plugins' durable key-value state.
    pub fn plugin_kv(&self) -> Arc<dyn PluginKvStore> {
        Arc::clone(&self.plugin_kv)
    }

    /// The plugin set every host process on this database serves.
    pub fn plugin_releases(&self) -> Arc<dyn PluginReleaseStore> {
        Arc::clone(&self.plugin_releases)
    }

    /// How many saga workers one process should run at most; `None` for no limit. SQLite
    /// admits one writer at a time, so a second worker's claims would only queue behind the
    /// first's; PostgreSQL workers share the work through `SKIP LOCKED` claims.
    pub fn max_saga_workers(&self) -> Option<u32> {
        self.concurrency.max_saga_workers()
    }

    /// The PostgreSQL pool, when this is a PostgreSQL database: for tests and tools that
    /// inspect the database directly (the application goes through the stores).
    pub fn postgres(&self) -> Option<&PgPool> {
        match &self.backend {
            Backend::Postgres(pools) => Some(&pools.writer),
            Backend::Sqlite(_) => None,
        }
    }

    /// Every PostgreSQL pool, the one whose commits do not wait for their flush included:
    /// for tests and tools, like [`Self::postgres`].
    pub fn postgres_pools(&self) -> Option<&PostgresPools> {
        match &self.backend {
            Backend::Postgres(pools) => Some(pools),
            Backend::Sqlite(_) => None,
        }
    }

    /// The SQLite pools, when this is a SQLite database: for tests and tools, like
    /// [`Self::postgres`].
    pub fn sqlite(&self) -> Option<&SqlitePools> {
        match &self.backend {
            Backend::Sqlite(pools) => Some(pools),
            Backend::Postgres(_) => None,
        }
    }

    /// Whether the database answers a trivial query within `within` (health checks): `Err`
    /// says why not, `Unavailable` when it did not answer in time.
    pub async fn ping(&self, within: std::time::Duration) -> Result<(), StoreError> {
        let query = async {
            match &self.backend {
                Backend::Postgres(pools) => sqlx::query("SELECT 1")
                    .execute(&pools.reader)
                    .await
                    .map(drop)
                    .map_err(PostgresDialect::classify),
                Backend::Sqlite(pools) => sqlx::query("SELECT 1")
                    .execute(&pools.reader)
                    .await
                    .map(drop)
                    .map_err(SqliteDialect::classify),
            }
        };
        match tokio::time::timeout(within, query).await {
            Ok(result) => result,
            Err(_) => Err(StoreError::Unavailable(format!(
                "no answer within {} ms",
                within.as_millis()
            ))),
        }
    }

    /// Waits for checked-out connections to return, then closes every connection (on SQLite
    /// this checkpoints the WAL).
    pub async fn close(&self) {
        match &self.backend {
            Backend::Postgres(pools) => pools.close().await,
            Backend::Sqlite(pools) => pools.close().await,
        }
    }
}

/// Opens the database named by `url` and brings its schema up to date.
///
/// `postgres://` or `postgresql://` selects PostgreSQL; `sqlite:` selects SQLite (e.g.
/// `sqlite://data/oms.db` or `sqlite:data/oms.db`, relative to the working directory; the file
/// and its parent directory are created when missing; `sqlite::memory:` is a private in-memory
/// database). Fails on an unknown scheme, an unreachable server or a failed migration.
pub async fn connect(url: &str, options: &DatabaseOptions) -> Result<Database, PersistenceError> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let pools = postgres::open(url, options).await?;
        tracing::info!(database = %redact(url), "PostgreSQL connected and migrated");
        let backend = Backend::Postgres(pools.clone());
        Ok(Database::with_stores::<PostgresDialect>(
            pools, backend, options,
        ))
    } else if url.starts_with("sqlite:") {
        let pools = sqlite::open(url, options).await?;
        tracing::info!(database = %redact(url), "SQLite opened and migrated");
        let backend = Backend::Sqlite(pools.clone());
        Ok(Database::with_stores::<SqliteDialect>(
            pools, backend, options,
        ))
    } else {
        Err(PersistenceError::UnsupportedUrl(redact(url)))
    }
}

/// The URL without its password, for error messages and logs.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.split_once('@') {
        Some((userinfo, host)) if userinfo.contains(':') => {
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}:***@{host}")
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn redacts_passwords_only() {
        assert_eq!(redact("postgres://u:secret@h/db"), "postgres://u:***@h/db");
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact("sqlite:data/oms.db"), "sqlite:data/oms.db");
    }
}
