//! One loaded plugin version: verified, compiled, type-checked against its world, with its
//! capability grants resolved. Nothing here runs guest code.

use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use sha2::{Digest, Sha256};
use wasmtime::component::Linker;

use crate::bindings::{inventory, notification, payment, payment_v2};
use crate::capabilities::PluginContext;
use crate::engine::{CacheOutcome, PluginEngine};
use crate::error::LoadError;
use crate::kv::PluginKvStore;
use crate::limits::Limits;
use crate::manifest::{Contract, Manifest, PluginKind};
use crate::state::HostState;

/// The pre-instantiated component, typed by world: instantiating from it is the cheap part
/// of a call (imports are already resolved and checked).
pub(crate) enum Exports {
    Payment(payment::PaymentProviderPre<HostState>),
    /// A payment plugin of contract `oms:plugins@0.2.0`.
    PaymentV2(payment_v2::PaymentProviderPre<HostState>),
    Inventory(inventory::InventoryAdapterPre<HostState>),
    Notification(notification::NotificationFormatterPre<HostState>),
}

/// A plugin version ready to be called.
pub struct LoadedPlugin {
    pub manifest: Manifest,
    /// sha256 of the component, lower-case hex.
    pub digest: Arc<str>,
    pub limits: Limits,
    pub loaded_at: SystemTime,
    /// Whether the compiled code came from the artifact cache.
    pub cache: CacheOutcome,
    pub(crate) ctx: Arc<PluginContext>,
    pub(crate) exports: Exports,
}

impl std::fmt::Debug for LoadedPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedPlugin")
            .field("name", &self.manifest.name)
            .field("version", &self.manifest.version)
            .field("digest", &self.digest)
            .finish_non_exhaustive()
    }
}

impl LoadedPlugin {
    /// Reads `manifest_path` and the component it names, then [`Self::from_parts`].
    pub fn load(
        engine: &PluginEngine,
        linker: &Linker<HostState>,
        manifest_path: &Path,
        kv: Option<Arc<dyn PluginKvStore>>,
    ) -> Result<Self, LoadError> {
        let manifest = Manifest::from_file(manifest_path)?;
        let wasm_path = manifest.wasm_path();
        check_file_size(&manifest, &wasm_path)?;
        let wasm = std::fs::read(&wasm_path).map_err(|source| LoadError::Io {
            plugin: manifest.name.clone(),
            path: wasm_path.clone(),
            source,
        })?;
        Self::from_parts(engine, linker, manifest, &wasm, kv)
    }

    /// Verifies `wasm` against `manifest` (size, digest), compiles it (or loads the cached
    /// artifact), type-checks it against the manifest's world and resolves its grants.
    pub fn from_parts(
        engine: &PluginEngine,
        linker: &Linker<HostState>,
        manifest: Manifest,
        wasm: &[u8],
        kv: Option<Arc<dyn PluginKvStore>>,
    ) -> Result<Self, LoadError> {
        let limits = manifest.limits.resolve();
        check_size(&manifest, &manifest.wasm_path(), wasm.len() as u64, &limits)?;
        let actual = hex::encode(Sha256::digest(wasm));
        if actual != manifest.sha256 {
            return Err(LoadError::DigestMismatch {
                plugin: manifest.name.clone(),
                path: manifest.wasm_path(),
                declared: manifest.sha256.clone(),
                actual,
            });
        }
        if let Some(reason) = not_a_component(wasm) {
            return Err(LoadError::Compile {
                plugin: manifest.name.clone(),
                reason: reason.to_owned(),
            });
        }
        let (component, cache) = engine
            .compile(wasm, &actual)
            .map_err(|e| LoadError::Compile {
                plugin: manifest.name.clone(),
                reason: format!("{e:#}"),
            })?;
        let wrong_world = |e: wasmtime::Error| LoadError::WrongWorld {
            plugin: manifest.name.clone(),
            world: match (manifest.kind, manifest.contract_version()) {
                (PluginKind::PaymentProvider, Contract::V0_2) => "payment-provider@0.2.0",
                (kind, _) => kind.world(),
            },
            reason: format!("{e:#}"),
        };
        // Resolves every import against the host's linker: an import the host does not offer
        // (another world's, or a newer WASI) is refused here, not at the first call.
        let pre = linker.instantiate_pre(&component).map_err(wrong_world)?;
        // Checks that the exports are exactly the world's, with the right types.
        let exports = match (manifest.kind, manifest.contract_version()) {
            (PluginKind::PaymentProvider, Contract::V0_1) => {
                Exports::Payment(payment::PaymentProviderPre::new(pre).map_err(wrong_world)?)
            }
            (PluginKind::PaymentProvider, Contract::V0_2) => {
                Exports::PaymentV2(payment_v2::PaymentProviderPre::new(pre).map_err(wrong_world)?)
            }
            (PluginKind::InventoryAdapter, _) => {
                Exports::Inventory(inventory::InventoryAdapterPre::new(pre).map_err(wrong_world)?)
            }
            (PluginKind::NotificationFormatter, _) => Exports::Notification(
                notification::NotificationFormatterPre::new(pre).map_err(wrong_world)?,
            ),
        };
        let ctx = Arc::new(PluginContext::from_manifest(&manifest, kv)?);
        Ok(Self {
            digest: actual.into(),
            limits,
            loaded_at: SystemTime::now(),
            cache,
            ctx,
            exports,
            manifest,
        })
    }

