//! `local-stock`: an inventory adapter whose stock lives in the host's KV, for demos and for
//! proving that reservations never oversell under concurrency.
//!
//! Keys (all in this plugin's KV namespace):
//! - `stock/<sku>`: units available, an ASCII-decimal counter. Seeded on first use from
//!   `[config] catalogue` (`"SKU=units,SKU=units"`); after that the KV value is the truth,
//!   so editing the catalogue does not reset stock that orders already took.
//! - `reservation/<id>`: the reserved lines and whether the reservation is held, released
//!   or committed.
//! - `reserve/<idempotency-key>`: the outcome of a `reserve`, so that a retry replays it.
//! - `calls/<operation>/<idempotency-key>`: how many times that call reached the adapter
//!   (replays included). Written only with `[config] count-calls = "true"` (off in the
//!   bundled manifest: it costs one more KV write per call); tests turn it on to see a call
//!   that reached the adapter but whose answer the host never recorded, and so prove the host
//!   sends each saga step exactly once.
//!
//! `reserve` is one `compare-and-swap`: it decrements every SKU with a lower bound of zero and
//! records the reservation and its outcome in the same atomic batch, so concurrent
//! reservations cannot oversell and a crash cannot leave stock taken without a record.
//! `release` and `commit` are idempotent by state: repeating them changes nothing.

mod catalogue;
mod reservations;

#[allow(unsafe_code)] // wit-bindgen's generated ABI glue is the only unsafe code here.
mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "inventory-adapter",
    });

    use super::LocalStock;
    export!(LocalStock with_types_in self);
}

use bindings::exports::oms::plugins::inventory::{Guest, InventoryError, Line, ReservationId};
use bindings::oms::plugins::config;
use bindings::oms::plugins::kv::{self, BatchOutcome, BoundedAdd, KvError};

struct LocalStock;

impl Guest for LocalStock {
    fn reserve(
        order_id: String,
        lines: Vec<Line>,
        idempotency_key: String,
    ) -> Result<ReservationId, InventoryError> {
        count_call("reserve", &idempotency_key)?;
        reservations::reserve(&order_id, &lines, &idempotency_key)
    }

    fn release(
        reservation_id: ReservationId,
        idempotency_key: String,
    ) -> Result<(), InventoryError> {
        count_call("release", &idempotency_key)?;
        reservations::release(&reservation_id, &idempotency_key)
    }

    fn commit(
        reservation_id: ReservationId,
        idempotency_key: String,
    ) -> Result<(), InventoryError> {
        count_call("commit", &idempotency_key)?;
        reservations::commit(&reservation_id, &idempotency_key)
    }
}

impl From<KvError> for InventoryError {
    fn from(error: KvError) -> Self {
        match error {
            KvError::Denied => InventoryError::Invalid(
                "local-stock needs the kv capability in its manifest".into(),
            ),
            KvError::Invalid(message) => InventoryError::Invalid(format!("kv: {message}")),
            KvError::Unavailable(message) => InventoryError::Transient(format!("kv: {message}")),
        }
    }
}

/// Counts a call under `calls/<operation>/<key>` before acting on it, when the manifest asks
/// for it (`[config] count-calls = "true"`); otherwise writes nothing.
fn count_call(operation: &str, idempotency_key: &str) -> Result<(), InventoryError> {
    if config::get("count-calls").as_deref() != Some("true") {
        return Ok(());
    }
    let add = BoundedAdd {
        key: format!("calls/{operation}/{idempotency_key}"),
        delta: 1,
        min: None,
        max: None,
    };
    match kv::increment(&[add])? {
        BatchOutcome::Applied(_) => Ok(()),
        other => Err(InventoryError::Transient(format!(
            "unbounded call counter not applied: {other:?}"
        ))),
    }
}
