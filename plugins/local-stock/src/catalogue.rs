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

/// Makes sure `stock/<sku>` exists. Seeding is a swap from "absent", so when two instances
/// seed the same SKU concurrently exactly one write lands and neither resets the other's
/// reservations.
pub fn ensure_seeded(sku: &str) -> Result<(), InventoryError> {
    let key = stock_key(sku);
    if kv::get(&key)?.is_some() {
        return Ok(());
    }
    let Some(units) = initial_units(sku)? else {
        return Err(InventoryError::Invalid(format!("unknown sku {sku}")));
    };
    let seed = Swap {
        key,
        expected: None,
        new: Some(units.to_string().into_bytes()),
    };
    // Applied or conflict (another instance seeded it first): either way the counter exists.
    kv::compare_and_swap(&[seed], &[])?;
    Ok(())
}
