//! The order store port.

use async_trait::async_trait;
use oms_domain::{CustomerId, Order, OrderId, OrderStatus, Timestamp, Version};

use super::StoreError;
use crate::idempotency::IdempotencyCompletion;
use crate::outbox::OutboxMessage;
use crate::saga::SagaInstance;

/// One atomic change: everything in it commits together or not at all.
#[derive(Debug)]
pub struct OrderWrite<'a> {
    /// The order as it is after the change (its `version` is the new version).
    pub order: &'a Order,
    /// `None` inserts a new order; `Some(v)` updates `WHERE version = v`.
    pub expected_version: Option<Version>,
    /// Events recorded in the outbox in the same transaction.
    pub outbox: &'a [OutboxMessage],
    /// Completes (or, unclaimed, inserts completed) the idempotency record in the same
    /// transaction, so a replay can never miss an executed effect.
    pub idempotency: Option<&'a IdempotencyCompletion>,
    /// A saga to start in the same transaction (the placement saga of a new order, the
    /// cancellation saga of an order moving to CANCELLING): the order change and the work
    /// that follows it are durable together or not at all.
    pub start_saga: Option<&'a SagaInstance>,
    /// Starts `start_saga` already leased, to the process that will drive it at once (the
    /// placement driven by the request that created the order). Workers leave it alone until
    /// the lease runs out, after which any of them resumes it, as after a crash.
    pub lease_saga_to: Option<SagaLease<'a>>,
}

/// Who holds a saga's lease, and until when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SagaLease<'a> {
    pub owner: &'a str,
    pub until: Timestamp,
}

/// Filters and keyset cursor of a listing; results are newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OrderQuery {
    pub status: Option<OrderStatus>,
    pub customer_id: Option<CustomerId>,
    /// Only orders older than this one (the last id of the previous page).
    pub before: Option<OrderId>,
    pub limit: u32,
}

/// Orders, their lines and the outbox.
#[async_trait]
pub trait OrderStore: Send + Sync {
    async fn get(&self, id: OrderId) -> Result<Option<Order>, StoreError>;

    /// Newest first (by id, which is a UUIDv7), at most `query.limit` orders.
    async fn list(&self, query: &OrderQuery) -> Result<Vec<Order>, StoreError>;

    /// Applies `write` atomically. Fails with `VersionConflict { current }` when the stored
    /// version differs from `expected_version`, `NotFound` when the order does not exist,
    /// `LeaseLost` when a claimed idempotency completion no longer holds the key's lease, and
    /// `KeyExists` when an unclaimed one finds the key already recorded.
    async fn save(&self, write: OrderWrite<'_>) -> Result<(), StoreError>;
}
