//! Per-plugin call metrics kept in the runtime: calls, errors by kind, a latency histogram and
//! fuel used. Lock-free on the hot path except for the error map (touched only on errors).
//!
//! The runtime reads them (the admin API's plugin list, its quantiles); each call is also
//! recorded through the `metrics` facade for Prometheus: `oms_plugin_calls_total{plugin,
//! release, outcome}` (`ok` or the error kind), `oms_plugin_call_duration_seconds{plugin,
//! release}` and `oms_plugin_fuel_consumed_total{plugin, release}`, where `release` is
//! `stable` or, for a canary's calls, `canary`.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the latency buckets, in microseconds; the last bucket is unbounded.
pub const LATENCY_BUCKETS_US: [u64; 18] = [
    10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000, 200_000,
    500_000, 1_000_000, 2_000_000, 5_000_000,
];

/// Counters of one plugin (all versions).
#[derive(Debug, Default)]
pub struct PluginMetrics {
    /// The `plugin` label of the exported series.
    name: String,
    /// The `release` label: `stable` or `canary`.
    release: &'static str,
    calls: AtomicU64,
    fuel: AtomicU64,
    latency_sum_us: AtomicU64,
    buckets: [AtomicU64; LATENCY_BUCKETS_US.len() + 1],
    errors: Mutex<BTreeMap<&'static str, u64>>,
}

/// A point-in-time copy of [`PluginMetrics`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MetricsSnapshot {
    pub calls: u64,
    /// Errors by kind: sandbox kinds (`trap`, `deadline`, ...) and the plugin's own
    /// (`declined`, `transient`, `out_of_stock`, ...).
    pub errors: BTreeMap<&'static str, u64>,
    pub fuel_used: u64,
    pub latency_sum_us: u64,
    /// Call counts per bucket; bucket `i` holds calls up to `LATENCY_BUCKETS_US[i]` µs, the
    /// last one everything slower.
    pub latency_buckets: Vec<u64>,
}

/// Answers that are the plugin saying no to a request (a decline, an invalid request, no
/// stock), not the plugin failing: they never count as a canary's failures.
const REFUSALS: [&str; 3] = ["declined", "invalid", "out_of_stock"];

impl MetricsSnapshot {
    /// Calls that failed: sandbox faults (trap, deadline, memory...), an open circuit, and
    /// `transient` answers; refusals are answers, not failures.
    pub fn failures(&self) -> u64 {
        self.errors
            .iter()
            .filter(|(kind, _)| !REFUSALS.contains(kind))
            .map(|(_, n)| n)
            .sum()
    }

    /// Upper bound (µs) of the bucket holding quantile `q` (0..=1); `None` with no calls or
    /// when it falls in the unbounded bucket.
    pub fn latency_quantile_us(&self, q: f64) -> Option<u64> {
        let total: u64 = self.latency_buckets.iter().sum();
        if total == 0 {
            return None;
        }
        let target = ((total as f64) * q.clamp(0.0, 1.0)).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, n) in self.latency_buckets.iter().enumerate() {
            seen += n;
            if seen >= target {
                return LATENCY_BUCKETS_US.get(i).copied();
            }
        }
        None
    }
}

impl PluginMetrics {
    /// The counters of plugin `name`.
    pub fn named(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            release: "stable",
            ..Self::default()
        }
    }

    /// The counters of the canary of plugin `name`.
    pub fn canary(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            release: "canary",
            ..Self::default()
        }
    }

    /// Records one finished call; `error` is its error kind, if any.
    pub fn record(&self, latency: Duration, fuel: u64, error: Option<&'static str>) {
        let plugin = self.name.clone();
        let release = self.release;
        metrics::counter!("oms_plugin_calls_total", "plugin" => plugin.clone(), "release" => release, "outcome" => error.unwrap_or("ok"))
            .increment(1);
        metrics::histogram!("oms_plugin_call_duration_seconds", "plugin" => plugin.clone(), "release" => release)
            .record(latency.as_secs_f64());
        metrics::counter!("oms_plugin_fuel_consumed_total", "plugin" => plugin, "release" => release)
            .increment(fuel);
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.fuel.fetch_add(fuel, Ordering::Relaxed);
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.latency_sum_us.fetch_add(us, Ordering::Relaxed);
        let i = LATENCY_BUCKETS_US.partition_point(|&b| b < us);
        if let Some(b) = self.buckets.get(i) {
            b.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(kind) = error {
            let mut errors = self.errors.lock().unwrap_or_else(|e| e.into_inner());
            *errors.entry(kind).or_default() += 1;
        }
    }

    /// A copy of the counters.
    pub fn snapshot(&self) -> MetricsSnapshot {
        MetricsSnapshot {
            calls: self.calls.load(Ordering::Relaxed),
            errors: self
                .errors
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            fuel_used: self.fuel.load(Ordering::Relaxed),
            latency_sum_us: self.latency_sum_us.load(Ordering::Relaxed),
            latency_buckets: self
                .buckets
                .iter()
                .map(|b| b.load(Ordering::Relaxed))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_and_estimates_quantiles() {
        let m = PluginMetrics::default();
        for _ in 0..99 {
            m.record(Duration::from_micros(15), 10, None);
        }
        m.record(Duration::from_millis(3), 10, Some("trap"));
        let s = m.snapshot();
        assert_eq!(s.calls, 100);
        assert_eq!(s.fuel_used, 1000);
        assert_eq!(s.errors.get("trap"), Some(&1));
        assert_eq!(s.latency_quantile_us(0.5), Some(20));
        assert_eq!(s.latency_quantile_us(1.0), Some(5_000));
    }
}
