//! One forward step or one compensation: call the operation, then commit the saga's next
//! state with the step's audit row and the order change its effect makes.

use oms_domain::{Order, OrderStatus, PaymentStatus};
use tracing::debug;

use super::outcome::{Failure, Mark};
use super::run::Run;
use super::{Next, SagaEngine, StepError};
use crate::error::AppError;
use crate::plugin_kv::Buffering;
use crate::ports::{
    FailureCode, FailureReason, GatewayError, GatewayFailure, PluginCall, StepDirection,
    StepRecord, StepState, StoreError,
};
use crate::saga::definition::{OnFailure, Operation, SagaDefinition, StepCommit};
use crate::saga::executor::{Change, Effect, Executor};
use crate::saga::flows;
use crate::saga::instance::{SagaData, SagaInstance, SagaKind, SagaStatus};

impl SagaEngine {
    /// Calls for `saga`'s next step: its plugin writes wait for the step's commit, with
    /// those of the steps run since the last one.
    fn executor(&self, saga: &Run) -> Executor<'_> {
        Executor {
            payments: self.ports.payments.as_ref(),
            inventory: self.ports.inventory.as_ref(),
            buffering: Buffering {
                absent_keys: saga.absent_keys,
                pending_steps: saga.unflushed.is_some(),
            },
        }
    }

    /// The step's plugin reaches the network and steps that ran before it wait for its
    /// commit ([`GatewayError::CommitFirst`]): those steps are committed alone, and the step
    /// runs again from there. Its call must not go out while they can still be undone: a
    /// refused commit would run them again, maybe to another end (out of stock), and nothing
    /// would undo what the provider did (a hold on the card that no saga knows of).
    ///
    /// Only with steps pending: the refusal is asked for by the engine itself
    /// ([`Buffering::pending_steps`]), so one without them is a failure like any other (it
    /// retries, and fails the step at its deadline).
    async fn commit_pending(
        &self,
        saga: &mut Run,
        order: Order,
        now: oms_domain::Timestamp,
    ) -> Result<Next, StepError> {
        debug!(saga = %saga.id, "the step's plugin reaches the network: the steps before it commit first");
        let next = saga.saga.clone();
        let order = self
            .commit(saga, next, None, order, &Change::None, None, now)
            .await?;
        Ok(Next::Continue(Box::new(order)))
    }

    /// Commits a successful operation: onto the fresh order if the order moved meanwhile
    /// and the effect came from a provider call ([`Self::commit_called`]); a local step is
    /// run again instead, because the new order state may no longer allow it (a
    /// cancellation stops a confirmation).
    async fn commit_effect(
        &self,
        saga: &mut Run,
        next: SagaInstance,
        record: &StepRecord,
        order: Order,
        effect: &Effect,
        now: oms_domain::Timestamp,
    ) -> Result<Order, StepError> {
        if effect.call.is_some() {
            self.commit_called(saga, next, record, order, &effect.change, None, now)
                .await
        } else {
            self.commit(saga, next, Some(record), order, &effect.change, None, now)
                .await
        }
    }

    /// Runs a step's `call` while renewing this worker's lease every third of its length, so
    /// that a call outlasting the lease is not taken over by another worker meanwhile (each
    /// would otherwise lose its commit to the next, until the step's deadline ran out).
    ///
    /// The renewals run beside the call, never in its way: a renewal stuck on a database
    /// that went away does not hold the call up. They stop after
    /// [`EngineConfig::heartbeat_limit`](super::EngineConfig) (the longest a step's calls can
    /// take), so a drive that never comes back cannot keep its saga from other workers for
    /// good: its lease then lapses as a crashed worker's would. When the lease is lost all
    /// the same the call is dropped: its plugin writes were never applied, and the new owner
    /// runs it again with the same key.
    async fn heartbeat<T>(
        &self,
        saga: &SagaInstance,
        call: impl std::future::Future<Output = T>,
    ) -> Result<T, StepError> {
        let id = saga.id;
        let every = self.config.lease / 3;
        let stop_at = tokio::time::Instant::now() + self.config.heartbeat_limit;
        let renew = async {
            loop {
                tokio::time::sleep(every).await;
                if tokio::time::Instant::now() >= stop_at {
                    debug!(saga = %id, "a step's calls outlasted the heartbeat limit; the lease lapses");
                    return std::future::pending().await;
                }
                match self.renew_lease(saga).await {
                    Ok(()) => {}
                    Err(StoreError::LeaseLost) => return,
                    // The database is away: the call goes on, and its commit tells whether
                    // the lease held.
                    Err(e) => debug!(saga = %id, error = %e, "renewing the saga's lease failed"),
                }
            }
        };
        tokio::select! {
            out = call => Ok(out),
            () = renew => Err(StepError::LeaseLost),
        }
    }

    pub(super) async fn forward(
        &self,
        definition: &SagaDefinition,
        saga: &mut Run,
        order: Order,
    ) -> Result<Next, StepError> {
        let now = self.clock.now();
        let Some(step) = definition.step(saga.step) else {
            return self
                .finish(saga, order, SagaStatus::Succeeded, None, None)
                .await;
        };
        // A cancellation that arrived while placing stops the placement: everything done so
        // far is undone by this saga's compensations, then the cancel completes. CANCELLED:
        // the cancel found nothing held yet, but a step in flight may have taken something.
        if matches!(
            order.status(),
            OrderStatus::Cancelling | OrderStatus::Cancelled
        ) && saga.kind == SagaKind::PlaceOrder
        {
            return self
                .turn_back(definition, saga, order, Failure::Cancelled, None)
                .await;
        }
        if saga.kind != SagaKind::PlaceOrder && saga.step == 0 && saga.attempts == 0 {
            self.inherit_references(saga).await?;
        }
        let key = saga.idempotency_key(step.name, step.forward.as_str());
        let deadline = saga
            .step_deadline
            .unwrap_or_else(|| now.saturating_add(self.capped(step.deadline)));
        let attempt = saga.attempts + 1;
        let record = |state: StepState, call, last_error| StepRecord {
            step: step.name,
            direction: StepDirection::Forward,
            call,
            idempotency_key: key.clone(),
            state,
            attempts: attempt,
            last_error,
            at: now,
        };
        let executor = self.executor(saga);
        let call = executor.run(step.forward, saga, &order, &key);
        match self.heartbeat(saga, call).await? {
            Err(GatewayFailure {
                error: GatewayError::CommitFirst { .. },
                ..
            }) if saga.unflushed.is_some() => self.commit_pending(saga, order, now).await,
            Ok(effect) if effect.wait_until.is_some() => {
                let until = effect.wait_until.unwrap_or(now);
                // The action's expiry, capped: a provider cannot keep an order open forever.
                let until = until.min(saga.created_at.saturating_add(flows::MAX_ACTION_WAIT));
                // Expired at a poll: the order shows the action and the saga knows the payment,
                // so the compensation can cancel it. An answer that comes back expired from
                // `authorize` itself is first committed as waiting (below) and expires at
                // the poll that follows at once.
                let first_answer = effect.change != Change::None;
                if now >= until && !first_answer {
                    let reason = FailureReason::new(
                        FailureCode::PaymentActionExpired,
                        "the customer did not complete the payment step in time",
                    );
                    let error = GatewayError::Permanent { reason };
                    debug!(saga = %saga.id, step = step.name, "customer action expired");
                    let record = record(
                        StepState::Failed,
                        effect.call.clone(),
                        Some(error.to_string()),
                    );
                    return self
                        .turn_back(
                            definition,
                            saga,
                            order,
                            Failure::Step(error.public_reason()),
                            Some(&record),
                        )
                        .await;
                }
                // Not done: poll the provider at the next interval (or at the expiry, or when
                // a webhook wakes the saga), with the same key. A transient failure meanwhile
                // retries until a step deadline past the expiry.
                let waiting = "waiting for the customer to complete the payment step".to_owned();
                // Recorded as a step still running (its history says why).
                let record = record(
                    StepState::Retrying,
                    effect.call.clone(),
                    Some(waiting.clone()),
                );
                let poll_at = now.saturating_add(flows::ACTION_POLL).min(until);
                let deadline = until.saturating_add(self.capped(step.deadline));
                let mut next = saga.schedule_retry(attempt, deadline, true, waiting, poll_at);
                absorb(&mut next, &effect);
                let order = self
                    .commit_called(saga, next, &record, order, &effect.change, None, now)
                    .await?;
                // Due now (an action that came back expired): this worker, which keeps the
                // lease, polls at once rather than leave it leased and idle.
                Ok(if poll_at <= now {
                    Next::Continue(Box::new(order))
                } else {
                    Next::Stop
                })
            }
            Ok(effect) => {
                let record = record(StepState::Succeeded, effect.call.clone(), None);
                let mut next = saga.advance(definition.steps.len(), now);
                absorb(&mut next, &effect);
                let host_only = effect.call.as_ref().is_some_and(|c| c.host_only);
                if step.commit == StepCommit::WithNext
                    && host_only
                    && next.status == SagaStatus::Running
                    && next.next_attempt_at <= now
                {
                    let order = saga.defer(next, record, order, &effect.change, now)?;
                    return Ok(Next::Continue(Box::new(order)));
                }
                let order = self
                    .commit_effect(saga, next, &record, order, &effect, now)
                    .await?;
                Ok(if saga.status.is_active() {
                    Next::Continue(Box::new(order))
                } else {
                    Next::Stop
                })
            }
            Err(GatewayFailure { error, call }) => {
                let call = call.map(|c| *c);
                if matches!(error, GatewayError::Unknown { .. }) {
                    remember_build(&mut saga.data, step.forward, call.as_ref());
                }
                let retryable = !matches!(error, GatewayError::Permanent { .. });
                let reason = error.to_string();
                // A refusal that never called (open circuit) fails nothing by itself: past
                // the deadline only a step that really tried gives up.
                let tried = saga.data.step_tried || !matches!(error, GatewayError::NotTried { .. });
                if retryable && (now < deadline || !tried) {
                    let unresolved = matches!(error, GatewayError::Unknown { .. });
                    let state = if unresolved {
                        StepState::Unresolved
                    } else {
                        StepState::Retrying
                    };
                    let record = record(state, call, Some(reason.clone()));
                    let retry_at = now.saturating_add(step.retry.delay(attempt, (self.jitter)()));
                    let next = saga.schedule_retry(attempt, deadline, tried, reason, retry_at);
                    // A timed-out authorisation is recorded as UNRESOLVED: the next attempt
                    // reconciles with the provider before sending anything.
                    let mark = (unresolved
                        && step.forward == Operation::AuthorizePayment
                        && order.payment_status() == PaymentStatus::Pending)
                        .then_some(Mark::Unresolved);
                    self.commit_called(saga, next, &record, order, &Change::None, mark, now)
                        .await?;
                    return Ok(Next::Stop);
                }
                debug!(saga = %saga.id, step = step.name, %reason, "step failed for good");
                let record = record(StepState::Failed, call, Some(reason));
                self.turn_back(
                    definition,
                    saga,
                    order,
                    Failure::Step(error.public_reason()),
                    Some(&record),
                )
                .await
            }
        }
    }

    /// A cancellation, fulfillment or refund acts on what the placement created: it takes the
    /// reservation and payment references from the order's earlier sagas (latest first).
    async fn inherit_references(&self, saga: &mut SagaInstance) -> Result<(), AppError> {
        let earlier = self.ports.sagas.for_order(saga.order_id).await?;
        for other in earlier.iter().rev().filter(|s| s.id != saga.id) {
            // An id and the build that made it come from the same saga.
            if saga.data.reservation_id.is_none() {
                saga.data
                    .reservation_id
                    .clone_from(&other.data.reservation_id);
                saga.data
                    .reservation_build
                    .clone_from(&other.data.reservation_build);
            }
            if saga.data.payment_id.is_none() {
                saga.data.payment_id.clone_from(&other.data.payment_id);
                saga.data
                    .payment_build
                    .clone_from(&other.data.payment_build);
            }
        }
        Ok(())
    }

    /// After a step failed for good (or the order was cancelled under a placement): undo
    /// the completed steps in reverse, or park at once when the failed step says so.
    async fn turn_back(
        &self,
        definition: &SagaDefinition,
        saga: &mut Run,
        order: Order,
        failure: Failure,
        record: Option<&StepRecord>,
    ) -> Result<Next, StepError> {
        let now = self.clock.now();
        let cancelled = matches!(failure, Failure::Cancelled);
        let (reason, park) = match failure {
            // A cancellation is not a failure of the step: undo everything, then cancel.
            Failure::Cancelled => ("cancelled while placing".to_owned(), false),
            Failure::Step(reason) => {
                let park = definition
                    .step(saga.step)
                    .is_none_or(|s| s.on_failure == OnFailure::Park);
                (reason, park)
            }
        };
        if park {
            return self
                .finish(
                    saga,
                    order,
                    SagaStatus::CompensationFailed,
                    Some(reason),
                    record,
                )
                .await;
        }
        let mut next = saga.turn_back(reason, now);
        // The step turned back at has no outcome to undo, except an authorisation whose last
        // attempt's outcome is unknown (UNRESOLVED): the provider may hold the money, so its
        // compensation runs first and asks (`void` of an unresolved payment reconciles; a
        // provider that never answers parks the saga for an operator rather than leave a
        // hold on the card). That is under a cancellation, and when the step failed for good
        // after an unknown outcome at a provider the plugin reaches over the network (its
        // build was remembered for this: `remember_build`). A host-only plugin's unknown
        // outcome took nothing (its writes were dropped with the call), so such a step ends
        // PAYMENT_FAILED without asking.
        // A payment waiting for the customer exists at the provider: it is cancelled too, or
        // the customer could still complete it for an order that will not go on.
        let may_hold = cancelled || saga.data.payment_build.is_some();
        let unresolved_authorization = ((may_hold
            && order.payment_status() == PaymentStatus::Unresolved)
            || order.payment_status() == PaymentStatus::ActionRequired)
            && definition
                .step(saga.step)
                .is_some_and(|s| s.forward == Operation::AuthorizePayment);
        if unresolved_authorization {
            next.step = saga.step + 1;
        }
        let order = self
            .commit(saga, next, record, order, &Change::None, None, now)
            .await?;
        Ok(Next::Continue(Box::new(order)))
    }

    pub(super) async fn backward(
        &self,
        definition: &SagaDefinition,
        saga: &mut Run,
        order: Order,
    ) -> Result<Next, StepError> {
        let now = self.clock.now();
        let Some(index) = saga.step.checked_sub(1) else {
            let reason = saga.data.failure.clone();
            return self
                .finish(saga, order, SagaStatus::Compensated, reason, None)
                .await;
        };
        let step = definition.step(index).ok_or_else(|| {
            AppError::Internal(format!(
                "saga {} compensates step {index} its table lacks",
                saga.id
            ))
        })?;
        let Some(op) = step.compensation else {
            let next = saga.undo_step(index, now);
            let order = self
                .commit(saga, next, None, order, &Change::None, None, now)
                .await?;
            return Ok(Next::Continue(Box::new(order)));
        };
        let key = saga.idempotency_key(step.name, op.as_str());
        let deadline = saga
            .step_deadline
            .unwrap_or_else(|| now.saturating_add(self.capped(definition.compensation_deadline)));
        let attempt = saga.attempts + 1;
        let record = |state: StepState, call, last_error| StepRecord {
            step: step.name,
            direction: StepDirection::Compensate,
            call,
            idempotency_key: key.clone(),
            state,
            attempts: attempt,
            last_error,
            at: now,
        };
        let executor = self.executor(saga);
        let call = executor.run(op, saga, &order, &key);
        match self.heartbeat(saga, call).await? {
            Err(GatewayFailure {
                error: GatewayError::CommitFirst { .. },
                ..
            }) if saga.unflushed.is_some() => self.commit_pending(saga, order, now).await,
            Ok(effect) => {
                let record = record(StepState::Succeeded, effect.call.clone(), None);
                let next = saga.undo_step(index, now);
                let order = self
                    .commit_effect(saga, next, &record, order, &effect, now)
                    .await?;
                Ok(Next::Continue(Box::new(order)))
            }
            Err(GatewayFailure { error, call }) => {
                let call = call.map(|c| *c);
                let reason = error.to_string();
                let record = record(StepState::Retrying, call, Some(reason.clone()));
                let tried = saga.data.step_tried || !matches!(error, GatewayError::NotTried { .. });
                if (now >= deadline && tried) || matches!(error, GatewayError::Permanent { .. }) {
                    let why =
                        error.public_reason_while(&format!("compensation of {} failed", step.name));
                    return self
                        .finish(
                            saga,
                            order,
                            SagaStatus::CompensationFailed,
                            Some(why),
                            Some(&record),
                        )
                        .await;
                }
                let retry_at = now.saturating_add(step.retry.delay(attempt, (self.jitter)()));
                let next = saga.schedule_retry(attempt, deadline, tried, reason, retry_at);
                self.commit_called(saga, next, &record, order, &Change::None, None, now)
                    .await?;
                Ok(Next::Stop)
            }
        }
    }
}

