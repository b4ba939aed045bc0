//! Starts the plugin runtime for `serve`: the engine with its on-disk artifact cache, the
//! `kv` capability backed by the host database, and the plugins directory, scanned once here
//! and then watched ([`watch`]) with every change published to the shared release set.

use std::time::Duration;

use anyhow::Context;
use oms_application::ports::ReleaseAction;
use oms_persistence::Database;
use oms_plugin_runtime::engine::EngineOptions;
use oms_plugin_runtime::{DirWatcher, PluginRuntime, RuntimeOptions};
use tokio::sync::watch;
use tracing::warn;

use crate::adapters::RuntimeCatalog;
use crate::config::PluginsConfig;

/// The running runtime and, when watching is on, the directory watcher for [`watch`].
pub struct Plugins {
    pub runtime: PluginRuntime,
    pub watcher: Option<DirWatcher>,
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

/// Builds the runtime and installs every plugin in the directory. Refused plugins are logged
/// with their reason and do not stop the host: one bad plugin never takes it down.
pub async fn start(config: &PluginsConfig, db: &Database) -> anyhow::Result<Plugins> {
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
    let mut watcher = DirWatcher::new(runtime.clone(), &config.dir);
    if !config.dir.is_dir() {
        warn!(dir = %config.dir.display(), "plugins directory missing; build it with scripts/build-plugins");
    }
    // The runtime logs every installed version itself; refusals are reported here.
    let report = watcher.scan().await;
    for (path, error) in &report.refused {
        warn!(manifest = %path.display(), %error, "plugin refused");
    }
    let watcher = (config.watch_interval_ms > 0).then_some(watcher);
    Ok(Plugins { runtime, watcher })
}
