//! Reserve, release and commit as atomic KV batches.

use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::bindings::exports::oms::plugins::inventory::{InventoryError, Line};
use crate::bindings::oms::plugins::kv::{self, BatchOutcome, BoundedAdd, Swap};
use crate::bindings::oms::plugins::log::{self, Level};
use crate::catalogue::{seed_absent, stock_key};

/// Release and commit re-read and retry when a concurrent call changed the same reservation
/// between their read and their swap; after this many tries the caller retries later.
const MAX_SWAP_ATTEMPTS: usize = 8;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum State {
    Held,
    Released,
    Committed,
}

#[derive(Debug, Serialize, Deserialize)]
struct Reservation {
    order_id: String,
    lines: Vec<(String, u32)>,
    state: State,
}

/// The outcome of a `reserve`, replayed on a retry with the same key. `fingerprint` catches a
/// key reused for a different request.
#[derive(Debug, Serialize, Deserialize)]
struct ReserveOutcome {
    fingerprint: String,
    result: Result<String, Vec<String>>,
}

impl ReserveOutcome {
    fn replay(self, fingerprint: &str) -> Result<String, InventoryError> {
        if self.fingerprint != fingerprint {
            return Err(InventoryError::Invalid(
                "idempotency key already used for a different reservation".into(),
            ));
        }
        self.result.map_err(InventoryError::OutOfStock)
    }
}

fn reservation_key(id: &str) -> String {
    format!("reservation/{id}")
}

