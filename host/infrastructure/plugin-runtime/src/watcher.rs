//! Hot swap from a watched directory: poll it, and install every manifest whose manifest or
//! component changed since the last scan. Polling (not inotify) keeps it dependency-free and
//! works on every filesystem, including the network and container mounts plugins are often
//! delivered on; a scan is a `stat` per file.
//!
//! Half-copied files are harmless: a component that does not match its manifest's digest is
//! refused (the current version keeps serving) and retried when either file changes again.
//!
//! A name is declared by one manifest. The file that declared it first owns it (at the first
//! scan, the first in file-name order) for as long as it declares it; any other file
//! declaring it is refused, naming both files, and reconsidered when the owner goes (it used
//! to be installed over the first, silently, so the last file loaded won).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::error::LoadError;
use crate::manifest::Manifest;
use crate::registry::VersionInfo;
use crate::runtime::{PluginRuntime, manifests_in};

/// What changed on disk, as far as `stat` can tell.
type Fingerprint = (Option<(SystemTime, u64)>, Option<(SystemTime, u64)>);

/// What one scan did.
#[derive(Debug, Default)]
pub struct ScanReport {
    pub installed: Vec<VersionInfo>,
    pub refused: Vec<(PathBuf, LoadError)>,
    /// Manifests seen by an earlier scan and gone now, with the plugin each named. Nothing
    /// is uninstalled for it: the caller decides (the host keeps serving the release set).
    pub removed: Vec<(PathBuf, Option<String>)>,
}

/// Watches one directory; drive it with [`DirWatcher::scan`] or [`DirWatcher::spawn`].
pub struct DirWatcher {
    runtime: PluginRuntime,
    dir: PathBuf,
    /// Each manifest as the last scan left it.
    seen: HashMap<PathBuf, Seen>,
    /// The file that owns each plugin name.
    owners: HashMap<String, PathBuf>,
}

/// A manifest as the last scan saw it.
struct Seen {
    fingerprint: Fingerprint,
    /// The plugin name it declared.
    name: Option<String>,
    /// Refused because this other file owned its name.
    refused_for: Option<PathBuf>,
}

/// Stops the polling task when dropped.
pub struct WatchHandle(tokio::task::JoinHandle<()>);

impl Drop for WatchHandle {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn stat(path: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

impl DirWatcher {
    /// Watches `dir` for `runtime`. The first scan installs everything present.
    pub fn new(runtime: PluginRuntime, dir: impl Into<PathBuf>) -> Self {
        Self {
            runtime,
            dir: dir.into(),
            seen: HashMap::new(),
            owners: HashMap::new(),
        }
    }

    /// Installs what changed since the previous scan.
    pub async fn scan(&mut self) -> ScanReport {
        let mut report = ScanReport::default();
        let manifests = match manifests_in(&self.dir) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(dir = %self.dir.display(), error = %e, "cannot scan plugin directory");
                return report;
            }
        };
        let parsed: Vec<(PathBuf, Option<Manifest>)> = manifests
            .into_iter()
            .map(|path| {
                let manifest = Manifest::from_file(&path).ok();
                (path, manifest)
            })
            .collect();
        let present: std::collections::HashSet<&PathBuf> = parsed.iter().map(|(p, _)| p).collect();
        let gone: Vec<PathBuf> = self
            .seen
            .keys()
            .filter(|p| !present.contains(p))
            .cloned()
            .collect();
        for path in gone {
            let name = self.seen.remove(&path).and_then(|seen| seen.name);
            report.removed.push((path, name));
        }
        // An owner keeps its name while it still declares it; a free name goes to the first
        // file (in file-name order) that declares it.
        let declared: HashMap<&PathBuf, &str> = parsed
            .iter()
            .filter_map(|(p, m)| m.as_ref().map(|m| (p, m.name.as_str())))
            .collect();
        self.owners
            .retain(|name, owner| declared.get(owner).is_some_and(|n| n == name));
        for (path, manifest) in &parsed {
            if let Some(m) = manifest {
                self.owners
                    .entry(m.name.clone())
                    .or_insert_with(|| path.clone());
            }
        }
        let mut installs = Vec::new();
        for (path, manifest) in &parsed {
            let wasm = manifest.as_ref().map(Manifest::wasm_path);
            let fingerprint = (stat(path), wasm.as_deref().and_then(stat));
            let name = manifest.as_ref().map(|m| m.name.clone());
            let refused_for = manifest
                .as_ref()
                .and_then(|m| self.owners.get(&m.name))
                .filter(|owner| *owner != path)
                .cloned();
            let unchanged = self.seen.get(path).is_some_and(|seen| {
                seen.fingerprint == fingerprint && seen.refused_for == refused_for
            });
            self.seen.insert(
                path.clone(),
                Seen {
                    fingerprint,
                    name: name.clone(),
                    refused_for: refused_for.clone(),
                },
            );
            if unchanged {
                continue;
            }
            match (name, refused_for) {
                (Some(plugin), Some(first)) => report.refused.push((
                    path.clone(),
                    LoadError::DuplicateName {
                        plugin,
                        path: path.clone(),
                        first,
                    },
                )),
                _ => installs.push(path.clone()),
            }
        }
        self.install_all(installs, &mut report).await;
        report
    }

