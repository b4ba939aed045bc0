//! `PaymentGateway` over payment-provider plugins.

use async_trait::async_trait;
use oms_application::plugin_kv::Buffering;
use oms_application::ports::{
    GatewayResult, PaymentGateway, PluginCall, ProviderPayment, ProviderPaymentState,
};
use oms_domain::{Currency, Money, OrderId, PaymentAction, Timestamp};
use oms_plugin_runtime::clients::payment::{
    self as wit, Authorization, AuthorizeRequest, PaymentError, PaymentLookup, PaymentResult,
};
use oms_plugin_runtime::{KvMode, PaymentPlugin, PluginRuntime};

use super::{failure, plugin_call};
use oms_application::ports::{FailureCode, FailureReason, GatewayError, GatewayFailure};

/// Calls the payment plugin named by each order's `payment.provider`.
#[derive(Clone)]
pub struct PluginPayments {
    runtime: PluginRuntime,
}

impl PluginPayments {
    pub fn new(runtime: PluginRuntime) -> Self {
        Self { runtime }
    }

    /// Every call here is a saga step's: its key-value writes are committed with the step.
    fn plugin(&self, provider: &str, buffering: Buffering) -> PaymentPlugin {
        self.runtime
            .payment(provider)
            .with_kv(KvMode::Buffered(buffering))
    }
}

/// The provider's own answer: its message is meant for people, so it is shown as sent
/// (flattened and bounded by [`FailureReason`]).
fn refusal(e: &PaymentError, plugin: &str) -> GatewayError {
    match e {
        PaymentError::Declined(message) => GatewayError::Permanent {
            reason: FailureReason::new(
                FailureCode::PaymentDeclined,
                if message.trim().is_empty() {
                    "the provider declined the payment"
                } else {
                    message.as_str()
                },
            ),
        },
        PaymentError::Invalid(message) => GatewayError::Permanent {
            reason: FailureReason::new(
                FailureCode::PaymentInvalid,
                format!("the payment plugin \"{plugin}\" refused the request: {message}"),
            ),
        },
        PaymentError::Transient(message) => GatewayError::Transient {
            reason: FailureReason::new(
                FailureCode::ProviderUnavailable,
                format!("the payment plugin \"{plugin}\" asked to retry later: {message}"),
            ),
        },
    }
}

fn payment_failure(e: oms_plugin_runtime::PluginError<PaymentError>) -> GatewayFailure {
    failure(e, "payment", refusal)
}

pub(super) fn to_wit(m: Money) -> wit::Money {
    wit::Money {
        amount_minor: m.amount_minor(),
        currency: m.currency().to_string(),
    }
}

/// A plugin answering with money the domain cannot represent breaks the contract.
fn from_wit(m: &wit::Money, call: &PluginCall) -> Result<Money, GatewayFailure> {
    Currency::parse(&m.currency)
        .map_err(|e| e.to_string())
        .and_then(|c| Money::new(m.amount_minor, c).map_err(|e| e.to_string()))
        .map_err(|detail| GatewayFailure {
            error: GatewayError::Permanent {
                reason: FailureReason::new(
                    FailureCode::PluginContractViolation,
                    format!(
                        "the payment plugin \"{}\" answered with an invalid amount",
                        call.plugin
                    ),
                )
                .with_detail(detail),
            },
            call: Some(Box::new(call.clone())),
        })
}

fn provider_payment(
    p: &wit::Payment,
    call: &PluginCall,
) -> Result<ProviderPayment, GatewayFailure> {
    Ok(ProviderPayment {
        payment_id: p.id.clone(),
        state: match p.status {
            wit::PaymentStatus::RequiresAction => ProviderPaymentState::RequiresAction,
            wit::PaymentStatus::Authorized => ProviderPaymentState::Authorized,
            wit::PaymentStatus::Declined => ProviderPaymentState::Declined,
            wit::PaymentStatus::PartiallyCaptured => ProviderPaymentState::PartiallyCaptured,
            wit::PaymentStatus::Captured => ProviderPaymentState::Captured,
            wit::PaymentStatus::Voided => ProviderPaymentState::Voided,
            wit::PaymentStatus::PartiallyRefunded => ProviderPaymentState::PartiallyRefunded,
            wit::PaymentStatus::Refunded => ProviderPaymentState::Refunded,
        },
        authorized: from_wit(&p.authorized, call)?,
        captured: from_wit(&p.captured, call)?,
        refunded: from_wit(&p.refunded, call)?,
        action: None,
    })
}

/// Longest customer-action URL the host shows on an order.
const MAX_ACTION_URL_BYTES: usize = 2048;

