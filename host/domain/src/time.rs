//! Time as the domain sees it: milliseconds since the Unix epoch, supplied by the caller so
//! that the domain stays deterministic and testable.

use std::time::Duration;

/// A point in time in milliseconds since the Unix epoch (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

impl Timestamp {
    pub fn from_unix_millis(millis: i64) -> Self {
        Self(millis)
    }

    pub fn unix_millis(&self) -> i64 {
        self.0
    }

    /// The current wall-clock time. The domain never calls this itself; callers pass `now` in.
    pub fn now() -> Self {
        let millis = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        Self(millis)
    }

    /// `self + d`, saturating: a huge configured duration (a TTL, `Duration::MAX` for "no
    /// deadline") means "forever", never an overflow. The one place that adds a duration.
    pub fn saturating_add(self, d: Duration) -> Self {
        Self(self.0.saturating_add(millis(d)))
    }

    /// `self - d`, saturating.
    pub fn saturating_sub(self, d: Duration) -> Self {
        Self(self.0.saturating_sub(millis(d)))
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adding_durations_saturates() {
        let t = Timestamp::from_unix_millis(1_000);
        assert_eq!(
            t.saturating_add(Duration::from_millis(500)).unix_millis(),
            1_500
        );
        assert_eq!(
            t.saturating_sub(Duration::from_millis(1_500)).unix_millis(),
            -500
        );
        assert_eq!(t.saturating_add(Duration::MAX).unix_millis(), i64::MAX);
        let before_epoch = Timestamp::from_unix_millis(-1_000);
        assert_eq!(
            before_epoch.saturating_sub(Duration::MAX).unix_millis(),
            i64::MIN
        );
    }
}
