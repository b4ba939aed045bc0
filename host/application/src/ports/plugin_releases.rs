//! The plugin release port: the plugin set every host process on a database serves
//! (tables `plugin_releases`, `plugin_artifacts`, `plugin_audit`). An upload or a rollback
//! through one process is written here; every process polls it and follows.

use async_trait::async_trait;
use oms_domain::Timestamp;

use super::StoreError;

/// What a name should serve now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginRelease {
    pub name: String,
    /// The manifest text, as uploaded or read from the plugins directory.
    pub manifest: String,
    /// Lower-case hex SHA-256 of the component ([`PluginReleaseStore::artifact`]).
    pub sha256: String,
    pub version: String,
    /// Bumped by every change of this name's release: what the polling processes compare.
    pub generation: i64,
    /// Turned off by an operator: every process uninstalls it, and no plugins directory
    /// seeds it back.
    pub disabled: bool,
    /// A build serving a share of new sagas beside this one, until promoted or aborted.
    pub canary: Option<CanaryRelease>,
}

/// A build as stored: what a process needs to load it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredBuild {
    pub manifest: String,
    pub wasm: Vec<u8>,
}

/// The canary of a release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CanaryRelease {
    pub manifest: String,
    pub sha256: String,
    pub version: String,
    /// Percent of new sagas it serves, 1..=99.
    pub percent: u8,
}

/// A canary to start: a new build of a released plugin, for `percent` of new sagas.
#[derive(Debug, Clone, Copy)]
pub struct NewCanary<'a> {
    pub name: &'a str,
    pub manifest: &'a str,
    pub sha256: &'a str,
    pub version: &'a str,
    pub wasm: &'a [u8],
    pub percent: u8,
    pub actor: &'a str,
}

/// How a canary ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CanaryEnd {
    /// It becomes the release; the release becomes the rollback target.
    Promote,
    /// It stops serving new sagas; the release goes on unchanged.
    Abort,
}

/// Why a release changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReleaseAction {
    /// From a plugins directory, for a name that had no release yet.
    Seed,
    /// Through the admin API.
    Upload,
}

impl ReleaseAction {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Seed => "seed",
            Self::Upload => "upload",
        }
    }
}

/// A release to make.
#[derive(Debug, Clone, Copy)]
pub struct NewRelease<'a> {
    pub name: &'a str,
    pub manifest: &'a str,
    pub sha256: &'a str,
    pub version: &'a str,
    pub wasm: &'a [u8],
    pub action: ReleaseAction,
    /// Who made the change (`admin@127.0.0.1:51234`, `seed:<host process>`).
    pub actor: &'a str,
}

/// One change of the plugin set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    pub at: Timestamp,
    pub actor: String,
    /// `seed`, `upload`, `rollback`, `disable`, `enable`, `canary`, `promote` or `abort`.
    pub action: String,
    pub plugin: String,
    pub from_version: Option<String>,
    pub from_sha256: Option<String>,
    pub to_version: String,
    pub to_sha256: String,
}

/// The shared plugin set, its artifacts and its audit trail.
#[async_trait]
pub trait PluginReleaseStore: Send + Sync {
    /// Makes `new` the release of its name (enabled, no canary), storing the component, and
    /// audits it; the release it replaces becomes the rollback target. A
    /// [`ReleaseAction::Seed`] only creates a release for a name that has none (`Ok(None)`
    /// and nothing written when it has one). An [`ReleaseAction::Upload`] of the build that
    /// serves already (same component and manifest, enabled, no canary) is `Ok(None)` with
    /// nothing written: the rollback target stays, and no change is audited or published.
    async fn release(
        &self,
        new: NewRelease<'_>,
        now: Timestamp,
    ) -> Result<Option<PluginRelease>, StoreError>;

    /// Swaps `name`'s release with its rollback target and audits it. `NotFound` when the
    /// name has no release, `Ok(None)` when it has nothing to roll back to.
    async fn rollback(
        &self,
        name: &str,
        actor: &str,
        now: Timestamp,
    ) -> Result<Option<PluginRelease>, StoreError>;

    /// Turns `name` off (`disabled`) or on again, and audits it; an upload or a rollback
    /// turns it on too. `NotFound` when the name has no release, `Ok(None)` when it is
    /// already in that state (nothing written).
    async fn set_disabled(
        &self,
        name: &str,
        disabled: bool,
        actor: &str,
        now: Timestamp,
    ) -> Result<Option<PluginRelease>, StoreError>;

    /// Starts `new` as the canary of its plugin's release (replacing a running canary), stores
    /// its component and audits it (`canary`, from the release's build to the canary's).
    /// `NotFound` when the name has no release, `Ok(None)` when the plugin is disabled.
    async fn start_canary(
        &self,
        new: NewCanary<'_>,
        now: Timestamp,
    ) -> Result<Option<PluginRelease>, StoreError>;

    /// Ends the canary of `name` as `end` says, and audits it (`promote`: from the release's
    /// build to the canary's; `abort`: from the canary's back to the release's); with `only`,
    /// only while the canary is that component (a decision about one build must not end
    /// another that replaced it meanwhile). `NotFound` when the name has no release,
    /// `Ok(None)` when no canary (or not that one) runs.
    async fn end_canary(
        &self,
        name: &str,
        end: CanaryEnd,
        only: Option<&str>,
        actor: &str,
        now: Timestamp,
    ) -> Result<Option<PluginRelease>, StoreError>;

    /// Every release, by name.
    async fn releases(&self) -> Result<Vec<PluginRelease>, StoreError>;

    /// A stored component by digest.
    async fn artifact(&self, sha256: &str) -> Result<Option<Vec<u8>>, StoreError>;

    /// A build `plugin` was ever released or canaried with: the manifest it was last
    /// released with and the component. `Ok(None)` when the plugin never had that build.
    async fn build(&self, plugin: &str, sha256: &str) -> Result<Option<StoredBuild>, StoreError>;

    /// The latest changes, newest first; only `plugin`'s when given.
    async fn audit(&self, plugin: Option<&str>, limit: u32) -> Result<Vec<AuditEntry>, StoreError>;
}
