//! `fakepay`: a deterministic payment provider whose behaviour is chosen by the payment token,
//! so that saga tests can script every outcome a real PSP produces.
//!
//! | token | authorize |
//! |---|---|
//! | `tok_ok` | authorized |
//! | `tok_decline` | `declined` (recorded: `get-payment` reports status `declined`) |
//! | `tok_flaky` | `transient` on the first two attempts per idempotency key, then authorized |
//! | `tok_slow` | spins for `[config] slow-ms` (default 60 000) before authorizing, so the host's deadline stops it first |
//! | anything else | `invalid` |
//!
//! All state lives in the host's KV (the manifest must grant `kv`): payments under
//! `payment/<id>` (the id is `fp_` + the authorize call's idempotency key, so no shared
//! sequence row) and the outcome of every mutating call under `idem/<idempotency-key>`. Each
//! mutation writes both in one `compare-and-swap`, so a retry or a concurrent duplicate replays
//! the recorded outcome instead of moving money twice.
//!
//! With `[config] count-calls = "true"` (off in the bundled manifest: it costs one more KV
//! write per call), fakepay also counts under `calls/<operation>/<idempotency-key>` how many
//! times that call reached the provider (replays included). Only tests turn it on: it shows a
//! call that reached the provider but whose answer the host never recorded, so they can prove
//! the host sends each saga step exactly once.
//!
//! With `[config] crash = "true"`, every call crashes (a Wasm trap), as a broken build of a
//! provider would; with `[config] memory-bomb = "true"`, every call tries to take 1 GiB, which
//! the host's memory limit refuses (the failed allocation aborts the call). Tests swap such a
//! manifest in over the same component to break the provider for orders placed before the
//! swap: their follow-up calls are pinned to the component that made their hold, so a broken
//! build of *another* component would not reach them.

mod ledger;
mod record;
mod store;

#[allow(unsafe_code)] // wit-bindgen's generated ABI glue is the only unsafe code here.
mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "payment-provider",
    });

    use super::FakePay;
    export!(FakePay with_types_in self);
}

use bindings::exports::oms::plugins::payment::{
    AuthorizeRequest, Guest, Money, Payment, PaymentError, PaymentId, PaymentLookup,
};
use bindings::oms::plugins::config;

struct FakePay;

impl Guest for FakePay {
    fn authorize(request: AuthorizeRequest) -> Result<Payment, PaymentError> {
        count_call("authorize", &request.idempotency_key)?;
        ledger::authorize(request)
    }

    fn capture(
        id: PaymentId,
        amount: Option<Money>,
        idempotency_key: String,
    ) -> Result<Payment, PaymentError> {
        count_call("capture", &idempotency_key)?;
        ledger::capture(&id, amount, &idempotency_key)
    }

    fn void(id: PaymentId, idempotency_key: String) -> Result<Payment, PaymentError> {
        count_call("void", &idempotency_key)?;
        ledger::void(&id, &idempotency_key)
    }

    fn refund(
        id: PaymentId,
        amount: Option<Money>,
        idempotency_key: String,
    ) -> Result<Payment, PaymentError> {
        count_call("refund", &idempotency_key)?;
        ledger::refund(&id, amount, &idempotency_key)
    }

    fn get_payment(lookup: PaymentLookup) -> Result<Option<Payment>, PaymentError> {
        misbehave_if_told();
        ledger::get_payment(lookup)
    }
}

/// Counts a call under `calls/<operation>/<key>` before acting on it, when the manifest asks
/// for it (`[config] count-calls = "true"`); otherwise writes nothing.
fn count_call(operation: &str, idempotency_key: &str) -> Result<(), PaymentError> {
    misbehave_if_told();
    if config::get("count-calls").as_deref() != Some("true") {
        return Ok(());
    }
    store::bump(&format!("calls/{operation}/{idempotency_key}")).map(|_| ())
}

/// Misbehaves as the manifest says: traps (`[config] crash = "true"`) or runs into the
/// host's memory limit (`[config] memory-bomb = "true"`), as a broken build would.
fn misbehave_if_told() {
    if config::get("crash").as_deref() == Some("true") {
        // A panic aborts the instance: the host sees a trap, as from a broken build.
        panic!("fakepay: crash = \"true\" in the manifest");
    }
    if config::get("memory-bomb").as_deref() == Some("true") {
        // Infallible and touched page by page: the allocation the limit refuses aborts the
        // call, so the host must report the limit, not an anonymous trap.
        let mut memory = vec![0u8; MEMORY_BOMB_BYTES];
        for offset in (0..MEMORY_BOMB_BYTES).step_by(WASM_PAGE) {
            memory[offset] = 1;
        }
        core::hint::black_box(&memory);
        panic!("fakepay: the host let a memory bomb through its limit");
    }
}

/// Far above any memory limit a manifest may set for fakepay.
const MEMORY_BOMB_BYTES: usize = 1 << 30;
const WASM_PAGE: usize = 64 * 1024;
