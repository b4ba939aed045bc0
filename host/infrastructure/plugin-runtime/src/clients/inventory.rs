//! Client of the `inventory-adapter` world (`oms:plugins/inventory`).

use std::sync::Arc;

use super::{Called, instantiate, kind_mismatch, refused, split, transient};
use crate::call::{self, Verdict};
use crate::error::PluginError;
use crate::manifest::PluginKind;
use crate::plugin::Exports;
use crate::runtime::Inner;

pub use crate::bindings::inventory::exports::oms::plugins::inventory::InventoryError;
pub use crate::bindings::payment::oms::plugins::types::Line;

/// Result of an inventory call.
pub type InventoryResult<T> = Result<Called<T>, PluginError<InventoryError>>;

/// Calls the inventory plugin of one name.
#[derive(Clone)]
pub struct InventoryPlugin {
    pub(crate) rt: Arc<Inner>,
    pub(crate) name: Arc<str>,
    pub(crate) kv: call::KvMode,
    /// Which build its calls run on ([`Self::pinned`], [`Self::starting`]).
    pub(crate) route: crate::registry::Route,
}

impl InventoryError {
    /// `out-of-stock` and `invalid` are permanent; `transient` may succeed on retry.
    pub fn is_transient(&self) -> bool {
        matches!(self, InventoryError::Transient(_))
    }
}

fn judge<T>(r: &Result<T, InventoryError>) -> Verdict {
    match r {
        Ok(_) => Verdict::OK,
        Err(InventoryError::OutOfStock(_)) => refused("out_of_stock"),
        Err(InventoryError::Invalid(_)) => refused("invalid"),
        Err(InventoryError::Transient(message)) => transient(message),
    }
}

macro_rules! inventory_call {
    ($self:ident, $method:ident ( $($arg:expr),* )) => {{
        let (r, info) = call::run(
            &$self.rt,
            &$self.name,
            &$self.route,
            PluginKind::InventoryAdapter,
            judge,
            $self.kv,
            move |store, plugin| {
                Box::pin(async move {
                    let Exports::Inventory(pre) = &plugin.exports else {
                        return Err(kind_mismatch());
                    };
                    let instance = instantiate(pre.instantiate_async(&mut *store)).await?;
                    instance.oms_plugins_inventory().$method(&mut *store, $($arg),*).await
                })
            },
        )
        .await?;
        split(r, info)
    }};
}

impl InventoryPlugin {
    /// Plugin name this handle calls.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// This handle with its calls' key-value writes buffered and returned in
    /// [`crate::CallInfo::kv`] for the caller to commit (see [`crate::KvMode`]).
    #[must_use]
    pub fn with_kv(mut self, mode: crate::KvMode) -> Self {
        self.kv = mode;
        self
    }

    /// This handle's calls run on the build whose component digest is `digest` (the one
    /// that made the hold or reservation they act on) while that build is still loaded,
    /// and on the current build otherwise; `None` keeps the current build. Each call's
    /// [`crate::CallInfo`] says which build answered.
    #[must_use]
    pub fn pinned(mut self, digest: Option<&str>) -> Self {
        self.route = crate::registry::Route::pinned(digest);
        self
    }

    /// This handle's calls start something new for `key` (an order). With `pinned` (the
    /// build an earlier attempt whose outcome is unknown reached) they run on that build, as
    /// [`Self::pinned`]; without, while a canary of the plugin runs, a stable hash of `key`
    /// decides whether the canary serves them.
    #[must_use]
    pub fn starting(mut self, key: &str, pinned: Option<&str>) -> Self {
        self.route = crate::registry::Route::starting(key, pinned);
        self
    }

    /// Reserves every line or none; returns the reservation id.
    pub async fn reserve(
        &self,
        order_id: String,
        lines: Vec<Line>,
        idempotency_key: String,
    ) -> InventoryResult<String> {
        inventory_call!(self, call_reserve(&order_id, &lines, &idempotency_key))
    }

    /// Returns a reservation's units to stock.
    pub async fn release(
        &self,
        reservation_id: String,
        idempotency_key: String,
    ) -> InventoryResult<()> {
        inventory_call!(self, call_release(&reservation_id, &idempotency_key))
    }

    /// Turns a reservation into an allocation.
    pub async fn commit(
        &self,
        reservation_id: String,
        idempotency_key: String,
    ) -> InventoryResult<()> {
        inventory_call!(self, call_commit(&reservation_id, &idempotency_key))
    }
}
