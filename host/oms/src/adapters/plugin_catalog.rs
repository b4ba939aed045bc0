//! [`PluginCatalog`] over the Wasm plugin runtime and the release set shared by every host
//! process on the database ([`PluginReleaseStore`]).
//!
//! An upload is checked and installed here first (a refusal changes nothing anywhere), then
//! written as the plugin's release; a rollback is written first, then applied here. Every
//! process follows the release set ([`RuntimeCatalog::follow`]): when a name's release
//! changes (its generation moves), it installs that build, from the stored artifact unless
//! it already holds it. A process starting up serves the release set, not its plugins
//! directory, for every name that has a release; the directory seeds the names that have
//! none.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use oms_application::ports::{
    AuditEntry, DisabledPlugin, NewRelease, PluginBuild, PluginCatalog, PluginInfo, PluginRelease,
    PluginReleaseStore, ReleaseAction, StoreError,
};
use oms_application::{AppError, FieldViolation};
use oms_domain::Timestamp;
use oms_plugin_runtime::breaker::BreakerState;
use oms_plugin_runtime::{
    LoadError, Manifest, PluginKind, PluginRuntime, PluginStatus, VersionInfo, manifest_digest,
    manifests_in,
};
use tokio::sync::watch;
use tracing::{info, warn};

/// The plugin runtime as the admin API's catalog, following the shared release set.
#[derive(Clone)]
pub struct RuntimeCatalog {
    runtime: PluginRuntime,
    releases: Arc<dyn PluginReleaseStore>,
}

impl RuntimeCatalog {
    pub fn new(runtime: PluginRuntime, releases: Arc<dyn PluginReleaseStore>) -> Self {
        Self { runtime, releases }
    }

    /// Publishes what the plugins directory holds and this process installed from it, for
    /// the plugins named in `only` (all when `None`): as a [`ReleaseAction::Seed`] (only for
    /// names without a release: the startup scan) or an [`ReleaseAction::Upload`] (a file
    /// changed while running). `actor` names this process in the audit trail. A plugin the
    /// runtime refused publishes nothing.
    pub async fn publish_dir(
        &self,
        dir: &Path,
        only: Option<&[String]>,
        action: ReleaseAction,
        actor: &str,
    ) {
        let Ok(manifests) = manifests_in(dir) else {
            return;
        };
        for path in manifests {
            let (Ok(manifest), Ok(text)) =
                (Manifest::from_file(&path), std::fs::read_to_string(&path))
            else {
                continue;
            };
            if only.is_some_and(|names| !names.contains(&manifest.name)) {
                continue;
            }
            let installed = self.runtime.status_of(&manifest.name).is_some_and(|s| {
                s.current.digest == manifest.sha256
                    && s.current.manifest_sha256 == manifest_digest(&text)
            });
            let wasm = std::fs::read(manifest.wasm_path());
            let (true, Ok(wasm)) = (installed, wasm) else {
                continue;
            };
            let release = NewRelease {
                name: &manifest.name,
                manifest: &text,
                sha256: &manifest.sha256,
                version: &manifest.version,
                wasm: &wasm,
                action,
                actor,
            };
            match self.releases.release(release, Timestamp::now()).await {
                Ok(Some(_)) => info!(plugin = %manifest.name, action = action.as_str(),
                                     "plugin release published from the plugins directory"),
                Ok(None) => {}
                Err(e) => warn!(plugin = %manifest.name, error = %e,
                                "publishing the plugin release failed"),
            }
        }
    }

    /// One round of following the release set: installs each release whose generation is
    /// not in `applied` (all of them the first time, so that a starting process serves what
    /// the others serve) and records it there.
    pub async fn catch_up(&self, applied: &mut HashMap<String, i64>) {
        let releases = match self.releases.releases().await {
            Ok(releases) => releases,
            Err(e) => {
                warn!(error = %e, "reading the plugin releases failed");
                return;
            }
        };
        for r in releases {
            if applied.get(&r.name) == Some(&r.generation) {
                continue;
            }
            if r.disabled {
                // Turned off by an operator: served nowhere, whatever this process loaded.
                if self.runtime.uninstall(&r.name).is_some() {
                    info!(plugin = %r.name, "following the plugin release: disabled");
                }
                applied.insert(r.name, r.generation);
                continue;
            }
            match self.apply(&r).await {
                Ok(()) => {}
                // A build this process refuses (a capability it cannot grant) would be
                // refused again: retried at the next change, not every round.
                Err(e @ AppError::InvalidArgument(_)) => {
                    warn!(plugin = %r.name, version = %r.version, error = %e,
                          "this process refuses the plugin release; it keeps its current build");
                }
                // The database or the artifact could not be read: retried next round.
                Err(e) => {
                    warn!(plugin = %r.name, version = %r.version, error = %e,
                          "following the plugin release failed; retrying");
                    continue;
                }
            }
            applied.insert(r.name, r.generation);
        }
    }

