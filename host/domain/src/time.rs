//! Time as the domain sees it: milliseconds since the Unix epoch, supplied by the caller so
//! that the domain stays deterministic and testable.

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
}
