//! Outbox messages: the events a write records for later publication, and the one document
//! type (`OutboxPayload`) that the writer stores and the relay reads back.

use oms_domain::{Order, OrderEvent, OrderEventKind, OrderId, Timestamp};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::saga::SagaInstance;
use crate::snapshot::{MoneyDoc, OrderSnapshot};

/// An order event for the transactional outbox (an `aggregate_type` `order` row). Written in
/// the same transaction as the order change; the relay publishes it with `aggregate_id` as the
/// message key (per-order ordering).
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

/// The event type of a change of the plugin set.
pub const PLUGIN_CHANGED: &str = "PluginChanged";

/// The namespace of [`plugin_aggregate_id`] (a fixed UUID: changing it would split one
/// plugin's history across two aggregates).
const PLUGIN_NAMESPACE: Uuid = Uuid::from_u128(0x8f3c_1a2e_5b7d_4e91_a6c0_3d2f_9b7e_4a15);

/// The outbox `aggregate_id` of the plugin `name`: its UUIDv5, the same in every process and
/// never an order id (those are UUIDv7), so the relay orders one plugin's changes as it
/// orders one order's events.
pub fn plugin_aggregate_id(name: &str) -> Uuid {
    Uuid::new_v5(&PLUGIN_NAMESPACE, name.as_bytes())
}

/// A build of a plugin, in a document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildDoc {
    pub version: String,
    pub sha256: String,
}

/// The document stored in `outbox.payload` for a change of the plugin set (an `aggregate_type`
/// `plugin` row), published as `oms.events.v1.PluginChanged`. It repeats the `plugin_audit`
/// row written in the same transaction, so the broker sees every change the audit trail holds
/// and no other.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginChangedPayload {
    pub event_id: String,
    pub event_type: String,
    pub schema_version: u32,
    pub plugin: String,
    /// `seed`, `upload`, `rollback`, `disable`, `enable`, `canary`, `promote` or `abort`.
    pub action: String,
    /// Who made the change (`admin@<peer>`, `seed:<process>`, `auto-rollback:<process>`).
    pub actor: String,
    pub occurred_at_ms: i64,
    /// The build that served before the change; absent for a seed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<BuildDoc>,
    /// The build the change is about, as the audit trail names it.
    pub to: BuildDoc,
}

/// One change of the plugin set, ready for the outbox.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginChangedMessage {
    pub event_id: Uuid,
    pub aggregate_id: Uuid,
    pub payload: PluginChangedPayload,
    pub occurred_at: Timestamp,
    /// The trace context of the work that made the change.
    pub headers: std::collections::BTreeMap<String, String>,
}

impl PluginChangedMessage {
    /// `action` on `plugin` by `actor` at `now`, from build `from` to build `to`.
    pub fn new(
        plugin: &str,
        action: &str,
        actor: &str,
        from: Option<BuildDoc>,
        to: BuildDoc,
        now: Timestamp,
    ) -> Self {
        let event_id = Uuid::now_v7();
        Self {
            event_id,
            aggregate_id: plugin_aggregate_id(plugin),
            payload: PluginChangedPayload {
                event_id: event_id.to_string(),
                event_type: PLUGIN_CHANGED.to_owned(),
                schema_version: 1,
                plugin: plugin.to_owned(),
                action: action.to_owned(),
                actor: actor.to_owned(),
                occurred_at_ms: now.unix_millis(),
                from,
                to,
            },
            occurred_at: now,
            headers: crate::trace_context::current(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plugin_keeps_one_aggregate_id_that_no_order_can_have() {
        let id = plugin_aggregate_id("fakepay");
        assert_eq!(id, plugin_aggregate_id("fakepay"));
        assert_ne!(id, plugin_aggregate_id("fakepay2"));
        assert_eq!(id.get_version_num(), 5);
        assert_eq!(OrderId::generate().as_uuid().get_version_num(), 7);
    }
}