    /// Installs `paths`, compiling up to one component per core at once (a large Python or
    /// JavaScript component takes tens of seconds on a cold cache): each result is logged
    /// as it lands, so an operator watching a slow start sees which plugin it waits on.
    async fn install_all(&self, paths: Vec<PathBuf>, report: &mut ScanReport) {
        let total = paths.len();
        if total == 0 {
            return;
        }
        let parallel = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        let parallel = parallel.min(total);
        tracing::info!(dir = %self.dir.display(), plugins = total, parallel, "loading plugins");
        let started = std::time::Instant::now();
        let permits = std::sync::Arc::new(tokio::sync::Semaphore::new(parallel));
        let mut loading = tokio::task::JoinSet::new();
        for (index, path) in paths.into_iter().enumerate() {
            let runtime = self.runtime.clone();
            let permits = permits.clone();
            loading.spawn(async move {
                // Never closed: acquiring fails only on a closed semaphore.
                let _permit = permits.acquire_owned().await;
                let began = std::time::Instant::now();
                let result = runtime.install(&path).await;
                (index, path, result, began.elapsed())
            });
        }
        let mut done = Vec::with_capacity(total);
        while let Some(joined) = loading.join_next().await {
            match joined {
                Ok(item) => {
                    let (_, path, result, took) = &item;
                    let outcome = if result.is_ok() { "loaded" } else { "refused" };
                    tracing::info!(manifest = %path.display(), outcome,
                                   took_ms = u64::try_from(took.as_millis()).unwrap_or(u64::MAX),
                                   progress = %format!("{}/{total}", done.len() + 1),
                                   "plugin load finished");
                    done.push(item);
                }
                // An install panicked: the runtime's own bug, not the plugin's; the file is
                // retried when it changes, like a refused one.
                Err(e) => tracing::error!(error = %e, "a plugin install task failed"),
            }
        }
        // Report in file-name order, as a sequential scan did.
        done.sort_by_key(|(index, ..)| *index);
        for (_, path, result, _) in done {
            match result {
                Ok(info) => report.installed.push(info),
                Err(e) => report.refused.push((path, e)),
            }
        }
        tracing::info!(dir = %self.dir.display(), installed = report.installed.len(),
                       refused = report.refused.len(),
                       took_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                       "plugins loaded from the directory");
    }

    /// Scans every `every` on a tokio task until the handle is dropped.
    pub fn spawn(mut self, every: Duration) -> WatchHandle {
        WatchHandle(tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                self.scan().await;
            }
        }))
    }
}
