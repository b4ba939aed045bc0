//! A payment provider and an inventory adapter in one, whose answers a test scripts per
//! operation and which record every call in the order the engine made them.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use oms_domain::{LineItem, Money, OrderId, PaymentAction};
use tokio::sync::Notify;

use crate::plugin_kv::{AbsentKeys, Buffering, Expect, KeyChange, KeyEffect, KvChanges};
use crate::ports::{
    FailureCode, FailureReason, GatewayError, GatewayFailure, GatewayResult, InventoryGateway,
    PaymentGateway, PluginCall, ProviderPayment, ProviderPaymentState,
};

/// One call the engine made through a gateway port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// `reserve`, `release`, `commit`, `authorize`, `capture`, `void`, `refund` or
    /// `get-payment` (the reconciliation lookup), as the plugin contracts name them.
    pub operation: &'static str,
    pub idempotency_key: String,
    /// The build the engine pinned the call to (`PaymentGateway`'s `pinned`).
    pub pinned: Option<String>,
    /// How the call was to buffer its writes (the default for the lookup, which writes
    /// nothing).
    pub buffering: Buffering,
}

/// A scripted answer for the next call of an operation.
#[derive(Debug, Clone)]
pub enum Scripted {
    /// The call answers as an unscripted one does (before a failure meant for a later call).
    Answer,
    /// The call fails with this error and has no effect.
    Fail(GatewayError),
    /// The call takes effect but its answer is lost: the engine hears `Unknown`, and the
    /// provider knows the payment (or reservation) under the call's idempotency key.
    LostAnswer,
    /// `authorize` only: the provider records the payment as waiting for the customer and
    /// answers with this action ([`ScriptedGateways::customer_acted`] settles it).
    RequiresAction(PaymentAction),
}

#[derive(Default)]
struct State {
    script: HashMap<&'static str, VecDeque<Scripted>>,
    calls: Vec<Call>,
    /// Authorisations by the key that created them (what `get-payment` finds).
    payments: HashMap<String, ProviderPayment>,
    /// Reservation ids by the key that created them.
    reservations: HashMap<String, String>,
}

type Hook = Box<dyn Fn(&Call) + Send + Sync>;

/// Calls held until the test lets them answer, by a fragment of their idempotency key (a
/// saga's id holds every call of that saga).
type Holds = Vec<(String, Arc<Notify>)>;

/// Answers "yes" to everything unless scripted otherwise; idempotent per key like a real
/// provider (the same `authorize` key gives the same payment). Its calls count as reaching
/// outside the host (like a provider behind HTTP) unless [`Self::host_only`] says otherwise.
///
/// Like a real plugin, a call that answers writes its effect as a plugin KV change that the
/// saga store applies with the step: `<idempotency key> = <operation>` in the namespace
/// `scripted-stock` or `scripted-pay`. [`SCRIPTED_PLUGINS`] names them; reading them back
/// from the store shows which calls' effects were really committed.
#[derive(Default)]
pub struct ScriptedGateways {
    state: Mutex<State>,
    before_call: Mutex<Option<Hook>>,
    holds: Mutex<Holds>,
    host_only: AtomicBool,
    /// Operations whose plugin reaches the network even when [`Self::host_only`] was set
    /// ([`Self::reaches_network`]).
    networked: Mutex<Vec<&'static str>>,
    /// Whether an answered call's record is created as a plugin creates it
    /// ([`Self::creates_records`]).
    creates_records: AtomicBool,
    /// The digest its calls report ([`Self::swap_build`]); `sha256:scripted` by default.
    build: Mutex<Option<String>>,
}

