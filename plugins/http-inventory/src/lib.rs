//! `http-inventory`: an inventory adapter for an external stock service, reached over
//! `wasi:http/outgoing-handler` so that the host's allowlist decides where it may connect.
//!
//! Configuration: `[config] base-url` (e.g. `http://127.0.0.1:8080/stock`; its `host:port` must
//! be in `[capabilities] http.allow`), and optionally the secret `api-token`, sent as a bearer
//! token. The wire protocol is in `protocol.rs`.

mod client;
mod protocol;

#[allow(unsafe_code)] // wit-bindgen's generated ABI glue is the only unsafe code here.
mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "http-inventory-adapter",
        // The wasi:http, wasi:io and wasi:clocks bindings are generated here too: the `wasi`
        // crate pins an older 0.2.x and would add a second copy of every interface.
        generate_all,
    });

    use super::HttpInventory;
    export!(HttpInventory with_types_in self);
}

use bindings::exports::oms::plugins::inventory::{Guest, InventoryError, Line, ReservationId};

struct HttpInventory;

impl Guest for HttpInventory {
    fn reserve(
        order_id: String,
        lines: Vec<Line>,
        idempotency_key: String,
    ) -> Result<ReservationId, InventoryError> {
        protocol::reserve(&order_id, &lines, &idempotency_key)
    }

    fn release(
        reservation_id: ReservationId,
        idempotency_key: String,
    ) -> Result<(), InventoryError> {
        protocol::settle("release", &reservation_id, &idempotency_key)
    }

    fn commit(
        reservation_id: ReservationId,
        idempotency_key: String,
    ) -> Result<(), InventoryError> {
        protocol::settle("commit", &reservation_id, &idempotency_key)
    }
}
