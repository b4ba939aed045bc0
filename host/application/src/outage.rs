//! Logging a background loop's failures without flooding the log while a dependency is away.
//!
//! A loop that polls the database (the saga workers' claims, the outbox relay) fails on every
//! round while the database is down: ten rounds a second per worker with the default poll
//! interval, each a `WARN` line that says the same thing. [`FailureRun`] decides which of
//! those failures to report: the first of a run of failures, then one summary per
//! [`FailureRun::every`] with the count since, and the recovery once the loop works again
//! (with how many failed and for how long). The rest go to `DEBUG`.

use std::time::{Duration, Instant};

/// How long a run of failures goes between two reports, unless a loop asks otherwise.
pub const REPORT_EVERY: Duration = Duration::from_secs(30);

/// Which failures of one loop to report; one per loop, kept across its rounds.
#[derive(Debug, Clone)]
pub struct FailureRun {
    every: Duration,
    run: Option<Run>,
}

#[derive(Debug, Clone, Copy)]
struct Run {
    started: Instant,
    reported: Instant,
    failures: u64,
    since_report: u64,
}

/// What to do with one failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Report {
    /// The first failure after a success (or ever): report it.
    First,
    /// Still failing, and a report is due: `failures` in all so far, `unreported` of them
    /// since the last report, over `lasted`.
    StillFailing {
        failures: u64,
        unreported: u64,
        lasted: Duration,
    },
    /// Reported already; log at `DEBUG` at most.
    Quiet,
}

/// A run of failures that ended with a success.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recovered {
    pub failures: u64,
    pub lasted: Duration,
}

impl Default for FailureRun {
    fn default() -> Self {
        Self::every(REPORT_EVERY)
    }
}

impl FailureRun {
    /// Reports a run of failures at most once per `every` after its first.
    pub fn every(every: Duration) -> Self {
        Self { every, run: None }
    }

    /// Records a failure at `now` and says whether to report it.
    pub fn failed(&mut self, now: Instant) -> Report {
        let Some(run) = &mut self.run else {
            self.run = Some(Run {
                started: now,
                reported: now,
                failures: 1,
                since_report: 0,
            });
            return Report::First;
        };
        run.failures += 1;
        run.since_report += 1;
        if now.saturating_duration_since(run.reported) < self.every {
            return Report::Quiet;
        }
        let report = Report::StillFailing {
            failures: run.failures,
            unreported: run.since_report,
            lasted: now.saturating_duration_since(run.started),
        };
        run.reported = now;
        run.since_report = 0;
        report
    }

    /// Records a success at `now`: the run of failures it ends, if there was one.
    pub fn succeeded(&mut self, now: Instant) -> Option<Recovered> {
        self.run.take().map(|run| Recovered {
            failures: run.failures,
            lasted: now.saturating_duration_since(run.started),
        })
    }
}

/// Logs `$error`, a failure of a background loop, as `$run` (a [`FailureRun`]) decides:
/// `WARN $failed` for the first failure of a run, `WARN $still` with the counts once per
/// period while it lasts, `DEBUG $failed` for the rest. One way to word it for every loop.
#[macro_export]
macro_rules! log_failure {
    ($run:expr, $error:ident, $failed:literal, $still:literal) => {
        match $run.failed(::std::time::Instant::now()) {
            $crate::outage::Report::First => ::tracing::warn!(error = %$error, $failed),
            $crate::outage::Report::StillFailing {
                failures,
                unreported,
                lasted,
            } => ::tracing::warn!(
                error = %$error,
                failures,
                unreported,
                lasted_secs = lasted.as_secs(),
                $still
            ),
            $crate::outage::Report::Quiet => ::tracing::debug!(error = %$error, $failed),
        }
    };
}

/// Logs `INFO $recovered` with how many failed and for how long, when this success ends a
/// run of failures of `$run` (a [`FailureRun`]).
#[macro_export]
macro_rules! log_recovery {
    ($run:expr, $recovered:literal) => {
        if let Some($crate::outage::Recovered { failures, lasted }) =
            $run.succeeded(::std::time::Instant::now())
        {
            let lasted_ms = u64::try_from(lasted.as_millis()).unwrap_or(u64::MAX);
            ::tracing::info!(failures, lasted_ms, $recovered);
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_of_failures_is_reported_first_then_once_per_period_then_at_its_end() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut run = FailureRun::every(Duration::from_secs(30));
        assert_eq!(run.succeeded(at(0)), None, "no run to end");
        assert_eq!(run.failed(at(0)), Report::First);
        // Ten rounds a second for 30 s: all quiet until a period has passed.
        for ms in (100..30_000).step_by(100) {
            assert_eq!(run.failed(at(ms)), Report::Quiet, "at {ms} ms");
        }
        assert_eq!(
            run.failed(at(30_000)),
            Report::StillFailing {
                failures: 301,
                unreported: 300,
                lasted: Duration::from_secs(30),
            }
        );
        assert_eq!(run.failed(at(30_100)), Report::Quiet);
        assert_eq!(
            run.succeeded(at(31_000)),
            Some(Recovered {
                failures: 302,
                lasted: Duration::from_secs(31),
            })
        );
        // The next failure starts a new run, reported at once.
        assert_eq!(run.failed(at(40_000)), Report::First);
    }
}
