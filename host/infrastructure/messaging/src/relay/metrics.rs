//! Relay metrics: counters and latency histograms updated on the hot path without locks, plus
//! the backlog gauges (lag, dead letters) the relay refreshes from the database.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the latency buckets in milliseconds; the last bucket is unbounded.
pub const LATENCY_BUCKETS_MS: [u64; 14] = [
    1, 2, 5, 10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 30_000,
];

/// A lock-free latency histogram.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS_MS.len() + 1],
    count: AtomicU64,
    sum_ms: AtomicU64,
}

impl Histogram {
    pub fn record(&self, d: Duration) {
        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let i = LATENCY_BUCKETS_MS
            .iter()
            .position(|b| ms <= *b)
            .unwrap_or(LATENCY_BUCKETS_MS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_ms.fetch_add(ms, Ordering::Relaxed);
    }

    /// Upper bound (ms) of the bucket holding quantile `q`; `None` when empty, `u64::MAX`
    /// when it falls in the unbounded bucket.
    pub fn quantile_ms(&self, q: f64) -> Option<u64> {
        let total = self.count.load(Ordering::Relaxed);
        if total == 0 {
            return None;
        }
        let rank = ((total as f64) * q.clamp(0.0, 1.0)).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, b) in self.buckets.iter().enumerate() {
            seen += b.load(Ordering::Relaxed);
            if seen >= rank {
                return Some(LATENCY_BUCKETS_MS.get(i).copied().unwrap_or(u64::MAX));
            }
        }
        Some(u64::MAX)
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

/// Everything the relay counts. Shared through `Arc` with whoever exports it.
#[derive(Debug, Default)]
pub struct RelayMetrics {
    pub published: AtomicU64,
    pub failed_attempts: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub batches: AtomicU64,
    /// Broker round trip of a batch (publish call to last ack).
    pub publish_latency: Histogram,
    /// Row `created_at` (the writing transaction) to broker ack, per event.
    pub commit_to_ack: Histogram,
    /// Gauges from the last backlog read.
    pub unpublished: AtomicI64,
    pub oldest_unpublished_age_ms: AtomicI64,
    pub dead_letters: AtomicI64,
}

/// A copy of the counters and gauges, for logs, tests and exporters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelaySnapshot {
    pub published: u64,
    pub failed_attempts: u64,
    pub dead_lettered: u64,
    pub batches: u64,
    pub publish_p50_ms: Option<u64>,
    pub publish_p99_ms: Option<u64>,
    pub unpublished: i64,
    pub oldest_unpublished_age_ms: i64,
    pub dead_letters: i64,
}

impl RelayMetrics {
    pub fn snapshot(&self) -> RelaySnapshot {
        RelaySnapshot {
            published: self.published.load(Ordering::Relaxed),
            failed_attempts: self.failed_attempts.load(Ordering::Relaxed),
            dead_lettered: self.dead_lettered.load(Ordering::Relaxed),
            batches: self.batches.load(Ordering::Relaxed),
            publish_p50_ms: self.publish_latency.quantile_ms(0.5),
            publish_p99_ms: self.publish_latency.quantile_ms(0.99),
            unpublished: self.unpublished.load(Ordering::Relaxed),
            oldest_unpublished_age_ms: self.oldest_unpublished_age_ms.load(Ordering::Relaxed),
            dead_letters: self.dead_letters.load(Ordering::Relaxed),
        }
    }
}