fn outcome_key(idempotency_key: &str) -> String {
    format!("reserve/{idempotency_key}")
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, InventoryError> {
    serde_json::to_vec(value).map_err(|e| InventoryError::Invalid(format!("encoding record: {e}")))
}

fn load<T: DeserializeOwned>(key: &str) -> Result<Option<(Vec<u8>, T)>, InventoryError> {
    let Some(raw) = kv::get(key)? else {
        return Ok(None);
    };
    let value = serde_json::from_slice(&raw)
        .map_err(|e| InventoryError::Invalid(format!("corrupt record {key}: {e}")))?;
    Ok(Some((raw, value)))
}

fn validate(lines: &[Line], idempotency_key: &str) -> Result<(), InventoryError> {
    if idempotency_key.is_empty() {
        return Err(InventoryError::Invalid("empty idempotency key".into()));
    }
    if lines.is_empty() {
        return Err(InventoryError::Invalid("no lines to reserve".into()));
    }
    for (i, line) in lines.iter().enumerate() {
        if line.sku.is_empty() || line.quantity == 0 {
            return Err(InventoryError::Invalid(format!(
                "line {i} needs a sku and a positive quantity"
            )));
        }
        // A SKU twice would become the same counter twice in one batch, which KV refuses.
        if lines[..i].iter().any(|other| other.sku == line.sku) {
            return Err(InventoryError::Invalid(format!(
                "sku {} appears twice",
                line.sku
            )));
        }
    }
    Ok(())
}

pub fn reserve(
    order_id: &str,
    lines: &[Line],
    idempotency_key: &str,
) -> Result<String, InventoryError> {
    validate(lines, idempotency_key)?;
    let fingerprint = lines.iter().fold(format!("{order_id}|"), |acc, line| {
        format!("{acc}{}x{};", line.sku, line.quantity)
    });
    // No read first: the batch's condition that the outcome be absent is the replay check
    // (a conflict), and the host reads the batch's keys in one round trip.
    let id = format!("rsv-{idempotency_key}");
    let reservation = Reservation {
        order_id: order_id.to_owned(),
        lines: lines.iter().map(|l| (l.sku.clone(), l.quantity)).collect(),
        state: State::Held,
    };
    let outcome = ReserveOutcome {
        fingerprint: fingerprint.clone(),
        result: Ok(id.clone()),
    };
    let swaps = [
        Swap {
            key: outcome_key(idempotency_key),
            expected: None,
            new: Some(encode(&outcome)?),
        },
        Swap {
            key: reservation_key(&id),
            expected: None,
            new: Some(encode(&reservation)?),
        },
    ];
    let takes: Vec<BoundedAdd> = lines
        .iter()
        .map(|line| BoundedAdd {
            key: stock_key(&line.sku),
            delta: -i64::from(line.quantity),
            min: Some(0),
            max: None,
        })
        .collect();

    let mut seeded = false;
    let outcome = loop {
        match kv::compare_and_swap(&swaps, &takes)? {
            // Perhaps a SKU's first reservation: an absent counter is seeded, and the batch
            // tried once more, also when another call seeded it meanwhile (its "out of
            // bounds" was then about a counter that did not exist yet, not a shortage).
            BatchOutcome::OutOfBounds(keys) if !seeded => {
                seed_absent(&keys)?;
                seeded = true;
            }
            outcome => break outcome,
        }
    };
    match outcome {
        BatchOutcome::Applied(_) => {
            log::log(
                Level::Debug,
                "reserved",
                &[
                    ("reservation-id".into(), id.clone()),
                    ("order-id".into(), order_id.into()),
                ],
            );
            Ok(id)
        }
        // Only a concurrent reserve with the same key can hold these two keys: its outcome
        // is ours.
        BatchOutcome::Conflict(_) => match load::<ReserveOutcome>(&outcome_key(idempotency_key))? {
            Some((_, winner)) => winner.replay(&fingerprint),
            None => Err(InventoryError::Transient(
                "concurrent reserve with the same key; retry".into(),
            )),
        },
        BatchOutcome::OutOfBounds(keys) => {
            let short: Vec<String> = keys
                .iter()
                .map(|key| key.strip_prefix("stock/").unwrap_or(key).to_owned())
                .collect();
            remember_shortage(idempotency_key, fingerprint, short.clone())?;
            Err(InventoryError::OutOfStock(short))
        }
    }
}

/// Records an out-of-stock answer so that a retry gets the same one even if stock came back
/// in between. If a concurrent same-key call recorded first, its answer stands.
fn remember_shortage(
    idempotency_key: &str,
    fingerprint: String,
    short: Vec<String>,
) -> Result<(), InventoryError> {
    let outcome = ReserveOutcome {
        fingerprint,
        result: Err(short),
    };
    let swap = Swap {
        key: outcome_key(idempotency_key),
        expected: None,
        new: Some(encode(&outcome)?),
    };
    kv::compare_and_swap(&[swap], &[])?;
    Ok(())
}

pub fn release(reservation_id: &str, idempotency_key: &str) -> Result<(), InventoryError> {
    settle(reservation_id, idempotency_key, State::Released)
}

pub fn commit(reservation_id: &str, idempotency_key: &str) -> Result<(), InventoryError> {
    settle(reservation_id, idempotency_key, State::Committed)
}

/// Moves a held reservation to `target`. Releasing gives the units back in the same batch;
/// committing keeps them taken. Reaching `target` again is a no-op; reaching the other final
/// state is refused.
fn settle(
    reservation_id: &str,
    idempotency_key: &str,
    target: State,
) -> Result<(), InventoryError> {
    if idempotency_key.is_empty() {
        return Err(InventoryError::Invalid("empty idempotency key".into()));
    }
    let key = reservation_key(reservation_id);
    for _ in 0..MAX_SWAP_ATTEMPTS {
        let Some((raw, mut reservation)) = load::<Reservation>(&key)? else {
            return Err(InventoryError::Invalid(format!(
                "unknown reservation {reservation_id}"
            )));
        };
        match reservation.state {
            State::Held => {}
            state if state == target => return Ok(()),
            state => {
                return Err(InventoryError::Invalid(format!(
                    "reservation {reservation_id} is already {state:?}"
                )));
            }
        }
        let returns: Vec<BoundedAdd> = match target {
            State::Released => reservation
                .lines
                .iter()
                .map(|(sku, quantity)| BoundedAdd {
                    key: stock_key(sku),
                    delta: i64::from(*quantity),
                    min: None,
                    max: None,
                })
                .collect(),
            _ => Vec::new(),
        };
        reservation.state = target;
        let swap = Swap {
            key: key.clone(),
            expected: Some(raw),
            new: Some(encode(&reservation)?),
        };
        match kv::compare_and_swap(&[swap], &returns)? {
            BatchOutcome::Applied(_) => return Ok(()),
            BatchOutcome::Conflict(_) => continue,
            BatchOutcome::OutOfBounds(keys) => {
                return Err(InventoryError::Transient(format!(
                    "kv reported bounds on unbounded counters: {keys:?}"
                )));
            }
        }
    }
    Err(InventoryError::Transient(format!(
        "reservation {reservation_id} is being updated concurrently; retry"
    )))
}
