//! Test plugin `trap`: a payment provider that panics on every call. With `panic = "abort"`
//! the panic is a wasm `unreachable` trap, which the host must report as a typed "trapped"
//! failure and survive (dropping the instance's store).

#[allow(unsafe_code)] // wit-bindgen's generated ABI glue is the only unsafe code here.
mod bindings {
    wit_bindgen::generate!({
        path: "../../../wit",
        world: "payment-provider",
    });

    use super::Trap;
    export!(Trap with_types_in self);
}

use bindings::exports::oms::plugins::payment::{
    AuthorizeRequest, Guest, Money, Payment, PaymentError, PaymentLookup,
};

struct Trap;

fn boom(call: &str) -> ! {
    panic!("trap plugin: deliberate panic in {call}")
}

impl Guest for Trap {
    fn authorize(_: AuthorizeRequest) -> Result<Payment, PaymentError> {
        boom("authorize")
    }

    fn capture(_: String, _: Option<Money>, _: String) -> Result<Payment, PaymentError> {
        boom("capture")
    }

    fn void(_: String, _: String) -> Result<Payment, PaymentError> {
        boom("void")
    }

    fn refund(_: String, _: Option<Money>, _: String) -> Result<Payment, PaymentError> {
        boom("refund")
    }

    fn get_payment(_: PaymentLookup) -> Result<Option<Payment>, PaymentError> {
        boom("get-payment")
    }
}
