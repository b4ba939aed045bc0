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
//!
//! A build that a new release displaces stays loaded while open orders refer to it: their
//! follow-up calls are pinned to the build that made their payment or reservation
//! (`PaymentGateway`'s `pinned`). The follower unloads it once no open order does. A
//! process that starts later loads those builds from the database
//! ([`RuntimeCatalog::restore_pinned_builds`]).
//!
//! A canary is part of the release too: every process serves it for the same share of new
//! sagas. Each process watches the canaries it serves ([`CanaryGuard`]) and aborts one,
//! everywhere, when its failure rate crosses the configured bound.

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use oms_application::outage::FailureRun;
use oms_application::ports::{
    AuditEntry, CanaryEnd, CanaryInfo, DisabledPlugin, NewCanary, NewRelease, PluginBuild,
    PluginCatalog, PluginInfo, PluginRelease, PluginReleaseStore, ReleaseAction, SagaStore,
    StoreError,
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
    /// Which builds open orders refer to, so that retained builds are unloaded in time.
    sagas: Arc<dyn SagaStore>,
    guard: CanaryGuard,
    /// The plugins a starting process expects to serve and has not installed yet, with
    /// their kinds ([`Self::expect`]): orders naming one are accepted meanwhile.
    loading: Arc<std::sync::RwLock<HashMap<String, PluginKind>>>,
}

/// When a canary is aborted without an operator (`plugins.canary`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CanaryGuard {
    /// Above this share of failed calls in the window, the canary ends.
    pub max_failure_rate: f64,
    pub window: Duration,
    /// Fewer calls than this in the window decide nothing.
    pub min_calls: u64,
}

/// A canary's call and failure counts as the follower saw them, oldest first, by plugin,
/// component and load time (a canary started again is another run whose counts start at
/// zero).
type Samples = HashMap<(String, String, std::time::SystemTime), VecDeque<(Instant, u64, u64)>>;

impl CanaryGuard {
    /// Adds this round's counts of each canary to `samples` and returns the canaries whose
    /// failure rate over the window crossed the bound, with what was seen:
    /// `(name, component digest, failures, calls)`.
    fn tripped(
        &self,
        runtime: &PluginRuntime,
        samples: &mut Samples,
    ) -> Vec<(String, String, u64, u64)> {
        let now = Instant::now();
        let mut seen = std::collections::HashSet::new();
        let mut tripped = Vec::new();
        for status in runtime.list() {
            let Some(canary) = status.canary else {
                continue;
            };
            let key = (
                status.current.name.clone(),
                canary.build.digest.clone(),
                canary.build.loaded_at,
            );
            seen.insert(key.clone());
            let window = samples.entry(key).or_insert_with(|| {
                // First seen now: its counts so far are all since it started.
                VecDeque::from([(now, 0, 0)])
            });
            window.push_back((now, canary.metrics.calls, canary.metrics.failures()));
            // Keep one sample at or before the window's start as the baseline.
            while window.len() > 2 && now.duration_since(window[1].0) >= self.window {
                window.pop_front();
            }
            let (Some(first), Some(last)) = (window.front(), window.back()) else {
                continue;
            };
            let calls = last.1.saturating_sub(first.1);
            let failures = last.2.saturating_sub(first.2);
            #[allow(clippy::cast_precision_loss)] // call counts are far below 2^52
            let rate = failures as f64 / calls.max(1) as f64;
            if calls >= self.min_calls && rate > self.max_failure_rate {
                tripped.push((status.current.name, canary.build.digest, failures, calls));
            }
        }
        samples.retain(|key, _| seen.contains(key));
        tripped
    }
}

/// How often the follower asks which retained builds open orders still refer to (only while
/// some are loaded): the query reads every open order's saga steps, too much for every round.
const RETAINED_SWEEP_EVERY: Duration = Duration::from_secs(60);