/// Why a scripted call failed, for [`Scripted::Fail`].
pub fn transient() -> GatewayError {
    GatewayError::Transient {
        reason: FailureReason::new(FailureCode::ProviderUnavailable, "provider busy"),
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A test that panicked while holding the lock already failed; the data is still valid.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The plugin KV namespaces of the scripted inventory and payment plugins.
pub const SCRIPTED_PLUGINS: [&str; 2] = ["scripted-stock", "scripted-pay"];

fn scripted_plugin(operation: &str) -> &'static str {
    match operation {
        "reserve" | "release" | "commit" => SCRIPTED_PLUGINS[0],
        _ => SCRIPTED_PLUGINS[1],
    }
}

fn lost(operation: &str) -> GatewayError {
    GatewayError::Unknown {
        reason: FailureReason::new(
            FailureCode::PluginDeadlineExceeded,
            format!("the answer to {operation} was lost"),
        ),
    }
}

/// What the script says about this call, once it is recorded.
enum Answer {
    /// Answers the call.
    Normal(Call),
    Lost(Option<String>),
    /// As `Normal`, the payment waiting for the customer to complete this action.
    Action(Call, PaymentAction),
}

impl ScriptedGateways {
    /// From now on every call reports itself host-only, as a plugin with no network grant
    /// does (`PluginCall::host_only`): the engine may then run the next step before
    /// committing it.
    pub fn host_only(&self) {
        self.host_only.store(true, Ordering::Relaxed);
    }

    /// From now on `operation`'s plugin has a network grant, whatever [`Self::host_only`]
    /// says of the others (a provider behind HTTP after a local stock plugin): its calls
    /// report so, and one made while earlier steps wait for its commit is refused before it
    /// starts, as the runtime refuses it (`GatewayError::CommitFirst`, not recorded).
    pub fn reaches_network(&self, operation: &'static str) {
        lock(&self.networked).push(operation);
    }

    /// Whether `operation`'s calls stay in the host.
    fn stays_in_host(&self, operation: &str) -> bool {
        self.host_only.load(Ordering::Relaxed) && !lock(&self.networked).contains(&operation)
    }

    /// From now on a call that answers creates its record as a plugin creates a new record
    /// with `compare-and-swap` from absent: pinned to "absent" when the engine left that check
    /// to the commit (`AbsentKeys::CheckedAtCommit`), so that the commit is refused if the
    /// record is there; written over what is there after a read otherwise (`Read`), as a
    /// plugin that found its record would answer from it. By default every record is written
    /// unconditionally.
    pub fn creates_records(&self) {
        self.creates_records.store(true, Ordering::Relaxed);
    }

    /// From now on calls report `digest` as the build that served them (a new version was
    /// installed); a call pinned to another build still reports the pinned one, as the
    /// runtime serves a pinned call on the build it names while that build is loaded.
    pub fn swap_build(&self, digest: &str) {
        *lock(&self.build) = Some(digest.to_owned());
    }

    /// The build that served `operation`; with the call's effect as a pending KV write when
    /// it answered (`answered`).
    fn plugin_call(
        &self,
        operation: &str,
        answered: Option<&Call>,
        pinned: Option<&str>,
    ) -> PluginCall {
        let plugin = scripted_plugin(operation);
        let digest = pinned
            .map(str::to_owned)
            .or_else(|| lock(&self.build).clone())
            .unwrap_or_else(|| "sha256:scripted".to_owned());
        let keys = answered
            .map(|call| {
                // As the runtime does: only a host-only plugin leaves them to the commit.
                let left_to_commit = self.creates_records.load(Ordering::Relaxed)
                    && self.stays_in_host(operation)
                    && call.buffering.absent_keys == AbsentKeys::CheckedAtCommit;
                let change = KeyChange {
                    expect: if left_to_commit {
                        Expect::Value(None)
                    } else {
                        Expect::Anything
                    },
                    effect: KeyEffect::Put(operation.as_bytes().to_vec()),
                };
                BTreeMap::from([(call.idempotency_key.clone(), change)])
            })
            .unwrap_or_default();
        PluginCall {
            plugin: plugin.to_owned(),
            version: "1.0.0".to_owned(),
            digest,
            kv: Arc::new(KvChanges {
                namespace: plugin.to_owned(),
                keys,
            }),
            host_only: self.stays_in_host(operation),
        }
    }

    /// The next calls of `operation` fail with `errors`, one per call, in order; calls after
    /// them succeed again.
    pub fn fail(&self, operation: &'static str, errors: impl IntoIterator<Item = GatewayError>) {
        self.script(operation, errors.into_iter().map(Scripted::Fail));
    }

    /// The next calls of `operation` are answered by `answers`, in order.
    pub fn script(&self, operation: &'static str, answers: impl IntoIterator<Item = Scripted>) {
        lock(&self.state)
            .script
            .entry(operation)
            .or_default()
            .extend(answers);
    }

    /// Holds the next call whose idempotency key contains `key_fragment` (say a saga's id)
    /// until the returned handle's `notify_one()`: a call in flight for as long as the test
    /// wants. Later calls are not held.
    pub fn hold(&self, key_fragment: &str) -> Arc<Notify> {
        let release = Arc::new(Notify::new());
        lock(&self.holds).push((key_fragment.to_owned(), Arc::clone(&release)));
        release
    }

    /// The customer completed (or failed) the action the payment whose authorize key
    /// contains `key_fragment` waits for: the provider now reports it as `state`.
    pub fn customer_acted(&self, key_fragment: &str, state: ProviderPaymentState) {
        let mut guard = lock(&self.state);
        for (key, payment) in &mut guard.payments {
            if key.contains(key_fragment) && payment.state == ProviderPaymentState::RequiresAction {
                payment.state = state;
            }
        }
    }

    /// Drops what is left of `operation`'s script: its next calls succeed.
    pub fn clear(&self, operation: &str) {
        lock(&self.state).script.remove(operation);
    }

    /// Runs `hook` at the start of every call (after it is recorded, before it answers): how
    /// a test makes something happen while a step is in flight.
    pub fn before_each(&self, hook: impl Fn(&Call) + Send + Sync + 'static) {
        *lock(&self.before_call) = Some(Box::new(hook));
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        lock(&self.state).calls.clone()
    }

    /// The operations of [`Self::calls`], in order.
    pub fn operations(&self) -> Vec<&'static str> {
        lock(&self.state)
            .calls
            .iter()
            .map(|c| c.operation)
            .collect()
    }

    /// How many calls of `operation` were made.
    pub fn count(&self, operation: &str) -> usize {
        lock(&self.state)
            .calls
            .iter()
            .filter(|c| c.operation == operation)
            .count()
    }

    /// Records the call, runs the hook, waits while it is held, and pops its scripted
    /// answer.
    async fn enter(
        &self,
        operation: &'static str,
        key: &str,
        pinned: Option<&str>,
        buffering: Buffering,
    ) -> Result<Answer, GatewayFailure> {
        if buffering.pending_steps && !self.stays_in_host(operation) {
            return Err(GatewayFailure {
                error: GatewayError::CommitFirst {
                    reason: FailureReason::new(
                        FailureCode::Internal,
                        format!("{operation} reaches the network; earlier steps commit first"),
                    ),
                },
                call: None,
            });
        }
        let call = Call {
            operation,
            idempotency_key: key.to_owned(),
            pinned: pinned.map(str::to_owned),
            buffering,
        };
        lock(&self.state).calls.push(call.clone());
        if let Some(hook) = lock(&self.before_call).as_ref() {
            hook(&call);
        }
        let held = lock(&self.holds)
            .iter()
            .find(|(fragment, _)| key.contains(fragment.as_str()))
            .map(|(_, release)| Arc::clone(release));
        if let Some(release) = held {
            release.notified().await;
            // Released: the saga's later calls go through.
            lock(&self.holds).retain(|(_, r)| !Arc::ptr_eq(r, &release));
        }
        let next = lock(&self.state)
            .script
            .get_mut(operation)
            .and_then(VecDeque::pop_front);
        match next {
            None | Some(Scripted::Answer) => Ok(Answer::Normal(call)),
            Some(Scripted::LostAnswer) => Ok(Answer::Lost(call.pinned)),
            Some(Scripted::RequiresAction(action)) => Ok(Answer::Action(call, action)),
            Some(Scripted::Fail(error)) => {
                // A call refused before it reached the plugin has no build to record.
                let reached = !matches!(error, GatewayError::NotTried { .. });
                Err(GatewayFailure {
                    error,
                    call: reached.then(|| Box::new(self.plugin_call(operation, None, pinned))),
                })
            }
        }
    }

    /// The answer to a call that took effect: `value`, or the lost-answer error.
    fn answer<T>(&self, operation: &'static str, answer: Answer, value: T) -> GatewayResult<T> {
        match answer {
            Answer::Normal(call) | Answer::Action(call, _) => Ok((
                value,
                self.plugin_call(operation, Some(&call), call.pinned.as_deref()),
            )),
            // What a stopped call wrote is dropped with it.
            Answer::Lost(pinned) => Err(GatewayFailure {
                error: lost(operation),
                call: Some(Box::new(self.plugin_call(
                    operation,
                    None,
                    pinned.as_deref(),
                ))),
            }),
        }
    }

    /// Moves the payment `payment_id` to `state` and returns it.
    fn settle(
        &self,
        operation: &'static str,
        payment_id: &str,
        amount: Option<Money>,
        state: ProviderPaymentState,
    ) -> Result<ProviderPayment, GatewayFailure> {
        let mut guard = lock(&self.state);
        let payment = guard
            .payments
            .values_mut()
            .find(|p| p.payment_id == payment_id)
            .ok_or_else(|| GatewayFailure {
                error: GatewayError::Permanent {
                    reason: FailureReason::new(
                        FailureCode::PaymentInvalid,
                        format!("{operation}: no payment {payment_id}"),
                    ),
                },
                call: Some(Box::new(self.plugin_call(operation, None, None))),
            })?;
        let whole = payment.authorized;
        match state {
            ProviderPaymentState::Captured => payment.captured = amount.unwrap_or(whole),
            ProviderPaymentState::Refunded => payment.refunded = amount.unwrap_or(payment.captured),
            _ => {}
        }
        payment.state = state;
        Ok(payment.clone())
    }
}

