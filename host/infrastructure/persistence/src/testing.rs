//! Throw-away databases for tests (cargo feature `testing`).
//!
//! ```ignore
//! let test_db = TestDatabase::postgres().await?; // or TestDatabase::sqlite()?
//! let db = test_db.connect().await?;             // migrated, ready
//! // ... hand test_db.url() to the host under test, or use db.orders() directly ...
//! db.close().await;
//! test_db.cleanup().await;                        // or just drop it
//! ```
//!
//! PostgreSQL: a fresh database `oms_test_<uuid>` on the server named by `OMS_TEST_PG_URL`
//! (default `postgres://postgres@127.0.0.1:5432/postgres`, an administrative connection that
//! may create databases), dropped `WITH (FORCE)` at cleanup, which also ends connections
//! the test left open. SQLite: a file in a fresh temporary directory, removed at cleanup.

use sqlx::{AssertSqlSafe, Connection, PgConnection};
use uuid::Uuid;

use crate::{Database, DatabaseOptions, PersistenceError, connect};

/// The administrative URL used when `OMS_TEST_PG_URL` is unset.
pub const DEFAULT_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// Which database a test runs on, for tests parametrised over both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestBackend {
    Postgres,
    Sqlite,
}

enum Backing {
    Postgres { admin_url: String, name: String },
    Sqlite { _dir: tempfile::TempDir },
    Gone,
}

/// A database that exists for one test. Dropping it removes it (a PostgreSQL database is
/// dropped from a helper thread, so dropping inside an async test is fine); call
/// [`TestDatabase::cleanup`] to do it without the thread.
pub struct TestDatabase {
    url: String,
    backing: Backing,
}

impl TestDatabase {
    /// A fresh, empty database of the given kind.
    pub async fn new(backend: TestBackend) -> Result<Self, PersistenceError> {
        match backend {
            TestBackend::Postgres => Self::postgres().await,
            TestBackend::Sqlite => Self::sqlite(),
        }
    }

    /// Creates an empty PostgreSQL database (migrations run on [`Self::connect`]).
    pub async fn postgres() -> Result<Self, PersistenceError> {
        let admin_url =
            std::env::var("OMS_TEST_PG_URL").unwrap_or_else(|_| DEFAULT_ADMIN_URL.to_owned());
        let name = format!("oms_test_{}", Uuid::now_v7().simple());
        let mut admin = PgConnection::connect(&admin_url)
            .await
            .map_err(|e| setup(format!("connect to {}: {e}", crate::redact(&admin_url))))?;
        // The name is generated above from hex digits only: safe to splice into DDL.
        sqlx::query(AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await
            .map_err(|e| setup(format!("create database {name}: {e}")))?;
        let _ = admin.close().await;
        Ok(Self {
            url: with_database(&admin_url, &name),
            backing: Backing::Postgres { admin_url, name },
        })
    }

    /// Names a SQLite file in a fresh temporary directory (created on [`Self::connect`]).
    pub fn sqlite() -> Result<Self, PersistenceError> {
        let dir = tempfile::Builder::new()
            .prefix("oms-test-")
            .tempdir()
            .map_err(|e| setup(format!("temporary directory: {e}")))?;
        let url = format!("sqlite://{}", dir.path().join("oms.db").display());
        Ok(Self {
            url,
            backing: Backing::Sqlite { _dir: dir },
        })
    }

    /// The URL to give [`crate::connect`] or the host's `database.url`.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn is_postgres(&self) -> bool {
        matches!(self.backing, Backing::Postgres { .. })
    }

    /// Connects with [`Self::options`] and runs the migrations.
    pub async fn connect(&self) -> Result<Database, PersistenceError> {
        connect(&self.url, &Self::options()).await
    }

    /// Defaults with a small pool: tests run in parallel against one PostgreSQL server
    /// (`max_connections` 100 by default), and 16 connections per test would exhaust it.
    pub fn options() -> DatabaseOptions {
        DatabaseOptions {
            max_connections: 4,
            ..DatabaseOptions::default()
        }
    }

    /// Removes the database now, reporting failures instead of ignoring them.
    pub async fn cleanup(mut self) -> Result<(), PersistenceError> {
        match std::mem::replace(&mut self.backing, Backing::Gone) {
            Backing::Postgres { admin_url, name } => drop_database(&admin_url, &name).await,
            Backing::Sqlite { _dir: dir } => dir
                .close()
                .map_err(|e| setup(format!("remove temporary directory: {e}"))),
            Backing::Gone => Ok(()),
        }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let Backing::Postgres { admin_url, name } =
            std::mem::replace(&mut self.backing, Backing::Gone)
        else {
            // A SQLite directory removes itself when `TempDir` drops.
            return;
        };
        // Drop may run on a runtime thread, where blocking on a future is not allowed: a
        // helper thread with its own small runtime does the work.
        let worker = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            match runtime {
                Ok(rt) => {
                    if let Err(e) = rt.block_on(drop_database(&admin_url, &name)) {
                        eprintln!("warning: test database {name} left behind: {e}");
                    }
                }
                Err(e) => eprintln!("warning: test database {name} left behind: {e}"),
            }
        });
        let _ = worker.join();
    }
}

async fn drop_database(admin_url: &str, name: &str) -> Result<(), PersistenceError> {
    let mut admin = PgConnection::connect(admin_url)
        .await
        .map_err(|e| setup(format!("connect to {}: {e}", crate::redact(admin_url))))?;
    sqlx::query(AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    )))
    .execute(&mut admin)
    .await
    .map_err(|e| setup(format!("drop database {name}: {e}")))?;
    let _ = admin.close().await;
    Ok(())
}

fn setup(message: String) -> PersistenceError {
    PersistenceError::TestSetup(message)
}

/// `admin_url` with its database path replaced by `name`, keeping any query parameters.
fn with_database(admin_url: &str, name: &str) -> String {
    let (base, query) = match admin_url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (admin_url, None),
    };
    // The path starts at the first '/' after the scheme's "//".
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let host_end = base[authority_start..]
        .find('/')
        .map_or(base.len(), |i| authority_start + i);
    let mut url = format!("{}/{name}", &base[..host_end]);
    if let Some(query) = query {
        url.push('?');
        url.push_str(query);
    }
    url
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn replaces_the_database_only() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/postgres", "t1"),
            "postgres://postgres@127.0.0.1:5432/t1"
        );
        assert_eq!(
            with_database("postgres://u:p@h/postgres?sslmode=disable", "t1"),
            "postgres://u:p@h/t1?sslmode=disable"
        );
        assert_eq!(with_database("postgres://h", "t1"), "postgres://h/t1");
    }
}
