//! What each [`Operation`] does: one gateway call or one local transition, and the effect it
//! has on the order and the saga's data.

use oms_domain::{
    DomainError, Money, Order, OrderEvent, PaymentAction, PaymentStatus, ReservationStatus,
    Timestamp,
};

use super::definition::Operation;
use super::instance::{SagaData, SagaInstance};
use crate::plugin_kv::Buffering;
use crate::ports::{
    FailureCode, FailureReason, GatewayError, GatewayFailure, InventoryGateway, PaymentGateway,
    PluginCall, ProviderPaymentState,
};

/// A successful operation: what to record on the order and in the saga's data.
#[derive(Debug, Default)]
pub(crate) struct Effect {
    pub call: Option<PluginCall>,
    pub change: Change,
    pub reservation_id: Option<String>,
    pub payment_id: Option<String>,
    /// The step is not done: the provider waits for the customer until this time (the
    /// engine polls until then, or until a webhook wakes the saga).
    pub wait_until: Option<Timestamp>,
}

/// The order transition an effect makes (applied to a freshly read order at commit time, so
/// a concurrent edit such as an address change never loses the step's effect).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) enum Change {
    #[default]
    None,
    Reserved,
    Released,
    Committed,
    Authorized,
    /// The provider waits for the customer to complete an action.
    ActionRequired(PaymentAction),
    /// An unresolved authorisation held nothing.
    AuthorizationFailed,
    Voided,
    Captured(oms_domain::Money),
    Refunded(oms_domain::Money),
    Confirmed,
    CancellationFinished,
    Fulfilled,
}

impl Change {
    /// Applies the change; returns the event it announces, if any.
    pub fn apply(
        &self,
        order: &mut Order,
        now: Timestamp,
    ) -> Result<Option<OrderEvent>, DomainError> {
        Ok(match self {
            Change::None => None,
            Change::Reserved => order.record_reservation(now).map(|()| None)?,
            Change::Released => order.record_release(now).map(|()| None)?,
            Change::Committed => order.record_commit(now).map(|()| None)?,
            Change::Authorized => order.record_authorization(now).map(|()| None)?,
            Change::ActionRequired(action) => order
                .record_action_required(action.clone(), now)
                .map(|()| None)?,
            Change::AuthorizationFailed => {
                order.record_authorization_failure(now).map(|()| None)?
            }
            Change::Voided => order.record_void(now).map(|()| None)?,
            Change::Captured(amount) => order.record_capture(*amount, now).map(|()| None)?,
            Change::Refunded(amount) => Some(order.refund(*amount, now)?),
            Change::Confirmed => Some(order.confirm(now)?),
            Change::CancellationFinished => Some(order.complete_cancellation(now)?),
            Change::Fulfilled => Some(order.fulfill(now)?),
        })
    }
}

/// Runs operations against the gateways.
pub(crate) struct Executor<'a> {
    pub payments: &'a dyn PaymentGateway,
    pub inventory: &'a dyn InventoryGateway,
    /// Passed to every call that writes (see [`Buffering`]).
    pub buffering: Buffering,
}

fn with_call(change: Change, call: PluginCall) -> Effect {
    Effect {
        call: Some(call),
        change,
        ..Effect::default()
    }
}

fn local(change: Change) -> Effect {
    Effect {
        change,
        ..Effect::default()
    }
}

/// An undo that cannot be done from this state: permanent, so the saga parks for an operator.
fn refused(reason: &str) -> GatewayFailure {
    GatewayFailure {
        error: GatewayError::Permanent {
            reason: FailureReason::new(FailureCode::CannotUndo, reason),
        },
        call: None,
    }
}

fn missing(what: &str) -> GatewayFailure {
    GatewayFailure {
        error: GatewayError::Permanent {
            reason: FailureReason::new(
                FailureCode::Internal,
                format!("the saga has no {what} to act on"),
            ),
        },
        call: None,
    }
}

