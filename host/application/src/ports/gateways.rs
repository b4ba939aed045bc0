//! The adapters the sagas call: payment providers and inventory adapters. Implemented over
//! the Wasm plugin runtime in infrastructure; the application only sees these traits.

use std::sync::Arc;

use async_trait::async_trait;
use oms_domain::{LineItem, Money, OrderId, PaymentAction};

use crate::plugin_kv::{Buffering, KvChanges};

/// Which plugin build served a call. Recorded on every saga step, so an audit after a hot
/// swap knows which version did what.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PluginCall {
    pub plugin: String,
    pub version: String,
    pub digest: String,
    /// The plugin's key-value writes during the call, not yet applied: the saga store
    /// applies them in the transaction that records the step (`SagaStore::commit`), so the
    /// plugin's state and the step's outcome land together or not at all. Empty when the
    /// call wrote nothing, or when it was stopped (trap, deadline) before it answered.
    pub kv: Arc<KvChanges>,
    /// The plugin was granted no network access, so everything the call did is in `kv`:
    /// nothing outside the host saw it, and a call whose writes are never committed left
    /// no trace. The saga engine may then run the next step before committing this one
    /// (`StepCommit::WithNext`, docs/saga.md).
    pub host_only: bool,
}

/// How an adapter call failed, classified by what the saga must do next.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GatewayError {
    /// The adapter refused for good (declined, invalid, out of stock): compensate now.
    #[error("{reason}")]
    Permanent { reason: FailureReason },
    /// Worth retrying with the same idempotency key: a typed transient error, a trapped or
    /// overloaded plugin.
    #[error("transient: {reason}")]
    Transient { reason: FailureReason },
    /// The call was refused before it reached the plugin (an open circuit): retry later. It
    /// is no attempt, so it never counts against the step on its own (docs/saga.md).
    #[error("not tried: {reason}")]
    NotTried { reason: FailureReason },
    /// The call may or may not have taken effect (its deadline passed mid-call): reconcile
    /// with the provider before deciding.
    #[error("outcome unknown: {reason}")]
    Unknown { reason: FailureReason },
    /// Not called: the plugin has a network grant and the caller said earlier steps wait for
    /// this call's commit ([`Buffering::pending_steps`]). The caller commits them, then calls
    /// again; never a failure of the step (the reason is for a caller that could not).
    #[error("not called before earlier steps commit: {reason}")]
    CommitFirst { reason: FailureReason },
}

impl GatewayError {
    /// The class as a metric label: `permanent`, `transient`, `not_tried`, `unknown` or
    /// `commit_first`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Permanent { .. } => "permanent",
            Self::Transient { .. } => "transient",
            Self::NotTried { .. } => "not_tried",
            Self::Unknown { .. } => "unknown",
            Self::CommitFirst { .. } => "commit_first",
        }
    }

    /// Why, whatever the class.
    pub fn reason(&self) -> &FailureReason {
        match self {
            Self::Permanent { reason }
            | Self::Transient { reason }
            | Self::NotTried { reason }
            | Self::Unknown { reason }
            | Self::CommitFirst { reason } => reason,
        }
    }

    /// The text `Order.failure_reason` shows: `CODE: sentence`, bounded, without the
    /// operator's detail (which `to_string()` keeps for logs and the step history).
    pub fn public_reason(&self) -> String {
        self.reason().public()
    }

    /// [`Self::public_reason`] for a failure that happened while doing something the
    /// sentence should name (e.g. a compensation): `CODE: <doing>: sentence`.
    pub fn public_reason_while(&self, doing: &str) -> String {
        let reason = self.reason();
        bounded(format!("{}: {doing}: {}", reason.code, reason.message))
    }
}

/// Stable codes of why an adapter call failed: the first word of `Order.failure_reason`
/// (docs/api.md lists them). Clients may switch on them; the sentence after them may change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureCode {
    /// The payment provider declined the payment.
    PaymentDeclined,
    /// The payment provider refused the request as invalid.
    PaymentInvalid,
    /// The customer did not complete the action the provider asked for (3-D Secure, a bank
    /// redirect) before it expired; whatever the provider held was released.
    PaymentActionExpired,
    /// The inventory adapter has too few units of some SKUs.
    OutOfStock,
    /// The inventory adapter refused the request as invalid (e.g. an unknown SKU).
    InventoryInvalid,
    /// The provider behind a plugin kept answering "try again later" until the step's
    /// deadline.
    ProviderUnavailable,
    /// The plugin crashed (a Wasm trap).
    PluginTrapped,
    /// The plugin did not answer within its deadline.
    PluginDeadlineExceeded,
    /// The plugin went over its memory limit.
    PluginMemoryExceeded,
    /// The plugin could not be called: its circuit is open, or no instance could be started.
    PluginUnavailable,
    /// No plugin of the needed name is installed.
    PluginNotInstalled,
    /// The plugin broke its contract (an answer the host cannot use, the wrong kind).
    PluginContractViolation,
    /// A compensation found something it must not undo blindly (committed stock, a payment
    /// whose outcome is unresolved): the saga parks for an operator.
    CannotUndo,
    /// The saga's own records are inconsistent: a bug, never the caller's doing.
    Internal,
}

