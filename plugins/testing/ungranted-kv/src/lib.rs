//! Test plugin `ungranted-kv`: a payment provider whose manifest does not grant `kv`, yet it
//! writes to KV on `authorize` and reads it on `get-payment`. The host must answer `denied`
//! (or refuse to load it); this plugin turns `denied` into `invalid("kv denied")` so a test can
//! see which happened.

#[allow(unsafe_code)] // wit-bindgen's generated ABI glue is the only unsafe code here.
mod bindings {
    wit_bindgen::generate!({
        path: "../../../wit",
        world: "payment-provider",
    });

    use super::UngrantedKv;
    export!(UngrantedKv with_types_in self);
}

use bindings::exports::oms::plugins::payment::{
    AuthorizeRequest, Guest, Money, Payment, PaymentError, PaymentLookup, PaymentStatus,
};
use bindings::oms::plugins::kv::{self, KvError};

struct UngrantedKv;

fn denied(error: KvError) -> PaymentError {
    match error {
        KvError::Denied => PaymentError::Invalid("kv denied".into()),
        other => PaymentError::Invalid(format!("kv failed otherwise: {other:?}")),
    }
}

fn unsupported() -> Result<Payment, PaymentError> {
    Err(PaymentError::Invalid(
        "ungranted-kv only probes authorize and get-payment".into(),
    ))
}

impl Guest for UngrantedKv {
    fn authorize(request: AuthorizeRequest) -> Result<Payment, PaymentError> {
        kv::set("probe", b"written").map_err(denied)?;
        // Reaching here means the host granted KV although the manifest did not.
        Ok(Payment {
            id: "ungranted-kv-wrote".into(),
            order_id: request.order_id,
            status: PaymentStatus::Authorized,
            authorized: request.amount.clone(),
            captured: Money {
                amount_minor: 0,
                currency: request.amount.currency.clone(),
            },
            refunded: Money {
                amount_minor: 0,
                currency: request.amount.currency,
            },
        })
    }

    fn capture(_: String, _: Option<Money>, _: String) -> Result<Payment, PaymentError> {
        unsupported()
    }

    fn void(_: String, _: String) -> Result<Payment, PaymentError> {
        unsupported()
    }

    fn refund(_: String, _: Option<Money>, _: String) -> Result<Payment, PaymentError> {
        unsupported()
    }

    fn get_payment(_: PaymentLookup) -> Result<Option<Payment>, PaymentError> {
        kv::get("probe").map_err(denied)?;
        Ok(None)
    }
}
