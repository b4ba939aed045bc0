//! Outbox messages: the events a write records for later publication.

use oms_domain::{Order, OrderEvent, OrderEventKind, OrderId, Timestamp};
use serde::Serialize;
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
    /// The event document (JSON): envelope fields plus the order snapshot after the change.
    pub payload: serde_json::Value,
    pub occurred_at: Timestamp,
}

#[derive(Serialize)]
struct Payload<'a> {
    event_id: String,
    event_type: &'a str,
    schema_version: u32,
    order_id: String,
    occurred_at_ms: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    amount: Option<MoneyDoc>,
    /// `OrderRefundRequested` with a reason: the caller's reason.
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
    order: OrderSnapshot,
}

impl OutboxMessage {
    /// The message for `event`, carrying the order as it is after the change.
    pub fn for_event(order: &Order, event: &OrderEvent) -> Self {
        let event_id = Uuid::now_v7();
        let amount = match &event.kind {
            OrderEventKind::Refunded { amount }
            | OrderEventKind::RefundRequested { amount, .. } => Some(MoneyDoc {
                amount_minor: amount.amount_minor(),
                currency: amount.currency().to_string(),
            }),
            _ => None,
        };
        let reason = match &event.kind {
            OrderEventKind::RefundRequested { reason, .. } if !reason.is_empty() => {
                Some(reason.as_str())
            }
            _ => None,
        };
        let payload = Payload {
            event_id: event_id.to_string(),
            event_type: event.kind.event_type(),
            schema_version: event.kind.schema_version(),
            order_id: order.id().to_string(),
            occurred_at_ms: event.occurred_at.unix_millis(),
            amount,
            reason,
            order: OrderSnapshot::from(order),
        };
        Self {
            event_id,
            aggregate_id: order.id(),
            event_type: event.kind.event_type(),
            schema_version: event.kind.schema_version(),
            // Serialising plain strings and integers cannot fail.
            payload: serde_json::to_value(&payload).unwrap_or(serde_json::Value::Null),
            occurred_at: event.occurred_at,
        }
    }
}
