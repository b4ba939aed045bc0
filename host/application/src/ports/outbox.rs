//! The outbox port, relay side. Rows are written by [`super::OrderStore::save`] (in the
//! order's transaction) and by every change of the plugin set
//! ([`super::PluginReleaseStore`], in the transaction that audits it); this port is everything that happens to them afterwards: the relay
//! leases, publishes, retries, dead-letters and prunes them, and an operator redrives dead
//! letters.
//!
//! Claiming is a lease: the claimed rows' `next_attempt_at` moves past the lease, so no other
//! relay takes them while this one publishes, and a relay that dies mid-batch only delays its
//! rows until the lease ends. No transaction stays open while the broker is called.
//!
//! Per-order ordering: a row is claimable only when no earlier unpublished row of the same
//! aggregate (order, or plugin) exists. A failed row therefore blocks its order's later rows
//! until it is published or dead-lettered, and two relays can never publish one order's
//! events out of order.

use std::sync::Arc;

use async_trait::async_trait;
use oms_domain::{OrderId, Timestamp, Version};
use tokio::sync::watch;
use uuid::Uuid;

use super::StoreError;

/// What an outbox row is about (the `aggregate_type` column): it decides the row's topic, its
/// message key and the contract its payload is checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AggregateType {
    /// An order event ([`crate::outbox::OutboxPayload`] -> `oms.events.v1.OrderEvent`),
    /// `aggregate_id` the order id.
    Order,
    /// A change of the plugin set ([`crate::outbox::PluginChangedPayload`] ->
    /// `oms.events.v1.PluginChanged`), `aggregate_id` the name's
    /// [`crate::outbox::plugin_aggregate_id`].
    Plugin,
}

impl AggregateType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Order => "order",
            Self::Plugin => "plugin",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "order" => Some(Self::Order),
            "plugin" => Some(Self::Plugin),
            _ => None,
        }
    }
}

/// One claimed outbox row.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxRow {
    pub id: i64,
    pub event_id: Uuid,
    pub aggregate_type: AggregateType,
    /// The order id, or the plugin's [`crate::outbox::plugin_aggregate_id`]: rows of one
    /// aggregate are published in id order.
    pub aggregate_id: Uuid,
    pub event_type: String,
    pub schema_version: u32,
    /// The stored document, as written ([`crate::outbox::OutboxPayload`]) unless the row was
    /// tampered with: the relay checks it against the contract and dead-letters a row whose
    /// payload breaks it. A stored text that is not even JSON arrives as a JSON string.
    pub payload: serde_json::Value,
    /// Extra message headers (a JSON object of strings).
    pub headers: serde_json::Value,
    pub occurred_at: Timestamp,
    pub created_at: Timestamp,
    /// Failed attempts so far.
    pub attempts: u32,
}

/// A row of `dead_letters`.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    /// The row's id in the outbox, which redrive restores.
    pub id: i64,
    pub event_id: Uuid,
    pub aggregate_type: AggregateType,
    pub aggregate_id: Uuid,
    pub event_type: String,
    pub attempts: u32,
    pub last_error: String,
    pub failed_at: Timestamp,
    pub redriven_at: Option<Timestamp>,
}

impl DeadLetter {
    /// The order the event is about, for an order event.
    pub fn order_id(&self) -> Option<OrderId> {
        (self.aggregate_type == AggregateType::Order)
            .then_some(OrderId::from_uuid(self.aggregate_id))
    }
}

/// Outbox lag and dead-letter size.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Backlog {
    pub unpublished: i64,
    /// `created_at` of the oldest unpublished row.
    pub oldest_created_at: Option<Timestamp>,
    /// Dead letters not yet redriven.
    pub dead_letters: i64,
}

/// The outbox and its dead letters, as the relay and operators use them.
#[async_trait]
pub trait OutboxStore: Send + Sync {
    /// Marks the rows `published` (acknowledged by the broker, see [`Self::mark_published`])
    /// as published at `published_at`, then leases up to `limit` due rows (each the oldest
    /// unpublished row of its order, counting the rows just marked as published) until
    /// `lease_until`; returns them in id order. One commit for both, so a busy relay pays
    /// one write per round. Safe with several relays: a row is leased to one relay at a time.
    /// The store may commit this without waiting for its flush (PostgreSQL does): after a
    /// database crash a lease or mark may be gone, and the row is claimed and published again
    /// (a duplicate, never a loss).
    async fn claim(
        &self,
        published: &[i64],
        published_at: Timestamp,
        now: Timestamp,
        lease_until: Timestamp,
        limit: u32,
    ) -> Result<Vec<OutboxRow>, StoreError>;

    /// Marks rows published. Where the database can notify other processes (PostgreSQL),
    /// this commit (and the marking part of [`Self::claim`]) also tells them which order
    /// versions were published: [`Self::watch_published`] hears it.
    async fn mark_published(&self, ids: &[i64], now: Timestamp) -> Result<(), StoreError>;

    /// Records a failed attempt; the row becomes due again at `retry_at`.
    async fn mark_failed(
        &self,
        id: i64,
        error: &str,
        retry_at: Timestamp,
    ) -> Result<(), StoreError>;

    /// Moves a row to `dead_letters` (atomically), which unblocks its order's later rows. A
    /// row dead-lettered again after a redrive updates its record.
    async fn dead_letter(
        &self,
        id: i64,
        attempts: u32,
        error: &str,
        now: Timestamp,
    ) -> Result<(), StoreError>;

    /// Puts a dead letter back into the outbox under its original id with a fresh attempt
    /// count, due `now`. `Ok(false)` when it was already redriven (and has not failed since);
    /// `NotFound` when there is no dead letter with this id.
    async fn redrive(&self, id: i64, now: Timestamp) -> Result<bool, StoreError>;

    /// Dead letters, newest failure first; `pending_only` leaves out redriven ones.
    async fn dead_letters(
        &self,
        pending_only: bool,
        limit: u32,
    ) -> Result<Vec<DeadLetter>, StoreError>;

    /// Deletes up to `limit` rows published before `cutoff`; returns how many.
    async fn prune(&self, cutoff: Timestamp, limit: u32) -> Result<u64, StoreError>;

    async fn backlog(&self) -> Result<Backlog, StoreError>;

    /// Calls `on_change(order, version)` for every order event any process's relay marks
    /// published, until `shutdown` turns true: how a process hears of order changes it did
    /// not commit itself (`WatchOrder`). Hints only, possibly late or lost (readers poll as
    /// well). Returns at once where the database has no such signal.
    async fn watch_published(
        &self,
        on_change: Arc<dyn Fn(OrderId, Version) + Send + Sync>,
        shutdown: watch::Receiver<bool>,
    );
}
