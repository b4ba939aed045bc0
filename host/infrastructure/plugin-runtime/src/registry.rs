//! Installed plugins by name, with hot swap and rollback.
//!
//! Each name has a slot holding the current version and the previous one (with the retained
//! builds and the canary: one snapshot, replaced as a whole). A call clones the build it runs
//! on when it starts and keeps it to the end, so replacing the snapshot (a pointer swap under
//! a short write lock) never disturbs calls in flight: they finish on the version they started
//! with, and the old version is freed when its last call ends.
//!
//! Versions older than the rollback target stay loaded as *retained* builds while sagas may
//! still need them: a saga's follow-up calls for a payment or a reservation (capture, void,
//! refund, release, commit) are pinned to the build that made it ([`Slot::pick`]), so a new
//! version that changes its id format or its ledger cannot break the orders taken before it.
//! The runtime's owner drops the retained builds no open order refers to
//! ([`Registry::release_unreferenced`]).
//!
//! A name may also run a *canary*: a new build serving a share of new sagas (chosen by a
//! stable hash of the order, so an order's retries stay on one build), with its own circuit
//! breaker and metrics beside the current build's, until it is promoted to current or
//! aborted. An aborted canary is retained like a displaced build: the holds it made are
//! released, captured or refunded by it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;
use std::time::{Duration, Instant};

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
    /// Older builds kept loaded for the follow-up calls pinned to them, oldest first.
    pub retained: Vec<VersionInfo>,
    /// The build running as a canary, if any.
    pub canary: Option<CanaryStatus>,
    pub breaker: BreakerState,
    /// The last refused install of this name (cleared by a successful one).
    pub last_error: Option<String>,
}

/// Most builds of one name kept loaded beyond the current and the rollback target: each
/// holds its compiled code (megabytes), so a burst of uploads cannot grow memory without
/// bound. The oldest goes first; a call pinned to it is then served by the current build.
pub const MAX_RETAINED: usize = 8;

/// The default of [`crate::RuntimeOptions::retain_at_least`]: how long a retained build
/// stays loaded whatever the database says. Longer than a step's retries (30 s for a
/// placement step) plus a lease (30 s), so that an attempt that reached it and has not
/// committed its step yet (and so is not in the database) still finds it; compensations
/// commit every attempt, so their builds are in the database.
pub const RETAIN_AT_LEAST: Duration = Duration::from_secs(5 * 60);

/// A canary as `list` reports it: its build, its share, and its own figures.
#[derive(Debug, Clone)]
pub struct CanaryStatus {
    pub build: VersionInfo,
    /// Percent of new sagas it serves (1..=99).
    pub percent: u8,
    pub breaker: BreakerState,
    pub metrics: crate::metrics::MetricsSnapshot,
}

/// Which build a call runs on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) enum Route {
    /// The current build.
    #[default]
    Current,
    /// The build with this component digest while it is loaded, else the current one.
    Pinned(Arc<str>),
    /// A new saga's first call, keyed by its order: the canary for its share of keys (by a
    /// stable hash, computed only while a canary runs) while one runs, else the current build.
    Split(Arc<str>),
}

impl Route {
    /// The build `digest` names, or the current one without a digest.
    pub(crate) fn pinned(digest: Option<&str>) -> Self {
        digest.map_or(Self::Current, |d| Self::Pinned(Arc::from(d)))
    }

    /// A call that starts something new for `key` (an order): on the build an earlier
    /// attempt reached when one is known (`pinned`), else split by `key` between the current
    /// build and a canary.
    pub(crate) fn starting(key: &str, pinned: Option<&str>) -> Self {
        match pinned {
            Some(_) => Self::pinned(pinned),
            None => Self::Split(Arc::from(key)),
        }
    }
}

/// A build serving a share of new sagas, with its own breaker and figures (a failing canary
/// must not open the circuit of the build that serves everyone else).
pub(crate) struct Canary {
    pub(crate) plugin: Arc<LoadedPlugin>,
    percent: AtomicU8,
    pub(crate) breaker: CircuitBreaker,
    pub(crate) metrics: PluginMetrics,
}