#[async_trait]
impl PaymentGateway for ScriptedGateways {
    async fn authorize(
        &self,
        _provider: &str,
        pinned: Option<&str>,
        _order_id: OrderId,
        amount: Money,
        _token: &str,
        idempotency_key: &str,
        buffering: Buffering,
    ) -> GatewayResult<ProviderPayment> {
        let answer = self
            .enter("authorize", idempotency_key, pinned, buffering)
            .await?;
        let action = match &answer {
            Answer::Action(_, action) => Some(action.clone()),
            _ => None,
        };
        let mut payment = {
            let mut state = lock(&self.state);
            let number = state.payments.len() + 1;
            state
                .payments
                .entry(idempotency_key.to_owned())
                .or_insert_with(|| ProviderPayment {
                    payment_id: format!("pay-{number}"),
                    state: if action.is_some() {
                        ProviderPaymentState::RequiresAction
                    } else {
                        ProviderPaymentState::Authorized
                    },
                    authorized: amount,
                    captured: Money::zero(amount.currency()),
                    action: None,
                    refunded: Money::zero(amount.currency()),
                })
                .clone()
        };
        if payment.state == ProviderPaymentState::RequiresAction {
            payment.action = action;
        }
        self.answer("authorize", answer, payment)
    }

    async fn capture(
        &self,
        _provider: &str,
        pinned: Option<&str>,
        payment_id: &str,
        amount: Option<Money>,
        idempotency_key: &str,
        buffering: Buffering,
    ) -> GatewayResult<ProviderPayment> {
        let answer = self
            .enter("capture", idempotency_key, pinned, buffering)
            .await?;
        let payment = self.settle(
            "capture",
            payment_id,
            amount,
            ProviderPaymentState::Captured,
        )?;
        self.answer("capture", answer, payment)
    }