impl RuntimeCatalog {
    /// `guard` decides when a canary is aborted automatically (its values come from
    /// `plugins.canary`, which holds the defaults).
    pub fn new(
        runtime: PluginRuntime,
        releases: Arc<dyn PluginReleaseStore>,
        sagas: Arc<dyn SagaStore>,
        guard: CanaryGuard,
    ) -> Self {
        Self {
            runtime,
            releases,
            sagas,
            guard,
            loading: Arc::default(),
        }
    }

    /// Records what this starting process will serve once [`crate::plugins::load`] has
    /// compiled it (parsing manifests only, no compilation): the shared release set's
    /// enabled plugins, and the plugins directory's names that set does not have. Until
    /// [`Self::loaded`], a `CreateOrder` naming one of these payment providers is accepted
    /// and its step waits for the plugin (a missing plugin is a transient failure, retried
    /// within the step's deadline). Returns how many plugins are expected.
    pub async fn expect(&self, dir: &Path) -> usize {
        let mut expected = HashMap::new();
        for path in manifests_in(dir).unwrap_or_default() {
            if let Ok(manifest) = Manifest::from_file(&path) {
                expected.entry(manifest.name).or_insert(manifest.kind);
            }
        }
        match self.releases.releases().await {
            Ok(releases) => {
                for r in releases {
                    if r.disabled {
                        expected.remove(&r.name);
                    } else if let Ok(m) = Manifest::parse(&r.manifest, Path::new("<release>")) {
                        expected.insert(r.name, m.kind);
                    }
                }
            }
            // The loader reads the set again and reports; the directory's names stand.
            Err(e) => warn!(error = %e, "reading the plugin releases failed"),
        }
        let count = expected.len();
        *self.loading.write().unwrap_or_else(|e| e.into_inner()) = expected;
        count
    }

    /// Ends the startup load: from now on only installed plugins count. Returns the
    /// expected names that did not get installed, sorted.
    pub fn loaded(&self) -> Vec<String> {
        let missing = self.still_loading();
        self.loading
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        missing
    }

    /// The expected plugins not installed yet while the startup load runs, sorted.
    pub fn still_loading(&self) -> Vec<String> {
        let loading = self.loading.read().unwrap_or_else(|e| e.into_inner());
        let mut names: Vec<String> = loading
            .keys()
            .filter(|name| self.runtime.kind_of(name).is_none())
            .cloned()
            .collect();
        names.sort();
        names
    }

    /// How many plugins this process serves.
    pub fn installed_count(&self) -> usize {
        self.runtime.list().len()
    }

    /// Aborts, everywhere, each canary this process saw fail too often. `actor` names this
    /// process in the audit trail.
    async fn guard_canaries(&self, samples: &mut Samples, actor: &str) {
        for (name, digest, failures, calls) in self.guard.tripped(&self.runtime, samples) {
            warn!(plugin = %name, failures, calls, window_secs = self.guard.window.as_secs(),
                  max_failure_rate = self.guard.max_failure_rate,
                  "plugin canary failing: rolling it back");
            metrics::counter!("oms_plugin_canary_aborts_total", "plugin" => name.clone())
                .increment(1);
            match self
                .releases
                .end_canary(
                    &name,
                    CanaryEnd::Abort,
                    Some(&digest),
                    actor,
                    Timestamp::now(),
                )
                .await
            {
                Ok(Some(release)) => {
                    if let Err(e) = self.apply(&release).await {
                        warn!(plugin = %name, error = %e, "applying the canary's rollback failed");
                    }
                }
                // Ended meanwhile by someone else: the next round follows that.
                Ok(None) | Err(StoreError::NotFound) => {}
                Err(e) => warn!(plugin = %name, error = %e, "rolling the canary back failed"),
            }
        }
    }

    /// Unloads the retained builds no open order refers to; keeps them all when the
    /// database cannot say (a pinned call must not lose its build to an outage).
    pub async fn release_unreferenced(&self) {
        if !self.runtime.retains_any() {
            return;
        }
        match self.sagas.plugin_builds_in_use().await {
            Ok(in_use) => {
                self.runtime
                    .release_unreferenced(&in_use.into_iter().collect());
            }
            Err(e) => warn!(error = %e, "reading the plugin builds open orders use failed"),
        }
    }

