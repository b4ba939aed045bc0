//! `local-stock` and `fakepay` written in Rust and called in-process: the benchmark's
//! reference for what the Wasm sandbox costs (`scripts/bench-sagas --native-adapters`,
//! docs/benchmarks.md). Built only with the `native-adapters` feature, so the production
//! binary cannot run unsandboxed adapters by a configuration mistake.
//!
//! Same logic, same state, same commit: each operation is the plugin's, line for line, over
//! the same key-value namespace (the plugin's name) through the same [`KvTransaction`] a
//! buffered Wasm call uses, and answers with the same typed results, which go through the
//! same mapping to the saga's terms as the Wasm answers (`super::payments`,
//! `super::inventory`). What is left out is exactly the sandbox: no instance, no fuel, no
//! epoch deadline, no memory limit, no host-call boundary. `tests/native_adapters.rs` holds
//! the two to the same answers and the same key-value effects.

mod fakepay;
mod local_stock;

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use async_trait::async_trait;
use oms_application::plugin_kv::{Buffering, KvTransaction};
use oms_application::ports::{
    GatewayResult, InventoryGateway, PaymentGateway, PluginKvStore, ProviderPayment,
};
use oms_domain::{LineItem, Money, OrderId};
use oms_plugin_runtime::capabilities::config::PluginConfig;
use oms_plugin_runtime::clients::Called;
use oms_plugin_runtime::clients::payment::PaymentLookup;
use oms_plugin_runtime::{CallInfo, Manifest, PluginError, PluginKind};

pub use fakepay::FakePay;
pub use local_stock::LocalStock;

use super::inventory::{inventory_failure, wit_lines};
use super::payments::{PluginPayments, answered, authorize_request, found, to_wit};
use super::plugin_call;

/// The version a native adapter reports in the saga's step history: the manifest's, marked,
/// so an audit never mistakes a benchmark's calls for the sandboxed plugin's.
const NATIVE_DIGEST: &str = "native";

/// One native call's context: who answers (as a Wasm call's [`CallInfo`] would say) and the
/// buffer of its key-value writes.
struct NativeCall {
    plugin: Arc<str>,
    version: Arc<str>,
    started: Instant,
    kv: KvTransaction,
}

impl NativeCall {
    fn info(self) -> CallInfo {
        CallInfo {
            plugin: self.plugin,
            version: self.version,
            digest: NATIVE_DIGEST.into(),
            elapsed: self.started.elapsed(),
            fuel: 0,
            kv: Arc::new(self.kv.into_changes()),
            // Neither adapter reaches outside the host: like their Wasm builds (no network
            // grant), everything a call did is in `kv`.
            host_only: true,
        }
    }

    /// The adapter's answer as the runtime's clients give it.
    fn finish<T, E>(self, result: Result<T, E>) -> Result<Called<T>, PluginError<E>>
    where
        E: std::fmt::Debug + std::fmt::Display,
    {
        let info = self.info();
        match result {
            Ok(value) => Ok(Called { value, info }),
            Err(error) => Err(PluginError::Rejected { error, info }),
        }
    }
}

/// What both native adapters need to start a call: the store and the plugin's identity.
#[derive(Clone)]
struct NativeIdentity {
    store: Arc<dyn PluginKvStore>,
    plugin: Arc<str>,
    version: Arc<str>,
}

impl NativeIdentity {
    /// Identity and `[config]` of the plugin's manifest in the plugins directory: the native
    /// adapter runs with the configuration the Wasm one would (the benchmark's catalogue).
    fn from_manifest(
        store: Arc<dyn PluginKvStore>,
        dir: &Path,
        name: &str,
        kind: PluginKind,
    ) -> anyhow::Result<(Self, PluginConfig)> {
        let path = dir.join(format!("{name}.toml"));
        let manifest = Manifest::from_file(&path)
            .with_context(|| format!("native {name} reads {}", path.display()))?;
        anyhow::ensure!(
            manifest.kind == kind,
            "{} is a {:?} plugin, the native {name} is a {kind:?} adapter",
            path.display(),
            manifest.kind
        );
        let identity = Self {
            store,
            plugin: name.into(),
            version: format!("{}+native", manifest.version).into(),
        };
        Ok((identity, PluginConfig::from_manifest(&manifest)))
    }

    /// A call that buffers its writes, checking the keys it creates as `buffering` says.
    /// Both adapters stay in the host, as a Wasm plugin with no network grant does, so
    /// steps pending before them (`Buffering::pending_steps`) never stop them.
    fn call(&self, buffering: Buffering) -> NativeCall {
        NativeCall {
            plugin: self.plugin.clone(),
            version: self.version.clone(),
            started: Instant::now(),
            kv: KvTransaction::new(self.store.clone(), &self.plugin)
                .with_absent_keys(buffering.absent_keys),
        }
    }
}

/// Payments: `fakepay` in-process, any other provider through its Wasm plugin.
pub struct NativePayments {
    fakepay: FakePay,
    plugins: PluginPayments,
}

