//! In-memory [`PluginKvStore`] for unit tests and single-process demos: a mutex makes batches
//! atomic.

use std::collections::HashMap;
use std::sync::Mutex;

use super::{BatchOutcome, BoundedAdd, KvError, PluginKvStore, Swap, apply_batch_in};
use oms_application::plugin_kv::present;

/// Not durable: state is lost with the process.
#[derive(Debug, Default)]
pub struct MemoryKvStore {
    data: Mutex<HashMap<String, HashMap<String, Vec<u8>>>>,
}

impl MemoryKvStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn with<R>(&self, f: impl FnOnce(&mut HashMap<String, HashMap<String, Vec<u8>>>) -> R) -> R {
        // A panic while holding the lock cannot leave a half-applied batch (writes happen after
        // evaluation, in memory), so a poisoned lock is still consistent.
        let mut guard = self.data.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut guard)
    }
}

#[async_trait::async_trait]
impl PluginKvStore for MemoryKvStore {
    async fn get_many(
        &self,
        namespace: &str,
        keys: &[String],
    ) -> Result<HashMap<String, Vec<u8>>, KvError> {
        Ok(self.with(|d| {
            d.get(namespace)
                .map(|values| present(values, keys))
                .unwrap_or_default()
        }))
    }

    async fn set(&self, namespace: &str, key: &str, value: &[u8]) -> Result<(), KvError> {
        self.with(|d| {
            d.entry(namespace.to_string())
                .or_default()
                .insert(key.to_string(), value.to_vec())
        });
        Ok(())
    }

    async fn delete(&self, namespace: &str, key: &str) -> Result<(), KvError> {
        self.with(|d| d.get_mut(namespace).map(|ns| ns.remove(key)));
        Ok(())
    }

    async fn batch(
        &self,
        namespace: &str,
        swaps: &[Swap],
        adds: &[BoundedAdd],
    ) -> Result<BatchOutcome, KvError> {
        self.with(|d| apply_batch_in(d.entry(namespace.to_string()).or_default(), swaps, adds))
    }
}