impl Executor<'_> {
    pub async fn run(
        &self,
        op: Operation,
        saga: &SagaInstance,
        order: &Order,
        key: &str,
    ) -> Result<Effect, GatewayFailure> {
        let started = std::time::Instant::now();
        // One span per step attempt, under its saga's span (which names the saga); the
        // plugin call it makes is its child.
        let span = tracing::debug_span!(
            "saga.step",
            operation = op.as_str(),
            outcome = tracing::field::Empty,
        );
        let result =
            tracing::Instrument::instrument(self.call(op, saga, order, key), span.clone()).await;
        // `oms_saga_step_duration_seconds{kind, operation, outcome}`: one sample per attempt.
        let outcome = match &result {
            Ok(_) => "ok",
            Err(f) => f.error.kind(),
        };
        span.record("outcome", outcome);
        metrics::histogram!(
            "oms_saga_step_duration_seconds",
            "kind" => saga.kind.as_str(),
            "operation" => op.as_str(),
            "outcome" => outcome
        )
        .record(started.elapsed().as_secs_f64());
        result
    }

    async fn call(
        &self,
        op: Operation,
        saga: &SagaInstance,
        order: &Order,
        key: &str,
    ) -> Result<Effect, GatewayFailure> {
        let data: &SagaData = &saga.data;
        let provider = order.payment().provider.as_str();
        // Follow-up calls go to the build that made the reservation or the payment.
        let stock_build = data.reservation_build.as_deref();
        let pay_build = data.payment_build.as_deref();
        match op {
            Operation::ReserveInventory => {
                let (reservation_id, call) = self
                    .inventory
                    .reserve(stock_build, order.id(), order.items(), key, self.buffering)
                    .await?;
                Ok(Effect {
                    reservation_id: Some(reservation_id),
                    ..with_call(Change::Reserved, call)
                })
            }
            Operation::ReleaseInventory | Operation::UndoReservation => {
                match order.reservation_status() {
                    ReservationStatus::Reserved => {}
                    // The inventory contract has no undo for a commit: saying "released"
                    // would leave goods to ship unpaid. Fail, so the saga parks.
                    ReservationStatus::Committed => {
                        return Err(refused(
                            "the reservation is committed (fulfillment began) and cannot be released",
                        ));
                    }
                    ReservationStatus::None | ReservationStatus::Released => {
                        return Ok(local(Change::None));
                    }
                }
                let id = data
                    .reservation_id
                    .as_deref()
                    .ok_or_else(|| missing("reservation"))?;
                let ((), call) = self
                    .inventory
                    .release(stock_build, id, key, self.buffering)
                    .await?;
                Ok(with_call(Change::Released, call))
            }
            Operation::CommitInventory => {
                let id = data
                    .reservation_id
                    .as_deref()
                    .ok_or_else(|| missing("reservation"))?;
                let ((), call) = self
                    .inventory
                    .commit(stock_build, id, key, self.buffering)
                    .await?;
                Ok(with_call(Change::Committed, call))
            }
            Operation::AuthorizePayment => self.authorize(order, pay_build, key).await,
            // The last authorisation attempt's outcome is unknown: a hold may exist at the
            // provider. Ask before undoing, or it would be left on the customer's card. A
            // payment waiting for the customer is asked about too: the customer may have
            // completed it (void it), failed it (nothing to void: a provider refuses to void
            // a declined payment) or the provider may have cancelled it already.
            Operation::VoidPayment
                if matches!(
                    order.payment_status(),
                    PaymentStatus::Unresolved | PaymentStatus::ActionRequired
                ) =>
            {
                self.void_unresolved(saga, order, pay_build, key).await
            }
            Operation::VoidPayment => {
                if order.payment_status() != PaymentStatus::Authorized {
                    return Ok(local(Change::None));
                }
                let id = data
                    .payment_id
                    .as_deref()
                    .ok_or_else(|| missing("payment"))?;
                let (_, call) = self
                    .payments
                    .void(provider, pay_build, id, key, self.buffering)
                    .await?;
                Ok(with_call(Change::Voided, call))
            }
            // Committed stock cannot be released (see below): voiding or refunding the money
            // first would leave goods to ship unpaid, so touch nothing and park.
            Operation::UndoPayment
                if order.reservation_status() == ReservationStatus::Committed =>
            {
                Err(refused(
                    "the reservation is committed (fulfillment began): the order cannot be undone",
                ))
            }
            Operation::UndoPayment => match order.payment_status() {
                // Asked first, as for a placement's own void (above).
                PaymentStatus::ActionRequired => {
                    self.void_unresolved(saga, order, pay_build, key).await
                }
                PaymentStatus::Authorized => {
                    let id = data
                        .payment_id
                        .as_deref()
                        .ok_or_else(|| missing("payment"))?;
                    let (_, call) = self
                        .payments
                        .void(provider, pay_build, id, key, self.buffering)
                        .await?;
                    Ok(with_call(Change::Voided, call))
                }
                PaymentStatus::Captured
                | PaymentStatus::PartiallyCaptured
                | PaymentStatus::PartiallyRefunded => {
                    let id = data
                        .payment_id
                        .as_deref()
                        .ok_or_else(|| missing("payment"))?;
                    let refundable = order
                        .captured()
                        .checked_sub(&order.refunded())
                        .map_err(|e| missing(&e.to_string()))?;
                    let (_, call) = self
                        .payments
                        .refund(provider, pay_build, id, None, key, self.buffering)
                        .await?;
                    Ok(with_call(Change::Refunded(refundable), call))
                }
                // A hold may or may not exist: nothing here can tell, so do not claim it undone.
                PaymentStatus::Unresolved => Err(refused(
                    "the payment's outcome is unresolved; reconcile it with the provider first",
                )),
                PaymentStatus::Pending
                | PaymentStatus::AuthFailed
                | PaymentStatus::Voided
                | PaymentStatus::Refunded => Ok(local(Change::None)),
            },
            Operation::CapturePayment => {
                let id = data
                    .payment_id
                    .as_deref()
                    .ok_or_else(|| missing("payment"))?;
                let remaining = order
                    .total()
                    .checked_sub(&order.captured())
                    .map_err(|e| missing(&e.to_string()))?;
                let (_, call) = self
                    .payments
                    .capture(provider, pay_build, id, None, key, self.buffering)
                    .await?;
                Ok(with_call(Change::Captured(remaining), call))
            }
            Operation::RefundPayment => {
                let id = data
                    .payment_id
                    .as_deref()
                    .ok_or_else(|| missing("payment"))?;
                let currency = order.total().currency();
                let amount = match data.refund_amount_minor {
                    Some(minor) => Money::new(minor, currency),
                    None => order.captured().checked_sub(&order.refunded()),
                }
                .map_err(|e| missing(&e.to_string()))?;
                let (_, call) = self
                    .payments
                    .refund(provider, pay_build, id, Some(amount), key, self.buffering)
                    .await?;
                Ok(with_call(Change::Refunded(amount), call))
            }
            Operation::ConfirmOrder => Ok(local(Change::Confirmed)),
            Operation::FinishCancellation => Ok(local(Change::CancellationFinished)),
            Operation::MarkFulfilled => Ok(local(Change::Fulfilled)),
        }
    }

    /// Undoes an authorisation whose outcome is unknown, or that waits for the customer: asks
    /// the provider what the authorise key did, and voids a hold (or a pending payment) it
    /// finds (the order's payment becomes VOIDED) or records that nothing is held
    /// (AUTH_FAILED).
    async fn void_unresolved(
        &self,
        saga: &SagaInstance,
        order: &Order,
        build: Option<&str>,
        key: &str,
    ) -> Result<Effect, GatewayFailure> {
        let provider = order.payment().provider.as_str();
        let authorize_key =
            saga.idempotency_key("authorize-payment", Operation::AuthorizePayment.as_str());
        let (found, call) = self
            .payments
            .find_by_authorize_key(provider, build, &authorize_key)
            .await?;
        let Some(payment) = found else {
            return Ok(with_call(Change::AuthorizationFailed, call));
        };
        match payment.state {
            ProviderPaymentState::Declined => Ok(with_call(Change::AuthorizationFailed, call)),
            ProviderPaymentState::Voided => Ok(Effect {
                payment_id: Some(payment.payment_id),
                ..with_call(Change::Voided, call)
            }),
            ProviderPaymentState::Authorized | ProviderPaymentState::RequiresAction => {
                let (_, call) = self
                    .payments
                    .void(provider, build, &payment.payment_id, key, self.buffering)
                    .await?;
                Ok(Effect {
                    payment_id: Some(payment.payment_id),
                    ..with_call(Change::Voided, call)
                })
            }
            // Money moved on a payment this saga never saw authorised: not for a void to
            // undo; park for the operator.
            ProviderPaymentState::PartiallyCaptured
            | ProviderPaymentState::Captured
            | ProviderPaymentState::PartiallyRefunded
            | ProviderPaymentState::Refunded => Err(refused(
                "the unresolved authorisation was captured at the provider; it cannot be voided",
            )),
        }
    }

    /// Authorises, or, when an earlier attempt's outcome is unknown (UNRESOLVED), first asks
    /// the provider what that attempt did: the same key either found a payment (done) or
    /// nothing (safe to send again).
    ///
    /// `build` is the build an earlier attempt reached, if any: the lookup and a resend go to
    /// it, since a hold it made may be known to its ledger only (a canary's).
    async fn authorize(
        &self,
        order: &Order,
        build: Option<&str>,
        key: &str,
    ) -> Result<Effect, GatewayFailure> {
        let provider = order.payment().provider.as_str();
        if order.payment_status() == PaymentStatus::ActionRequired {
            return self.poll_action(order, build, key).await;
        }
        if order.payment_status() == PaymentStatus::Unresolved {
            let (found, call) = self
                .payments
                .find_by_authorize_key(provider, build, key)
                .await?;
            if let Some(payment) = found {
                return match payment.state {
                    // Waiting for the customer: the resend below returns the action again
                    // (a lookup reports the state, not the action).
                    ProviderPaymentState::RequiresAction => {
                        self.send_authorize(order, build, key).await
                    }
                    state => held(payment.payment_id, state, call),
                };
            }
        }
        self.send_authorize(order, build, key).await
    }

    /// Sends the authorisation (again, with the same key): held, or a customer action first.
    async fn send_authorize(
        &self,
        order: &Order,
        build: Option<&str>,
        key: &str,
    ) -> Result<Effect, GatewayFailure> {
        let provider = order.payment().provider.as_str();
        let (payment, call) = self
            .payments
            .authorize(
                provider,
                build,
                order.id(),
                order.total(),
                &order.payment().token,
                key,
                self.buffering,
            )
            .await?;
        match (payment.state, payment.action) {
            (ProviderPaymentState::RequiresAction, Some(action)) => Ok(Effect {
                payment_id: Some(payment.payment_id),
                wait_until: Some(action.expires_at),
                ..with_call(Change::ActionRequired(action), call)
            }),
            _ => Ok(Effect {
                payment_id: Some(payment.payment_id),
                ..with_call(Change::Authorized, call)
            }),
        }
    }

    /// A payment waits for the customer: asks the provider where it stands. Authorised goes
    /// on; declined or cancelled fails the payment; still waiting waits on (the engine gives
    /// up at the action's expiry); a provider that lost it is asked again with the same key.
    async fn poll_action(
        &self,
        order: &Order,
        build: Option<&str>,
        key: &str,
    ) -> Result<Effect, GatewayFailure> {
        let provider = order.payment().provider.as_str();
        let (found, call) = self
            .payments
            .find_by_authorize_key(provider, build, key)
            .await?;
        let Some(payment) = found else {
            return self.send_authorize(order, build, key).await;
        };
        match payment.state {
            // An action whose expiry the order lost (it cannot, short of a corrupt row) counts
            // as expired: waiting for good is worse than failing the payment.
            ProviderPaymentState::RequiresAction => Ok(Effect {
                payment_id: Some(payment.payment_id),
                wait_until: Some(
                    order
                        .payment_action()
                        .map_or(Timestamp::from_unix_millis(0), |a| a.expires_at),
                ),
                ..with_call(Change::None, call)
            }),
            state => held(payment.payment_id, state, call),
        }
    }
}

