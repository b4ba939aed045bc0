//! Outbox row -> broker message: the protobuf event as value, the aggregate's key (order id,
//! or plugin name), the envelope repeated in CloudEvents-style headers, plus the row's own
//! extra headers. The row's `aggregate_type` picks the contract and the topic.

use oms_application::ports::AggregateType;

use crate::broker::{Message, Topics};
use crate::error::EventError;
use crate::event::{self, headers};
use crate::relay::OutboxRow;

/// A row's event as it goes on the wire.
struct Encoded {
    payload: Vec<u8>,
    /// The message key, also `ce_subject`.
    key: String,
}

/// Checks `row`'s payload against its aggregate's contract and encodes it.
fn encode(row: &OutboxRow) -> Result<Encoded, EventError> {
    match row.aggregate_type {
        AggregateType::Order => Ok(Encoded {
            payload: event::encode_payload(&row.payload)?,
            key: row.aggregate_id.to_string(),
        }),
        AggregateType::Plugin => {
            let (payload, key) = event::encode_plugin_changed(&row.payload)?;
            Ok(Encoded { payload, key })
        }
    }
}

/// The topic of `row`'s events.
fn topic(row: &OutboxRow, topics: &Topics) -> String {
    match row.aggregate_type {
        AggregateType::Order => topics.events.clone(),
        AggregateType::Plugin => topics.plugin_changes.clone(),
    }
}

fn envelope_headers(row: &OutboxRow, subject: &str, content_type: &str) -> Vec<(String, Vec<u8>)> {
    let mut hs: Vec<(String, Vec<u8>)> = vec![
        (headers::ID.into(), row.event_id.to_string().into_bytes()),
        (headers::TYPE.into(), row.event_type.clone().into_bytes()),
        (headers::SPEC_VERSION.into(), event::SPEC_VERSION.into()),
        (headers::SOURCE.into(), event::SOURCE.into()),
        (headers::SUBJECT.into(), subject.as_bytes().to_vec()),
        (
            headers::SCHEMA_VERSION.into(),
            row.schema_version.to_string().into_bytes(),
        ),
        (
            headers::CONTENT_TYPE.into(),
            content_type.as_bytes().to_vec(),
        ),
    ];
    // Extra headers (trace context) never override the envelope's.
    if let Some(extra) = row.headers.as_object() {
        for (k, v) in extra {
            if let Some(v) = v.as_str()
                && !hs.iter().any(|(name, _)| name == k)
            {
                hs.push((k.clone(), v.as_bytes().to_vec()));
            }
        }
    }
    hs
}

/// The event message for `row`, or why its payload breaks the contract.
pub(crate) fn event_message(row: &OutboxRow, topics: &Topics) -> Result<Message, EventError> {
    let encoded = encode(row)?;
    Ok(Message {
        topic: topic(row, topics),
        headers: envelope_headers(row, &encoded.key, event::CONTENT_TYPE),
        key: encoded.key,
        payload: encoded.payload,
    })
}

/// The dead-letter message for `row` (one dead-letter topic for every aggregate type; the
/// `ce_type` header tells them apart): the event if it encodes (so a consumer of the DLQ can
/// read it like any event), otherwise the raw JSON payload keyed by the aggregate id; plus
/// the error and attempts.
pub(crate) fn dead_letter_message(
    row: &OutboxRow,
    topic: &str,
    error: &str,
    attempts: u32,
) -> Message {
    let (encoded, content_type) = match encode(row) {
        Ok(encoded) => (encoded, event::CONTENT_TYPE),
        Err(_) => (
            Encoded {
                payload: row.payload.to_string().into_bytes(),
                key: row.aggregate_id.to_string(),
            },
            "application/json",
        ),
    };
    let mut hs = envelope_headers(row, &encoded.key, content_type);
    hs.push((headers::ERROR.into(), error.as_bytes().to_vec()));
    hs.push((headers::ATTEMPTS.into(), attempts.to_string().into_bytes()));
    hs.push((headers::OUTBOX_ID.into(), row.id.to_string().into_bytes()));
    Message {
        topic: topic.to_owned(),
        key: encoded.key,
        payload: encoded.payload,
        headers: hs,
    }
}
