//! Seeding stock counters from `[config] catalogue`.

use crate::bindings::exports::oms::plugins::inventory::InventoryError;
use crate::bindings::oms::plugins::config;
use crate::bindings::oms::plugins::kv::{self, Swap};

pub fn stock_key(sku: &str) -> String {
    format!("stock/{sku}")
}

/// The initial units of `sku` per `[config] catalogue`, or `None` when the catalogue does not
/// list it. A malformed catalogue is `invalid`: silently ignoring an entry would make a SKU
/// look unknown.
fn initial_units(sku: &str) -> Result<Option<i64>, InventoryError> {
    let Some(catalogue) = config::get("catalogue") else {
        return Ok(None);
    };
    for entry in catalogue
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
    {
        let Some((name, units)) = entry.split_once('=') else {
            return Err(InventoryError::Invalid(format!(
                "catalogue entry {entry:?} is not SKU=units"
            )));
        };
        if name.trim() == sku {
            let units = units.trim().parse::<i64>().ok().filter(|u| *u >= 0);
            return units.map(Some).ok_or_else(|| {
                InventoryError::Invalid(format!("catalogue entry {entry:?} has bad units"))
            });
        }
    }
    Ok(None)
}

/// Seeds those of the counters `keys` (`stock/<sku>`, as a batch named them out of bounds)
/// that do not exist yet, from the catalogue. An absent counter
/// counts as 0, so a SKU's first take is out of bounds until it is seeded. Seeding is a swap
/// from "absent", so when two instances seed the same SKU concurrently exactly one write
/// lands and neither resets the other's reservations.
pub fn seed_absent(keys: &[String]) -> Result<(), InventoryError> {
    for key in keys {
        // Read already by the batch that named it (in a saga step, no round trip).
        if kv::get(key)?.is_some() {
            continue;
        }
        let sku = key.strip_prefix("stock/").unwrap_or(key);
        let Some(units) = initial_units(sku)? else {
            return Err(InventoryError::Invalid(format!("unknown sku {sku}")));
        };
        let seed = Swap {
            key: key.clone(),
            expected: None,
            new: Some(units.to_string().into_bytes()),
        };
        // Applied or conflict (another instance seeded it first): either way it exists.
        kv::compare_and_swap(&[seed], &[])?;
    }
    Ok(())
}
