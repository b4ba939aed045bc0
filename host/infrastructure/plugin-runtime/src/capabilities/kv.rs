//! `oms:plugins/kv`: the plugin's durable key-value namespace (its name), granted by
//! `[capabilities] kv = true`. This module checks the grant and the arguments; atomicity is
//! the [`PluginKvStore`]'s job. A call made for a saga step writes into the call's
//! [`KvTransaction`] instead, which the step commits with its outcome.

use std::collections::HashSet;
use std::sync::Arc;

use crate::bindings::caps::oms::plugins::kv as wit;
use crate::error::LoadError;
use crate::kv::{self, KvError, KvTransaction, PluginKvStore};
use crate::manifest::Manifest;
use crate::state::HostState;

/// Longest key, in bytes.
pub const MAX_KEY_BYTES: usize = 512;
/// Largest value, in bytes: plugin state is small records, not blobs.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;
/// Most keys in one atomic batch (an order's lines plus a record or two).
pub const MAX_BATCH_KEYS: usize = 256;

/// The store and namespace a plugin may use, or nothing.
#[derive(Clone)]
pub struct KvGrant {
    store: Option<Arc<dyn PluginKvStore>>,
    namespace: String,
}

impl std::fmt::Debug for KvGrant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvGrant")
            .field("granted", &self.store.is_some())
            .field("namespace", &self.namespace)
            .finish()
    }
}

impl KvGrant {
    /// Granted when the manifest asks and the runtime has a store; asking without a store is a
    /// load error (the plugin would fail on every call otherwise).
    pub fn from_manifest(
        m: &Manifest,
        store: Option<Arc<dyn PluginKvStore>>,
    ) -> Result<Self, LoadError> {
        if !m.capabilities.kv {
            return Ok(Self {
                store: None,
                namespace: m.name.clone(),
            });
        }
        let store = store.ok_or_else(|| LoadError::Capability {
            plugin: m.name.clone(),
            capability: "kv",
            reason: "granted by the manifest but this runtime has no key-value store".into(),
        })?;
        Ok(Self {
            store: Some(store),
            namespace: m.name.clone(),
        })
    }

    fn store(&self) -> Result<&Arc<dyn PluginKvStore>, wit::KvError> {
        self.store.as_ref().ok_or(wit::KvError::Denied)
    }

    /// A buffer for one call's writes, when the capability is granted.
    pub(crate) fn transaction(&self) -> Option<KvTransaction> {
        self.store
            .as_ref()
            .map(|store| KvTransaction::new(store.clone(), &self.namespace))
    }
}

fn check_key(key: &str) -> Result<(), wit::KvError> {
    if key.is_empty() || key.len() > MAX_KEY_BYTES {
        return Err(wit::KvError::Invalid(format!(
            "key must be 1..={MAX_KEY_BYTES} bytes, got {}",
            key.len()
        )));
    }
    Ok(())
}

fn check_value(value: &[u8]) -> Result<(), wit::KvError> {
    if value.len() > MAX_VALUE_BYTES {
        return Err(wit::KvError::Invalid(format!(
            "value of {} bytes is over the {MAX_VALUE_BYTES}-byte limit",
            value.len()
        )));
    }
    Ok(())
}

/// A failing database is never the plugin's fault: it may retry later. A counter that is not
/// a number is (its own data).
fn to_wit(e: KvError) -> wit::KvError {
    match e {
        KvError::Store(e) => wit::KvError::Unavailable(e.to_string()),
        other => wit::KvError::Invalid(other.to_string()),
    }
}

fn check_batch(swaps: &[kv::Swap], adds: &[kv::BoundedAdd]) -> Result<(), wit::KvError> {
    if swaps.len() + adds.len() > MAX_BATCH_KEYS {
        return Err(wit::KvError::Invalid(format!(
            "a batch holds at most {MAX_BATCH_KEYS} keys"
        )));
    }
    let mut seen = HashSet::new();
    for key in swaps
        .iter()
        .map(|s| &s.key)
        .chain(adds.iter().map(|a| &a.key))
    {
        check_key(key)?;
        if !seen.insert(key) {
            return Err(wit::KvError::Invalid(format!(
                "key {key:?} appears twice in a batch"
            )));
        }
    }
    for s in swaps {
        if let Some(v) = &s.new {
            check_value(v)?;
        }
    }
    Ok(())
}

