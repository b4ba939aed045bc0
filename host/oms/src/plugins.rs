//! Starts the plugin runtime for `serve`: the engine with its on-disk artifact cache, the
//! `kv` capability backed by the host database, and the plugins directory, loaded in the
//! background once gRPC serves ([`load`]) and then watched ([`watch`]) with every change
//! published to the shared release set.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use oms_application::ports::ReleaseAction;
use oms_persistence::Database;
use oms_plugin_runtime::engine::EngineOptions;
use oms_plugin_runtime::{DirWatcher, PluginRuntime, RuntimeOptions};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::adapters::RuntimeCatalog;
use crate::config::PluginsConfig;

/// The running runtime.
pub struct Plugins {
    pub runtime: PluginRuntime,
}

/// What a starting process serves, installed while gRPC already serves: every plugin in the
/// directory (compiled in parallel, each logged as it lands), the directory's names that
/// have no shared release published as theirs, then the shared release set over the
/// directory, then the older builds open orders are pinned to. Until it returns, orders
/// naming an expected plugin are accepted and their steps wait for it
/// ([`RuntimeCatalog::expect`]). Returns the release generations applied, for the follower.
pub async fn load(
    watcher: &mut DirWatcher,
    catalog: &RuntimeCatalog,
    config: &PluginsConfig,
    process: &str,
) -> HashMap<String, i64> {
    let started = Instant::now();
    let report = watcher.scan().await;
    for (path, error) in &report.refused {
        warn!(manifest = %path.display(), %error, "plugin refused");
    }
    catalog
        .publish_dir(
            &config.dir,
            None,
            ReleaseAction::Seed,
            &format!("seed:{process}"),
        )
        .await;
    let mut applied = HashMap::new();
    catalog
        .catch_up(
            &mut applied,
            &mut oms_application::outage::FailureRun::default(),
        )
        .await;
    catalog.restore_pinned_builds().await;
    let missing = catalog.loaded();
    if !missing.is_empty() {
        warn!(plugins = ?missing, "plugins expected at startup were not installed (see the \
               refusals above); orders naming them fail with PLUGIN_NOT_INSTALLED");
    }
    // Child-process tests and operators wait for this line: the host is fully ready.
    info!(
        installed = catalog.installed_count(),
        took_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        "oms plugins loaded"
    );
    applied
}

/// Rescans the plugins directory every `plugins.watch_interval_ms` until shutdown; what a
/// scan installs (a changed file) is published as the plugin's release, so every process
/// on the database follows it like an upload (`actor` names this process).
pub async fn watch(
    mut watcher: DirWatcher,
    catalog: RuntimeCatalog,
    config: PluginsConfig,
    actor: String,
    mut shutdown: watch::Receiver<bool>,
) {
    let every = Duration::from_millis(config.watch_interval_ms);
    while oms_application::shutdown::pause(every, &mut shutdown).await {
        let report = watcher.scan().await;
        for (path, error) in &report.refused {
            warn!(manifest = %path.display(), %error, "plugin refused");
        }
        for (path, name) in &report.removed {
            warn!(manifest = %path.display(), plugin = name.as_deref().unwrap_or("?"),
                  "plugin files removed from the plugins directory; the plugin keeps serving \
                   from the shared release set (omsctl plugins disable NAME stops it)");
        }
        if !report.installed.is_empty() {
            let names: Vec<String> = report.installed.into_iter().map(|v| v.name).collect();
            catalog
                .publish_dir(&config.dir, Some(&names), ReleaseAction::Upload, &actor)
                .await;
        }
    }
}

/// Builds the runtime and the directory's watcher, for [`load`]; nothing is compiled yet.
/// Refused plugins are logged with their reason and never stop the host: one bad plugin
/// never takes it down.
pub fn start(config: &PluginsConfig, db: &Database) -> anyhow::Result<(Plugins, DirWatcher)> {
    std::fs::create_dir_all(&config.cache_dir)
        .with_context(|| format!("creating plugin cache dir {}", config.cache_dir.display()))?;
    let options = RuntimeOptions {
        engine: EngineOptions {
            cache_dir: Some(config.cache_dir.clone()),
            cache_max_bytes: config.cache_max_mib.saturating_mul(1 << 20),
            ..EngineOptions::default()
        },
        ..RuntimeOptions::default()
    };
    let runtime =
        PluginRuntime::new(options, Some(db.plugin_kv())).context("starting the plugin runtime")?;
    let watcher = DirWatcher::new(runtime.clone(), &config.dir);
    if !config.dir.is_dir() {
        warn!(dir = %config.dir.display(), "plugins directory missing; build it with scripts/build-plugins");
    }
    Ok((Plugins { runtime }, watcher))
}
