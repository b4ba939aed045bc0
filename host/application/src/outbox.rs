//! Outbox messages: the events a write records for later publication.

use oms_domain::{Order, OrderEvent, OrderEventKind, OrderId, Timestamp};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::saga::SagaInstance;
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

/// The event type of a saga parked for an operator. Not a domain event: the order may not
/// have changed at all (a fulfilment or refund parks after its pivot), yet an operator must
/// hear of it.
pub const SAGA_PARKED: &str = "SagaParked";

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
    #[serde(skip_serializing_if = "Option::is_none")]
    saga: Option<SagaDoc>,
    order: OrderSnapshot,
}

/// The saga an event is about, in a document (`SagaParked`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SagaDoc {
    pub saga_id: String,
    /// `place_order`, `cancel_order`, `fulfil_order`, `refund_order`.
    pub kind: String,
    /// The step it stopped at.
    pub step: String,
    /// Why it stopped.
    pub reason: String,
}

impl OutboxMessage {
    /// The message for `event`, carrying the order as it is after the change.
    pub fn for_event(order: &Order, event: &OrderEvent) -> Self {
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
        Self::build(
            order,
            event.kind.event_type(),
            event.kind.schema_version(),
            event.occurred_at,
            amount,
            reason,
            None,
        )
    }

    /// `SagaParked`: `saga` stopped for an operator at `step`; `order` as it is now.
    pub fn saga_parked(
        order: &Order,
        saga: &SagaInstance,
        step: &str,
        reason: &str,
        now: Timestamp,
    ) -> Self {
        let doc = SagaDoc {
            saga_id: saga.id.to_string(),
            kind: saga.kind.as_str().to_owned(),
            step: step.to_owned(),
            reason: reason.to_owned(),
        };
        Self::build(order, SAGA_PARKED, 1, now, None, None, Some(doc))
    }

    fn build(
        order: &Order,
        event_type: &'static str,
        schema_version: u32,
        occurred_at: Timestamp,
        amount: Option<MoneyDoc>,
        reason: Option<&str>,
        saga: Option<SagaDoc>,
    ) -> Self {
        let event_id = Uuid::now_v7();
        let payload = Payload {
            event_id: event_id.to_string(),
            event_type,
            schema_version,
            order_id: order.id().to_string(),
            occurred_at_ms: occurred_at.unix_millis(),
            amount,
            reason,
            saga,
            order: OrderSnapshot::from(order),
        };
        Self {
            event_id,
            aggregate_id: order.id(),
            event_type,
            schema_version,
            // Serialising plain strings and integers cannot fail.
            payload: serde_json::to_value(&payload).unwrap_or(serde_json::Value::Null),
            occurred_at,
        }
    }
}
