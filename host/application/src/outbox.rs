//! Outbox messages: the events a write records for later publication, and the one document
//! type (`OutboxPayload`) that the writer stores and the relay reads back.

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
    /// The event document: envelope fields plus the order snapshot after the change.
    pub payload: OutboxPayload,
    pub occurred_at: Timestamp,
    /// Extra message headers: the trace context of the work that wrote the event
    /// ([`crate::trace_context`]).
    pub headers: std::collections::BTreeMap<String, String>,
}

/// The event type of a saga parked for an operator. Not a domain event: the order may not
/// have changed at all (a fulfillment or refund parks after its pivot), yet an operator must
/// hear of it.
pub const SAGA_PARKED: &str = "SagaParked";

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
    /// `OrderRefundRequested` with a reason: the caller's reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// `SagaParked`: the saga that stopped for an operator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub saga: Option<SagaDoc>,
    pub order: OrderSnapshot,
}

/// The saga an event is about, in a document (`SagaParked`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SagaDoc {
    pub saga_id: String,
    /// `place_order`, `cancel_order`, `fulfill_order`, `refund_order`.
    pub kind: String,
    /// The step it stopped at.
    pub step: String,
    /// Why it stopped.
    pub reason: String,
}

/// What an event adds to the envelope and the order snapshot.
#[derive(Default)]
struct Extras {
    amount: Option<MoneyDoc>,
    reason: Option<String>,
    saga: Option<SagaDoc>,
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
                Some(reason.as_str().to_owned())
            }
            _ => None,
        };
        Self::build(
            order,
            event.kind.event_type(),
            event.kind.schema_version(),
            event.occurred_at,
            Extras {
                amount,
                reason,
                saga: None,
            },
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
        Self::build(
            order,
            SAGA_PARKED,
            1,
            now,
            Extras {
                saga: Some(doc),
                ..Extras::default()
            },
        )
    }

    fn build(
        order: &Order,
        event_type: &'static str,
        schema_version: u32,
        occurred_at: Timestamp,
        extras: Extras,
    ) -> Self {
        let event_id = Uuid::now_v7();
        Self {
            event_id,
            aggregate_id: order.id(),
            event_type,
            schema_version,
            payload: OutboxPayload {
                event_id: event_id.to_string(),
                event_type: event_type.to_owned(),
                schema_version,
                order_id: order.id().to_string(),
                occurred_at_ms: occurred_at.unix_millis(),
                amount: extras.amount,
                reason: extras.reason,
                saga: extras.saga,
                order: OrderSnapshot::from(order),
            },
            occurred_at,
            headers: crate::trace_context::current(),
        }
    }
}
