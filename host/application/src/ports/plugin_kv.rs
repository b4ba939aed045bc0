//! The plugin key-value store port: the durable state behind the plugins' `kv` capability.

use std::collections::HashMap;

use async_trait::async_trait;

use crate::plugin_kv::{BatchOutcome, BoundedAdd, KvError, Swap};

/// Storage for plugin state (table `plugin_kv`), namespaced by plugin name. Implementations
/// must make [`PluginKvStore::batch`] atomic against every other call on the same namespace,
/// including calls from other processes sharing the database.
#[async_trait]
pub trait PluginKvStore: Send + Sync + 'static {
    /// Reads several keys in one round trip; absent keys are not in the answer.
    async fn get_many(
        &self,
        namespace: &str,
        keys: &[String],
    ) -> Result<HashMap<String, Vec<u8>>, KvError>;
    /// Reads one key; `None` when absent.
    async fn get(&self, namespace: &str, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        Ok(self
            .get_many(namespace, &[key.to_owned()])
            .await?
            .remove(key))
    }
    /// Writes one key unconditionally.
    async fn set(&self, namespace: &str, key: &str, value: &[u8]) -> Result<(), KvError>;
    /// Deletes one key; deleting a missing key succeeds.
    async fn delete(&self, namespace: &str, key: &str) -> Result<(), KvError>;
    /// Applies every swap and add, or none. Keys are distinct (checked by the caller). The
    /// outcome is decided by [`crate::plugin_kv::evaluate`] on the keys' current values.
    async fn batch(
        &self,
        namespace: &str,
        swaps: &[Swap],
        adds: &[BoundedAdd],
    ) -> Result<BatchOutcome, KvError>;
}
