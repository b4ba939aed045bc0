//! The processed-events port: consumer-side deduplication (table `processed_events`).

use std::collections::HashSet;

use async_trait::async_trait;
use oms_domain::Timestamp;
use uuid::Uuid;

use super::StoreError;

/// Which events each consumer has handled, so that a redelivered event is skipped. Both
/// calls take a whole batch of events: one read and one write per batch, not per event.
#[async_trait]
pub trait ProcessedEventStore: Send + Sync {
    /// Those of `event_ids` that `consumer` has recorded as processed.
    async fn processed_among(
        &self,
        consumer: &str,
        event_ids: &[Uuid],
    ) -> Result<HashSet<Uuid>, StoreError>;

    /// Records the events as processed by `consumer`, in one statement and one commit;
    /// recording one again (or twice in the list) is a no-op.
    async fn record_all(
        &self,
        consumer: &str,
        event_ids: &[Uuid],
        now: Timestamp,
    ) -> Result<(), StoreError>;
}
