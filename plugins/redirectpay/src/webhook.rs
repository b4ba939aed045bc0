//! The provider's inbound webhook. The host has already authenticated it (with the secret the
//! manifest's `[webhook]` table names); this only reads what it says. The body is JSON:
//!
//! ```json
//! {"type": "action.completed", "payment_id": "rp_0123456789abcdef"}
//! ```
//!
//! `type` is `action.completed` (the customer completed the action: authorize the payment) or
//! `action.failed` (the customer failed or abandoned it: decline the payment); any other type
//! is acknowledged and ignored. Other fields are ignored.

use serde::Deserialize;

use crate::bindings::exports::oms::plugins0_2_0::payment::PaymentError;

/// What the customer did about a payment's action.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActionOutcome {
    Completed,
    Failed,
}

impl ActionOutcome {
    pub fn event_type(self) -> &'static str {
        match self {
            ActionOutcome::Completed => "action.completed",
            ActionOutcome::Failed => "action.failed",
        }
    }
}

/// A webhook that concerns a payment's action.
pub struct ActionEvent {
    pub payment_id: String,
    pub outcome: ActionOutcome,
}

#[derive(Deserialize)]
struct Body {
    #[serde(rename = "type")]
    event_type: String,
    payment_id: String,
}

/// The event a webhook body carries; none for an event type redirectpay does not act on.
/// A body that is not the JSON above is `invalid`: redelivering it cannot help.
pub fn parse(body: &[u8]) -> Result<Option<ActionEvent>, PaymentError> {
    let body: Body = serde_json::from_slice(body)
        .map_err(|e| PaymentError::Invalid(format!("webhook body: {e}")))?;
    let outcome = match body.event_type.as_str() {
        "action.completed" => ActionOutcome::Completed,
        "action.failed" => ActionOutcome::Failed,
        _ => return Ok(None),
    };
    Ok(Some(ActionEvent {
        payment_id: body.payment_id,
        outcome,
    }))
}
