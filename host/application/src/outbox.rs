//! Outbox messages: the events a write records for later publication, and the one document
//! type (`OutboxPayload`) that the writer stores and the relay reads back.

use oms_domain::{Order, OrderEvent, OrderEventKind, OrderId, Timestamp};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::snapshot::{MoneyDoc, OrderSnapshot};

/// One row of the transactional outbox. Written in the same transaction as the order change;
/// the relay publishes it with `aggregate_id` as the message key (per-order ordering).
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxMessage {
    /// Unique per event; consumers deduplicate on it.
    pub event_id: Uuid,
    pub aggregate_id: OrderId,
    pub event_type: &'static str,
    pub schema_version: u32,
    /// The event document: envelope fields plus the order snapshot after the change.
    pub payload: OutboxPayload,
    pub occurred_at: Timestamp,
}

/// The event document stored in `outbox.payload` (JSON). The relay turns it into the
/// published `oms.events.v1.OrderEvent`; a stored document that does not read back as this
/// type breaks the contract and is dead-lettered rather than published.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxPayload {
    pub event_id: String,
    pub event_type: String,
    pub schema_version: u32,
    pub order_id: String,
    pub occurred_at_ms: i64,
    /// The amount of a refund event; absent for every other event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount: Option<MoneyDoc>,
    pub order: OrderSnapshot,
}

impl OutboxMessage {
    /// The message for `event`, carrying the order as it is after the change.
    pub fn for_event(order: &Order, event: &OrderEvent) -> Self {
        let event_id = Uuid::now_v7();
        let amount = match &event.kind {
            OrderEventKind::Refunded { amount } | OrderEventKind::RefundRequested { amount } => {
                Some(MoneyDoc {
                    amount_minor: amount.amount_minor(),
                    currency: amount.currency().to_string(),
                })
            }
            _ => None,
        };
        Self {
            event_id,
            aggregate_id: order.id(),
            event_type: event.kind.event_type(),
            schema_version: event.kind.schema_version(),
            payload: OutboxPayload {
                event_id: event_id.to_string(),
                event_type: event.kind.event_type().to_owned(),
                schema_version: event.kind.schema_version(),
                order_id: order.id().to_string(),
                occurred_at_ms: event.occurred_at.unix_millis(),
                amount,
                order: OrderSnapshot::from(order),
            },
            occurred_at: event.occurred_at,
        }
    }
}
