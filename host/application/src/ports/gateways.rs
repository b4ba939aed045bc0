//! The adapters the sagas call: payment providers and inventory adapters. Implemented over
//! the Wasm plugin runtime in infrastructure; the application only sees these traits.

use async_trait::async_trait;
use oms_domain::{LineItem, Money, OrderId};

/// Which plugin build served a call. Recorded on every saga step, so an audit after a hot
/// swap knows which version did what.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PluginCall {
    pub plugin: String,
    pub version: String,
    pub digest: String,
}

/// How an adapter call failed, classified by what the saga must do next.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GatewayError {
    /// The adapter refused for good (declined, invalid, out of stock): compensate now.
    #[error("{reason}")]
    Permanent { reason: String },
    /// Worth retrying with the same idempotency key: a typed transient error, a trapped or
    /// overloaded plugin.
    #[error("transient: {reason}")]
    Transient { reason: String },
    /// The call was refused before it reached the plugin (an open circuit): retry later. It
    /// is no attempt, so it never counts against the step on its own (docs/saga.md).
    #[error("not tried: {reason}")]
    NotTried { reason: String },
    /// The call may or may not have taken effect (its deadline passed mid-call): reconcile
    /// with the provider before deciding.
    #[error("outcome unknown: {reason}")]
    Unknown { reason: String },
}

/// A failed call and, when the plugin was reached, which build it was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayFailure {
    pub error: GatewayError,
    pub call: Option<PluginCall>,
}

/// The provider's view of one payment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderPayment {
    /// The provider's id for the authorisation.
    pub payment_id: String,
    pub state: ProviderPaymentState,
    pub authorized: Money,
    pub captured: Money,
    pub refunded: Money,
}

/// Payment states as providers report them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderPaymentState {
    Authorized,
    Declined,
    PartiallyCaptured,
    Captured,
    Voided,
    PartiallyRefunded,
    Refunded,
}

/// Result of a gateway call: the value and the plugin build that produced it.
pub type GatewayResult<T> = Result<(T, PluginCall), GatewayFailure>;

/// Payment providers, addressed by the provider (plugin) name the order names.
#[async_trait]
pub trait PaymentGateway: Send + Sync {
    /// Holds `amount`. Idempotent per `idempotency_key`.
    async fn authorize(
        &self,
        provider: &str,
        order_id: OrderId,
        amount: Money,
        token: &str,
        idempotency_key: &str,
    ) -> GatewayResult<ProviderPayment>;

    /// Captures `amount` (`None`: everything authorized).
    async fn capture(
        &self,
        provider: &str,
        payment_id: &str,
        amount: Option<Money>,
        idempotency_key: &str,
    ) -> GatewayResult<ProviderPayment>;

    /// Releases the hold.
    async fn void(
        &self,
        provider: &str,
        payment_id: &str,
        idempotency_key: &str,
    ) -> GatewayResult<ProviderPayment>;

    /// Refunds `amount` (`None`: everything captured and not yet refunded).
    async fn refund(
        &self,
        provider: &str,
        payment_id: &str,
        amount: Option<Money>,
        idempotency_key: &str,
    ) -> GatewayResult<ProviderPayment>;

    /// The payment an `authorize` with this key created, if any: how an UNRESOLVED
    /// authorisation is reconciled.
    async fn find_by_authorize_key(
        &self,
        provider: &str,
        idempotency_key: &str,
    ) -> GatewayResult<Option<ProviderPayment>>;
}

/// Inventory adapters.
#[async_trait]
pub trait InventoryGateway: Send + Sync {
    /// Reserves every line or none; `Permanent` when out of stock (the reason names SKUs).
    /// Returns the adapter's reservation id. Idempotent per key.
    async fn reserve(
        &self,
        order_id: OrderId,
        lines: &[LineItem],
        idempotency_key: &str,
    ) -> GatewayResult<String>;

    /// Returns the stock. Idempotent per key.
    async fn release(&self, reservation_id: &str, idempotency_key: &str) -> GatewayResult<()>;

    /// Allocates the stock at fulfilment. Idempotent per key.
    async fn commit(&self, reservation_id: &str, idempotency_key: &str) -> GatewayResult<()>;
}
