//! Client of the `payment-provider` world (`oms:plugins/payment`), for plugins of either
//! contract version. Its types are 0.2's, a superset of 0.1's: a 0.1 plugin's answers are
//! converted losslessly (an authorization is always `Authorized`, a status never
//! `RequiresAction`), and the calls 0.1 lacks (`handle-webhook`) are refused for it.

use std::sync::Arc;

use super::{Called, instantiate, kind_mismatch, refused, split, transient};
use crate::call::{self, Verdict};
use crate::error::PluginError;
use crate::manifest::PluginKind;
use crate::plugin::Exports;
use crate::runtime::Inner;

pub use crate::bindings::payment::oms::plugins::types::Money;
pub use crate::bindings::payment_v2::exports::oms::plugins0_2_0::payment::{
    Authorization, AuthorizeRequest, CustomerAction, Payment, PaymentError, PaymentLookup,
    PaymentStatus, Webhook,
};

use crate::bindings::payment::exports::oms::plugins::payment as v1;

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

impl From<v1::PaymentStatus> for PaymentStatus {
    fn from(s: v1::PaymentStatus) -> Self {
        match s {
            v1::PaymentStatus::Authorized => Self::Authorized,
            v1::PaymentStatus::Declined => Self::Declined,
            v1::PaymentStatus::PartiallyCaptured => Self::PartiallyCaptured,
            v1::PaymentStatus::Captured => Self::Captured,
            v1::PaymentStatus::Voided => Self::Voided,
            v1::PaymentStatus::PartiallyRefunded => Self::PartiallyRefunded,
            v1::PaymentStatus::Refunded => Self::Refunded,
        }
    }
}

impl From<v1::Payment> for Payment {
    fn from(p: v1::Payment) -> Self {
        Self {
            id: p.id,
            order_id: p.order_id,
            status: p.status.into(),
            authorized: p.authorized,
            captured: p.captured,
            refunded: p.refunded,
        }
    }
}

impl From<v1::PaymentError> for PaymentError {
    fn from(e: v1::PaymentError) -> Self {
        match e {
            v1::PaymentError::Declined(m) => Self::Declined(m),
            v1::PaymentError::Invalid(m) => Self::Invalid(m),
            v1::PaymentError::Transient(m) => Self::Transient(m),
        }
    }
}

fn v1_request(r: &AuthorizeRequest) -> v1::AuthorizeRequest {
    v1::AuthorizeRequest {
        order_id: r.order_id.clone(),
        amount: r.amount.clone(),
        payment_token: r.payment_token.clone(),
        idempotency_key: r.idempotency_key.clone(),
    }
}

fn v1_lookup(l: &PaymentLookup) -> v1::PaymentLookup {
    match l {
        PaymentLookup::AuthorizeKey(k) => v1::PaymentLookup::AuthorizeKey(k.clone()),
        PaymentLookup::PaymentId(id) => v1::PaymentLookup::PaymentId(id.clone()),
    }
}

/// A 0.1 answer in 0.2's types.
fn lift<T, U: From<T>>(r: Result<T, v1::PaymentError>) -> Result<U, PaymentError> {
    r.map(U::from).map_err(PaymentError::from)
}

impl Authorization {
    /// The payment, whatever the authorization achieved.
    pub fn payment(&self) -> &Payment {
        match self {
            Self::Authorized(p) | Self::RequiresAction((p, _)) => p,
        }
    }
}

/// One payment call: instantiate the current version, call `$method` on its `payment` export.
/// `$v1` calls a 0.1 plugin (`instance`, `store`) and returns 0.2's shape; `$v2` calls a 0.2
/// plugin.
macro_rules! payment_call {
    ($self:ident, |$instance:ident, $store:ident| v1: $v1:expr, v2: $v2:expr) => {{
        let (r, info) = call::run(
            &$self.rt,
            &$self.name,
            &$self.route,
            PluginKind::PaymentProvider,
            judge,
            $self.kv,
            move |store, plugin| {
                Box::pin(async move {
                    match &plugin.exports {
                        Exports::Payment(pre) => {
                            let instance = instantiate(pre.instantiate_async(&mut *store)).await?;
                            let ($instance, $store) = (instance.oms_plugins_payment(), store);
                            $v1
                        }
                        Exports::PaymentV2(pre) => {
                            let instance = instantiate(pre.instantiate_async(&mut *store)).await?;
                            let ($instance, $store) = (instance.oms_plugins0_2_0_payment(), store);
                            $v2
                        }
                        _ => Err(kind_mismatch()),
                    }
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

    /// Holds `request.amount`, or (0.2) asks for a customer action first.
    pub async fn authorize(&self, request: AuthorizeRequest) -> PaymentResult<Authorization> {
        payment_call!(self, |p, store| v1: {
            let r = p.call_authorize(&mut *store, &v1_request(&request)).await?;
            Ok(lift::<v1::Payment, Payment>(r).map(Authorization::Authorized))
        }, v2: p.call_authorize(&mut *store, &request).await)
    }

    /// Captures `amount` (`None` = all that remains authorized).
    pub async fn capture(
        &self,
        payment_id: String,
        amount: Option<Money>,
        idempotency_key: String,
    ) -> PaymentResult<Payment> {
        payment_call!(self, |p, store| v1: {
            let r = p.call_capture(&mut *store, &payment_id, amount.as_ref(), &idempotency_key);
            Ok(lift(r.await?))
        }, v2: p.call_capture(&mut *store, &payment_id, amount.as_ref(), &idempotency_key).await)
    }

    /// Releases the hold (before any capture).
    pub async fn void(
        &self,
        payment_id: String,
        idempotency_key: String,
    ) -> PaymentResult<Payment> {
        payment_call!(self, |p, store| v1: {
            Ok(lift(p.call_void(&mut *store, &payment_id, &idempotency_key).await?))
        }, v2: p.call_void(&mut *store, &payment_id, &idempotency_key).await)
    }

    /// Refunds `amount` (`None` = all that remains captured).
    pub async fn refund(
        &self,
        payment_id: String,
        amount: Option<Money>,
        idempotency_key: String,
    ) -> PaymentResult<Payment> {
        payment_call!(self, |p, store| v1: {
            let r = p.call_refund(&mut *store, &payment_id, amount.as_ref(), &idempotency_key);
            Ok(lift(r.await?))
        }, v2: p.call_refund(&mut *store, &payment_id, amount.as_ref(), &idempotency_key).await)
    }

    /// The provider's view of a payment, to reconcile an unresolved call.
    pub async fn get_payment(&self, lookup: PaymentLookup) -> PaymentResult<Option<Payment>> {
        payment_call!(self, |p, store| v1: {
            let r = p.call_get_payment(&mut *store, &v1_lookup(&lookup)).await?;
            Ok(r.map(|found| found.map(Payment::from)).map_err(PaymentError::from))
        }, v2: p.call_get_payment(&mut *store, &lookup).await)
    }

    /// Hands an authenticated inbound webhook to the plugin (0.2): the payment it concerns,
    /// as the provider now sees it. A 0.1 plugin has no webhooks: `invalid`.
    pub async fn handle_webhook(&self, event: Webhook) -> PaymentResult<Option<Payment>> {
        payment_call!(self, |p, store| v1: {
            let _ = (p, store);
            Ok(Err(PaymentError::Invalid(
                "an oms:plugins@0.1 payment plugin has no webhooks".to_owned(),
            )))
        }, v2: p.call_handle_webhook(&mut *store, &event).await)
    }
}
