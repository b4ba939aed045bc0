//! Client of the `payment-provider` world (`oms:plugins/payment`).

use std::sync::Arc;

use super::{Called, instantiate, kind_mismatch, refused, split, transient};
use crate::call::{self, Verdict};
use crate::error::PluginError;
use crate::manifest::PluginKind;
use crate::plugin::Exports;
use crate::runtime::Inner;

pub use crate::bindings::payment::exports::oms::plugins::payment::{
    AuthorizeRequest, Payment, PaymentError, PaymentLookup, PaymentStatus,
};
pub use crate::bindings::payment::oms::plugins::types::Money;

/// Result of a payment call.
pub type PaymentResult<T> = Result<Called<T>, PluginError<PaymentError>>;

/// Calls the payment plugin of one name.
#[derive(Clone)]
pub struct PaymentPlugin {
    pub(crate) rt: Arc<Inner>,
    pub(crate) name: Arc<str>,
    pub(crate) kv: call::KvMode,
    /// Which build its calls run on ([`Self::pinned`], [`Self::starting`]).
    pub(crate) route: crate::registry::Route,
}

impl PaymentError {
    /// `declined` and `invalid` are permanent; `transient` may succeed on retry (same key).
    pub fn is_transient(&self) -> bool {
        matches!(self, PaymentError::Transient(_))
    }
}

fn judge<T>(r: &Result<T, PaymentError>) -> Verdict {
    match r {
        Ok(_) => Verdict::OK,
        Err(PaymentError::Declined(_)) => refused("declined"),
        Err(PaymentError::Invalid(_)) => refused("invalid"),
        Err(PaymentError::Transient(message)) => transient(message),
    }
}

/// One payment call: instantiate the current version, call `$method` on its `payment` export.
macro_rules! payment_call {
    ($self:ident, $method:ident ( $($arg:expr),* )) => {{
        let (r, info) = call::run(
            &$self.rt,
            &$self.name,
            &$self.route,
            PluginKind::PaymentProvider,
            judge,
            $self.kv,
            move |store, plugin| {
                Box::pin(async move {
                    let Exports::Payment(pre) = &plugin.exports else {
                        return Err(kind_mismatch());
                    };
                    let instance = instantiate(pre.instantiate_async(&mut *store)).await?;
                    instance.oms_plugins_payment().$method(&mut *store, $($arg),*).await
                })
            },
        )
        .await?;
        split(r, info)
    }};
}

impl PaymentPlugin {
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

    /// Holds `request.amount`.
    pub async fn authorize(&self, request: AuthorizeRequest) -> PaymentResult<Payment> {
        payment_call!(self, call_authorize(&request))
    }

    /// Captures `amount` (`None` = all that remains authorized).
    pub async fn capture(
        &self,
        payment_id: String,
        amount: Option<Money>,
        idempotency_key: String,
    ) -> PaymentResult<Payment> {
        payment_call!(
            self,
            call_capture(&payment_id, amount.as_ref(), &idempotency_key)
        )
    }

    /// Releases the hold (before any capture).
    pub async fn void(
        &self,
        payment_id: String,
        idempotency_key: String,
    ) -> PaymentResult<Payment> {
        payment_call!(self, call_void(&payment_id, &idempotency_key))
    }

    /// Refunds `amount` (`None` = all that remains captured).
    pub async fn refund(
        &self,
        payment_id: String,
        amount: Option<Money>,
        idempotency_key: String,
    ) -> PaymentResult<Payment> {
        payment_call!(
            self,
            call_refund(&payment_id, amount.as_ref(), &idempotency_key)
        )
    }

    /// The provider's view of a payment, to reconcile an unresolved call.
    pub async fn get_payment(&self, lookup: PaymentLookup) -> PaymentResult<Option<Payment>> {
        payment_call!(self, call_get_payment(&lookup))
    }
}