    /// Plugin name.
    pub fn name(&self) -> &str {
        &self.manifest.name
    }

    /// Plugin version as declared by its manifest.
    pub fn version(&self) -> &str {
        &self.manifest.version
    }

    /// Which world it implements.
    pub fn kind(&self) -> PluginKind {
        self.manifest.kind
    }
}

/// Why `wasm` cannot be a component, from its 8-byte preamble, in the integrator's terms;
/// `None` when it looks like one (the compiler then checks the rest). Without this, random
/// bytes were refused with the text parser's "input bytes aren't valid utf-8", and a core
/// module with a type error about a missing world.
fn not_a_component(wasm: &[u8]) -> Option<&'static str> {
    const MAGIC: &[u8] = b"\0asm";
    // Version 13 (0x0d) and layer 1: the component-model binary format.
    const COMPONENT: [u8; 4] = [0x0d, 0x00, 0x01, 0x00];
    // Version 1, layer 0: a core module.
    const MODULE: [u8; 4] = [0x01, 0x00, 0x00, 0x00];
    if wasm.len() < 8 || &wasm[..4] != MAGIC {
        return Some(
            "the file is not WebAssembly (it does not start with the Wasm magic bytes \
             `\\0asm`): check that the manifest names the built .wasm file",
        );
    }
    match <[u8; 4]>::try_from(&wasm[4..8]) {
        Ok(COMPONENT) => None,
        Ok(MODULE) => Some(
            "the file is a core Wasm module, not a component: build it for wasm32-wasip2, \
             or wrap the module with `wasm-tools component new` (docs/plugins.md, section 7)",
        ),
        _ => Some(
            "the file is WebAssembly of a binary-format version this host does not read \
             (it reads components: version 0x0d, layer 1)",
        ),
    }
}

/// Refuses the component file at `path` when it is over `manifest`'s size limit, from its
/// length alone: checked before reading, so an oversized file is never pulled into memory
/// (by an install, or by `oms plugin check`, which names a file other than the manifest's).
pub fn check_file_size(manifest: &Manifest, path: &Path) -> Result<(), LoadError> {
    let size = std::fs::metadata(path)
        .map_err(|source| LoadError::Io {
            plugin: manifest.name.clone(),
            path: path.to_path_buf(),
            source,
        })?
        .len();
    check_size(manifest, path, size, &manifest.limits.resolve())
}

fn check_size(
    manifest: &Manifest,
    path: &Path,
    size: u64,
    limits: &Limits,
) -> Result<(), LoadError> {
    if size > limits.max_wasm_bytes {
        return Err(LoadError::TooLarge {
            plugin: manifest.name.clone(),
            path: path.to_path_buf(),
            size,
            limit: limits.max_wasm_bytes,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::not_a_component;

    #[test]
    fn a_file_that_is_no_component_is_named_for_what_it_is() {
        let random = [0x7f, 0x45, 0x4c, 0x46, 2, 1, 1, 0, 0, 0];
        assert!(
            not_a_component(&random)
                .unwrap()
                .contains("not WebAssembly")
        );
        assert!(
            not_a_component(b"\0as")
                .unwrap()
                .contains("not WebAssembly")
        );
        let module = [0, b'a', b's', b'm', 1, 0, 0, 0];
        assert!(
            not_a_component(&module)
                .unwrap()
                .contains("core Wasm module")
        );
        let future = [0, b'a', b's', b'm', 0x0e, 0, 1, 0];
        assert!(not_a_component(&future).unwrap().contains("version"));
        let component = [0, b'a', b's', b'm', 0x0d, 0, 1, 0, 0];
        assert_eq!(not_a_component(&component), None);
    }
}
