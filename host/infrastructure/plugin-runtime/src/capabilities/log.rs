//! `oms:plugins/log`: structured records into the host's `tracing` pipeline, tagged with the
//! plugin's name and version, filtered by the manifest's `log_level`, rate-limited per plugin
//! version (a chatty plugin must not flood the host's logs or its disk) and truncated.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use tracing::Level;

use crate::bindings::caps::oms::plugins::log as wit;
use crate::manifest::Manifest;
use crate::state::HostState;

/// Longest message kept; the rest is cut (on a char boundary) and marked.
pub(crate) const MAX_MESSAGE_BYTES: usize = 4096;
/// Most fields kept per record.
const MAX_FIELDS: usize = 32;

/// Parses `error`..`trace` (case-insensitive).
pub fn parse_level(s: &str) -> Option<Level> {
    match s.to_ascii_lowercase().as_str() {
        "error" => Some(Level::ERROR),
        "warn" | "warning" => Some(Level::WARN),
        "info" => Some(Level::INFO),
        "debug" => Some(Level::DEBUG),
        "trace" => Some(Level::TRACE),
        _ => None,
    }
}

/// Level filter and token bucket of one plugin version.
#[derive(Debug)]
pub struct LogPolicy {
    max_level: Level,
    per_sec: f64,
    bucket: Mutex<(f64, Instant)>,
    dropped: AtomicU64,
}

impl LogPolicy {
    /// From `capabilities.log_level` (default `info`) and `limits.log_lines_per_sec`.
    pub fn from_manifest(m: &Manifest) -> Self {
        let max_level = m
            .capabilities
            .log_level
            .as_deref()
            .and_then(parse_level)
            .unwrap_or(Level::INFO);
        Self::new(max_level, m.limits.resolve().log_lines_per_sec)
    }

    /// Keeps records at `max_level` or more severe, at most `per_sec` a second (burst of one
    /// second's worth).
    pub fn new(max_level: Level, per_sec: u32) -> Self {
        let per_sec = f64::from(per_sec.max(1));
        Self {
            max_level,
            per_sec,
            bucket: Mutex::new((per_sec, Instant::now())),
            dropped: AtomicU64::new(0),
        }
    }

    /// Records dropped by the rate limit so far.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Whether a record at `level` passes the filter and the rate limit (consuming a token).
    pub fn admit(&self, level: Level) -> bool {
        // tracing orders levels by verbosity: TRACE > DEBUG > ... > ERROR.
        if level > self.max_level {
            return false;
        }
        let mut b = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let refill = now.duration_since(b.1).as_secs_f64() * self.per_sec;
        b.0 = (b.0 + refill).min(self.per_sec);
        b.1 = now;
        if b.0 >= 1.0 {
            b.0 -= 1.0;
            true
        } else {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            false
        }
    }
}

fn level_of(l: wit::Level) -> Level {
    match l {
        wit::Level::Trace => Level::TRACE,
        wit::Level::Debug => Level::DEBUG,
        wit::Level::Info => Level::INFO,
        wit::Level::Warn => Level::WARN,
        wit::Level::Error => Level::ERROR,
    }
}

pub(crate) fn truncate(mut s: String) -> String {
    if s.len() > MAX_MESSAGE_BYTES {
        let mut cut = MAX_MESSAGE_BYTES;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str("…[truncated]");
    }
    s
}

impl wit::Host for HostState {
    async fn log(
        &mut self,
        level: wit::Level,
        message: String,
        fields: Vec<(String, String)>,
    ) -> wasmtime::Result<()> {
        let level = level_of(level);
        let ctx = &self.ctx;
        if !ctx.log.admit(level) {
            return Ok(());
        }
        let message = truncate(message);
        let fields: Vec<(String, String)> = fields
            .into_iter()
            .take(MAX_FIELDS)
            .map(|(k, v)| (truncate(k), truncate(v)))
            .collect();
        let (plugin, version) = (&*ctx.name, &*ctx.version);
        // `tracing` needs the level and field names at compile time: one arm per level, and
        // the plugin's own fields as one structured value.
        match level {
            Level::ERROR => {
                tracing::error!(target: "plugin", plugin, version, ?fields, "{message}")
            }
            Level::WARN => tracing::warn!(target: "plugin", plugin, version, ?fields, "{message}"),
            Level::INFO => tracing::info!(target: "plugin", plugin, version, ?fields, "{message}"),
            Level::DEBUG => {
                tracing::debug!(target: "plugin", plugin, version, ?fields, "{message}")
            }
            Level::TRACE => {
                tracing::trace!(target: "plugin", plugin, version, ?fields, "{message}")
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_by_level_and_rate() {
        let p = LogPolicy::new(Level::INFO, 2);
        assert!(!p.admit(Level::DEBUG));
        assert!(p.admit(Level::ERROR));
        assert!(p.admit(Level::INFO));
        assert!(!p.admit(Level::INFO));
        assert_eq!(p.dropped(), 1);
    }

    #[test]
    fn truncates_on_a_char_boundary() {
        let s = truncate("é".repeat(MAX_MESSAGE_BYTES));
        assert!(s.len() < MAX_MESSAGE_BYTES + 20);
        assert!(s.ends_with("[truncated]"));
    }
}
