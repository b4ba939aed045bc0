//! `InventoryGateway` over one inventory-adapter plugin.

use async_trait::async_trait;
use oms_application::plugin_kv::Buffering;
use oms_application::ports::{
    FailureCode, FailureReason, GatewayError, GatewayFailure, GatewayResult, InventoryGateway,
};
use oms_domain::{LineItem, OrderId};
use oms_plugin_runtime::clients::inventory::{InventoryError, Line};
use oms_plugin_runtime::{InventoryPlugin, KvMode, PluginError, PluginRuntime};

use super::{failure, plugin_call};

/// Calls the inventory plugin the configuration names (`plugins.inventory`).
#[derive(Clone)]
pub struct PluginInventory {
    runtime: PluginRuntime,
    plugin: String,
}

impl PluginInventory {
    pub fn new(runtime: PluginRuntime, plugin: impl Into<String>) -> Self {
        Self {
            runtime,
            plugin: plugin.into(),
        }
    }

    /// Every call here is a saga step's: its key-value writes are committed with the step.
    fn plugin(&self, buffering: Buffering) -> InventoryPlugin {
        self.runtime
            .inventory(&self.plugin)
            .with_kv(KvMode::Buffered(buffering))
    }
}

/// SKUs named in an out-of-stock reason; an order may have 100 lines, the sentence stays short.
const SKUS_SHOWN: usize = 5;

/// The adapter's own answer.
fn refusal(e: &InventoryError, plugin: &str) -> GatewayError {
    match e {
        InventoryError::OutOfStock(skus) => GatewayError::Permanent {
            reason: FailureReason::new(FailureCode::OutOfStock, out_of_stock(skus)),
        },
        InventoryError::Invalid(message) => GatewayError::Permanent {
            reason: FailureReason::new(
                FailureCode::InventoryInvalid,
                format!("the inventory plugin \"{plugin}\" refused the request: {message}"),
            ),
        },
        InventoryError::Transient(message) => GatewayError::Transient {
            reason: FailureReason::new(
                FailureCode::ProviderUnavailable,
                format!("the inventory plugin \"{plugin}\" asked to retry later: {message}"),
            ),
        },
    }
}

/// `SKU A-1 is out of stock`, `SKUs A-1, B-2 are out of stock`, `SKUs A-1, ... and 7 more
/// are out of stock`.
fn out_of_stock(skus: &[String]) -> String {
    let shown = skus
        .iter()
        .take(SKUS_SHOWN)
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(", ");
    match skus.len() {
        0 => "some items are out of stock".to_owned(),
        1 => format!("SKU {shown} is out of stock"),
        n if n <= SKUS_SHOWN => format!("SKUs {shown} are out of stock"),
        n => format!("SKUs {shown} and {} more are out of stock", n - SKUS_SHOWN),
    }
}

/// The order's lines as the inventory contract takes them.
pub(super) fn wit_lines(lines: &[LineItem]) -> Vec<Line> {
    lines
        .iter()
        .map(|l| Line {
            sku: l.sku.to_string(),
            quantity: l.quantity.get(),
        })
        .collect()
}

pub(super) fn inventory_failure(e: PluginError<InventoryError>) -> GatewayFailure {
    failure(e, "inventory", refusal)
}

#[async_trait]
impl InventoryGateway for PluginInventory {
    async fn reserve(
        &self,
        pinned: Option<&str>,
        order_id: OrderId,
        lines: &[LineItem],
        idempotency_key: &str,
        buffering: Buffering,
    ) -> GatewayResult<String> {
        // A first attempt: a canary of the adapter takes its share of orders; a resend after
        // an unknown outcome goes to the build that may have acted.
        let called = self
            .plugin(buffering)
            .starting(&order_id.to_string(), pinned)
            .reserve(
                order_id.to_string(),
                wit_lines(lines),
                idempotency_key.to_owned(),
            )
            .await
            .map_err(inventory_failure)?;
        Ok((called.value, plugin_call(&called.info)))
    }

    async fn release(
        &self,
        pinned: Option<&str>,
        reservation_id: &str,
        idempotency_key: &str,
        buffering: Buffering,
    ) -> GatewayResult<()> {
        let called = self
            .plugin(buffering)
            .pinned(pinned)
            .release(reservation_id.to_owned(), idempotency_key.to_owned())
            .await
            .map_err(inventory_failure)?;
        Ok(((), plugin_call(&called.info)))
    }

    async fn commit(
        &self,
        pinned: Option<&str>,
        reservation_id: &str,
        idempotency_key: &str,
        buffering: Buffering,
    ) -> GatewayResult<()> {
        let called = self
            .plugin(buffering)
            .pinned(pinned)
            .commit(reservation_id.to_owned(), idempotency_key.to_owned())
            .await
            .map_err(inventory_failure)?;
        Ok(((), plugin_call(&called.info)))
    }
}

#[cfg(test)]
mod tests {
    use super::out_of_stock;

    #[test]
    fn out_of_stock_names_a_bounded_list_of_skus() {
        let skus = |n: usize| (1..=n).map(|i| format!("SKU-{i}")).collect::<Vec<_>>();
        assert_eq!(out_of_stock(&skus(1)), "SKU SKU-1 is out of stock");
        assert_eq!(out_of_stock(&skus(2)), "SKUs SKU-1, SKU-2 are out of stock");
        assert_eq!(
            out_of_stock(&skus(100)),
            "SKUs SKU-1, SKU-2, SKU-3, SKU-4, SKU-5 and 95 more are out of stock"
        );
    }
}
