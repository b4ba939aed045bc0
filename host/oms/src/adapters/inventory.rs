//! `InventoryGateway` over one inventory-adapter plugin.

use async_trait::async_trait;
use oms_application::ports::{GatewayResult, InventoryGateway};
use oms_domain::{LineItem, OrderId};
use oms_plugin_runtime::PluginRuntime;
use oms_plugin_runtime::clients::inventory::{InventoryError, Line};

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
}

fn permanent(e: &InventoryError) -> bool {
    !e.is_transient()
}

#[async_trait]
impl InventoryGateway for PluginInventory {
    async fn reserve(
        &self,
        order_id: OrderId,
        lines: &[LineItem],
        idempotency_key: &str,
    ) -> GatewayResult<String> {
        let lines = lines
            .iter()
            .map(|l| Line {
                sku: l.sku.to_string(),
                quantity: l.quantity.get(),
            })
            .collect();
        let called = self
            .runtime
            .inventory(&self.plugin)
            .reserve(order_id.to_string(), lines, idempotency_key.to_owned())
            .await
            .map_err(|e| failure(e, permanent))?;
        Ok((called.value, plugin_call(&called.info)))
    }

    async fn release(&self, reservation_id: &str, idempotency_key: &str) -> GatewayResult<()> {
        let called = self
            .runtime
            .inventory(&self.plugin)
            .release(reservation_id.to_owned(), idempotency_key.to_owned())
            .await
            .map_err(|e| failure(e, permanent))?;
        Ok(((), plugin_call(&called.info)))
    }

    async fn commit(&self, reservation_id: &str, idempotency_key: &str) -> GatewayResult<()> {
        let called = self
            .runtime
            .inventory(&self.plugin)
            .commit(reservation_id.to_owned(), idempotency_key.to_owned())
            .await
            .map_err(|e| failure(e, permanent))?;
        Ok(((), plugin_call(&called.info)))
    }
}
