//! [`PluginRuntime`]: the facade the application layer holds. It owns the engine, the linker,
//! the key-value store and the registry, and hands out typed clients.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use wasmtime::component::Linker;

use crate::breaker::BreakerConfig;
use crate::call::KvMode;
use crate::clients::{InventoryPlugin, NotificationFormatter, PaymentPlugin};
use crate::engine::{EngineOptions, PluginEngine};
use crate::error::LoadError;
use crate::kv::PluginKvStore;
use crate::manifest::Manifest;
use crate::metrics::MetricsSnapshot;
use crate::plugin::LoadedPlugin;
use crate::registry::{PluginStatus, Registry, VersionInfo};
use crate::state::{HostState, build_linker};

/// Everything configurable about the runtime; `Default` is production-ready except for
/// `engine.cache_dir`, which should point at a directory that survives restarts.
#[derive(Debug, Clone, Default)]
pub struct RuntimeOptions {
    pub engine: EngineOptions,
    pub breaker: BreakerConfig,
    /// How long a build displaced by a newer one stays loaded at least, whatever
    /// [`PluginRuntime::release_unreferenced`] is told ([`crate::RETAIN_AT_LEAST`] when
    /// `None`).
    pub retain_at_least: Option<std::time::Duration>,
}

/// The engine or linker could not be built (a host misconfiguration, not a plugin problem).
#[derive(Debug, thiserror::Error)]
#[error("plugin runtime setup failed: {0}")]
pub struct SetupError(String);

pub(crate) struct Inner {
    pub(crate) engine: PluginEngine,
    pub(crate) linker: Linker<HostState>,
    pub(crate) kv: Option<Arc<dyn PluginKvStore>>,
    pub(crate) registry: Registry,
    retain_at_least: std::time::Duration,
}

/// The plugin runtime; cheap to clone (shared state).
#[derive(Clone)]
pub struct PluginRuntime {
    pub(crate) inner: Arc<Inner>,
}

impl PluginRuntime {
    /// Builds the engine and linker. `kv` backs the `kv` capability; without one, a plugin
    /// whose manifest grants `kv` is refused at load.
    pub fn new(
        options: RuntimeOptions,
        kv: Option<Arc<dyn PluginKvStore>>,
    ) -> Result<Self, SetupError> {
        let engine = PluginEngine::new(options.engine).map_err(|e| SetupError(format!("{e:#}")))?;
        let linker = build_linker(engine.engine()).map_err(|e| SetupError(format!("{e:#}")))?;
        Ok(Self {
            inner: Arc::new(Inner {
                engine,
                linker,
                kv,
                registry: Registry::new(options.breaker),
                retain_at_least: options
                    .retain_at_least
                    .unwrap_or(crate::registry::RETAIN_AT_LEAST),
            }),
        })
    }

    /// Loads and checks the plugin described by `manifest_path` without installing it
    /// (compilation runs on a blocking thread).
    pub async fn check(&self, manifest_path: impl AsRef<Path>) -> Result<LoadedPlugin, LoadError> {
        let inner = self.inner.clone();
        let path = manifest_path.as_ref().to_path_buf();
        blocking(move || LoadedPlugin::load(&inner.engine, &inner.linker, &path, inner.kv.clone()))
            .await
    }

    /// Loads and checks a build from its manifest's text (`manifest_path` resolves its paths
    /// and names it in errors) and the component's bytes, without installing it: every
    /// check an install makes, for `oms plugin check`.
    pub async fn check_bytes(
        &self,
        manifest_toml: &str,
        manifest_path: &Path,
        wasm: Vec<u8>,
    ) -> Result<LoadedPlugin, LoadError> {
        let manifest = Manifest::parse(manifest_toml, manifest_path)?;
        self.load_parts(manifest, wasm).await
    }

    /// Loads, checks, then atomically makes current the plugin of `manifest_path`. On any
    /// error the version that was serving keeps serving. Installing the same component with
    /// the same manifest as the current one changes nothing.
    pub async fn install(&self, manifest_path: impl AsRef<Path>) -> Result<VersionInfo, LoadError> {
        let name_hint = Manifest::from_file(manifest_path.as_ref())
            .map(|m| m.name)
            .ok();
        let result = self.check(manifest_path).await;
        self.finish_install(result, name_hint.as_deref())
    }

    /// Like [`Self::install`], from a manifest's text and the component's bytes (for an admin
    /// API that receives an upload). `manifest_path` only names the manifest in errors.
    pub async fn install_bytes(
        &self,
        manifest_toml: &str,
        wasm: Vec<u8>,
    ) -> Result<VersionInfo, LoadError> {
        let manifest = Manifest::parse(manifest_toml, Path::new("<uploaded manifest>"))?;
        let name = manifest.name.clone();
        let result = self.load_parts(manifest, wasm).await;
        self.finish_install(result, Some(&name))
    }