    /// [`Self::catch_up`] every `interval` until shutdown.
    pub async fn follow(
        self,
        mut applied: HashMap<String, i64>,
        interval: Duration,
        mut shutdown: watch::Receiver<bool>,
    ) {
        while oms_application::shutdown::pause(interval, &mut shutdown).await {
            self.catch_up(&mut applied).await;
        }
    }

    /// Makes `release` what this process serves, unless it already does: from the rollback
    /// slot when that holds it (no compile), otherwise from the stored artifact.
    async fn apply(&self, release: &PluginRelease) -> Result<(), AppError> {
        let manifest_sha256 = manifest_digest(&release.manifest);
        let same =
            |v: &VersionInfo| v.digest == release.sha256 && v.manifest_sha256 == manifest_sha256;
        if let Some(status) = self.runtime.status_of(&release.name) {
            if same(&status.current) {
                return Ok(());
            }
            if status.previous.as_ref().is_some_and(same) {
                self.runtime
                    .rollback(&release.name)
                    .map_err(|e| AppError::Internal(e.to_string()))?;
                info!(plugin = %release.name, version = %release.version, "following the plugin release");
                return Ok(());
            }
        }
        let wasm = self
            .releases
            .artifact(&release.sha256)
            .await?
            .ok_or_else(|| {
                AppError::Internal(format!(
                    "no stored component with sha256 {}",
                    release.sha256
                ))
            })?;
        self.runtime
            .install_bytes(&release.manifest, wasm)
            .await
            .map_err(|e| refused(&e))?;
        info!(plugin = %release.name, version = %release.version, "following the plugin release");
        Ok(())
    }

    fn info(&self, name: &str) -> Result<PluginInfo, AppError> {
        let status = self
            .runtime
            .status_of(name)
            .ok_or_else(|| AppError::NotFound(format!("plugin {name:?}")))?;
        let metrics = self
            .runtime
            .metrics()
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, m)| m)
            .unwrap_or_default();
        Ok(plugin_info(status, &metrics))
    }
}

fn build(v: &VersionInfo) -> PluginBuild {
    let millis = v
        .loaded_at
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    PluginBuild {
        version: v.version.clone(),
        sha256: v.digest.clone(),
        contract: v.contract.clone(),
        loaded_at: Timestamp::from_unix_millis(millis),
    }
}