/// A plugin's customer action, checked: an `https://` (or `http://`) URL the storefront can
/// send the customer to, and a status that says the payment waits for it.
fn customer_action(
    payment: &wit::Payment,
    action: &wit::CustomerAction,
    call: &PluginCall,
) -> Result<PaymentAction, GatewayFailure> {
    let violation = |what: String| GatewayFailure {
        error: GatewayError::Permanent {
            reason: FailureReason::new(
                FailureCode::PluginContractViolation,
                format!(
                    "the payment plugin \"{}\" asked for a customer action {what}",
                    call.plugin
                ),
            ),
        },
        call: Some(Box::new(call.clone())),
    };
    let url = action.url.trim();
    if !(url.starts_with("https://") || url.starts_with("http://"))
        || url.len() > MAX_ACTION_URL_BYTES
        || url.chars().any(char::is_control)
    {
        return Err(violation(format!(
            "with a URL that is not an http(s) URL of at most {MAX_ACTION_URL_BYTES} bytes"
        )));
    }
    if payment.status != wit::PaymentStatus::RequiresAction {
        return Err(violation(
            "on a payment whose status is not requires-action".to_owned(),
        ));
    }
    let expires_at = i64::try_from(action.expires_at_ms)
        .map(Timestamp::from_unix_millis)
        .map_err(|_| violation("with an expiry out of range".to_owned()))?;
    Ok(PaymentAction {
        url: url.to_owned(),
        expires_at,
    })
}

/// An authorize answer in the port's terms: a payment, with the action it waits for.
fn authorized(result: PaymentResult<Authorization>) -> GatewayResult<ProviderPayment> {
    let called = result.map_err(payment_failure)?;
    let call = plugin_call(&called.info);
    let payment = match &called.value {
        // An answer that says "authorized" must hold the money: any other status would be
        // recorded as a hold that is not there.
        Authorization::Authorized(p) if p.status != wit::PaymentStatus::Authorized => {
            return Err(GatewayFailure {
                error: GatewayError::Permanent {
                    reason: FailureReason::new(
                        FailureCode::PluginContractViolation,
                        format!(
                            "the payment plugin \"{}\" answered an authorization with status {}",
                            call.plugin,
                            format!("{:?}", p.status).to_lowercase()
                        ),
                    ),
                },
                call: Some(Box::new(call)),
            });
        }
        Authorization::Authorized(p) => provider_payment(p, &call)?,
        Authorization::RequiresAction((p, action)) => ProviderPayment {
            action: Some(customer_action(p, action, &call)?),
            ..provider_payment(p, &call)?
        },
    };
    Ok((payment, call))
}

/// A payment call's answer in the port's terms.
pub(super) fn answered(result: PaymentResult<wit::Payment>) -> GatewayResult<ProviderPayment> {
    let called = result.map_err(payment_failure)?;
    let call = plugin_call(&called.info);
    Ok((provider_payment(&called.value, &call)?, call))
}

/// A lookup's answer in the port's terms.
pub(super) fn found(
    result: PaymentResult<Option<wit::Payment>>,
) -> GatewayResult<Option<ProviderPayment>> {
    let called = result.map_err(payment_failure)?;
    let call = plugin_call(&called.info);
    let payment = called
        .value
        .as_ref()
        .map(|p| provider_payment(p, &call))
        .transpose()?;
    Ok((payment, call))
}

/// The contract's authorize request for the port's arguments.
pub(super) fn authorize_request(
    order_id: OrderId,
    amount: Money,
    token: &str,
    idempotency_key: &str,
) -> AuthorizeRequest {
    AuthorizeRequest {
        order_id: order_id.to_string(),
        amount: to_wit(amount),
        payment_token: token.to_owned(),
        idempotency_key: idempotency_key.to_owned(),
    }
}

#[async_trait]
impl PaymentGateway for PluginPayments {
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
        // A first attempt: a canary of the provider takes its share of orders. A resend
        // after an unknown outcome goes to the build that may have acted.
        authorized(
            self.plugin(provider, buffering)
                .starting(&order_id.to_string(), pinned)
                .authorize(authorize_request(order_id, amount, token, idempotency_key))
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
        answered(
            self.plugin(provider, buffering)
                .pinned(pinned)
                .capture(
                    payment_id.to_owned(),
                    amount.map(to_wit),
                    idempotency_key.to_owned(),
                )
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
        answered(
            self.plugin(provider, buffering)
                .pinned(pinned)
                .void(payment_id.to_owned(), idempotency_key.to_owned())
                .await,
        )
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
        answered(
            self.plugin(provider, buffering)
                .pinned(pinned)
                .refund(
                    payment_id.to_owned(),
                    amount.map(to_wit),
                    idempotency_key.to_owned(),
                )
                .await,
        )
    }

    async fn find_by_authorize_key(
        &self,
        provider: &str,
        pinned: Option<&str>,
        idempotency_key: &str,
    ) -> GatewayResult<Option<ProviderPayment>> {
        found(
            self.runtime
                .payment(provider)
                .pinned(pinned)
                .get_payment(PaymentLookup::AuthorizeKey(idempotency_key.to_owned()))
                .await,
        )
    }
}