impl FailureCode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PaymentDeclined => "PAYMENT_DECLINED",
            Self::PaymentInvalid => "PAYMENT_INVALID",
            Self::PaymentActionExpired => "PAYMENT_ACTION_EXPIRED",
            Self::OutOfStock => "OUT_OF_STOCK",
            Self::InventoryInvalid => "INVENTORY_INVALID",
            Self::ProviderUnavailable => "PROVIDER_UNAVAILABLE",
            Self::PluginTrapped => "PLUGIN_TRAPPED",
            Self::PluginDeadlineExceeded => "PLUGIN_DEADLINE_EXCEEDED",
            Self::PluginMemoryExceeded => "PLUGIN_MEMORY_EXCEEDED",
            Self::PluginUnavailable => "PLUGIN_UNAVAILABLE",
            Self::PluginNotInstalled => "PLUGIN_NOT_INSTALLED",
            Self::PluginContractViolation => "PLUGIN_CONTRACT_VIOLATION",
            Self::CannotUndo => "CANNOT_UNDO",
            Self::Internal => "INTERNAL",
        }
    }
}

impl std::fmt::Display for FailureCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Longest `failure_reason` the API shows, in characters. A plugin's own message (a decline
/// reason) is cut to fit; the full text stays in the step history.
pub const MAX_PUBLIC_REASON_CHARS: usize = 256;

/// Why a call failed, in two registers: a code and one sentence that are safe to show to API
/// callers, and the operator's detail (the runtime's own error, a trap's backtrace) that only
/// logs and the saga's step history see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailureReason {
    code: FailureCode,
    // Boxed strings: a failure travels by value through every saga step, keep it small.
    message: Box<str>,
    detail: Option<Box<str>>,
}

impl FailureReason {
    /// `message` is one human sentence; it is flattened to one line (a plugin may send
    /// anything) and bounded when shown.
    pub fn new(code: FailureCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: one_line(&message.into()).into(),
            detail: None,
        }
    }

    /// Adds what an operator needs to find the cause; never shown in the public reason.
    #[must_use]
    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into().into());
        self
    }

    pub fn code(&self) -> FailureCode {
        self.code
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    pub fn detail(&self) -> Option<&str> {
        self.detail.as_deref()
    }

    /// `CODE: sentence`, at most [`MAX_PUBLIC_REASON_CHARS`] characters.
    pub fn public(&self) -> String {
        bounded(format!("{}: {}", self.code, self.message))
    }
}

/// The public form, then the detail: what logs and the step history record.
impl std::fmt::Display for FailureReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)?;
        if let Some(detail) = &self.detail {
            write!(f, " [{detail}]")?;
        }
        Ok(())
    }
}

/// Control characters (a newline in a plugin's message) become spaces, runs of spaces one.
fn one_line(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        let c = if c.is_control() || c.is_whitespace() {
            ' '
        } else {
            c
        };
        if !(c == ' ' && (out.is_empty() || out.ends_with(' '))) {
            out.push(c);
        }
    }
    out.truncate(out.trim_end().len());
    out
}

/// Cuts `text` to [`MAX_PUBLIC_REASON_CHARS`] characters, marking the cut.
fn bounded(mut text: String) -> String {
    if text.chars().count() > MAX_PUBLIC_REASON_CHARS
        && let Some((at, _)) = text.char_indices().nth(MAX_PUBLIC_REASON_CHARS - 1)
    {
        text.truncate(at);
        text.push('…');
    }
    text
}

/// A failed call and, when the plugin was reached, which build it was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayFailure {
    pub error: GatewayError,
    /// Boxed: a failure is moved through every step's error path, and a call record (with
    /// the plugin writes it carries) would make every `Result` of a gateway large.
    pub call: Option<Box<PluginCall>>,
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
    /// What the customer must do first: only on an `authorize` answered "requires action"
    /// (contract 0.2; a lookup reports the state, not the action).
    pub action: Option<PaymentAction>,
}