/// The build a call runs on, and the canary's breaker and figures when it is the canary.
pub(crate) struct Picked {
    pub(crate) plugin: Arc<LoadedPlugin>,
    pub(crate) canary: Option<Arc<Canary>>,
}

/// What a slot serves, replaced as a whole: a call reads one consistent snapshot, so a
/// change (an install, a promotion, the end of a canary) never shows a build half-moved, as
/// absent from every place.
#[derive(Clone)]
struct Builds {
    current: Arc<LoadedPlugin>,
    previous: Option<Arc<LoadedPlugin>>,
    retained: Vec<Retained>,
    canary: Option<Arc<Canary>>,
}

/// A build kept loaded for the calls pinned to it.
#[derive(Clone)]
struct Retained {
    plugin: Arc<LoadedPlugin>,
    /// A build is never unloaded sooner than `retain_at_least` after this (a call that
    /// started on it may not have committed its step yet).
    since: Instant,
    /// An ended canary, and an older build a starting process loaded, keep their own
    /// breaker (and, for a canary, figures): their orders' follow-ups failing must not open
    /// the circuit of the build that serves everyone else.
    own: Option<Arc<Canary>>,
}

impl Builds {
    /// Keeps `old` loaded as a retained build unless a loaded build has its digest already.
    fn retain(&mut self, old: Arc<LoadedPlugin>, own: Option<Arc<Canary>>) {
        self.retained.retain(|r| r.plugin.digest != old.digest);
        if old.digest == self.current.digest
            || self
                .previous
                .as_ref()
                .is_some_and(|p| p.digest == old.digest)
            || self
                .canary
                .as_ref()
                .is_some_and(|c| c.plugin.digest == old.digest)
        {
            return;
        }
        self.retained.push(Retained {
            plugin: old,
            since: Instant::now(),
            own,
        });
        if self.retained.len() > MAX_RETAINED {
            self.retained.remove(0);
        }
    }

    /// Makes `new` current; the current build becomes the rollback target, the rollback
    /// target is retained.
    fn replace_current(&mut self, new: Arc<LoadedPlugin>) {
        let old = std::mem::replace(&mut self.current, new);
        if let Some(displaced) = self.previous.replace(old) {
            self.retain(displaced, None);
        }
    }

    /// Ends the canary, if one runs: its build is retained (the holds it made are still
    /// served by it). Returns it.
    fn end_canary(&mut self) -> Option<Arc<LoadedPlugin>> {
        let canary = self.canary.take()?;
        let plugin = canary.plugin.clone();
        self.retain(plugin.clone(), Some(canary));
        Some(plugin)
    }
}

pub(crate) struct Slot {
    builds: RwLock<Arc<Builds>>,
    last_error: RwLock<Option<String>>,
    pub(crate) breaker: CircuitBreaker,
    pub(crate) metrics: PluginMetrics,
}

fn read<T: Clone>(lock: &RwLock<T>) -> T {
    // Writers only swap pointers and cannot panic half-way: a poisoned lock is consistent.
    lock.read().unwrap_or_else(|e| e.into_inner()).clone()
}

impl Slot {
    fn builds(&self) -> Arc<Builds> {
        read(&self.builds)
    }

    /// Changes the builds as `change` says, as one step; returns what `change` returns.
    fn change<T>(&self, change: impl FnOnce(&mut Builds) -> T) -> T {
        let mut guard = self.builds.write().unwrap_or_else(|e| e.into_inner());
        let mut next = Builds::clone(&guard);
        let out = change(&mut next);
        *guard = Arc::new(next);
        out
    }

    pub(crate) fn current(&self) -> Arc<LoadedPlugin> {
        self.builds().current.clone()
    }