    /// Makes current a plugin [`Self::check_bytes`] loaded (compiled once), as
    /// [`Self::install_bytes`] would.
    pub fn install_loaded(&self, plugin: LoadedPlugin) -> Result<VersionInfo, LoadError> {
        let name = plugin.name().to_owned();
        self.finish_install(Ok(plugin), Some(&name))
    }

    /// Loads and checks a component from its parsed manifest and bytes, without installing
    /// it (compilation runs on a blocking thread).
    async fn load_parts(
        &self,
        manifest: Manifest,
        wasm: Vec<u8>,
    ) -> Result<LoadedPlugin, LoadError> {
        let inner = self.inner.clone();
        blocking(move || {
            LoadedPlugin::from_parts(
                &inner.engine,
                &inner.linker,
                manifest,
                &wasm,
                inner.kv.clone(),
            )
        })
        .await
    }

    /// Loads another build of an installed plugin (`what`: "a canary", "an older build") to
    /// run beside its current build, which must implement the same world; returns both.
    async fn load_beside_current(
        &self,
        manifest: Manifest,
        wasm: Vec<u8>,
        what: &str,
    ) -> Result<(LoadedPlugin, Arc<LoadedPlugin>), LoadError> {
        let (path, name) = (manifest.path.clone(), manifest.name.clone());
        let Some(slot) = self.inner.registry.slot(&name) else {
            return Err(LoadError::NotInstalled { plugin: name });
        };
        let plugin = self.load_parts(manifest, wasm).await?;
        let current = slot.current();
        if current.kind() != plugin.kind() {
            return Err(LoadError::ManifestInvalid {
                path,
                reason: format!(
                    "plugin {name} implements {}; {what} cannot implement {}",
                    current.kind(),
                    plugin.kind()
                ),
            });
        }
        Ok((plugin, current))
    }

    fn finish_install(
        &self,
        result: Result<LoadedPlugin, LoadError>,
        name_hint: Option<&str>,
    ) -> Result<VersionInfo, LoadError> {
        let registry = &self.inner.registry;
        let refuse = |e: LoadError| {
            if let Some(name) = name_hint {
                registry.record_failure(name, &e);
            }
            tracing::warn!(error = %e, "plugin install refused");
            Err(e)
        };
        let plugin = match result {
            Ok(p) => p,
            Err(e) => return refuse(e),
        };
        if let Some(slot) = registry.slot(plugin.name()) {
            let current = slot.current();
            if current.kind() != plugin.kind() {
                return refuse(LoadError::ManifestInvalid {
                    path: plugin.manifest.path.clone(),
                    reason: format!(
                        "plugin {} implements {}; a new version cannot implement {} instead",
                        plugin.name(),
                        current.kind(),
                        plugin.kind()
                    ),
                });
            }
            if current.digest == plugin.digest
                && current.manifest.manifest_sha256 == plugin.manifest.manifest_sha256
                && let Some(status) = self.status_of(plugin.name())
            {
                return Ok(status.current);
            }
        }
        let info = registry.install(plugin);
        tracing::info!(plugin = %info.name, version = %info.version, digest = %info.digest, "plugin installed");
        Ok(info)
    }

    /// Loads and checks a build from a manifest's text and the component's bytes, then runs
    /// it as the canary of its plugin for `percent` (1..=99) of new sagas, beside the
    /// current build (which keeps serving everyone else and every pinned follow-up). The
    /// plugin must be installed, and the build must be of the same kind and not the
    /// current one.
    pub async fn start_canary_bytes(
        &self,
        manifest_toml: &str,
        wasm: Vec<u8>,
        percent: u8,
    ) -> Result<VersionInfo, LoadError> {
        let manifest = Manifest::parse(manifest_toml, Path::new("<uploaded manifest>"))?;
        let path = manifest.path.clone();
        let name = manifest.name.clone();
        if !(1..=99).contains(&percent) {
            return Err(LoadError::ManifestInvalid {
                path,
                reason: format!("a canary serves 1 to 99 percent of new sagas, not {percent}"),
            });
        }
        let (plugin, current) = self.load_beside_current(manifest, wasm, "a canary").await?;
        if current.digest == plugin.digest {
            return Err(LoadError::ManifestInvalid {
                path,
                reason: format!("this component is the current build of {name}, not a new one"),
            });
        }
        let info = self.inner.registry.start_canary(plugin, percent)?;
        tracing::info!(plugin = %info.name, version = %info.version, digest = %info.digest,
                       percent, "plugin canary started");
        Ok(info)
    }

    /// Loads an older build of an installed plugin from its manifest's text and the
    /// component's bytes and keeps it loaded for the follow-up calls pinned to it (a process
    /// that started after the swaps that displaced it), like a build a swap displaced: it
    /// serves no new saga and is unloaded once no open order refers to it
    /// ([`Self::release_unreferenced`]). A build already loaded is not loaded twice.
    pub async fn retain_bytes(
        &self,
        manifest_toml: &str,
        wasm: Vec<u8>,
    ) -> Result<VersionInfo, LoadError> {
        let manifest = Manifest::parse(manifest_toml, Path::new("<stored manifest>"))?;
        let (plugin, _) = self
            .load_beside_current(manifest, wasm, "an older build")
            .await?;
        let info = self.inner.registry.retain(plugin)?;
        tracing::info!(plugin = %info.name, version = %info.version, digest = %info.digest,
                       "older plugin build loaded for the orders pinned to it");
        Ok(info)
    }

