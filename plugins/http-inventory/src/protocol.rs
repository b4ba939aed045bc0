//! The stock service's JSON protocol. Every call is a `POST` that carries the idempotency key
//! both in the body and as an `Idempotency-Key` header, so the service deduplicates retries.
//!
//! | call | path | success | refusal |
//! |---|---|---|---|
//! | reserve | `{base-url}/reserve` `{"order_id","idempotency_key","lines":[{"sku","quantity"}]}` | 200/201 `{"reservation_id"}` | 409 `{"out_of_stock":[sku...]}` |
//! | release | `{base-url}/release` `{"reservation_id","idempotency_key"}` | 2xx | 409/422 = invalid |
//! | commit | `{base-url}/commit` `{"reservation_id","idempotency_key"}` | 2xx | 409/422 = invalid |
//!
//! Any other 4xx is `invalid` (permanent); 408, 429, 5xx and transport failures are `transient`.

use serde::{Deserialize, Serialize};

use crate::bindings::exports::oms::plugins::inventory::{InventoryError, Line};
use crate::client::{self, Response};

#[derive(Serialize)]
struct WireLine<'a> {
    sku: &'a str,
    quantity: u32,
}

#[derive(Serialize)]
struct ReserveRequest<'a> {
    order_id: &'a str,
    idempotency_key: &'a str,
    lines: Vec<WireLine<'a>>,
}

#[derive(Deserialize)]
struct Reserved {
    reservation_id: String,
}

#[derive(Deserialize)]
struct Shortage {
    out_of_stock: Vec<String>,
}

#[derive(Serialize)]
struct SettleRequest<'a> {
    reservation_id: &'a str,
    idempotency_key: &'a str,
}

pub fn reserve(
    order_id: &str,
    lines: &[Line],
    idempotency_key: &str,
) -> Result<String, InventoryError> {
    if lines.is_empty() || lines.iter().any(|line| line.quantity == 0) {
        return Err(InventoryError::Invalid(
            "a reservation needs lines with positive quantities".into(),
        ));
    }
    let request = ReserveRequest {
        order_id,
        idempotency_key,
        lines: lines
            .iter()
            .map(|line| WireLine {
                sku: &line.sku,
                quantity: line.quantity,
            })
            .collect(),
    };
    let response = client::post_json("/reserve", &encode(&request)?, idempotency_key)?;
    match response.status {
        200 | 201 => decode::<Reserved>(&response).map(|r| r.reservation_id),
        409 => Err(InventoryError::OutOfStock(
            decode::<Shortage>(&response)?.out_of_stock,
        )),
        _ => Err(refusal(&response)),
    }
}

/// `release` or `commit`: the service answers 2xx when the reservation is (already) in the
/// requested state.
pub fn settle(
    call: &str,
    reservation_id: &str,
    idempotency_key: &str,
) -> Result<(), InventoryError> {
    let request = SettleRequest {
        reservation_id,
        idempotency_key,
    };
    let response = client::post_json(&format!("/{call}"), &encode(&request)?, idempotency_key)?;
    match response.status {
        200..=299 => Ok(()),
        _ => Err(refusal(&response)),
    }
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, InventoryError> {
    serde_json::to_vec(value).map_err(|e| InventoryError::Invalid(format!("encoding request: {e}")))
}

/// A success body we cannot parse means the service broke its contract; retrying the same key
/// may get a good answer once it is fixed, so this is transient, not a permanent refusal.
fn decode<'a, T: Deserialize<'a>>(response: &'a Response) -> Result<T, InventoryError> {
    serde_json::from_slice(&response.body).map_err(|e| {
        InventoryError::Transient(format!(
            "stock service answered {} with an unexpected body: {e}",
            response.status
        ))
    })
}

fn refusal(response: &Response) -> InventoryError {
    let message = format!(
        "stock service answered {}: {}",
        response.status,
        String::from_utf8_lossy(&response.body)
    );
    match response.status {
        408 | 429 | 500..=599 => InventoryError::Transient(message),
        _ => InventoryError::Invalid(message),
    }
}