/// Payment states as providers report them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderPaymentState {
    /// The provider waits for the customer (contract 0.2); nothing is held yet.
    RequiresAction,
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
///
/// `pinned` on a follow-up call (capture, void, refund; release and commit for inventory) is
/// the component digest of the build that made the payment or reservation, as its
/// [`PluginCall::digest`] recorded: the call runs on that build while it is still installed,
/// so a newer version with another id format or ledger cannot break the orders taken before
/// it; on the current build otherwise. The returned [`PluginCall`] says which build answered.
///
/// `buffering` on a call that writes (every one but the lookup) says how the plugin's
/// writes wait for the step's commit ([`Buffering`]):
/// - whether its batches that only create keys may be answered without reading them, left
///   to that commit to check (`AbsentKeys`): a worker asks for that until a commit of the
///   saga it drives is refused over a plugin key, then reads for the rest of that run. The
///   runtime honours it only for a plugin with no network grant;
/// - whether earlier steps wait for the same commit (`pending_steps`): then a plugin with a
///   network grant is not called, and the call fails with [`GatewayError::CommitFirst`].
#[async_trait]
pub trait PaymentGateway: Send + Sync {
    /// Holds `amount`. Idempotent per `idempotency_key`. `pinned`: the build an earlier
    /// attempt reached (its outcome unknown), so a resend reaches the same ledger; `None`
    /// for a first attempt, which a canary of the provider may take.
    // The contract's request, field by field, plus how the call is made (`pinned`,
    // `buffering`): a struct for them would only be unpacked again in every adapter.
    #[allow(clippy::too_many_arguments)]
    async fn authorize(
        &self,
        provider: &str,
        pinned: Option<&str>,
        order_id: OrderId,
        amount: Money,
        token: &str,
        idempotency_key: &str,
        buffering: Buffering,
    ) -> GatewayResult<ProviderPayment>;

    /// Captures `amount` (`None`: everything authorized).
    async fn capture(
        &self,
        provider: &str,
        pinned: Option<&str>,
        payment_id: &str,
        amount: Option<Money>,
        idempotency_key: &str,
        buffering: Buffering,
    ) -> GatewayResult<ProviderPayment>;

    /// Releases the hold.
    async fn void(
        &self,
        provider: &str,
        pinned: Option<&str>,
        payment_id: &str,
        idempotency_key: &str,
        buffering: Buffering,
    ) -> GatewayResult<ProviderPayment>;

    /// Refunds `amount` (`None`: everything captured and not yet refunded).
    async fn refund(
        &self,
        provider: &str,
        pinned: Option<&str>,
        payment_id: &str,
        amount: Option<Money>,
        idempotency_key: &str,
        buffering: Buffering,
    ) -> GatewayResult<ProviderPayment>;

    /// The payment an `authorize` with this key created, if any: how an UNRESOLVED
    /// authorisation is reconciled.
    async fn find_by_authorize_key(
        &self,
        provider: &str,
        pinned: Option<&str>,
        idempotency_key: &str,
    ) -> GatewayResult<Option<ProviderPayment>>;
}

/// Inventory adapters. `pinned` and `buffering` as for [`PaymentGateway`].
#[async_trait]
pub trait InventoryGateway: Send + Sync {
    /// Reserves every line or none; `Permanent` when out of stock (the reason names SKUs).
    /// Returns the adapter's reservation id. Idempotent per key. `pinned`: as for
    /// [`PaymentGateway::authorize`].
    async fn reserve(
        &self,
        pinned: Option<&str>,
        order_id: OrderId,
        lines: &[LineItem],
        idempotency_key: &str,
        buffering: Buffering,
    ) -> GatewayResult<String>;

    /// Returns the stock. Idempotent per key. `pinned`: see [`PaymentGateway`].
    async fn release(
        &self,
        pinned: Option<&str>,
        reservation_id: &str,
        idempotency_key: &str,
        buffering: Buffering,
    ) -> GatewayResult<()>;

    /// Allocates the stock at fulfillment. Idempotent per key.
    async fn commit(
        &self,
        pinned: Option<&str>,
        reservation_id: &str,
        idempotency_key: &str,
        buffering: Buffering,
    ) -> GatewayResult<()>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_public_reason_is_a_code_and_one_bounded_line() {
        let error = GatewayError::Unknown {
            reason: FailureReason::new(
                FailureCode::PluginTrapped,
                "the payment plugin \"trap\" crashed",
            )
            .with_detail("wasm trap: unreachable\nwasm backtrace:\n    0: 0x1a2b - <unknown>!main"),
        };
        assert_eq!(
            error.public_reason(),
            "PLUGIN_TRAPPED: the payment plugin \"trap\" crashed"
        );
        assert!(error.to_string().contains("wasm backtrace"), "{error}");
        assert_eq!(
            error.public_reason_while("compensation of authorize-payment failed"),
            "PLUGIN_TRAPPED: compensation of authorize-payment failed: the payment plugin \"trap\" crashed"
        );

        let chatty = FailureReason::new(
            FailureCode::PaymentDeclined,
            format!("line one\r\n\tline  two {}", "x".repeat(1000)),
        );
        let public = chatty.public();
        assert!(
            public.starts_with("PAYMENT_DECLINED: line one line two xxx"),
            "{public}"
        );
        assert_eq!(public.chars().count(), MAX_PUBLIC_REASON_CHARS);
        assert!(public.ends_with('…'));
    }
}