    /// Loads the builds that open orders are pinned to and this process does not hold (it
    /// started after the swaps that displaced them) from the stored builds, so that their
    /// follow-up calls run on the build that made their holds; they are unloaded like any
    /// retained build once no open order refers to them. A build the database does not hold
    /// (stored before migration 0013) or that this process refuses is named in the log and
    /// left out: its calls run on the current build.
    pub async fn restore_pinned_builds(&self) {
        let in_use = match self.sagas.plugin_builds_in_use().await {
            Ok(in_use) => in_use,
            Err(e) => {
                warn!(error = %e, "reading the plugin builds open orders use failed");
                return;
            }
        };
        for (name, sha256) in in_use {
            let Some(status) = self.runtime.status_of(&name) else {
                continue;
            };
            let loaded = std::iter::once(&status.current)
                .chain(status.previous.as_ref())
                .chain(status.canary.as_ref().map(|c| &c.build))
                .chain(&status.retained)
                .any(|b| b.digest == sha256);
            if loaded {
                continue;
            }
            match self.releases.build(&name, &sha256).await {
                Ok(Some(build)) => {
                    if let Err(e) = self.runtime.retain_bytes(&build.manifest, build.wasm).await {
                        warn!(plugin = %name, sha256 = %sha256, error = %e,
                              "an older build open orders are pinned to was refused; \
                               their calls run on the current build");
                    }
                }
                Ok(None) => warn!(plugin = %name, sha256 = %sha256,
                                  "open orders are pinned to a build the database does not \
                                   hold; their calls run on the current build"),
                Err(e) => warn!(plugin = %name, sha256 = %sha256, error = %e,
                                "reading an older build open orders are pinned to failed"),
            }
        }
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
        // At startup the shared set wins over the directory; a file that differs from it
        // (changed while no process watched the directory) is not served, and says so.
        let served: HashMap<String, PluginRelease> = match action {
            ReleaseAction::Seed => self
                .releases
                .releases()
                .await
                .map(|all| all.into_iter().map(|r| (r.name.clone(), r)).collect())
                .unwrap_or_default(),
            _ => HashMap::new(),
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
                Ok(None) => {
                    if let Some(set) = served
                        .get(&manifest.name)
                        .filter(|r| r.sha256 != manifest.sha256 || r.manifest != text)
                    {
                        warn!(plugin = %manifest.name, file = %path.display(),
                              file_version = %manifest.version, served_version = %set.version,
                              "the plugins directory holds another build than the shared \
                               release set; this process serves the shared one (publish the \
                               file with `omsctl plugins swap`, or rewrite it while a host \
                               watches the directory)");
                    }
                }
                Err(e) => warn!(plugin = %manifest.name, error = %e,
                                "publishing the plugin release failed"),
            }
        }
    }

    /// One round of following the release set: installs each release whose generation is
    /// not in `applied` (all of them the first time, so that a starting process serves what
    /// the others serve) and records it there. A failure to read the set is logged as
    /// `failures` decides: once per run of failures while the database is away.
    pub async fn catch_up(&self, applied: &mut HashMap<String, i64>, failures: &mut FailureRun) {
        let releases = match self.releases.releases().await {
            Ok(releases) => {
                oms_application::log_recovery!(failures, "reading the plugin releases works again");
                releases
            }
            Err(e) => {
                oms_application::log_failure!(
                    failures,
                    e,
                    "reading the plugin releases failed",
                    "reading the plugin releases still failing"
                );
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

    /// [`Self::catch_up`] every `interval` until shutdown, watching the canaries this
    /// process serves (`actor` names it when it aborts one) and unloading retained builds
    /// no open order needs.
    pub async fn follow(
        self,
        mut applied: HashMap<String, i64>,
        interval: Duration,
        actor: String,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut swept = Instant::now();
        let mut samples = Samples::new();
        let mut read_failures = FailureRun::default();
        while oms_application::shutdown::pause(interval, &mut shutdown).await {
            self.catch_up(&mut applied, &mut read_failures).await;
            self.guard_canaries(&mut samples, &actor).await;
            if swept.elapsed() >= RETAINED_SWEEP_EVERY {
                self.release_unreferenced().await;
                swept = Instant::now();
            }
        }
    }

    /// Makes `release` (its build and its canary) what this process serves.
    async fn apply(&self, release: &PluginRelease) -> Result<(), AppError> {
        self.apply_build(release).await?;
        self.apply_canary(release).await
    }

    /// Makes the canary of `release` the one this process runs, or ends the one it runs.
    async fn apply_canary(&self, release: &PluginRelease) -> Result<(), AppError> {
        let running = self.runtime.status_of(&release.name).and_then(|s| s.canary);
        let Some(canary) = &release.canary else {
            if running.is_some() && self.runtime.abort_canary(&release.name).is_some() {
                info!(plugin = %release.name, "following the plugin release: canary ended");
            }
            return Ok(());
        };
        let manifest_sha256 = manifest_digest(&canary.manifest);
        if running.is_some_and(|r| {
            r.build.digest == canary.sha256
                && r.build.manifest_sha256 == manifest_sha256
                && r.percent == canary.percent
        }) {
            return Ok(());
        }
        let wasm = self.stored(&canary.sha256).await?;
        if let Err(e) = self
            .runtime
            .start_canary_bytes(&canary.manifest, wasm, canary.percent)
            .await
        {
            // Not the canary the release names: none rather than an older one.
            self.runtime.abort_canary(&release.name);
            return Err(refused(&e));
        }
        info!(plugin = %release.name, version = %canary.version, percent = canary.percent,
              "following the plugin release: canary");
        Ok(())
    }

    /// A stored component by digest.
    async fn stored(&self, sha256: &str) -> Result<Vec<u8>, AppError> {
        self.releases
            .artifact(sha256)
            .await?
            .ok_or_else(|| AppError::Internal(format!("no stored component with sha256 {sha256}")))
    }

    /// Makes the build of `release` current here, unless it already is: from the canary or
    /// the rollback slot when one holds it (no compile), otherwise from the stored artifact.
    async fn apply_build(&self, release: &PluginRelease) -> Result<(), AppError> {
        let manifest_sha256 = manifest_digest(&release.manifest);
        let same =
            |v: &VersionInfo| v.digest == release.sha256 && v.manifest_sha256 == manifest_sha256;
        if let Some(status) = self.runtime.status_of(&release.name) {
            if same(&status.current) {
                return Ok(());
            }
            if status.canary.as_ref().is_some_and(|c| same(&c.build)) {
                self.runtime
                    .promote_canary(&release.name)
                    .map_err(|e| AppError::Internal(e.to_string()))?;
                info!(plugin = %release.name, version = %release.version,
                      "following the plugin release: canary promoted");
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
        let wasm = self.stored(&release.sha256).await?;
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
        retained: s.retained.iter().map(build).collect(),
        circuit: circuit(s.breaker),
        calls: m.calls,
        errors: errors(m),
        latency_p50_us: m.latency_quantile_us(0.5),
        latency_p99_us: m.latency_quantile_us(0.99),
        max_memory_bytes: c.limits.memory_bytes,
        deadline_ms: u64::try_from(c.limits.deadline.as_millis()).unwrap_or(u64::MAX),
        capabilities: c.capabilities.clone(),
        last_error: s.last_error,
        canary: s.canary.map(|c| CanaryInfo {
            build: build(&c.build),
            percent: c.percent,
            circuit: circuit(c.breaker),
            calls: c.metrics.calls,
            errors: errors(&c.metrics),
            failures: c.metrics.failures(),
            latency_p50_us: c.metrics.latency_quantile_us(0.5),
            latency_p99_us: c.metrics.latency_quantile_us(0.99),
        }),
    }
}

fn circuit(state: BreakerState) -> String {
    match state {
        BreakerState::Closed => "closed",
        BreakerState::Open => "open",
        BreakerState::HalfOpen => "half_open",
    }
    .to_owned()
}

fn errors(
    m: &oms_plugin_runtime::metrics::MetricsSnapshot,
) -> std::collections::BTreeMap<String, u64> {
    m.errors
        .iter()
        .map(|(k, v)| ((*k).to_owned(), *v))
        .collect()
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
        match self.releases.release(release, Timestamp::now()).await {
            // An upload ends a canary: here at once, elsewhere at the next round.
            Ok(Some(release)) => self.apply_canary(&release).await?,
            Ok(None) => {}
            Err(e) => {
                // Not shared, so not kept here either: the processes must not drift apart.
                let changed = before.is_none_or(|b| b.current != installed);
                if changed && let Err(undo) = self.runtime.rollback(&installed.name) {
                    warn!(plugin = %installed.name, error = %undo, "undoing the local install failed");
                }
                return Err(e.into());
            }
        }
        self.info(&installed.name)
    }

    fn has_payment_provider(&self, name: &str) -> bool {
        let payment = Some(PluginKind::PaymentProvider);
        self.runtime.kind_of(name) == payment
            || self
                .loading
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .get(name)
                .copied()
                == payment
    }

    async fn rollback(&self, name: &str, actor: &str) -> Result<PluginInfo, AppError> {
        // A running canary is the last rollout step: rolling back ends it.
        match self
            .releases
            .end_canary(name, CanaryEnd::Abort, None, actor, Timestamp::now())
            .await
        {
            Ok(Some(release)) => {
                self.apply(&release).await?;
                return self.info(name);
            }
            Ok(None) => {}
            Err(StoreError::NotFound) => {
                return Err(AppError::NotFound(format!("plugin {name:?}")));
            }
            Err(e) => return Err(e.into()),
        }
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

    async fn start_canary(
        &self,
        manifest: &str,
        wasm: Vec<u8>,
        percent: u8,
        actor: &str,
    ) -> Result<PluginInfo, AppError> {
        let name = Manifest::parse(manifest, Path::new("<uploaded manifest>"))
            .map_err(|e| refused(&e))?
            .name;
        // Checked and started here first: a refused build changes nothing anywhere.
        let started = match self
            .runtime
            .start_canary_bytes(manifest, wasm.clone(), percent)
            .await
        {
            Ok(started) => started,
            // Disabling uninstalls: a disabled plugin is in the release set, not here.
            Err(LoadError::NotInstalled { .. }) => {
                let disabled = self.disabled().await?.iter().any(|d| d.name == name);
                return Err(if disabled {
                    AppError::IllegalTransition(format!(
                        "plugin {name} is disabled; enable it before a canary"
                    ))
                } else {
                    AppError::NotFound(format!("plugin {name:?}"))
                });
            }
            Err(e) => return Err(refused(&e)),
        };
        let canary = NewCanary {
            name: &name,
            manifest,
            sha256: &started.digest,
            version: &started.version,
            wasm: &wasm,
            percent,
            actor,
        };
        let outcome = self.releases.start_canary(canary, Timestamp::now()).await;
        let release = match outcome {
            Ok(Some(release)) => release,
            // Not shared, so not kept here either.
            Ok(None) => {
                self.runtime.abort_canary(&name);
                return Err(AppError::IllegalTransition(format!(
                    "plugin {name} is disabled; enable it before a canary"
                )));
            }
            Err(e) => {
                self.runtime.abort_canary(&name);
                return Err(match e {
                    StoreError::NotFound => AppError::NotFound(format!("plugin {name:?}")),
                    e => e.into(),
                });
            }
        };
        self.apply(&release).await?;
        self.info(&name)
    }

    async fn promote(&self, name: &str, actor: &str) -> Result<PluginInfo, AppError> {
        match self
            .releases
            .end_canary(name, CanaryEnd::Promote, None, actor, Timestamp::now())
            .await
        {
            Ok(Some(release)) => self.apply(&release).await?,
            Ok(None) => {
                return Err(AppError::IllegalTransition(format!(
                    "plugin {name}: no canary is running"
                )));
            }
            Err(StoreError::NotFound) => {
                return Err(AppError::NotFound(format!("plugin {name:?}")));
            }
            Err(e) => return Err(e.into()),
        }
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
