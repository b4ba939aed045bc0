//! The event contract on the wire: `oms.events.v1.OrderEvent` as protobuf bytes, keyed by
//! order id, and `oms.events.v1.PluginChanged`, keyed by plugin name, with CloudEvents-style
//! headers (see `proto/oms/events/v1/events.proto`).

use oms_application::outbox::{BuildDoc, OutboxPayload, PluginChangedPayload};
use oms_application::snapshot::MoneyDoc;
use prost::Message as _;
use serde::Deserialize;

use crate::error::EventError;

/// Code generated from `proto/oms/events/v1/events.proto`.
#[allow(clippy::all, missing_docs)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/oms.events.v1.rs"));
}

/// Header names (Kafka binding of CloudEvents, binary mode) and this system's extensions.
pub mod headers {
    /// The event id (UUIDv7); consumers deduplicate on it.
    pub const ID: &str = "ce_id";
    pub const TYPE: &str = "ce_type";
    /// Always [`super::SPEC_VERSION`].
    pub const SPEC_VERSION: &str = "ce_specversion";
    pub const SOURCE: &str = "ce_source";
    /// The order id or plugin name (also the key).
    pub const SUBJECT: &str = "ce_subject";
    /// The event type's schema version (decimal).
    pub const SCHEMA_VERSION: &str = "ce_dataschemaversion";
    pub const CONTENT_TYPE: &str = "content-type";
    /// Dead-letter messages: why the message was dead-lettered.
    pub const ERROR: &str = "oms_error";
    /// Dead-letter messages from the relay: failed publish attempts.
    pub const ATTEMPTS: &str = "oms_attempts";
    /// Dead-letter messages from the relay: the outbox row id (the redrive handle).
    pub const OUTBOX_ID: &str = "oms_outbox_id";
    /// Dead-letter messages from a consumer: topic/partition/offset of the original message.
    pub const ORIGIN: &str = "oms_origin";
}

/// CloudEvents spec version announced in `ce_specversion`.
pub const SPEC_VERSION: &str = "1.0";
/// `ce_source` of every event.
pub const SOURCE: &str = "oms";
/// `content-type` of event messages.
pub const CONTENT_TYPE: &str = "application/protobuf";

/// Encodes an outbox row's JSON payload (an [`OutboxPayload`], unless it was tampered with)
/// as the protobuf `OrderEvent`.
pub fn encode_payload(payload: &serde_json::Value) -> Result<Vec<u8>, EventError> {
    let doc =
        OutboxPayload::deserialize(payload).map_err(|e| EventError::Payload(e.to_string()))?;
    Ok(to_proto(doc).encode_to_vec())
}

/// Encodes a plugin-change row's JSON payload (a [`PluginChangedPayload`], unless it was
/// tampered with) as the protobuf `PluginChanged`; also returns the plugin name, the key.
pub fn encode_plugin_changed(payload: &serde_json::Value) -> Result<(Vec<u8>, String), EventError> {
    let doc = PluginChangedPayload::deserialize(payload)
        .map_err(|e| EventError::Payload(e.to_string()))?;
    if doc.plugin.is_empty() {
        return Err(EventError::Payload("the plugin name is empty".into()));
    }
    let build = |b: BuildDoc| pb::PluginBuild {
        version: b.version,
        sha256: b.sha256,
    };
    let key = doc.plugin.clone();
    let event = pb::PluginChanged {
        event_id: doc.event_id,
        event_type: doc.event_type,
        schema_version: doc.schema_version,
        plugin: doc.plugin,
        action: doc.action,
        actor: doc.actor,
        occurred_at_ms: doc.occurred_at_ms,
        from: doc.from.map(build),
        to: Some(build(doc.to)),
    };
    Ok((event.encode_to_vec(), key))
}

/// Decodes a `PluginChanged` message value.
pub fn decode_plugin_changed(bytes: &[u8]) -> Result<pb::PluginChanged, EventError> {
    let event = pb::PluginChanged::decode(bytes).map_err(|e| EventError::Decode(e.to_string()))?;
    if event.event_id.is_empty() || event.plugin.is_empty() || event.to.is_none() {
        return Err(EventError::Decode(
            "event id, plugin and target build are required".into(),
        ));
    }
    Ok(event)
}

/// Decodes an `OrderEvent` message value.
pub fn decode(bytes: &[u8]) -> Result<pb::OrderEvent, EventError> {
    let event = pb::OrderEvent::decode(bytes).map_err(|e| EventError::Decode(e.to_string()))?;
    if event.event_id.is_empty() || event.order_id.is_empty() || event.order.is_none() {
        return Err(EventError::Decode(
            "event id, order id and order snapshot are required".into(),
        ));
    }
    Ok(event)
}

fn money(m: MoneyDoc) -> pb::Money {
    pb::Money {
        amount_minor: m.amount_minor,
        currency: m.currency,
    }
}

