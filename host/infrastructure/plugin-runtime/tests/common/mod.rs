//! Shared fixtures for the runtime's integration tests: the built plugins, runtimes, and
//! manifests rewritten for a test (another version, limits, allowlist).
#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use oms_plugin_runtime::clients::payment::{AuthorizeRequest, Money};
use oms_plugin_runtime::kv::{MemoryKvStore, PluginKvStore};
use oms_plugin_runtime::{EngineOptions, PluginRuntime, RuntimeOptions};

/// `target/plugins`, built by `scripts/build-plugins`. Panics with the command to run when a
/// plugin is missing, so a test never passes vacuously.
pub fn plugins_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../target/plugins");
    let probe = dir.join("fakepay.wasm");
    assert!(
        probe.is_file(),
        "built plugins not found at {}: run `scripts/build-plugins` from the repository root first",
        dir.display()
    );
    dir
}

/// Manifest of a bundled plugin (`testing/NAME` for the misbehaving ones).
pub fn manifest(name: &str) -> PathBuf {
    let path = plugins_dir().join(format!("{name}.toml"));
    assert!(
        path.is_file(),
        "{} not found: run `scripts/build-plugins` from the repository root first",
        path.display()
    );
    path
}

/// A runtime with `options` over an in-memory KV.
pub fn runtime_from(options: RuntimeOptions) -> PluginRuntime {
    PluginRuntime::new(options, Some(Arc::new(MemoryKvStore::new()))).unwrap()
}

pub fn runtime_with(kv: Arc<dyn PluginKvStore>) -> PluginRuntime {
    PluginRuntime::new(RuntimeOptions::default(), Some(kv)).unwrap()
}

pub fn runtime() -> PluginRuntime {
    runtime_from(RuntimeOptions::default())
}

pub fn runtime_cached(cache: &Path) -> PluginRuntime {
    let options = RuntimeOptions {
        engine: EngineOptions {
            cache_dir: Some(cache.to_path_buf()),
            ..EngineOptions::default()
        },
        ..RuntimeOptions::default()
    };
    runtime_from(options)
}

/// Copies plugin `name`'s component into `dir` and writes its manifest there after `edit`
/// (applied to the manifest text). Returns the new manifest's path.
pub fn staged(dir: &Path, name: &str, edit: impl FnOnce(String) -> String) -> PathBuf {
    let src = manifest(name);
    let text = std::fs::read_to_string(&src).unwrap();
    let wasm_name = text
        .lines()
        .find_map(|l| l.strip_prefix("wasm = "))
        .map(|v| v.trim().trim_matches('"').to_string())
        .unwrap_or_else(|| format!("{}.wasm", name.rsplit('/').next().unwrap()));
    let wasm_src = src.parent().unwrap().join(&wasm_name);
    std::fs::copy(&wasm_src, dir.join(&wasm_name)).unwrap();
    let file = format!("{}.toml", name.rsplit('/').next().unwrap());
    let path = dir.join(file);
    std::fs::write(&path, edit(text)).unwrap();
    path
}

/// Replaces the line starting with `key = ` (first occurrence) by `key = value`.
pub fn set_line(text: &str, key: &str, value: &str) -> String {
    let prefix = format!("{key} = ");
    let mut done = false;
    text.lines()
        .map(|l| {
            if !done && l.starts_with(&prefix) {
                done = true;
                format!("{key} = {value}")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

pub fn eur(amount_minor: i64) -> Money {
    Money {
        amount_minor,
        currency: "EUR".into(),
    }
}

pub fn authorize_request(token: &str, key: &str) -> AuthorizeRequest {
    AuthorizeRequest {
        order_id: format!("order-{key}"),
        amount: eur(1250),
        payment_token: token.into(),
        idempotency_key: key.into(),
    }
}

/// Plugin `name` as another build: its component with a custom section naming `tag`
/// appended (the same code under another digest), staged in `dir` with `version` and the new
/// digest in its manifest. Returns the manifest's path and the digest.
pub fn rebuilt(dir: &Path, name: &str, version: &str, tag: &str) -> (PathBuf, String) {
    use sha2::{Digest, Sha256};
    let path = staged(dir, name, |t| {
        set_line(&t, "version", &format!("\"{version}\""))
    });
    let text = std::fs::read_to_string(&path).unwrap();
    let wasm_name = text
        .lines()
        .find_map(|l| l.strip_prefix("wasm = "))
        .map(|v| v.trim().trim_matches('"').to_string())
        .unwrap();
    let wasm_path = dir.join(wasm_name);
    let mut wasm = std::fs::read(&wasm_path).unwrap();
    // A custom section (id 0): size, then a name and no payload. Sizes here fit one LEB128
    // byte.
    let section_name = format!("oms-test-{tag}");
    let size = u8::try_from(section_name.len() + 1).unwrap();
    assert!(size < 0x80);
    wasm.push(0);
    wasm.push(size);
    wasm.push(size - 1);
    wasm.extend_from_slice(section_name.as_bytes());
    std::fs::write(&wasm_path, &wasm).unwrap();
    let digest = hex::encode(Sha256::digest(&wasm));
    std::fs::write(&path, set_line(&text, "sha256", &format!("\"{digest}\""))).unwrap();
    (path, digest)
}