impl HostState {
    async fn kv_batch(
        &mut self,
        swaps: Vec<wit::Swap>,
        adds: Vec<wit::BoundedAdd>,
    ) -> Result<wit::BatchOutcome, wit::KvError> {
        let store = self.ctx.kv.store()?.clone();
        let swaps: Vec<kv::Swap> = swaps
            .into_iter()
            .map(|s| kv::Swap {
                key: s.key,
                expected: s.expected,
                new: s.new,
            })
            .collect();
        let adds: Vec<kv::BoundedAdd> = adds
            .into_iter()
            .map(|a| kv::BoundedAdd {
                key: a.key,
                delta: a.delta,
                min: a.min,
                max: a.max,
            })
            .collect();
        check_batch(&swaps, &adds)?;
        let outcome = match self.kv_txn.as_mut() {
            Some(txn) => txn.batch(&swaps, &adds).await,
            None => store.batch(&self.ctx.kv.namespace, &swaps, &adds).await,
        }
        .map_err(to_wit)?;
        Ok(match outcome {
            kv::BatchOutcome::Applied(v) => wit::BatchOutcome::Applied(v),
            kv::BatchOutcome::Conflict(k) => wit::BatchOutcome::Conflict(k),
            kv::BatchOutcome::OutOfBounds(k) => wit::BatchOutcome::OutOfBounds(k),
        })
    }
}

impl wit::Host for HostState {
    async fn get(
        &mut self,
        key: String,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, wit::KvError>> {
        let grant = &self.ctx.kv;
        let txn = self.kv_txn.as_mut();
        let run = async {
            let store = grant.store()?;
            check_key(&key)?;
            match txn {
                Some(txn) => txn.get(&key).await,
                None => store.get(&grant.namespace, &key).await,
            }
            .map_err(to_wit)
        };
        Ok(run.await)
    }

    async fn set(
        &mut self,
        key: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), wit::KvError>> {
        let grant = &self.ctx.kv;
        let txn = self.kv_txn.as_mut();
        let run = async {
            let store = grant.store()?;
            check_key(&key)?;
            check_value(&value)?;
            match txn {
                Some(txn) => {
                    txn.set(&key, value);
                    Ok(())
                }
                None => store
                    .set(&grant.namespace, &key, &value)
                    .await
                    .map_err(to_wit),
            }
        };
        Ok(run.await)
    }

    async fn delete(&mut self, key: String) -> wasmtime::Result<Result<(), wit::KvError>> {
        let grant = &self.ctx.kv;
        let txn = self.kv_txn.as_mut();
        let run = async {
            let store = grant.store()?;
            check_key(&key)?;
            match txn {
                Some(txn) => {
                    txn.delete(&key);
                    Ok(())
                }
                None => store.delete(&grant.namespace, &key).await.map_err(to_wit),
            }
        };
        Ok(run.await)
    }

    async fn compare_and_swap(
        &mut self,
        swaps: Vec<wit::Swap>,
        adds: Vec<wit::BoundedAdd>,
    ) -> wasmtime::Result<Result<wit::BatchOutcome, wit::KvError>> {
        Ok(self.kv_batch(swaps, adds).await)
    }

    async fn increment(
        &mut self,
        adds: Vec<wit::BoundedAdd>,
    ) -> wasmtime::Result<Result<wit::BatchOutcome, wit::KvError>> {
        Ok(self.kv_batch(Vec::new(), adds).await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicate_and_oversized_keys_are_invalid() {
        let s = |k: &str| kv::Swap {
            key: k.into(),
            expected: None,
            new: None,
        };
        assert!(check_batch(&[s("a"), s("b")], &[]).is_ok());
        assert!(matches!(
            check_batch(&[s("a"), s("a")], &[]),
            Err(wit::KvError::Invalid(_))
        ));
        assert!(check_batch(&[s(&"k".repeat(MAX_KEY_BYTES + 1))], &[]).is_err());
        assert!(check_batch(&[s("")], &[]).is_err());
    }
}
