//! Test plugin `memory-bomb`: a payment provider that tries to allocate and touch 1 GiB.
//!
//! `authorize` with payment token `try-reserve` asks with `Vec::try_reserve` and returns
//! `transient` when the host's memory cap refuses; any other call uses an infallible
//! allocation, which aborts (traps) when refused. Both paths must leave the host standing.

#[allow(unsafe_code)] // wit-bindgen's generated ABI glue is the only unsafe code here.
mod bindings {
    wit_bindgen::generate!({
        path: "../../../wit",
        world: "payment-provider",
    });

    use super::MemoryBomb;
    export!(MemoryBomb with_types_in self);
}

use core::hint::black_box;

use bindings::exports::oms::plugins::payment::{
    AuthorizeRequest, Guest, Money, Payment, PaymentError, PaymentLookup,
};

const ONE_GIB: usize = 1 << 30;
/// Touching one byte per wasm page forces every page to be committed.
const PAGE: usize = 64 * 1024;

struct MemoryBomb;

fn explode() -> PaymentError {
    let mut memory = vec![0u8; ONE_GIB];
    for offset in (0..ONE_GIB).step_by(PAGE) {
        memory[offset] = 1;
    }
    black_box(&memory);
    PaymentError::Invalid("memory-bomb: the host let 1 GiB through".into())
}

fn try_explode() -> PaymentError {
    let mut memory: Vec<u8> = Vec::new();
    match memory.try_reserve_exact(ONE_GIB) {
        Ok(()) => {
            memory.resize(ONE_GIB, 1);
            black_box(&memory);
            PaymentError::Invalid("memory-bomb: the host let 1 GiB through".into())
        }
        Err(e) => PaymentError::Transient(format!("memory-bomb: allocation refused: {e}")),
    }
}

impl Guest for MemoryBomb {
    fn authorize(request: AuthorizeRequest) -> Result<Payment, PaymentError> {
        match request.payment_token.as_str() {
            "try-reserve" => Err(try_explode()),
            _ => Err(explode()),
        }
    }

    fn capture(_: String, _: Option<Money>, _: String) -> Result<Payment, PaymentError> {
        Err(explode())
    }

    fn void(_: String, _: String) -> Result<Payment, PaymentError> {
        Err(explode())
    }

    fn refund(_: String, _: Option<Money>, _: String) -> Result<Payment, PaymentError> {
        Err(explode())
    }

    fn get_payment(_: PaymentLookup) -> Result<Option<Payment>, PaymentError> {
        Err(explode())
    }
}