    async fn void(
        &self,
        _provider: &str,
        pinned: Option<&str>,
        payment_id: &str,
        idempotency_key: &str,
        buffering: Buffering,
    ) -> GatewayResult<ProviderPayment> {
        let answer = self
            .enter("void", idempotency_key, pinned, buffering)
            .await?;
        let payment = self.settle("void", payment_id, None, ProviderPaymentState::Voided)?;
        self.answer("void", answer, payment)
    }

    async fn refund(
        &self,
        _provider: &str,
        pinned: Option<&str>,
        payment_id: &str,
        amount: Option<Money>,
        idempotency_key: &str,
        buffering: Buffering,
    ) -> GatewayResult<ProviderPayment> {
        let answer = self
            .enter("refund", idempotency_key, pinned, buffering)
            .await?;
        let payment = self.settle("refund", payment_id, amount, ProviderPaymentState::Refunded)?;
        self.answer("refund", answer, payment)
    }

    async fn find_by_authorize_key(
        &self,
        _provider: &str,
        pinned: Option<&str>,
        idempotency_key: &str,
    ) -> GatewayResult<Option<ProviderPayment>> {
        let answer = self
            .enter("get-payment", idempotency_key, pinned, Buffering::default())
            .await?;
        let found = lock(&self.state).payments.get(idempotency_key).cloned();
        self.answer("get-payment", answer, found)
    }
}

#[async_trait]
impl InventoryGateway for ScriptedGateways {
    async fn reserve(
        &self,
        pinned: Option<&str>,
        _order_id: OrderId,
        _lines: &[LineItem],
        idempotency_key: &str,
        buffering: Buffering,
    ) -> GatewayResult<String> {
        let answer = self
            .enter("reserve", idempotency_key, pinned, buffering)
            .await?;
        let id = {
            let mut state = lock(&self.state);
            let number = state.reservations.len() + 1;
            state
                .reservations
                .entry(idempotency_key.to_owned())
                .or_insert_with(|| format!("res-{number}"))
                .clone()
        };
        self.answer("reserve", answer, id)
    }

    async fn release(
        &self,
        pinned: Option<&str>,
        _reservation_id: &str,
        idempotency_key: &str,
        buffering: Buffering,
    ) -> GatewayResult<()> {
        let answer = self
            .enter("release", idempotency_key, pinned, buffering)
            .await?;
        self.answer("release", answer, ())
    }

    async fn commit(
        &self,
        pinned: Option<&str>,
        _reservation_id: &str,
        idempotency_key: &str,
        buffering: Buffering,
    ) -> GatewayResult<()> {
        let answer = self
            .enter("commit", idempotency_key, pinned, buffering)
            .await?;
        self.answer("commit", answer, ())
    }
}