fn to_proto(doc: OutboxPayload) -> pb::OrderEvent {
    let o = doc.order;
    let a = o.shipping_address;
    pb::OrderEvent {
        event_id: doc.event_id,
        event_type: doc.event_type,
        schema_version: doc.schema_version,
        order_id: doc.order_id,
        occurred_at_ms: doc.occurred_at_ms,
        amount: doc.amount.map(money),
        reason: doc.reason,
        saga: doc.saga.map(|s| pb::SagaRef {
            saga_id: s.saga_id,
            kind: s.kind,
            step: s.step,
            reason: s.reason,
        }),
        order: Some(pb::OrderSnapshot {
            order_id: o.order_id,
            customer_id: o.customer_id,
            status: o.status,
            payment_status: o.payment_status,
            reservation_status: o.reservation_status,
            items: o
                .items
                .into_iter()
                .map(|l| pb::LineItem {
                    sku: l.sku,
                    quantity: l.quantity,
                    unit_price: Some(money(l.unit_price)),
                })
                .collect(),
            total: Some(money(o.total)),
            captured: Some(money(o.captured)),
            refunded: Some(money(o.refunded)),
            payment_provider: o.payment_provider,
            shipping_address: Some(pb::Address {
                recipient: a.recipient,
                line1: a.line1,
                line2: a.line2,
                city: a.city,
                postal_code: a.postal_code,
                country: a.country,
                email: a.email,
            }),
            failure_reason: o.failure_reason,
            version: o.version,
            created_at_ms: o.created_at_ms,
            updated_at_ms: o.updated_at_ms,
        }),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// A `SagaParked` row as `OutboxMessage::saga_parked` writes it.
    fn saga_parked_payload() -> serde_json::Value {
        let eur = |amount_minor: i64| serde_json::json!({"amount_minor": amount_minor, "currency": "EUR"});
        serde_json::json!({
            "event_id": "0190d1c0-0000-7000-8000-000000000001",
            "event_type": "SagaParked",
            "schema_version": 1,
            "order_id": "0190d1c0-0000-7000-8000-000000000002",
            "occurred_at_ms": 1_700_000_000_000_i64,
            "saga": {
                "saga_id": "0190d1c0-0000-7000-8000-000000000003",
                "kind": "fulfill_order",
                "step": "capture-payment",
                "reason": "transient: provider busy"
            },
            "order": {
                "order_id": "0190d1c0-0000-7000-8000-000000000002",
                "customer_id": "c-1",
                "status": "CONFIRMED",
                "payment_status": "AUTHORIZED",
                "reservation_status": "COMMITTED",
                "items": [{"sku": "DEMO-1", "quantity": 1, "unit_price": eur(1250)}],
                "total": eur(1250),
                "captured": eur(0),
                "refunded": eur(0),
                "payment_provider": "fakepay",
                "shipping_address": {
                    "recipient": "Ada", "line1": "1 Main St", "line2": "", "city": "Berlin",
                    "postal_code": "10115", "country": "DE", "email": ""
                },
                "failure_reason": null,
                "version": 4,
                "created_at_ms": 1_700_000_000_000_i64,
                "updated_at_ms": 1_700_000_000_000_i64
            }
        })
    }

    #[test]
    fn a_parked_saga_reaches_the_wire_with_its_reference() {
        let event = decode(&encode_payload(&saga_parked_payload()).unwrap()).unwrap();
        assert_eq!(event.event_type, "SagaParked");
        let saga = event.saga.unwrap();
        assert_eq!(saga.kind, "fulfill_order");
        assert_eq!(saga.step, "capture-payment");
        assert_eq!(saga.saga_id, "0190d1c0-0000-7000-8000-000000000003");
        assert_eq!(event.order.unwrap().version, 4);
    }

    #[test]
    fn a_plugin_change_reaches_the_wire_keyed_by_plugin_name() {
        let message = oms_application::outbox::PluginChangedMessage::new(
            "fakepay",
            "promote",
            "admin@127.0.0.1:5000",
            Some(BuildDoc {
                version: "1.0.0".into(),
                sha256: "aa".into(),
            }),
            BuildDoc {
                version: "1.1.0".into(),
                sha256: "bb".into(),
            },
            oms_domain::Timestamp::from_unix_millis(1_700_000_000_000),
        );
        let payload = serde_json::to_value(&message.payload).unwrap();
        let (bytes, key) = encode_plugin_changed(&payload).unwrap();
        assert_eq!(key, "fakepay");
        let event = decode_plugin_changed(&bytes).unwrap();
        assert_eq!(event.event_id, message.event_id.to_string());
        assert_eq!(event.event_type, "PluginChanged");
        assert_eq!(
            (event.action.as_str(), event.actor.as_str()),
            ("promote", "admin@127.0.0.1:5000")
        );
        assert_eq!(event.from.unwrap().version, "1.0.0");
        assert_eq!(event.to.unwrap().sha256, "bb");
        assert_eq!(event.occurred_at_ms, 1_700_000_000_000);
    }

    #[test]
    fn a_plugin_change_without_a_plugin_name_breaks_the_contract() {
        let mut payload = serde_json::to_value(
            oms_application::outbox::PluginChangedMessage::new(
                "fakepay",
                "seed",
                "seed:host",
                None,
                BuildDoc {
                    version: "1".into(),
                    sha256: "aa".into(),
                },
                oms_domain::Timestamp::from_unix_millis(1),
            )
            .payload,
        )
        .unwrap();
        payload["plugin"] = serde_json::json!("");
        assert!(matches!(
            encode_plugin_changed(&payload),
            Err(EventError::Payload(_))
        ));
        // An order event's document is not a plugin change either.
        assert!(encode_plugin_changed(&saga_parked_payload()).is_err());
    }
}
