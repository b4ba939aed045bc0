//! `plugins/local-stock` in Rust over the host's key-value buffer: the same keys, records and
//! batches (see that crate for why each is shaped as it is), answered as the Wasm plugin
//! would answer.

use std::path::Path;
use std::sync::Arc;

use oms_application::plugin_kv::{
    BatchOutcome, BoundedAdd, Buffering, KvError, KvTransaction, Swap,
};
use oms_application::ports::PluginKvStore;
use oms_plugin_runtime::PluginKind;
use oms_plugin_runtime::clients::inventory::{InventoryError, InventoryResult, Line};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use super::NativeIdentity;

pub const NAME: &str = "local-stock";

/// As in the plugin: release and commit re-read and retry after a concurrent change.
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

fn stock_key(sku: &str) -> String {
    format!("stock/{sku}")
}

/// The plugin sees a failing store as `kv` `unavailable`, which it answers `transient`.
fn unavailable(error: KvError) -> InventoryError {
    InventoryError::Transient(format!("kv: {error}"))
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, InventoryError> {
    serde_json::to_vec(value).map_err(|e| InventoryError::Invalid(format!("encoding record: {e}")))
}

async fn load<T: DeserializeOwned>(
    kv: &mut KvTransaction,
    key: &str,
) -> Result<Option<(Vec<u8>, T)>, InventoryError> {
    let Some(raw) = kv.get(key).await.map_err(unavailable)? else {
        return Ok(None);
    };
    let value = serde_json::from_slice(&raw)
        .map_err(|e| InventoryError::Invalid(format!("corrupt record {key}: {e}")))?;
    Ok(Some((raw, value)))
}

async fn batch(
    kv: &mut KvTransaction,
    swaps: &[Swap],
    adds: &[BoundedAdd],
) -> Result<BatchOutcome, InventoryError> {
    kv.batch(swaps, adds).await.map_err(unavailable)
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
        if lines[..i].iter().any(|other| other.sku == line.sku) {
            return Err(InventoryError::Invalid(format!(
                "sku {} appears twice",
                line.sku
            )));
        }
    }
    Ok(())
}

/// The inventory adapter, configured by `local-stock.toml`'s `[config]`.
pub struct LocalStock {
    identity: NativeIdentity,
    catalogue: Option<String>,
    count_calls: bool,
}

impl LocalStock {
    pub fn new(store: Arc<dyn PluginKvStore>, dir: &Path) -> anyhow::Result<Self> {
        let (identity, config) =
            NativeIdentity::from_manifest(store, dir, NAME, PluginKind::InventoryAdapter)?;
        Ok(Self {
            identity,
            catalogue: config.get("catalogue").map(str::to_owned),
            count_calls: config.get("count-calls") == Some("true"),
        })
    }

    pub async fn reserve(
        &self,
        order_id: &str,
        lines: &[Line],
        idempotency_key: &str,
        buffering: Buffering,
    ) -> InventoryResult<String> {
        let mut call = self.identity.call(buffering);
        let result = self
            .reserve_in(&mut call.kv, order_id, lines, idempotency_key)
            .await;
        call.finish(result)
    }

    pub async fn release(
        &self,
        reservation_id: &str,
        idempotency_key: &str,
        buffering: Buffering,
    ) -> InventoryResult<()> {
        self.settle(
            reservation_id,
            idempotency_key,
            buffering,
            "release",
            State::Released,
        )
        .await
    }

    pub async fn commit(
        &self,
        reservation_id: &str,
        idempotency_key: &str,
        buffering: Buffering,
    ) -> InventoryResult<()> {
        self.settle(
            reservation_id,
            idempotency_key,
            buffering,
            "commit",
            State::Committed,
        )
        .await
    }

    async fn settle(
        &self,
        reservation_id: &str,
        idempotency_key: &str,
        buffering: Buffering,
        operation: &str,
        target: State,
    ) -> InventoryResult<()> {
        let mut call = self.identity.call(buffering);
        let result = match self
            .count_call(&mut call.kv, operation, idempotency_key)
            .await
        {
            Ok(()) => settle(&mut call.kv, reservation_id, idempotency_key, target).await,
            Err(e) => Err(e),
        };
        call.finish(result)
    }