    /// The build a call runs on ([`Route`]). A pinned call finds its build among the
    /// current one, the canary, the rollback target and the retained ones.
    pub(crate) fn pick(&self, route: &Route) -> Picked {
        let builds = self.builds();
        let stable = |plugin: &Arc<LoadedPlugin>| Picked {
            plugin: plugin.clone(),
            canary: None,
        };
        let on_canary = |c: &Arc<Canary>| Picked {
            plugin: c.plugin.clone(),
            canary: Some(c.clone()),
        };
        match route {
            Route::Current => stable(&builds.current),
            Route::Split(key) => match &builds.canary {
                Some(c)
                    if crate::clients::route_hash(key) % 100
                        < u64::from(c.percent.load(Ordering::Relaxed)) =>
                {
                    on_canary(c)
                }
                _ => stable(&builds.current),
            },
            Route::Pinned(pin) if *pin == builds.current.digest => stable(&builds.current),
            Route::Pinned(pin) => {
                if let Some(c) = builds.canary.as_ref().filter(|c| c.plugin.digest == *pin) {
                    return on_canary(c);
                }
                if let Some(previous) = builds.previous.as_ref().filter(|p| p.digest == *pin) {
                    return stable(previous);
                }
                match builds
                    .retained
                    .iter()
                    .rev()
                    .find(|r| r.plugin.digest == *pin)
                {
                    Some(r) => Picked {
                        plugin: r.plugin.clone(),
                        canary: r.own.clone(),
                    },
                    None => stable(&builds.current),
                }
            }
        }
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

    /// Makes `plugin` current; the replaced version becomes the rollback target. A canary
    /// of that name ends (a new release replaces the rollout).
    pub(crate) fn install(&self, plugin: LoadedPlugin) -> VersionInfo {
        let info = VersionInfo::of(&plugin);
        let plugin = Arc::new(plugin);
        let mut slots = self.slots.write().unwrap_or_else(|e| e.into_inner());
        match slots.get(&info.name) {
            Some(slot) => {
                slot.change(|b| {
                    b.replace_current(plugin);
                    b.end_canary();
                });
                *slot.last_error.write().unwrap_or_else(|e| e.into_inner()) = None;
                slot.breaker.reset();
            }
            None => {
                slots.insert(
                    info.name.clone(),
                    Arc::new(Slot {
                        builds: RwLock::new(Arc::new(Builds {
                            current: plugin,
                            previous: None,
                            retained: Vec::new(),
                            canary: None,
                        })),
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
        let info = slot.change(|b| {
            let previous = b.previous.take()?;
            let info = VersionInfo::of(&previous);
            b.previous = Some(std::mem::replace(&mut b.current, previous));
            Some(info)
        });
        let info = info.ok_or_else(|| LoadError::NothingToRollBack {
            plugin: name.to_string(),
        })?;
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

    /// Runs `plugin` as the canary of its name for `percent` of new sagas, replacing any
    /// canary of another build (retained); the same build only changes its share.
    pub(crate) fn start_canary(
        &self,
        plugin: LoadedPlugin,
        percent: u8,
    ) -> Result<VersionInfo, LoadError> {
        let info = VersionInfo::of(&plugin);
        let slot = self
            .slot(&info.name)
            .ok_or_else(|| LoadError::NotInstalled {
                plugin: info.name.clone(),
            })?;
        let same = |c: &Arc<Canary>| {
            c.plugin.digest == plugin.digest
                && c.plugin.manifest.manifest_sha256 == plugin.manifest.manifest_sha256
        };
        if let Some(running) = slot.builds().canary.clone().filter(same) {
            running.percent.store(percent, Ordering::Relaxed);
            return Ok(VersionInfo::of(&running.plugin));
        }
        let canary = Arc::new(Canary {
            plugin: Arc::new(plugin),
            percent: AtomicU8::new(percent),
            breaker: CircuitBreaker::new(self.breaker),
            metrics: PluginMetrics::canary(&info.name),
        });
        slot.change(|b| {
            b.end_canary();
            // A build that was retained is the canary now, not both.
            b.retained
                .retain(|r| r.plugin.digest != canary.plugin.digest);
            b.canary = Some(canary);
        });
        Ok(info)
    }

    /// Keeps `plugin`, an older build of an installed name, loaded as a retained build
    /// (unless a loaded build has its digest already), with a breaker of its own: it may
    /// be a canary that was aborted for failing, and nothing here says it was not.
    pub(crate) fn retain(&self, plugin: LoadedPlugin) -> Result<VersionInfo, LoadError> {
        let info = VersionInfo::of(&plugin);
        let slot = self
            .slot(&info.name)
            .ok_or_else(|| LoadError::NotInstalled {
                plugin: info.name.clone(),
            })?;
        let plugin = Arc::new(plugin);
        let own = Arc::new(Canary {
            plugin: plugin.clone(),
            // Serves no share of new sagas: only the calls pinned to it.
            percent: AtomicU8::new(0),
            breaker: CircuitBreaker::new(self.breaker),
            metrics: PluginMetrics::named(&info.name),
        });
        slot.change(|b| b.retain(plugin, Some(own)));
        Ok(info)
    }

    /// Makes the canary of `name` current: the current build becomes the rollback target.
    pub(crate) fn promote(&self, name: &str) -> Result<VersionInfo, LoadError> {
        let slot = self.slot(name).ok_or_else(|| LoadError::NotInstalled {
            plugin: name.to_string(),
        })?;
        let promoted = slot.change(|b| {
            let canary = b.canary.take()?;
            b.replace_current(canary.plugin.clone());
            Some(VersionInfo::of(&canary.plugin))
        });
        let info = promoted.ok_or_else(|| LoadError::NoCanary {
            plugin: name.to_string(),
        })?;
        slot.breaker.reset();
        Ok(info)
    }

    /// Ends the canary of `name` without promoting it; `None` when none runs.
    pub(crate) fn abort_canary(&self, name: &str) -> Option<VersionInfo> {
        let ended = self.slot(name)?.change(Builds::end_canary)?;
        Some(VersionInfo::of(&ended))
    }

    /// Drops the retained builds whose `(name, digest)` is not in `in_use` and that were
    /// retained at least `at_least` ago; returns them.
    pub(crate) fn release_unreferenced(
        &self,
        in_use: &std::collections::HashSet<(String, String)>,
        at_least: Duration,
    ) -> Vec<VersionInfo> {
        let slots = self.slots.read().unwrap_or_else(|e| e.into_inner());
        let mut released = Vec::new();
        for (name, slot) in slots.iter() {
            if slot.builds().retained.is_empty() {
                continue;
            }
            slot.change(|b| {
                b.retained.retain(|r| {
                    let keep = r.since.elapsed() < at_least
                        || in_use.contains(&(name.clone(), r.plugin.digest.to_string()));
                    if !keep {
                        released.push(VersionInfo::of(&r.plugin));
                    }
                    keep
                });
            });
        }
        released
    }

    /// Whether any name holds a retained build (when not, nothing needs releasing).
    pub(crate) fn retains_any(&self) -> bool {
        let slots = self.slots.read().unwrap_or_else(|e| e.into_inner());
        slots
            .values()
            .any(|slot| !slot.builds().retained.is_empty())
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
            .map(|slot| {
                let builds = slot.builds();
                PluginStatus {
                    current: VersionInfo::of(&builds.current),
                    previous: builds.previous.as_deref().map(VersionInfo::of),
                    retained: builds
                        .retained
                        .iter()
                        .map(|r| VersionInfo::of(&r.plugin))
                        .collect(),
                    canary: builds.canary.as_ref().map(|c| CanaryStatus {
                        build: VersionInfo::of(&c.plugin),
                        percent: c.percent.load(Ordering::Relaxed),
                        breaker: c.breaker.state(),
                        metrics: c.metrics.snapshot(),
                    }),
                    breaker: slot.breaker.state(),
                    last_error: read(&slot.last_error),
                }
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
