//! The processed-events port: consumer-side deduplication (table `processed_events`).

use async_trait::async_trait;
use oms_domain::Timestamp;
use uuid::Uuid;

use super::StoreError;

/// Which events each consumer has handled, so that a redelivered event is skipped.
#[async_trait]
pub trait ProcessedEventStore: Send + Sync {
    async fn is_processed(&self, consumer: &str, event_id: Uuid) -> Result<bool, StoreError>;

    /// Records the event as processed by `consumer`; recording it again is a no-op.
    async fn record(
        &self,
        consumer: &str,
        event_id: Uuid,
        now: Timestamp,
    ) -> Result<(), StoreError>;
}
