//! Test plugin `infinite-loop`: a payment provider that never returns from any call, without
//! calling the host, so only the host's epoch deadline can stop it.

#[allow(unsafe_code)] // wit-bindgen's generated ABI glue is the only unsafe code here.
mod bindings {
    wit_bindgen::generate!({
        path: "../../../wit",
        world: "payment-provider",
    });

    use super::InfiniteLoop;
    export!(InfiniteLoop with_types_in self);
}

use core::hint::black_box;

use bindings::exports::oms::plugins::payment::{
    AuthorizeRequest, Guest, Money, Payment, PaymentError, PaymentLookup,
};

struct InfiniteLoop;

/// `black_box` keeps the optimiser from proving the loop pointless.
fn spin() -> ! {
    let mut counter = 0u64;
    loop {
        counter = black_box(counter.wrapping_add(1));
    }
}

impl Guest for InfiniteLoop {
    fn authorize(_: AuthorizeRequest) -> Result<Payment, PaymentError> {
        spin()
    }

    fn capture(_: String, _: Option<Money>, _: String) -> Result<Payment, PaymentError> {
        spin()
    }

    fn void(_: String, _: String) -> Result<Payment, PaymentError> {
        spin()
    }

    fn refund(_: String, _: Option<Money>, _: String) -> Result<Payment, PaymentError> {
        spin()
    }

    fn get_payment(_: PaymentLookup) -> Result<Option<Payment>, PaymentError> {
        spin()
    }
}
