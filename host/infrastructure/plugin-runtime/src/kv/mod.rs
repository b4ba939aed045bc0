//! Durable key-value storage behind the `kv` capability. The runtime only sees the
//! [`KvStore`] trait; PostgreSQL and SQLite implement it over the `plugin_kv` table
//! (`migrations/*/0002_plugin_kv.sql`), and [`MemoryKvStore`] serves unit tests.
//!
//! Every implementation evaluates a batch with [`evaluate`], so the semantics (conditions,
//! bounds, counter encoding, which failure wins) are written once; a backend only has to make
//! "read these keys, evaluate, write the result" atomic.

mod batch;
mod memory;
mod postgres;
mod sqlite;

pub use batch::{BatchOutcome, BoundedAdd, Evaluation, Swap, Write, evaluate};
pub use memory::MemoryKvStore;
pub use postgres::PgKvStore;
pub use sqlite::SqliteKvStore;

use crate::error::KvError;

/// Storage for plugin state, namespaced by plugin name. Implementations must make
/// [`KvStore::batch`] atomic against every other call on the same namespace, including calls
/// from other processes sharing the database.
#[async_trait::async_trait]
pub trait KvStore: Send + Sync + 'static {
    /// Reads one key; `None` when absent.
    async fn get(&self, namespace: &str, key: &str) -> Result<Option<Vec<u8>>, KvError>;
    /// Writes one key unconditionally.
    async fn set(&self, namespace: &str, key: &str, value: &[u8]) -> Result<(), KvError>;
    /// Deletes one key; deleting a missing key succeeds.
    async fn delete(&self, namespace: &str, key: &str) -> Result<(), KvError>;
    /// Applies every swap and add, or none. Keys are distinct (checked by the caller).
    async fn batch(
        &self,
        namespace: &str,
        swaps: &[Swap],
        adds: &[BoundedAdd],
    ) -> Result<BatchOutcome, KvError>;
}

/// Every key a batch touches, sorted: backends lock rows in this order so that two batches
/// over overlapping keys cannot deadlock.
pub fn batch_keys(swaps: &[Swap], adds: &[BoundedAdd]) -> Vec<String> {
    let mut keys: Vec<String> = swaps
        .iter()
        .map(|s| s.key.clone())
        .chain(adds.iter().map(|a| a.key.clone()))
        .collect();
    keys.sort();
    keys.dedup();
    keys
}
