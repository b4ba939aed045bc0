//! `redirectpay`: the reference provider of the `oms:plugins@0.2.0` payment contract
//! (`wit/v0.2/payment.wit`). Like fakepay it is deterministic and keeps its state in the host's
//! KV, but it also exercises what 0.2 adds: an `authorize` that answers `requires-action` with a
//! customer action, and inbound webhooks that settle it.
//!
//! | token | authorize |
//! |---|---|
//! | `tok_decline…` | `declined("card declined")` (recorded: `get-payment` reports status `declined`) |
//! | `tok_3ds_ttl_<N>` | `requires-action`, the action expiring N milliseconds from now |
//! | `tok_3ds…` (anything else) | `requires-action`, the action expiring `[config] action_ttl_ms` (default 600 000) from now |
//! | any other non-empty token | authorized at once |
//!
//! The customer action's URL is `[config] action_base_url` + `/` + the payment id. A payment
//! that requires action waits for a webhook (body in `webhook.rs`): `action.completed`
//! authorizes it, `action.failed` declines it. redirectpay never expires an action itself; the
//! host gives up at `expires-at-ms` and voids the payment, which cancels the action.
//!
//! All state lives in the host's KV (the manifest must grant `kv`): payments under
//! `payment/<id>` (the id is `rp_` + a hash of the authorize call's idempotency key, so no
//! shared sequence row) and the outcome of every mutating call under `idem/<idempotency-key>`.
//! Each mutation writes both in one `compare-and-swap`, so a retry or a concurrent duplicate
//! replays the recorded outcome instead of moving money twice. A repeated `authorize` answers
//! with the payment's current state, so a retry after the customer acted sees the outcome.

mod ledger;
mod record;
mod store;
mod webhook;

#[allow(unsafe_code)] // wit-bindgen's generated ABI glue is the only unsafe code here.
mod bindings {
    wit_bindgen::generate!({
        path: "../../wit/v0.2",
        world: "oms:plugins/payment-provider@0.2.0",
        // The capabilities and value types come from the 0.1 package (a dependency of 0.2):
        // generate their bindings here too, under `oms::plugins0_1_0`.
        generate_all,
    });

    use super::RedirectPay;
    export!(RedirectPay with_types_in self);
}

use bindings::exports::oms::plugins0_2_0::payment::{
    Authorization, AuthorizeRequest, Guest, IdempotencyKey, Money, Payment, PaymentError,
    PaymentId, PaymentLookup, Webhook,
};

struct RedirectPay;

impl Guest for RedirectPay {
    fn authorize(request: AuthorizeRequest) -> Result<Authorization, PaymentError> {
        ledger::authorize(request)
    }

    fn capture(
        id: PaymentId,
        amount: Option<Money>,
        idempotency_key: IdempotencyKey,
    ) -> Result<Payment, PaymentError> {
        ledger::capture(&id, amount, &idempotency_key)
    }

    fn void(id: PaymentId, idempotency_key: IdempotencyKey) -> Result<Payment, PaymentError> {
        ledger::void(&id, &idempotency_key)
    }

    fn refund(
        id: PaymentId,
        amount: Option<Money>,
        idempotency_key: IdempotencyKey,
    ) -> Result<Payment, PaymentError> {
        ledger::refund(&id, amount, &idempotency_key)
    }

    fn get_payment(lookup: PaymentLookup) -> Result<Option<Payment>, PaymentError> {
        ledger::get_payment(lookup)
    }

    fn handle_webhook(event: Webhook) -> Result<Option<Payment>, PaymentError> {
        let Some(event) = webhook::parse(&event.body)? else {
            return Ok(None);
        };
        ledger::settle_action(&event.payment_id, event.outcome)
    }
}
