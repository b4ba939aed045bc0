//! The plugin catalog port: what operators see of the installed plugins and how they change
//! them (the admin API). Implemented over the Wasm plugin runtime and the shared release set
//! ([`super::PluginReleaseStore`]) by the host binary: a change through one process reaches
//! every process on the database.

use std::collections::BTreeMap;

use async_trait::async_trait;
use oms_domain::Timestamp;

use super::AuditEntry;
use crate::error::AppError;

/// [`PluginInfo::kind`] of a payment provider.
pub const PAYMENT_WORLD: &str = "payment-provider";

/// One installed build of a plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginBuild {
    pub version: String,
    /// Lower-case hex SHA-256 of the component.
    pub sha256: String,
    /// The contract its manifest declares (`oms:plugins@0.1.0`).
    pub contract: String,
    pub loaded_at: Timestamp,
}

/// An installed plugin as an operator sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginInfo {
    pub name: String,
    /// The WIT world it implements (`payment-provider`...).
    pub kind: String,
    pub current: PluginBuild,
    /// What a rollback would restore.
    pub previous: Option<PluginBuild>,
    /// Older builds kept loaded for the follow-up calls pinned to them, oldest first.
    pub retained: Vec<PluginBuild>,
    /// `closed`, `open` or `half_open`.
    pub circuit: String,
    pub calls: u64,
    pub errors: BTreeMap<String, u64>,
    /// Upper bounds (µs) of the latency buckets holding the median and the 99th percentile.
    pub latency_p50_us: Option<u64>,
    pub latency_p99_us: Option<u64>,
    pub max_memory_bytes: u64,
    pub deadline_ms: u64,
    /// Capabilities its manifest grants (`kv`, `clock`, `http:<host:port>`).
    pub capabilities: Vec<String>,
    /// Why the last install of this name was refused, if it was.
    pub last_error: Option<String>,
    /// The build running as a canary beside the current one, with its own figures.
    pub canary: Option<CanaryInfo>,
}

/// A canary as an operator sees it: compare its figures with the current build's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CanaryInfo {
    pub build: PluginBuild,
    /// Percent of new sagas it serves.
    pub percent: u8,
    pub circuit: String,
    pub calls: u64,
    pub errors: BTreeMap<String, u64>,
    /// Calls that failed (sandbox faults, open circuit, `transient`), not refusals: what
    /// the automatic rollback watches.
    pub failures: u64,
    pub latency_p50_us: Option<u64>,
    pub latency_p99_us: Option<u64>,
}

/// A plugin an operator turned off: in the release set, installed nowhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DisabledPlugin {
    pub name: String,
    /// The build it would serve if enabled again.
    pub version: String,
    pub sha256: String,
}

/// The installed plugins, and installing or rolling one back. A refused install leaves the
/// serving version serving.
#[async_trait]
pub trait PluginCatalog: Send + Sync {
    /// Every installed plugin, by name.
    fn list(&self) -> Vec<PluginInfo>;

    /// Checks then installs the component `wasm` described by `manifest` (TOML) as the
    /// current version of its plugin, here and (through the release set) in every process.
    /// `InvalidArgument` (field `manifest` or `wasm`) names what is wrong when it is
    /// refused. `actor` is recorded in the audit trail.
    async fn install(
        &self,
        manifest: &str,
        wasm: Vec<u8>,
        actor: &str,
    ) -> Result<PluginInfo, AppError>;

    /// Whether a payment provider plugin named `name` is installed: checked on every
    /// `CreateOrder`, so it must be cheap.
    fn has_payment_provider(&self, name: &str) -> bool;

    /// Undoes the last rollout step of `name`, everywhere: ends its canary when one runs,
    /// otherwise makes the previous version current again. `NotFound` for an unknown
    /// plugin, `IllegalTransition` when there is nothing to roll back to.
    async fn rollback(&self, name: &str, actor: &str) -> Result<PluginInfo, AppError>;

    /// Checks the component `wasm` described by `manifest`, then runs it everywhere as the
    /// canary of its (installed) plugin for `percent` (1..=99) of new sagas, beside the
    /// current build. Refused like [`Self::install`]; `NotFound` when the plugin is not
    /// installed.
    async fn start_canary(
        &self,
        manifest: &str,
        wasm: Vec<u8>,
        percent: u8,
        actor: &str,
    ) -> Result<PluginInfo, AppError>;

    /// Makes the canary of `name` its current build everywhere (the current one becomes
    /// the rollback target). `IllegalTransition` when no canary runs.
    async fn promote(&self, name: &str, actor: &str) -> Result<PluginInfo, AppError>;

    /// Turns `name` off in every process: uninstalled, and no plugins directory brings it
    /// back. Already off is no error. `NotFound` for an unknown plugin.
    async fn disable(&self, name: &str, actor: &str) -> Result<DisabledPlugin, AppError>;

    /// Turns a disabled `name` on again in every process, with the build it had. Already on
    /// is no error. `NotFound` for an unknown plugin.
    async fn enable(&self, name: &str, actor: &str) -> Result<PluginInfo, AppError>;

    /// The plugins turned off, by name.
    async fn disabled(&self) -> Result<Vec<DisabledPlugin>, AppError>;

    /// The latest changes of the plugin set, newest first (only `plugin`'s when given).
    async fn history(&self, plugin: Option<&str>, limit: u32) -> Result<Vec<AuditEntry>, AppError>;
}