    async fn reserve_in(
        &self,
        kv: &mut KvTransaction,
        order_id: &str,
        lines: &[Line],
        idempotency_key: &str,
    ) -> Result<String, InventoryError> {
        self.count_call(kv, "reserve", idempotency_key).await?;
        validate(lines, idempotency_key)?;
        let fingerprint = lines.iter().fold(format!("{order_id}|"), |acc, line| {
            format!("{acc}{}x{};", line.sku, line.quantity)
        });
        // As the plugin: no read first.
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
            match batch(kv, &swaps, &takes).await? {
                BatchOutcome::OutOfBounds(keys) if !seeded => {
                    self.seed_absent(kv, &keys).await?;
                    seeded = true;
                }
                outcome => break outcome,
            }
        };
        match outcome {
            BatchOutcome::Applied(_) => {
                tracing::debug!(plugin = NAME, reservation_id = %id, %order_id, "reserved");
                Ok(id)
            }
            BatchOutcome::Conflict(_) => {
                match load::<ReserveOutcome>(kv, &outcome_key(idempotency_key)).await? {
                    Some((_, winner)) => winner.replay(&fingerprint),
                    None => Err(InventoryError::Transient(
                        "concurrent reserve with the same key; retry".into(),
                    )),
                }
            }
            BatchOutcome::OutOfBounds(keys) => {
                let short: Vec<String> = keys
                    .iter()
                    .map(|key| key.strip_prefix("stock/").unwrap_or(key).to_owned())
                    .collect();
                let shortage = ReserveOutcome {
                    fingerprint,
                    result: Err(short.clone()),
                };
                let swap = Swap {
                    key: outcome_key(idempotency_key),
                    expected: None,
                    new: Some(encode(&shortage)?),
                };
                batch(kv, &[swap], &[]).await?;
                Err(InventoryError::OutOfStock(short))
            }
        }
    }

    /// As the plugin's `catalogue::seed_absent`.
    async fn seed_absent(
        &self,
        kv: &mut KvTransaction,
        keys: &[String],
    ) -> Result<(), InventoryError> {
        for key in keys {
            if kv.get(key).await.map_err(unavailable)?.is_some() {
                continue;
            }
            let sku = key.strip_prefix("stock/").unwrap_or(key);
            let Some(units) = self.initial_units(sku)? else {
                return Err(InventoryError::Invalid(format!("unknown sku {sku}")));
            };
            let seed = Swap {
                key: key.clone(),
                expected: None,
                new: Some(units.to_string().into_bytes()),
            };
            batch(kv, &[seed], &[]).await?;
        }
        Ok(())
    }

    fn initial_units(&self, sku: &str) -> Result<Option<i64>, InventoryError> {
        let Some(catalogue) = &self.catalogue else {
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

    /// As the plugin's `count_call`: only when the manifest asks.
    async fn count_call(
        &self,
        kv: &mut KvTransaction,
        operation: &str,
        idempotency_key: &str,
    ) -> Result<(), InventoryError> {
        if !self.count_calls {
            return Ok(());
        }
        let add = BoundedAdd {
            key: format!("calls/{operation}/{idempotency_key}"),
            delta: 1,
            min: None,
            max: None,
        };
        match batch(kv, &[], &[add]).await? {
            BatchOutcome::Applied(_) => Ok(()),
            other => Err(InventoryError::Transient(format!(
                "unbounded call counter not applied: {other:?}"
            ))),
        }
    }
}

/// As the plugin's `settle`.
async fn settle(
    kv: &mut KvTransaction,
    reservation_id: &str,
    idempotency_key: &str,
    target: State,
) -> Result<(), InventoryError> {
    if idempotency_key.is_empty() {
        return Err(InventoryError::Invalid("empty idempotency key".into()));
    }
    let key = reservation_key(reservation_id);
    for _ in 0..MAX_SWAP_ATTEMPTS {
        let Some((raw, mut reservation)) = load::<Reservation>(kv, &key).await? else {
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
        match batch(kv, &[swap], &returns).await? {
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