fn plugin_info(s: PluginStatus, m: &oms_plugin_runtime::metrics::MetricsSnapshot) -> PluginInfo {
    let c = &s.current;
    PluginInfo {
        name: c.name.clone(),
        kind: c.kind.world().to_owned(),
        current: build(c),
        previous: s.previous.as_ref().map(build),
        circuit: match s.breaker {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
        .to_owned(),
        calls: m.calls,
        errors: m
            .errors
            .iter()
            .map(|(k, v)| ((*k).to_owned(), *v))
            .collect(),
        latency_p50_us: m.latency_quantile_us(0.5),
        latency_p99_us: m.latency_quantile_us(0.99),
        max_memory_bytes: c.limits.memory_bytes,
        deadline_ms: u64::try_from(c.limits.deadline.as_millis()).unwrap_or(u64::MAX),
        capabilities: c.capabilities.clone(),
        last_error: s.last_error,
    }
}

fn disabled_plugin(r: PluginRelease) -> DisabledPlugin {
    DisabledPlugin {
        name: r.name,
        version: r.version,
        sha256: r.sha256,
    }
}

/// A refused install, worded for the operator and attributed to the part of the upload
/// that is wrong.
fn refused(e: &LoadError) -> AppError {
    let field = match e {
        LoadError::ManifestInvalid { .. } => "manifest",
        _ => "wasm",
    };
    AppError::InvalidArgument(vec![FieldViolation::new(field, e.to_string())])
}

#[async_trait]
impl PluginCatalog for RuntimeCatalog {
    fn list(&self) -> Vec<PluginInfo> {
        let metrics = self.runtime.metrics();
        self.runtime
            .list()
            .into_iter()
            .map(|s| {
                let m = metrics
                    .iter()
                    .find(|(n, _)| *n == s.current.name)
                    .map(|(_, m)| m.clone())
                    .unwrap_or_default();
                plugin_info(s, &m)
            })
            .collect()
    }

    async fn install(
        &self,
        manifest: &str,
        wasm: Vec<u8>,
        actor: &str,
    ) -> Result<PluginInfo, AppError> {
        let before = self.runtime.status_of(
            &Manifest::parse(manifest, Path::new("<uploaded manifest>"))
                .map_err(|e| refused(&e))?
                .name,
        );
        let installed = self
            .runtime
            .install_bytes(manifest, wasm.clone())
            .await
            .map_err(|e| refused(&e))?;
        let release = NewRelease {
            name: &installed.name,
            manifest,
            sha256: &installed.digest,
            version: &installed.version,
            wasm: &wasm,
            action: ReleaseAction::Upload,
            actor,
        };
        if let Err(e) = self.releases.release(release, Timestamp::now()).await {
            // Not shared, so not kept here either: the processes must not drift apart.
            let changed = before.is_none_or(|b| b.current != installed);
            if changed && let Err(undo) = self.runtime.rollback(&installed.name) {
                warn!(plugin = %installed.name, error = %undo, "undoing the local install failed");
            }
            return Err(e.into());
        }
        self.info(&installed.name)
    }

    fn has_payment_provider(&self, name: &str) -> bool {
        self.runtime.kind_of(name) == Some(PluginKind::PaymentProvider)
    }

    async fn rollback(&self, name: &str, actor: &str) -> Result<PluginInfo, AppError> {
        let restored = match self.releases.rollback(name, actor, Timestamp::now()).await {
            Ok(Some(release)) => release,
            Ok(None) => {
                return Err(AppError::IllegalTransition(format!(
                    "plugin {name}: no previous version to roll back to"
                )));
            }
            Err(StoreError::NotFound) => {
                return Err(AppError::NotFound(format!("plugin {name:?}")));
            }
            Err(e) => return Err(e.into()),
        };
        self.apply(&restored).await?;
        self.info(name)
    }

    async fn disable(&self, name: &str, actor: &str) -> Result<DisabledPlugin, AppError> {
        let changed = match self
            .releases
            .set_disabled(name, true, actor, Timestamp::now())
            .await
        {
            Ok(changed) => changed,
            Err(StoreError::NotFound) => {
                return Err(AppError::NotFound(format!("plugin {name:?}")));
            }
            Err(e) => return Err(e.into()),
        };
        self.runtime.uninstall(name);
        // The release the change returned; read the set only when it was off already.
        let release = match changed {
            Some(release) => release,
            None => self
                .releases
                .releases()
                .await?
                .into_iter()
                .find(|r| r.name == name && r.disabled)
                .ok_or_else(|| {
                    AppError::Unavailable(format!("plugin {name} was enabled meanwhile"))
                })?,
        };
        Ok(disabled_plugin(release))
    }

    async fn enable(&self, name: &str, actor: &str) -> Result<PluginInfo, AppError> {
        match self
            .releases
            .set_disabled(name, false, actor, Timestamp::now())
            .await
        {
            Ok(Some(release)) => self.apply(&release).await?,
            // Already on: it serves (or a follow round is about to install it).
            Ok(None) => {}
            Err(StoreError::NotFound) => {
                return Err(AppError::NotFound(format!("plugin {name:?}")));
            }
            Err(e) => return Err(e.into()),
        }
        self.info(name)
    }

    async fn disabled(&self) -> Result<Vec<DisabledPlugin>, AppError> {
        Ok(self
            .releases
            .releases()
            .await?
            .into_iter()
            .filter(|r| r.disabled)
            .map(disabled_plugin)
            .collect())
    }

    async fn history(&self, plugin: Option<&str>, limit: u32) -> Result<Vec<AuditEntry>, AppError> {
        Ok(self.releases.audit(plugin, limit).await?)
    }
}
