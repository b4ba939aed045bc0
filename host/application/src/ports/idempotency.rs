//! The idempotency record store port.

use std::time::Duration;

use async_trait::async_trait;
use oms_domain::Timestamp;

use super::StoreError;
use crate::idempotency::{Fingerprint, IdempotencyClaim, IdempotencyScope, StoredOutcome};

/// What `begin` found for a key.
#[derive(Debug, Clone, PartialEq)]
pub enum BeginOutcome {
    /// The caller now holds the key's lease and must execute the request.
    Proceed(IdempotencyClaim),
    /// The request already completed with this outcome.
    Replay(StoredOutcome),
    /// The key was used with a different request fingerprint.
    Mismatch,
    /// Another request holds a live lease on the key.
    InProgress,
}

/// Idempotency records: one per (scope, key), holding a lease while the request runs and the
/// final outcome once it completed.
#[async_trait]
pub trait IdempotencyStore: Send + Sync {
    /// Claims the key or reports its state, atomically under concurrent callers. An
    /// in-progress record whose lease expired (its holder crashed) is taken over; an expired
    /// record is treated as absent.
    async fn begin(
        &self,
        scope: &IdempotencyScope,
        fingerprint: &Fingerprint,
        now: Timestamp,
        lease: Duration,
        ttl: Duration,
    ) -> Result<BeginOutcome, StoreError>;

    /// Stores a final error outcome for a claim (successes are stored by the order write).
    /// Fails with `LeaseLost` when the claim no longer holds the lease.
    async fn complete(
        &self,
        claim: &IdempotencyClaim,
        outcome: &StoredOutcome,
        now: Timestamp,
    ) -> Result<(), StoreError>;

    /// Deletes an in-progress record held by `claim`, so that a retry executes afresh.
    async fn release(&self, claim: &IdempotencyClaim) -> Result<(), StoreError>;

    /// Deletes records whose TTL passed; returns how many.
    async fn sweep_expired(&self, now: Timestamp, limit: u32) -> Result<u64, StoreError>;
}
