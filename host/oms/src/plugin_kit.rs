//! `oms plugin`: tools for integrators, which need neither a database nor a Rust toolchain.
//! `check` runs every load check the host makes on a `.wasm` and its manifest, in the
//! host's order, and says which passed and which failed, in the integrator's terms.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use oms_plugin_runtime::kv::MemoryKvStore;
use oms_plugin_runtime::{EngineOptions, LoadError, PluginRuntime, RuntimeOptions};

/// The load checks, in the order the host makes them (`docs/plugins.md`, section 5).
pub const CHECKS: [&str; 7] = [
    "manifest",
    "contract",
    "size",
    "digest",
    "component",
    "world",
    "grants",
];

/// What one check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Passed(String),
    Failed(String),
    /// Not run: an earlier check failed.
    Skipped,
}

/// Every check of one plugin, in order.
#[derive(Debug, Clone)]
pub struct CheckReport {
    pub wasm: PathBuf,
    pub manifest: PathBuf,
    pub checks: Vec<(&'static str, Outcome)>,
}

impl CheckReport {
    pub fn passed(&self) -> bool {
        self.checks
            .iter()
            .all(|(_, o)| matches!(o, Outcome::Passed(_)))
    }

    /// One failure at check `failed`: the ones before it passed (the host stops at the
    /// first failure).
    fn failure(wasm: &Path, manifest: &Path, failed: usize, message: String) -> Self {
        let checks = CHECKS
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let outcome = match i.cmp(&failed) {
                    std::cmp::Ordering::Less => Outcome::Passed(String::new()),
                    std::cmp::Ordering::Equal => Outcome::Failed(message.clone()),
                    std::cmp::Ordering::Greater => Outcome::Skipped,
                };
                (*name, outcome)
            })
            .collect();
        Self {
            wasm: wasm.to_owned(),
            manifest: manifest.to_owned(),
            checks,
        }
    }
}

/// The manifest of `wasm` when none is named: `NAME.toml` beside `NAME.wasm`, else
/// `manifest.toml` in its directory (a plugin project's layout).
pub fn default_manifest(wasm: &Path) -> PathBuf {
    let beside = wasm.with_extension("toml");
    if beside.is_file() {
        return beside;
    }
    wasm.parent()
        .unwrap_or_else(|| Path::new("."))
        .join("manifest.toml")
}

/// Which check a load error belongs to.
fn check_of(e: &LoadError) -> usize {
    match e {
        LoadError::ManifestInvalid { .. } | LoadError::Io { .. } => 0,
        LoadError::UnsupportedContract { .. } => 1,
        LoadError::TooLarge { .. } => 2,
        LoadError::DigestMismatch { .. } => 3,
        LoadError::WrongWorld { .. } => 5,
        LoadError::Capability { .. } => 6,
        // Compile, and what an install (not a check) refuses.
        _ => 4,
    }
}

/// Runs every load check on `wasm` with the manifest at `manifest` (its `wasm` key is not
/// read: the file checked is `wasm`). A `kv` grant is checked against an in-memory store.
pub async fn check(wasm: &Path, manifest: &Path) -> CheckReport {
    let text = match std::fs::read_to_string(manifest) {
        Ok(text) => text,
        Err(e) => {
            let message = format!("cannot read {}: {e}", manifest.display());
            return CheckReport::failure(wasm, manifest, 0, message);
        }
    };
    let bytes = match std::fs::read(wasm) {
        Ok(bytes) => bytes,
        Err(e) => {
            let message = format!("cannot read {}: {e}", wasm.display());
            return CheckReport::failure(wasm, manifest, 2, message);
        }
    };
    let size = bytes.len();
    let store: Arc<dyn oms_plugin_runtime::kv::PluginKvStore> = Arc::new(MemoryKvStore::new());
    // Nothing runs: a small instance pool, no artifact cache.
    let options = RuntimeOptions {
        engine: EngineOptions {
            pool_instances: 4,
            cache_dir: None,
            ..EngineOptions::default()
        },
        ..RuntimeOptions::default()
    };
    let runtime = match PluginRuntime::new(options, Some(store)) {
        Ok(runtime) => runtime,
        Err(e) => {
            let message = format!("the plugin runtime did not start: {e}");
            return CheckReport::failure(wasm, manifest, 4, message);
        }
    };
    let plugin = match runtime.check_bytes(&text, manifest, bytes).await {
        Ok(plugin) => plugin,
        Err(e) => return CheckReport::failure(wasm, manifest, check_of(&e), e.to_string()),
    };
    let m = &plugin.manifest;
    let world = m.kind.world();
    let grants = m.capabilities.granted();
    let grants = if grants.is_empty() {
        "nothing beyond log, config and clock".to_owned()
    } else {
        format!("{} (besides log, config and clock)", grants.join(", "))
    };
    let passed = [
        format!("{} {}, a {world}", m.name, m.version),
        m.contract.clone(),
        format!("{size} bytes, limit {}", plugin.limits.max_wasm_bytes),
        format!("sha256 {} as declared", plugin.digest),
        "a Wasm component; it compiles".to_owned(),
        format!("exports the {world} world; every import links"),
        grants,
    ];
    CheckReport {
        wasm: wasm.to_owned(),
        manifest: manifest.to_owned(),
        checks: CHECKS
            .into_iter()
            .zip(passed)
            .map(|(name, detail)| (name, Outcome::Passed(detail)))
            .collect(),
    }
}
