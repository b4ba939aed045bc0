//! Errors of opening a database, and the driver-independent half of error classification.

use oms_application::ports::StoreError;

/// Why [`crate::connect`] (or a test database) could not provide a ready database.
#[derive(Debug, thiserror::Error)]
pub enum PersistenceError {
    #[error("unsupported database URL {0}: use postgres://, postgresql:// or sqlite:")]
    UnsupportedUrl(String),
    #[error("invalid database URL {url}: {source}")]
    InvalidUrl {
        url: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("cannot create the directory of the SQLite database {path}: {source}")]
    CreateDir {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot connect to {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("migrating {url} failed: {source}")]
    Migrate {
        url: String,
        #[source]
        source: sqlx::migrate::MigrateError,
    },
    /// Test database setup or teardown (the `testing` feature).
    #[error("test database: {0}")]
    TestSetup(String),
}

/// Errors that mean "the database cannot be reached right now" whatever the driver: the
/// request may be retried. `None` for driver-specific errors, which the caller classifies.
pub(crate) fn transient(e: &sqlx::Error) -> Option<StoreError> {
    match e {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::WorkerCrashed
        // A broken stream mid-message surfaces as a protocol error.
        | sqlx::Error::Protocol(_) => Some(StoreError::Unavailable(e.to_string())),
        _ => None,
    }
}

/// Anything not known to be transient is a bug on our side (a query the schema rejects, a
/// value that does not decode): the port has no better class for it than `Corrupt`, which
/// the application reports as an internal error.
pub(crate) fn unexpected(e: &sqlx::Error) -> StoreError {
    StoreError::Corrupt(format!("unexpected database error: {e}"))
}
