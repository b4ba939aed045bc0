//! The database handle of the consumers, and the clock they stamp rows with (Unix
//! milliseconds, like every timestamp in the schema).

use oms_persistence::{Pools, SqlitePools};
use sqlx::PgPool;

/// Which database, with its pools.
#[derive(Debug, Clone)]
pub(crate) enum Db {
    Postgres(PgPool),
    /// Writes go through `writer` in `BEGIN IMMEDIATE` transactions.
    Sqlite(SqlitePools),
}

impl From<&Pools> for Db {
    fn from(pools: &Pools) -> Self {
        match pools {
            Pools::Postgres(pool) => Db::Postgres(pool.clone()),
            Pools::Sqlite(pools) => Db::Sqlite(pools.clone()),
        }
    }
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
