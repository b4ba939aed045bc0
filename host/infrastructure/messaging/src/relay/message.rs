//! Outbox row -> broker message: the protobuf event as value, the order id as key, the
//! envelope repeated in CloudEvents-style headers, plus the row's own extra headers.

use crate::broker::Message;
use crate::error::EventError;
use crate::event::{self, headers};
use crate::relay::OutboxRow;

fn envelope_headers(row: &OutboxRow, content_type: &str) -> Vec<(String, Vec<u8>)> {
    let mut hs: Vec<(String, Vec<u8>)> = vec![
        (headers::ID.into(), row.event_id.to_string().into_bytes()),
        (headers::TYPE.into(), row.event_type.clone().into_bytes()),
        (headers::SPEC_VERSION.into(), event::SPEC_VERSION.into()),
        (headers::SOURCE.into(), event::SOURCE.into()),
        (
            headers::SUBJECT.into(),
            row.aggregate_id.to_string().into_bytes(),
        ),
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
pub(crate) fn event_message(row: &OutboxRow, topic: &str) -> Result<Message, EventError> {
    Ok(Message {
        topic: topic.to_owned(),
        key: row.aggregate_id.to_string(),
        payload: event::encode_payload(&row.payload)?,
        headers: envelope_headers(row, event::CONTENT_TYPE),
    })
}

/// The dead-letter message for `row`: the event if it encodes (so a consumer of the DLQ can
/// read it like any event), otherwise the raw JSON payload; plus the error and attempts.
pub(crate) fn dead_letter_message(
    row: &OutboxRow,
    topic: &str,
    error: &str,
    attempts: u32,
) -> Message {
    let (payload, content_type) = match event::encode_payload(&row.payload) {
        Ok(bytes) => (bytes, event::CONTENT_TYPE),
        Err(_) => (row.payload.to_string().into_bytes(), "application/json"),
    };
    let mut hs = envelope_headers(row, content_type);
    hs.push((headers::ERROR.into(), error.as_bytes().to_vec()));
    hs.push((headers::ATTEMPTS.into(), attempts.to_string().into_bytes()));
    hs.push((headers::OUTBOX_ID.into(), row.id.to_string().into_bytes()));
    Message {
        topic: topic.to_owned(),
        key: row.aggregate_id.to_string(),
        payload,
        headers: hs,
    }
}
