//! `email-text`: formats customer-facing order events as plain-text e-mails.
//!
//! Writes to the customer on what changes their order for them: `order.confirmed`,
//! `order.fulfilled` (shipped), `order.rejected` (out of stock), `order.payment_failed`,
//! `order.shipping_address_updated`, `order.cancelled` and `order.refunded`. The host's other
//! events are steps on the way (`order.created` before the saga decides, requests for a
//! cancellation, fulfillment or refund, an operator's `order.compensation_failed`) and yield
//! no message: a customer is never told of an order a compensation can still undo. Configuration (all optional):
//! `shop-name` (signature and subject prefix) and `support-email` (a line inviting replies).

mod money;
mod template;

#[allow(unsafe_code)] // wit-bindgen's generated ABI glue is the only unsafe code here.
mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "notification-formatter",
    });

    use super::EmailText;
    export!(EmailText with_types_in self);
}

use bindings::exports::oms::plugins::formatter::{Channel, Event, FormatError, Guest, Message};
use bindings::oms::plugins::log::{self, Level};

struct EmailText;

impl Guest for EmailText {
    fn format(event: Event) -> Result<Vec<Message>, FormatError> {
        let Some(wording) = template::wording(&event.event_type) else {
            return Ok(Vec::new());
        };
        let Some(recipient) = event.order.customer.email.clone().filter(|e| !e.is_empty()) else {
            // Not an error: the customer simply chose no e-mail, and retrying will not change it.
            log::log(
                Level::Debug,
                "no e-mail address; nothing to send",
                &[("event-id".into(), event.event_id.clone())],
            );
            return Ok(Vec::new());
        };
        let settings = template::Settings::from_config();
        Ok(vec![Message {
            channel: Channel::Email,
            recipient,
            subject: Some(template::subject(&settings, &wording, &event)),
            body: template::body(&settings, &wording, &event),
            content_type: "text/plain; charset=utf-8".into(),
        }])
    }
}
