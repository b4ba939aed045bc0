//! [`PluginCatalog`] over the Wasm plugin runtime: what the admin API lists, installs and
//! rolls back. Installs and rollbacks change this process's runtime.

use async_trait::async_trait;
use oms_application::AppError;
use oms_application::FieldViolation;
use oms_application::ports::{PluginBuild, PluginCatalog, PluginInfo};
use oms_domain::Timestamp;
use oms_plugin_runtime::breaker::BreakerState;
use oms_plugin_runtime::{LoadError, PluginKind, PluginRuntime, PluginStatus, VersionInfo};

/// The plugin runtime as the admin API's catalog.
#[derive(Clone)]
pub struct RuntimeCatalog {
    runtime: PluginRuntime,
}

impl RuntimeCatalog {
    pub fn new(runtime: PluginRuntime) -> Self {
        Self { runtime }
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

    async fn install(&self, manifest: &str, wasm: Vec<u8>) -> Result<PluginInfo, AppError> {
        let installed = self
            .runtime
            .install_bytes(manifest, wasm)
            .await
            .map_err(|e| refused(&e))?;
        self.info(&installed.name)
    }

    fn has_payment_provider(&self, name: &str) -> bool {
        self.runtime.kind_of(name) == Some(PluginKind::PaymentProvider)
    }

    fn rollback(&self, name: &str) -> Result<PluginInfo, AppError> {
        match self.runtime.rollback(name) {
            Ok(_) => self.info(name),
            Err(LoadError::NotInstalled { .. }) => {
                Err(AppError::NotFound(format!("plugin {name:?}")))
            }
            Err(e @ LoadError::NothingToRollBack { .. }) => {
                Err(AppError::IllegalTransition(e.to_string()))
            }
            Err(e) => Err(AppError::Internal(e.to_string())),
        }
    }
}
