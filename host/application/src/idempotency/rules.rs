//! What `begin` does with a key that already has a record: the decision, kept apart from the
//! statements (insert-if-absent, compare-and-set) of each [`crate::ports::IdempotencyStore`]
//! so that every store (the SQL one, the in-memory one of the test kit) applies the same rules.

use super::{Fingerprint, StoredOutcome};
use crate::ports::{BeginOutcome, StoreError};
use serde::Deserialize;
use uuid::Uuid;

pub const IN_PROGRESS: &str = "in_progress";
pub const COMPLETED: &str = "completed";

/// An `idempotency_keys` row as `begin` reads it.
#[derive(Debug, Clone)]
pub struct KeyRecord {
    pub fingerprint: String,
    pub state: String,
    pub lease_token: Option<Uuid>,
    pub locked_until: Option<i64>,
    pub outcome: Option<serde_json::Value>,
    pub expires_at: i64,
}

/// The verdict on an existing record.
#[derive(Debug)]
pub enum Verdict {
    /// Answer the caller without touching the record.
    Answer(BeginOutcome),
    /// The record is dead (past its TTL, or its holder's lease ran out): replace it with a
    /// fresh claim, but only if it is still exactly `record` (compare-and-set on state,
    /// lease token and expiry), so that of several concurrent takers exactly one wins.
    TakeOver,
}

/// Stripe's rules, in this order: an expired record counts as absent; a different request
/// under the key is refused; a completed request is replayed; a running one is reported as
/// in progress until its lease runs out, after which the next request takes it over.
pub fn judge(
    record: &KeyRecord,
    fingerprint: &Fingerprint,
    now_ms: i64,
) -> Result<Verdict, StoreError> {
    if record.expires_at <= now_ms {
        return Ok(Verdict::TakeOver);
    }
    if record.fingerprint != fingerprint.to_hex() {
        return Ok(Verdict::Answer(BeginOutcome::Mismatch));
    }
    match record.state.as_str() {
        COMPLETED => {
            let json = record.outcome.as_ref().ok_or_else(|| {
                StoreError::Corrupt("completed idempotency record without outcome".into())
            })?;
            let outcome = StoredOutcome::deserialize(json).map_err(|e| {
                StoreError::Corrupt(format!("stored idempotency outcome unreadable: {e}"))
            })?;
            Ok(Verdict::Answer(BeginOutcome::Replay(outcome)))
        }
        IN_PROGRESS => match record.locked_until {
            Some(until) if until > now_ms => Ok(Verdict::Answer(BeginOutcome::InProgress)),
            _ => Ok(Verdict::TakeOver),
        },
        other => Err(StoreError::Corrupt(format!(
            "unknown idempotency record state {other}"
        ))),
    }
}

/// How many times `begin` re-reads after losing a race (the record vanished or another
/// caller took it over in between) before giving up. Each lost race means another request
/// made progress, so a handful of rounds only runs out under pathological churn.
pub const MAX_ROUNDS: usize = 8;

pub fn contention() -> StoreError {
    StoreError::Unavailable("idempotency key under heavy contention; retry".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(state: &str, locked_until: Option<i64>, expires_at: i64) -> KeyRecord {
        KeyRecord {
            fingerprint: Fingerprint::of("/m", b"a").to_hex(),
            state: state.to_owned(),
            lease_token: locked_until.map(|_| Uuid::nil()),
            locked_until,
            outcome: None,
            expires_at,
        }
    }

    #[test]
    fn verdicts() {
        let fp = Fingerprint::of("/m", b"a");
        let other = Fingerprint::of("/m", b"b");
        let live = record(IN_PROGRESS, Some(200), 1000);
        assert!(matches!(
            judge(&live, &fp, 100),
            Ok(Verdict::Answer(BeginOutcome::InProgress))
        ));
        assert!(matches!(
            judge(&live, &other, 100),
            Ok(Verdict::Answer(BeginOutcome::Mismatch))
        ));
        assert!(matches!(judge(&live, &fp, 200), Ok(Verdict::TakeOver)));
        // Past its TTL a record is absent, even for a different request.
        assert!(matches!(judge(&live, &other, 1000), Ok(Verdict::TakeOver)));
        // A completed record without its outcome is corrupt, not replayable.
        assert!(judge(&record(COMPLETED, None, 1000), &fp, 100).is_err());
    }
}
