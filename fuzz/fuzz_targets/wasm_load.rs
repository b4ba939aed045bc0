//! Any bytes as a plugin's `.wasm`, with a manifest whose digest matches them (so every input
//! reaches the component checks and compilation): every check of `oms plugin check` and of
//! an install, in the real runtime, ending in a loaded build or a `LoadError`, never a panic.
#![no_main]

use std::path::Path;
use std::sync::{Arc, LazyLock};

use libfuzzer_sys::fuzz_target;
use oms_plugin_runtime::kv::MemoryKvStore;
use oms_plugin_runtime::{PluginRuntime, RuntimeOptions};
use sha2::{Digest, Sha256};

/// fakepay's manifest (payment kind, KV and clock granted).
const MANIFEST: &str = include_str!("../../plugins/fakepay/manifest.toml");

static RUNTIME: LazyLock<(tokio::runtime::Runtime, PluginRuntime)> = LazyLock::new(|| {
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let plugins = PluginRuntime::new(
        RuntimeOptions::default(),
        Some(Arc::new(MemoryKvStore::new())),
    )
    .expect("plugin runtime");
    (tokio, plugins)
});

/// The manifest with `sha256` set to `wasm`'s digest (after `version`, a top-level key).
fn manifest_for(wasm: &[u8]) -> String {
    let digest = hex::encode(Sha256::digest(wasm));
    let mut out = String::with_capacity(MANIFEST.len() + 80);
    for line in MANIFEST.lines() {
        if line.starts_with("sha256") {
            continue;
        }
        out.push_str(line);
        out.push('\n');
        if line.starts_with("version = ") {
            out.push_str(&format!("sha256 = \"{digest}\"\n"));
        }
    }
    out
}

fuzz_target!(|wasm: &[u8]| {
    let (tokio, plugins) = &*RUNTIME;
    let manifest = manifest_for(wasm);
    let _ = tokio.block_on(plugins.check_bytes(&manifest, Path::new("fuzz.toml"), wasm.to_vec()));
});
