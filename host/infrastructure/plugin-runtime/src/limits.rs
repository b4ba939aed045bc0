//! Per-plugin limits: what the manifest may ask for, the defaults when it does not, and the
//! hard ceilings the host never lets a manifest exceed.

use std::time::Duration;

use serde::Deserialize;
use wasmtime::ResourceLimiter;

/// Linear memory a plugin gets when its manifest says nothing: plenty for a formatter or an
/// adapter that parses JSON, small enough that a thousand pooled slots stay cheap.
pub const DEFAULT_MEMORY_MIB: u64 = 64;
/// Ceiling for `memory_mib`; also the pooling allocator's per-memory slot size.
pub const MAX_MEMORY_MIB: u64 = 512;
/// Wall-clock budget of one call, host calls (KV, HTTP) included. Long enough for one
/// outbound HTTP round trip to a payment provider, short enough that a stuck plugin does not
/// hold a saga step for long.
pub const DEFAULT_DEADLINE_MS: u64 = 2_000;
/// Ceiling for `deadline_ms`.
pub const MAX_DEADLINE_MS: u64 = 60_000;
/// Extra wall-clock time beyond the deadline before the host gives up on a call that is
/// blocked in a host function (KV, HTTP) rather than running guest code, which the epoch
/// deadline interrupts by itself.
pub const HOST_GRACE: Duration = Duration::from_millis(50);

/// The longest one call of any plugin can take, whatever its manifest says: the deadline
/// ceiling and the host's grace. A saga step's lease heartbeat is bounded by it.
pub const LONGEST_CALL: Duration =
    Duration::from_millis(MAX_DEADLINE_MS).saturating_add(HOST_GRACE);
/// Largest component accepted by default. A Rust plugin is ~50 KB; componentize-py output is
/// ~18 MB, so the default leaves room for it.
pub const DEFAULT_MAX_WASM_MIB: u64 = 32;
/// Ceiling for `max_wasm_mib`.
pub const MAX_WASM_MIB: u64 = 128;
/// Table elements (function references) one instance may hold.
pub const DEFAULT_TABLE_ELEMENTS: usize = 20_000;
/// Log lines per second a plugin may emit before lines are dropped (and counted).
pub const DEFAULT_LOG_LINES_PER_SEC: u32 = 100;

/// Limits as written in the manifest's `[limits]` table; absent fields take the defaults.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSpec {
    pub memory_mib: Option<u64>,
    pub deadline_ms: Option<u64>,
    pub max_wasm_mib: Option<u64>,
    pub log_lines_per_sec: Option<u32>,
}

impl LimitsSpec {
    /// Refuses values above the host's ceilings or equal to zero.
    pub fn validate(&self) -> Result<(), String> {
        check("memory_mib", self.memory_mib, MAX_MEMORY_MIB)?;
        check("deadline_ms", self.deadline_ms, MAX_DEADLINE_MS)?;
        check("max_wasm_mib", self.max_wasm_mib, MAX_WASM_MIB)?;
        check(
            "log_lines_per_sec",
            self.log_lines_per_sec.map(u64::from),
            100_000,
        )
    }

    /// Applies defaults.
    pub fn resolve(&self) -> Limits {
        Limits {
            memory_bytes: self.memory_mib.unwrap_or(DEFAULT_MEMORY_MIB) << 20,
            deadline: Duration::from_millis(self.deadline_ms.unwrap_or(DEFAULT_DEADLINE_MS)),
            max_wasm_bytes: self.max_wasm_mib.unwrap_or(DEFAULT_MAX_WASM_MIB) << 20,
            table_elements: DEFAULT_TABLE_ELEMENTS,
            log_lines_per_sec: self.log_lines_per_sec.unwrap_or(DEFAULT_LOG_LINES_PER_SEC),
        }
    }
}

fn check(field: &str, value: Option<u64>, max: u64) -> Result<(), String> {
    match value {
        Some(0) => Err(format!("limits.{field} must be > 0")),
        Some(v) if v > max => Err(format!(
            "limits.{field} = {v} is over the host maximum {max}"
        )),
        _ => Ok(()),
    }
}

/// Resolved limits of one plugin version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub memory_bytes: u64,
    pub deadline: Duration,
    pub max_wasm_bytes: u64,
    pub table_elements: usize,
    pub log_lines_per_sec: u32,
}

impl Default for Limits {
    fn default() -> Self {
        LimitsSpec::default().resolve()
    }
}

/// The store's resource limiter: a memory cap for the whole store (all memories of the
/// component together) that remembers whether it refused a growth, so that the trap which
/// usually follows (a Rust guest aborts on allocation failure) is reported as
/// "memory limit exceeded" rather than as an anonymous trap.
#[derive(Debug)]
pub struct MemoryCap {
    limit: usize,
    used: usize,
    table_elements: usize,
    pub(crate) refused: bool,
}

impl MemoryCap {
    /// A cap of `limit` bytes of linear memory in total.
    pub fn new(limits: &Limits) -> Self {
        Self {
            limit: usize::try_from(limits.memory_bytes).unwrap_or(usize::MAX),
            used: 0,
            table_elements: limits.table_elements,
            refused: false,
        }
    }
}

impl ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let after = self.used.saturating_sub(current).saturating_add(desired);
        if after > self.limit {
            self.refused = true;
            // `Ok(false)` makes `memory.grow` return -1 (a guest using `try_reserve` sees an
            // error it can handle) instead of trapping outright.
            return Ok(false);
        }
        self.used = after;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= self.table_elements)
    }

    fn instances(&self) -> usize {
        // A wasm32-wasip2 component carries a few core instances (the adapter, shims).
        64
    }
    fn tables(&self) -> usize {
        64
    }
    fn memories(&self) -> usize {
        16
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_apply_and_ceilings_hold() {
        let l = LimitsSpec::default().resolve();
        assert_eq!(l.memory_bytes, 64 << 20);
        assert_eq!(l.deadline, Duration::from_secs(2));
        let too_big = LimitsSpec {
            memory_mib: Some(4096),
            ..Default::default()
        };
        assert!(too_big.validate().unwrap_err().contains("memory_mib"));
    }

    #[test]
    fn memory_cap_counts_all_memories_and_remembers_refusal() {
        let limits = Limits {
            memory_bytes: 100,
            ..Limits::default()
        };
        let mut cap = MemoryCap::new(&limits);
        assert!(cap.memory_growing(0, 60, None).unwrap());
        assert!(!cap.refused);
        assert!(!cap.memory_growing(0, 60, None).unwrap());
        assert!(cap.refused);
        assert!(cap.memory_growing(60, 100, None).unwrap());
    }
}
