//! Precompiled artifacts on disk, so that a restart (or reloading an unchanged plugin) does not
//! recompile. An artifact is named by the component's sha256 and by the engine's compatibility
//! hash (wasmtime version, target, compiler settings): an artifact built by another engine
//! configuration is never even looked at.

use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

/// Whether a load hit the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    /// Loaded a precompiled artifact.
    Hit,
    /// Compiled and stored a new artifact.
    Miss,
    /// No cache configured: compiled in memory.
    Disabled,
}

/// A directory of `DIGEST-ENGINEHASH.cwasm` files with a `.sha256` beside each.
#[derive(Debug, Clone)]
pub struct ArtifactCache {
    dir: PathBuf,
    engine_hash: String,
}

impl ArtifactCache {
    /// Uses (and creates) `dir`, which must be writable only by this service.
    pub fn open(dir: &Path, engine: &Engine) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let mut hasher = Sha256Hasher(Sha256::new());
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let engine_hash = hex::encode(&hasher.0.finalize()[..8]);
        Ok(Self {
            dir: dir.to_path_buf(),
            engine_hash,
        })
    }

    fn artifact_path(&self, digest: &str) -> PathBuf {
        self.dir
            .join(format!("{digest}-{}.cwasm", self.engine_hash))
    }

    /// Loads the artifact for `digest`, or compiles `wasm` and stores it.
    pub fn load_or_compile(
        &self,
        engine: &Engine,
        wasm: &[u8],
        digest: &str,
    ) -> wasmtime::Result<(Component, CacheOutcome)> {
        let path = self.artifact_path(digest);
        if let Some(component) = self.try_load(engine, &path) {
            return Ok((component, CacheOutcome::Hit));
        }
        let bytes = engine.precompile_component(wasm)?;
        if let Err(e) = store_atomically(&path, &bytes) {
            // A read-only or full disk costs a recompile next time, nothing else.
            tracing::warn!(path = %path.display(), error = %e, "cannot store plugin artifact");
        }
        // The bytes were produced just above by this very engine.
        Ok((deserialize(engine, &bytes)?, CacheOutcome::Miss))
    }

    fn try_load(&self, engine: &Engine, path: &Path) -> Option<Component> {
        let bytes = std::fs::read(path).ok()?;
        let recorded = std::fs::read_to_string(checksum_path(path)).ok()?;
        if recorded.trim() != hex::encode(Sha256::digest(&bytes)) {
            tracing::warn!(path = %path.display(), "plugin artifact checksum mismatch; recompiling");
            return None;
        }
        match deserialize(engine, &bytes) {
            Ok(component) => Some(component),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "stale plugin artifact; recompiling");
                None
            }
        }
    }
}

/// SAFETY argument for the one unsafe call of this crate. `Component::deserialize` trusts its
/// input to be machine code produced by a compatible wasmtime. It is: the bytes were either just
/// produced by this engine, or written by
/// `Engine::precompile_component` of an engine with the same compatibility hash (it is in the
/// file name, and wasmtime re-checks its own header), into a directory owned by this service,
/// and they still match the checksum recorded when they were written (so a torn write or a
/// truncated file is recompiled instead of executed). Anyone able to write both files could
/// already replace the service binary.
#[allow(unsafe_code)]
fn deserialize(engine: &Engine, bytes: &[u8]) -> wasmtime::Result<Component> {
    unsafe { Component::deserialize(engine, bytes) }
}

fn checksum_path(artifact: &Path) -> PathBuf {
    artifact.with_extension("cwasm.sha256")
}

/// Writes to a temporary file and renames, so a concurrent reader never sees half an artifact.
fn store_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let unique = format!(
        ".tmp-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    );
    let tmp = dir.join(unique);
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::write(checksum_path(path), hex::encode(Sha256::digest(bytes)))?;
    std::fs::rename(&tmp, path)
}

/// Feeds `Hash` output into sha256, so the cache key is stable across processes (the std
/// hasher is not guaranteed to be).
struct Sha256Hasher(Sha256);

impl Hasher for Sha256Hasher {
    fn finish(&self) -> u64 {
        0
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}
