//! The wasmtime engine shared by every plugin: its configuration, the epoch ticker that drives
//! per-store deadlines, and compilation through the on-disk artifact cache.

mod cache;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use wasmtime::component::Component;
use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

pub use cache::{ArtifactCache, CacheOutcome};

use crate::limits::MAX_MEMORY_MIB;

/// Bytes of each pooled linear memory kept mapped between calls (see `PluginEngine::new`).
const KEEP_RESIDENT_MEMORY: usize = 2 << 20;
/// Bytes of each pooled table kept mapped between calls.
const KEEP_RESIDENT_TABLE: usize = 64 << 10;

/// How the shared engine is built. Defaults suit a service running a handful of plugins with
/// a few hundred concurrent calls.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Concurrent plugin instances the pooling allocator keeps slots for. A call beyond this
    /// fails fast with an instantiation error instead of allocating without bound.
    pub pool_instances: u32,
    /// Count fuel so that metrics can report how much work a call did. Never used to stop a
    /// call: deadlines do that (fuel is not time, and host calls burn none).
    pub fuel_metering: bool,
    /// Epoch tick: the granularity of deadlines and of the yields that keep a busy guest from
    /// starving the tokio worker it runs on.
    pub epoch_tick: Duration,
    /// Where precompiled artifacts are kept; `None` compiles on every load.
    pub cache_dir: Option<PathBuf>,
    /// Most bytes of artifacts kept in `cache_dir`; the least recently used go first.
    pub cache_max_bytes: u64,
}

/// The default of [`EngineOptions::cache_max_bytes`]: 1 GiB, room for a few dozen builds of
/// small plugins or a handful of Python and JavaScript ones.
pub const CACHE_MAX_BYTES: u64 = 1 << 30;

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            pool_instances: 1000,
            fuel_metering: true,
            epoch_tick: Duration::from_millis(1),
            cache_dir: None,
            cache_max_bytes: CACHE_MAX_BYTES,
        }
    }
}

/// The engine plus its epoch ticker; the ticker thread stops when this is dropped.
pub struct PluginEngine {
    engine: Engine,
    options: EngineOptions,
    cache: Option<ArtifactCache>,
    ticker_stop: Arc<AtomicBool>,
}

impl PluginEngine {
    /// Builds the engine and starts its epoch ticker.
    pub fn new(options: EngineOptions) -> wasmtime::Result<Self> {
        let mut config = Config::new();
        config.wasm_component_model(true);
        // Deadlines: each store sets its own epoch deadline; the engine only counts ticks.
        config.epoch_interruption(true);
        // The contracts use no component-model async (streams, futures, async exports); not
        // setting up its per-store machinery makes every store cheaper.
        config.concurrency_support(false);
        config.consume_fuel(options.fuel_metering);
        // A guest's trap backtrace is captured on every trap and on every call when
        // RUST_BACKTRACE is set; keep the cheap default and never pay for DWARF details.
        config.wasm_backtrace_details(wasmtime::WasmBacktraceDetails::Disable);

        let n = options.pool_instances.max(1);
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(n)
            // A wasip2 component holds several core instances and tables (adapter shims).
            .total_core_instances(n.saturating_mul(8))
            .total_memories(n.saturating_mul(2))
            .total_tables(n.saturating_mul(8))
            .total_stacks(n)
            .max_core_instances_per_component(64)
            .max_memories_per_component(16)
            .max_tables_per_component(64)
            .max_memory_size(usize::try_from(MAX_MEMORY_MIB << 20).unwrap_or(usize::MAX))
            // Per-call instantiation is the hot path. By default a freed slot is reset with
            // `madvise`, so the next call page-faults every page it touches and the process
            // pays TLB shootdowns; profiled, that was most of a call. Instead keep the low
            // memory resident (a Rust guest's 1 MiB shadow stack plus its early heap) and,
            // where the kernel has PAGEMAP_SCAN (Linux >= 6.7), restore only the pages the
            // call dirtied. Older kernels fall back to a memset of this region.
            .linear_memory_keep_resident(KEEP_RESIDENT_MEMORY)
            .table_keep_resident(KEEP_RESIDENT_TABLE)
            .pagemap_scan(Enabled::Auto);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));

        let engine = Engine::new(&config)?;
        let cache = match &options.cache_dir {
            Some(dir) => Some(ArtifactCache::open(dir, &engine, options.cache_max_bytes)?),
            None => None,
        };
        let ticker_stop = Arc::new(AtomicBool::new(false));
        spawn_ticker(engine.clone(), options.epoch_tick, ticker_stop.clone())?;
        Ok(Self {
            engine,
            options,
            cache,
            ticker_stop,
        })
    }

    /// The wasmtime engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The options it was built with.
    pub fn options(&self) -> &EngineOptions {
        &self.options
    }

    /// Ticks per deadline, rounded up so a deadline is never shorter than asked.
    pub fn ticks_for(&self, deadline: Duration) -> u64 {
        let tick = self.options.epoch_tick.as_nanos().max(1);
        let ticks = deadline.as_nanos().div_ceil(tick);
        u64::try_from(ticks).unwrap_or(u64::MAX).max(1)
    }

    /// Compiles `wasm` (whose sha256 is `digest`), or loads it from the artifact cache.
    pub fn compile(
        &self,
        wasm: &[u8],
        digest: &str,
    ) -> wasmtime::Result<(Component, CacheOutcome)> {
        match &self.cache {
            Some(cache) => cache.load_or_compile(&self.engine, wasm, digest),
            None => Ok((
                Component::from_binary(&self.engine, wasm)?,
                CacheOutcome::Disabled,
            )),
        }
    }
}

impl Drop for PluginEngine {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
}

/// One OS thread per engine: incrementing the epoch is a single atomic add, and a thread
/// (rather than a tokio task) keeps ticking even when every worker is busy running guests.
fn spawn_ticker(engine: Engine, tick: Duration, stop: Arc<AtomicBool>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("plugin-epoch".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(tick);
                engine.increment_epoch();
            }
        })
        .map(|_| ())
}