/// What a lookup of an authorisation found, as the step's outcome: a hold goes on; declined
/// or cancelled fails the payment; money already moved on a payment this saga never saw
/// authorised breaks the contract (the step fails, and its compensation parks the saga for
/// an operator rather than undo it blindly).
fn held(
    payment_id: String,
    state: ProviderPaymentState,
    call: PluginCall,
) -> Result<Effect, GatewayFailure> {
    let failed = |code: FailureCode, sentence: &str| GatewayFailure {
        error: GatewayError::Permanent {
            reason: FailureReason::new(code, sentence),
        },
        call: Some(Box::new(call.clone())),
    };
    match state {
        ProviderPaymentState::Authorized => Ok(Effect {
            payment_id: Some(payment_id),
            ..with_call(Change::Authorized, call)
        }),
        ProviderPaymentState::Declined => Err(failed(
            FailureCode::PaymentDeclined,
            "the provider declined the payment",
        )),
        ProviderPaymentState::Voided => Err(failed(
            FailureCode::PaymentDeclined,
            "the provider cancelled the payment",
        )),
        // Unreachable from the callers (they handle it first); no hold yet.
        ProviderPaymentState::RequiresAction => Err(failed(
            FailureCode::PluginContractViolation,
            "the provider reported a pending payment where a decision was expected",
        )),
        ProviderPaymentState::PartiallyCaptured
        | ProviderPaymentState::Captured
        | ProviderPaymentState::PartiallyRefunded
        | ProviderPaymentState::Refunded => Err(failed(
            FailureCode::PluginContractViolation,
            "the provider reports money moved on a payment the OMS never saw authorized",
        )),
    }
}