impl NativePayments {
    /// `dir` holds `fakepay.toml` (its `[config]` applies).
    pub fn new(
        store: Arc<dyn PluginKvStore>,
        dir: &Path,
        plugins: PluginPayments,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            fakepay: FakePay::new(store, dir)?,
            plugins,
        })
    }

    fn native(&self, provider: &str) -> Option<&FakePay> {
        (provider == fakepay::NAME).then_some(&self.fakepay)
    }
}

#[async_trait]
impl PaymentGateway for NativePayments {
    async fn authorize(
        &self,
        provider: &str,
        pinned: Option<&str>,
        order_id: OrderId,
        amount: Money,
        token: &str,
        idempotency_key: &str,
        buffering: Buffering,
    ) -> GatewayResult<ProviderPayment> {
        let Some(fakepay) = self.native(provider) else {
            return (self.plugins)
                .authorize(
                    provider,
                    pinned,
                    order_id,
                    amount,
                    token,
                    idempotency_key,
                    buffering,
                )
                .await;
        };
        answered(
            fakepay
                .authorize(
                    authorize_request(order_id, amount, token, idempotency_key),
                    buffering,
                )
                .await,
        )
    }

    async fn capture(
        &self,
        provider: &str,
        pinned: Option<&str>,
        payment_id: &str,
        amount: Option<Money>,
        idempotency_key: &str,
        buffering: Buffering,
    ) -> GatewayResult<ProviderPayment> {
        let Some(fakepay) = self.native(provider) else {
            return (self.plugins)
                .capture(
                    provider,
                    pinned,
                    payment_id,
                    amount,
                    idempotency_key,
                    buffering,
                )
                .await;
        };
        answered(
            fakepay
                .capture(payment_id, amount.map(to_wit), idempotency_key, buffering)
                .await,
        )
    }

    async fn void(
        &self,
        provider: &str,
        pinned: Option<&str>,
        payment_id: &str,
        idempotency_key: &str,
        buffering: Buffering,
    ) -> GatewayResult<ProviderPayment> {
        let Some(fakepay) = self.native(provider) else {
            return self
                .plugins
                .void(provider, pinned, payment_id, idempotency_key, buffering)
                .await;
        };
        answered(fakepay.void(payment_id, idempotency_key, buffering).await)
    }

    async fn refund(
        &self,
        provider: &str,
        pinned: Option<&str>,
        payment_id: &str,
        amount: Option<Money>,
        idempotency_key: &str,
        buffering: Buffering,
    ) -> GatewayResult<ProviderPayment> {
        let Some(fakepay) = self.native(provider) else {
            return (self.plugins)
                .refund(
                    provider,
                    pinned,
                    payment_id,
                    amount,
                    idempotency_key,
                    buffering,
                )
                .await;
        };
        answered(
            fakepay
                .refund(payment_id, amount.map(to_wit), idempotency_key, buffering)
                .await,
        )
    }

    async fn find_by_authorize_key(
        &self,
        provider: &str,
        pinned: Option<&str>,
        idempotency_key: &str,
    ) -> GatewayResult<Option<ProviderPayment>> {
        let Some(fakepay) = self.native(provider) else {
            return (self.plugins)
                .find_by_authorize_key(provider, pinned, idempotency_key)
                .await;
        };
        found(
            fakepay
                .get_payment(PaymentLookup::AuthorizeKey(idempotency_key.to_owned()))
                .await,
        )
    }
}

/// Inventory: `local-stock` in-process.
pub struct NativeInventory {
    local_stock: LocalStock,
}

impl NativeInventory {
    /// `dir` holds `local-stock.toml` (its catalogue applies).
    pub fn new(store: Arc<dyn PluginKvStore>, dir: &Path) -> anyhow::Result<Self> {
        Ok(Self {
            local_stock: LocalStock::new(store, dir)?,
        })
    }
}

#[async_trait]
impl InventoryGateway for NativeInventory {
    // One build, compiled in: nothing to pin to.
    async fn reserve(
        &self,
        _pinned: Option<&str>,
        order_id: OrderId,
        lines: &[LineItem],
        idempotency_key: &str,
        buffering: Buffering,
    ) -> GatewayResult<String> {
        let called = self
            .local_stock
            .reserve(
                &order_id.to_string(),
                &wit_lines(lines),
                idempotency_key,
                buffering,
            )
            .await
            .map_err(inventory_failure)?;
        Ok((called.value, plugin_call(&called.info)))
    }

    // One build, compiled in: nothing to pin to.
    async fn release(
        &self,
        _pinned: Option<&str>,
        reservation_id: &str,
        idempotency_key: &str,
        buffering: Buffering,
    ) -> GatewayResult<()> {
        let called = self
            .local_stock
            .release(reservation_id, idempotency_key, buffering)
            .await
            .map_err(inventory_failure)?;
        Ok(((), plugin_call(&called.info)))
    }

    // One build, compiled in: nothing to pin to.
    async fn commit(
        &self,
        _pinned: Option<&str>,
        reservation_id: &str,
        idempotency_key: &str,
        buffering: Buffering,
    ) -> GatewayResult<()> {
        let called = self
            .local_stock
            .commit(reservation_id, idempotency_key, buffering)
            .await
            .map_err(inventory_failure)?;
        Ok(((), plugin_call(&called.info)))
    }
}
