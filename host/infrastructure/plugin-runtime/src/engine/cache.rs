//! Precompiled artifacts on disk, so that a restart (or reloading an unchanged plugin) does not
//! recompile. An artifact is named by the component's sha256 and by the engine's compatibility
//! hash (wasmtime version, target, compiler settings): an artifact built by another engine
//! configuration is never even looked at.
//!
//! The directory is bounded: an artifact is several times the size of its component (about
//! 40 MB for an 18 MB Python component), and every upload adds one. After each store, the
//! least recently used artifacts are deleted until the directory is within its bound, those
//! of other engine configurations (left by an older host version, never loadable here) first;
//! a hit refreshes an artifact's modification time, which is how use is recorded. An
//! artifact this process loaded or stored is never deleted by it (a build loaded long ago
//! and serving still looks old by its time).

use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

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
    /// Most bytes of artifacts kept; the ones this process uses are kept whatever their size.
    max_bytes: u64,
    /// The artifacts this process loaded or stored: never evicted by it.
    used: Arc<Mutex<HashSet<PathBuf>>>,
}

impl ArtifactCache {
    /// Uses (and creates) `dir`, which must be writable only by this service, keeping at
    /// most `max_bytes` of artifacts in it.
    pub fn open(dir: &Path, engine: &Engine, max_bytes: u64) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let mut hasher = Sha256Hasher(Sha256::new());
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let engine_hash = hex::encode(&hasher.0.finalize()[..8]);
        Ok(Self {
            dir: dir.to_path_buf(),
            engine_hash,
            max_bytes,
            used: Arc::new(Mutex::new(HashSet::new())),
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
            self.mark_used(&path);
            return Ok((component, CacheOutcome::Hit));
        }
        let bytes = engine.precompile_component(wasm)?;
        match store_atomically(&path, &bytes) {
            Ok(()) => {
                let used = self.mark_used(&path);
                match evict(&self.dir, &self.engine_hash, self.max_bytes, &used) {
                    Ok(evicted) => {
                        for old in evicted {
                            tracing::info!(path = %old.display(), "plugin artifact evicted from the cache");
                        }
                    }
                    Err(e) => {
                        tracing::warn!(dir = %self.dir.display(), error = %e, "cannot bound the plugin artifact cache");
                    }
                }
            }
            // A read-only or full disk costs a recompile next time, nothing else.
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot store plugin artifact");
            }
        }
        // The bytes were produced just above by this very engine.
        Ok((deserialize(engine, &bytes)?, CacheOutcome::Miss))
    }

    /// Records that this process uses the artifact at `path`; returns every one it uses.
    fn mark_used(&self, path: &Path) -> HashSet<PathBuf> {
        let mut used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        used.insert(path.to_path_buf());
        used.clone()
    }

    fn try_load(&self, engine: &Engine, path: &Path) -> Option<Component> {
        let bytes = std::fs::read(path).ok()?;
        let recorded = std::fs::read_to_string(checksum_path(path)).ok()?;
        if recorded.trim() != hex::encode(Sha256::digest(&bytes)) {
            tracing::warn!(path = %path.display(), "plugin artifact checksum mismatch; recompiling");
            return None;
        }
        match deserialize(engine, &bytes) {
            Ok(component) => {
                // Records the use for eviction; a failure only makes it look older.
                let _ = std::fs::File::options()
                    .write(true)
                    .open(path)
                    .and_then(|f| f.set_modified(SystemTime::now()));
                Some(component)
            }
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

/// Deletes artifacts of `dir` (with their checksums) until at most `max_bytes` of them are
/// left: those of other engine configurations (not named with `engine_hash`) first, then the
/// least recently used. Those in `keep` (this process uses them) are never deleted. Returns
/// what was deleted.
fn evict(
    dir: &Path,
    engine_hash: &str,
    max_bytes: u64,
    keep: &HashSet<PathBuf>,
) -> std::io::Result<Vec<PathBuf>> {
    let mut artifacts = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some("cwasm") {
            continue;
        }
        let meta = entry.metadata()?;
        let ours = path
            .file_stem()
            .and_then(|s| s.to_str())
            .is_some_and(|s| s.ends_with(engine_hash));
        let used = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
        artifacts.push((ours, used, meta.len(), path));
    }
    let mut total: u64 = artifacts.iter().map(|a| a.2).sum();
    // Other engines' first (`false` sorts first), then the least recently used.
    artifacts.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(&b.1)));
    let mut evicted = Vec::new();
    for (_, _, len, path) in artifacts {
        if total <= max_bytes {
            break;
        }
        if keep.contains(&path) {
            continue;
        }
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            // Another process evicted it first.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        // The checksum alone is harmless (it is only read beside its artifact).
        let _ = std::fs::remove_file(checksum_path(&path));
        total = total.saturating_sub(len);
        evicted.push(path);
    }
    Ok(evicted)
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// An artifact of `len` bytes last used `age` ago.
    fn artifact(dir: &Path, name: &str, len: usize, age: Duration) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, vec![0_u8; len]).unwrap();
        std::fs::write(checksum_path(&path), "x").unwrap();
        let used = SystemTime::now() - age;
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(used)
            .unwrap();
        path
    }

    #[test]
    fn other_engines_then_the_least_recently_used_go_first_and_the_new_one_stays() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let hour = Duration::from_secs(3600);
        let stale = artifact(d, "aa-otherengine.cwasm", 100, Duration::ZERO);
        let old = artifact(d, "bb-ourengine.cwasm", 100, 3 * hour);
        let recent = artifact(d, "cc-ourengine.cwasm", 100, hour);
        let new = artifact(d, "dd-ourengine.cwasm", 250, Duration::ZERO);
        std::fs::write(d.join("notes.txt"), vec![0_u8; 1000]).unwrap();

        // 550 bytes of artifacts, bound 400: the other engine's, then the oldest of ours.
        let keep = HashSet::from([new.clone()]);
        let evicted = evict(d, "ourengine", 400, &keep).unwrap();
        assert_eq!(evicted, [stale.clone(), old.clone()]);
        assert!(!stale.exists() && !checksum_path(&stale).exists());
        assert!(!old.exists() && recent.exists() && new.exists());
        assert!(d.join("notes.txt").exists(), "only artifacts are evicted");

        // Within the bound: nothing goes. Over it with only the new one left: it stays.
        assert!(evict(d, "ourengine", 400, &keep).unwrap().is_empty());
        assert_eq!(evict(d, "ourengine", 10, &keep).unwrap(), [recent]);
        assert!(new.exists());
    }
}
