//! `webhook-json`: formats every order event as a JSON webhook body (see `payload.rs` for the
//! schema), addressed to `[config] url`. `[config] event-types`, a comma-separated list,
//! restricts which event types are sent (default: all).

mod payload;

#[allow(unsafe_code)] // wit-bindgen's generated ABI glue is the only unsafe code here.
mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "notification-formatter",
    });

    use super::WebhookJson;
    export!(WebhookJson with_types_in self);
}

use bindings::exports::oms::plugins::formatter::{Channel, Event, FormatError, Guest, Message};
use bindings::oms::plugins::config;

struct WebhookJson;

impl Guest for WebhookJson {
    fn format(event: Event) -> Result<Vec<Message>, FormatError> {
        let url = config::get("url")
            .filter(|url| !url.is_empty())
            .ok_or_else(|| FormatError::Invalid("[config] url is not set".into()))?;
        if !wanted(&event.event_type) {
            return Ok(Vec::new());
        }
        let body = serde_json::to_string(&payload::Payload::from(&event))
            .map_err(|e| FormatError::Invalid(format!("encoding event: {e}")))?;
        Ok(vec![Message {
            channel: Channel::Webhook,
            recipient: url,
            subject: None,
            body,
            content_type: "application/json".into(),
        }])
    }
}

fn wanted(event_type: &str) -> bool {
    match config::get("event-types") {
        None => true,
        Some(list) => list
            .split(',')
            .map(str::trim)
            .any(|wanted| wanted == event_type),
    }
}