/// Keeps the build that an attempt to take a hold or a reservation reached when its outcome
/// is unknown (and none is known yet): the next attempt's reconciliation and resend must ask
/// the build that may have acted (a new build may not read an older one's ids or records),
/// as must the compensation that undoes it. A host-only call that failed left nothing
/// anywhere (its writes were dropped with it), so the next attempt is free to go elsewhere.
fn remember_build(data: &mut SagaData, op: Operation, call: Option<&PluginCall>) {
    let Some(call) = call.filter(|c| !c.host_only) else {
        return;
    };
    let build = match op {
        Operation::AuthorizePayment => &mut data.payment_build,
        Operation::ReserveInventory => &mut data.reservation_build,
        _ => return,
    };
    if build.is_none() {
        *build = Some(call.digest.clone());
    }
}

/// Copies what an effect taught into the saga's data: a new reservation or payment id, and
/// the plugin build that made it (its follow-up calls are pinned to that build).
fn absorb(saga: &mut SagaInstance, effect: &Effect) {
    let build = effect.call.as_ref().map(|c| c.digest.clone());
    if let Some(id) = &effect.reservation_id {
        saga.data.reservation_id = Some(id.clone());
        saga.data.reservation_build.clone_from(&build);
    }
    if let Some(id) = &effect.payment_id {
        saga.data.payment_id = Some(id.clone());
        saga.data.payment_build = build;
    }
}
