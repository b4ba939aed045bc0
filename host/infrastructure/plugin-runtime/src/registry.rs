//! Installed plugins by name, with hot swap and rollback.
//!
//! Each name has a slot holding the current version and the previous one. A call clones the
//! current `Arc<LoadedPlugin>` when it starts and keeps it to the end, so swapping the slot
//! (a pointer swap under a short write lock) never disturbs calls in flight: they finish on
//! the version they started with, and the old version is freed when its last call ends.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use crate::breaker::{BreakerConfig, BreakerState, CircuitBreaker};
use crate::error::LoadError;
use crate::limits::Limits;
use crate::manifest::PluginKind;
use crate::metrics::PluginMetrics;
use crate::plugin::LoadedPlugin;

/// What identifies an installed version, and what it may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionInfo {
    pub name: String,
    pub kind: PluginKind,
    pub version: String,
    pub digest: String,
    /// sha256 of its manifest text: the same component under another manifest (a grant, a
    /// limit, config) is another version.
    pub manifest_sha256: String,
    /// The contract (WIT package) version it implements.
    pub contract: String,
    pub loaded_at: SystemTime,
    pub limits: Limits,
    /// What its manifest grants: `clock`, `kv`, `http:<host:port>` per allowed target.
    pub capabilities: Vec<String>,
}

impl VersionInfo {
    fn of(p: &LoadedPlugin) -> Self {
        Self {
            name: p.name().to_string(),
            kind: p.kind(),
            version: p.version().to_string(),
            digest: p.digest.to_string(),
            manifest_sha256: p.manifest.manifest_sha256.clone(),
            contract: p.manifest.contract.clone(),
            loaded_at: p.loaded_at,
            limits: p.limits.clone(),
            capabilities: p.manifest.capabilities.granted(),
        }
    }
}

/// What `list` reports per plugin.
#[derive(Debug, Clone)]
pub struct PluginStatus {
    pub current: VersionInfo,
    /// What `rollback` would restore.
    pub previous: Option<VersionInfo>,
    pub breaker: BreakerState,
    /// The last refused install of this name (cleared by a successful one).
    pub last_error: Option<String>,
}

pub(crate) struct Slot {
    current: RwLock<Arc<LoadedPlugin>>,
    previous: RwLock<Option<Arc<LoadedPlugin>>>,
    last_error: RwLock<Option<String>>,
    pub(crate) breaker: CircuitBreaker,
    pub(crate) metrics: PluginMetrics,
}

fn read<T: Clone>(lock: &RwLock<T>) -> T {
    // Writers only swap pointers and cannot panic half-way: a poisoned lock is consistent.
    lock.read().unwrap_or_else(|e| e.into_inner()).clone()
}

impl Slot {
    pub(crate) fn current(&self) -> Arc<LoadedPlugin> {
        read(&self.current)
    }
}

/// All installed plugins.
pub(crate) struct Registry {
    slots: RwLock<BTreeMap<String, Arc<Slot>>>,
    breaker: BreakerConfig,
}

impl Registry {
    pub(crate) fn new(breaker: BreakerConfig) -> Self {
        Self {
            slots: RwLock::new(BTreeMap::new()),
            breaker,
        }
    }

    pub(crate) fn slot(&self, name: &str) -> Option<Arc<Slot>> {
        self.slots
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }

    /// Makes `plugin` current; the replaced version becomes the rollback target.
    pub(crate) fn install(&self, plugin: LoadedPlugin) -> VersionInfo {
        let info = VersionInfo::of(&plugin);
        let plugin = Arc::new(plugin);
        let mut slots = self.slots.write().unwrap_or_else(|e| e.into_inner());
        match slots.get(&info.name) {
            Some(slot) => {
                let old = {
                    let mut cur = slot.current.write().unwrap_or_else(|e| e.into_inner());
                    std::mem::replace(&mut *cur, plugin)
                };
                *slot.previous.write().unwrap_or_else(|e| e.into_inner()) = Some(old);
                *slot.last_error.write().unwrap_or_else(|e| e.into_inner()) = None;
                slot.breaker.reset();
            }
            None => {
                slots.insert(
                    info.name.clone(),
                    Arc::new(Slot {
                        current: RwLock::new(plugin),
                        previous: RwLock::new(None),
                        last_error: RwLock::new(None),
                        breaker: CircuitBreaker::new(self.breaker),
                        metrics: PluginMetrics::named(&info.name),
                    }),
                );
            }
        }
        info
    }

    /// Swaps current and previous (so a second rollback rolls forward again).
    pub(crate) fn rollback(&self, name: &str) -> Result<VersionInfo, LoadError> {
        let slot = self.slot(name).ok_or_else(|| LoadError::NotInstalled {
            plugin: name.to_string(),
        })?;
        let mut prev = slot.previous.write().unwrap_or_else(|e| e.into_inner());
        let Some(previous) = prev.take() else {
            return Err(LoadError::NothingToRollBack {
                plugin: name.to_string(),
            });
        };
        let info = VersionInfo::of(&previous);
        let mut cur = slot.current.write().unwrap_or_else(|e| e.into_inner());
        *prev = Some(std::mem::replace(&mut *cur, previous));
        slot.breaker.reset();
        Ok(info)
    }

    /// Removes `name` (current and rollback versions): later calls find it not installed;
    /// calls already running finish on the version they hold. `None` when it was not there.
    pub(crate) fn uninstall(&self, name: &str) -> Option<VersionInfo> {
        let removed = self
            .slots
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name)?;
        Some(VersionInfo::of(&removed.current()))
    }

    /// Remembers why an install of `name` was refused (the current version keeps serving).
    pub(crate) fn record_failure(&self, name: &str, error: &LoadError) {
        if let Some(slot) = self.slot(name) {
            *slot.last_error.write().unwrap_or_else(|e| e.into_inner()) = Some(error.to_string());
        }
    }

    pub(crate) fn list(&self) -> Vec<PluginStatus> {
        let slots = self.slots.read().unwrap_or_else(|e| e.into_inner());
        slots
            .values()
            .map(|slot| PluginStatus {
                current: VersionInfo::of(&slot.current()),
                previous: read(&slot.previous).as_deref().map(VersionInfo::of),
                breaker: slot.breaker.state(),
                last_error: read(&slot.last_error),
            })
            .collect()
    }

    pub(crate) fn metrics(&self) -> Vec<(String, crate::metrics::MetricsSnapshot)> {
        let slots = self.slots.read().unwrap_or_else(|e| e.into_inner());
        slots
            .iter()
            .map(|(name, slot)| (name.clone(), slot.metrics.snapshot()))
            .collect()
    }
}