    /// Makes the canary of `name` its current build (the current one becomes the rollback
    /// target).
    pub fn promote_canary(&self, name: &str) -> Result<VersionInfo, LoadError> {
        let info = self.inner.registry.promote(name)?;
        tracing::info!(plugin = %info.name, version = %info.version, "plugin canary promoted");
        Ok(info)
    }

    /// Ends the canary of `name` without promoting it; its build stays loaded while open
    /// orders refer to it. `None` when none runs.
    pub fn abort_canary(&self, name: &str) -> Option<VersionInfo> {
        let info = self.inner.registry.abort_canary(name)?;
        tracing::info!(plugin = %info.name, version = %info.version, "plugin canary ended");
        Some(info)
    }

    /// Makes the previous version current again (and the current one the rollback target).
    pub fn rollback(&self, name: &str) -> Result<VersionInfo, LoadError> {
        let info = self.inner.registry.rollback(name)?;
        tracing::info!(plugin = %info.name, version = %info.version, "plugin rolled back");
        Ok(info)
    }

    /// Uninstalls `name` (an operator disabled it): calls then fail as not installed, and an
    /// install brings it back. `None` when it was not installed.
    pub fn uninstall(&self, name: &str) -> Option<VersionInfo> {
        let removed = self.inner.registry.uninstall(name)?;
        tracing::info!(plugin = %removed.name, version = %removed.version, "plugin uninstalled");
        Some(removed)
    }

    /// Every installed plugin: current and previous version, breaker state, last refusal.
    pub fn list(&self) -> Vec<PluginStatus> {
        self.inner.registry.list()
    }

    /// Drops the retained builds (older than the rollback target, kept for pinned
    /// follow-up calls) whose `(name, digest)` is not in `in_use` and that have been retained
    /// for [`RuntimeOptions::retain_at_least`], and returns them.
    pub fn release_unreferenced(
        &self,
        in_use: &std::collections::HashSet<(String, String)>,
    ) -> Vec<VersionInfo> {
        let released = self
            .inner
            .registry
            .release_unreferenced(in_use, self.inner.retain_at_least);
        for v in &released {
            tracing::info!(plugin = %v.name, version = %v.version, digest = %v.digest,
                           "retained plugin build unloaded: no open order refers to it");
        }
        released
    }

    /// Whether any plugin keeps a build loaded beyond its rollback target.
    pub fn retains_any(&self) -> bool {
        self.inner.registry.retains_any()
    }

    /// Status of one plugin.
    pub fn status_of(&self, name: &str) -> Option<PluginStatus> {
        self.list().into_iter().find(|s| s.current.name == name)
    }

    /// The world plugin `name` implements, if it is installed (cheap: no copy of its status).
    pub fn kind_of(&self, name: &str) -> Option<crate::manifest::PluginKind> {
        self.inner.registry.slot(name).map(|s| s.current().kind())
    }

    /// How the current build of plugin `name` authenticates inbound webhooks (`[webhook]`,
    /// contract 0.2); `None` when it is not installed or takes none.
    pub fn webhook_of(&self, name: &str) -> Option<crate::manifest::WebhookSpec> {
        self.inner
            .registry
            .slot(name)
            .and_then(|s| s.current().manifest.webhook.clone())
    }

    /// Call metrics per plugin name.
    pub fn metrics(&self) -> Vec<(String, MetricsSnapshot)> {
        self.inner.registry.metrics()
    }

    /// A client for the payment plugin `name` (checked at each call, so it may be installed
    /// later).
    pub fn payment(&self, name: &str) -> PaymentPlugin {
        PaymentPlugin {
            rt: self.inner.clone(),
            name: name.into(),
            kv: KvMode::Direct,
            route: crate::registry::Route::Current,
        }
    }

    /// A client for the inventory plugin `name`.
    pub fn inventory(&self, name: &str) -> InventoryPlugin {
        InventoryPlugin {
            rt: self.inner.clone(),
            name: name.into(),
            kv: KvMode::Direct,
            route: crate::registry::Route::Current,
        }
    }

    /// A client for the notification formatter `name`.
    pub fn notification(&self, name: &str) -> NotificationFormatter {
        NotificationFormatter {
            rt: self.inner.clone(),
            name: name.into(),
        }
    }
}

/// `*.toml` files of `dir`, sorted: the manifests a plugins directory holds.
pub fn manifests_in(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
        .collect();
    paths.sort();
    Ok(paths)
}

/// Runs CPU-heavy loading off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, LoadError> + Send + 'static,
) -> Result<T, LoadError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) => Err(LoadError::Compile {
            plugin: "<unknown>".into(),
            reason: format!("loader task failed: {e}"),
        }),
    }
}
