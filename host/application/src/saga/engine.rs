//! The generic orchestrator: runs any saga table one step at a time, durably.

use std::sync::Arc;
use std::time::Duration;

use oms_domain::{Order, OrderEvent, OrderStatus, Timestamp};
use tracing::{debug, warn};

use super::definition::{OnFailure, SagaDefinition};
use super::executor::{Change, Effect, Executor};
use super::flows;
use super::instance::{SagaInstance, SagaKind, SagaStatus};
use crate::changes::OrderChanges;
use crate::clock::Clock;
use crate::error::AppError;
use crate::outbox::OutboxMessage;
use crate::ports::{
    Fence, GatewayError, GatewayFailure, InventoryGateway, OrderStore, OrderWrite, PaymentGateway,
    SagaCommit, SagaStore, StepDirection, StepRecord, StepState, StoreError,
};

/// How a step left the saga.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    /// The next step is due now: keep going while we hold the lease.
    Continue,
    /// Wait for a retry time, or the saga ended.
    Stop,
}

/// The stores and gateways a saga engine works with.
#[derive(Clone)]
pub struct SagaPorts {
    pub orders: Arc<dyn OrderStore>,
    pub sagas: Arc<dyn SagaStore>,
    pub payments: Arc<dyn PaymentGateway>,
    pub inventory: Arc<dyn InventoryGateway>,
}

/// How one engine (one worker) behaves.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Lease owner name: unique per worker (host process + task).
    pub worker: String,
    /// How long a claim lasts without a commit; a crashed worker's sagas are picked up by
    /// others after this.
    pub lease: Duration,
    /// Caps every step's and compensation's retry deadline (the tables' values otherwise):
    /// for tests, and for operators who prefer failing fast over waiting out an outage.
    pub deadline_cap: Option<Duration>,
}

/// Runs saga tables. One per worker task; cheap to share behind an `Arc`.
pub struct SagaEngine {
    ports: SagaPorts,
    clock: Arc<dyn Clock>,
    changes: OrderChanges,
    config: EngineConfig,
    /// Uniform samples in `[0, 1)` for backoff jitter (injected so tests can pin them).
    jitter: Arc<dyn Fn() -> f64 + Send + Sync>,
}

impl SagaEngine {
    pub fn new(
        ports: SagaPorts,
        clock: Arc<dyn Clock>,
        changes: OrderChanges,
        config: EngineConfig,
        jitter: Arc<dyn Fn() -> f64 + Send + Sync>,
    ) -> Self {
        Self {
            ports,
            clock,
            changes,
            config,
            jitter,
        }
    }

    fn capped(&self, deadline: Duration) -> Duration {
        self.config
            .deadline_cap
            .map_or(deadline, |cap| deadline.min(cap))
    }

    /// Claims up to `limit` due sagas and drives each as far as it can go now. Returns how
    /// many were claimed (0 means: nothing due, sleep).
    pub async fn run_due(&self, limit: u32) -> Result<usize, AppError> {
        let now = self.clock.now();
        let claimed = self
            .ports
            .sagas
            .claim_due(
                &self.config.worker,
                now,
                now.saturating_add(self.config.lease),
                limit,
            )
            .await?;
        let count = claimed.len();
        futures::future::join_all(claimed.into_iter().map(|saga| self.drive(saga, now))).await;
        Ok(count)
    }

    /// Runs steps until the saga must wait or ends. An error leaves the saga as last
    /// committed; its lease expires and a worker (maybe another process) resumes it.
    async fn drive(&self, mut saga: SagaInstance, claimed_at: Timestamp) {
        saga.resume(claimed_at, self.config.lease);
        loop {
            match self.step(&mut saga, claimed_at).await {
                Ok(Next::Continue) => continue,
                Ok(Next::Stop) => return,
                Err(e) => {
                    warn!(saga = %saga.id, order = %saga.order_id, error = %e, "saga step failed; it resumes after its lease");
                    return;
                }
            }
        }
    }

    async fn load_order(&self, saga: &SagaInstance) -> Result<Order, AppError> {
        self.ports.orders.get(saga.order_id).await?.ok_or_else(|| {
            AppError::Internal(format!("saga {} lost order {}", saga.id, saga.order_id))
        })
    }

    /// One step, forward or backward, committed with its effects. Retries the commit when a
    /// concurrent edit of the order moved its version: the gateway call is idempotent, so
    /// re-running the step is the same call.
    async fn step(&self, saga: &mut SagaInstance, claimed_at: Timestamp) -> Result<Next, AppError> {
        let definition = flows::definition(saga.kind);
        for _ in 0..5 {
            let order = self.load_order(saga).await?;
            let result = match saga.status {
                SagaStatus::Running => self.forward(definition, saga, order).await,
                SagaStatus::Compensating => self.backward(definition, saga, order).await,
                _ => return Ok(Next::Stop),
            };
            match result {
                Err(AppError::VersionConflict { .. }) => {
                    // Our copy of the saga is unchanged (commit failed); reload the order.
                    if let Some(mut stored) = self.ports.sagas.get(saga.id).await? {
                        stored.resume(claimed_at, self.config.lease);
                        *saga = stored;
                    }
                    continue;
                }
                other => return other,
            }
        }
        Ok(Next::Stop)
    }

    async fn forward(
        &self,
        definition: &SagaDefinition,
        saga: &mut SagaInstance,
        order: Order,
    ) -> Result<Next, AppError> {
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
                .start_compensation(definition, saga, order, Failure::Cancelled, None, now)
                .await;
        }
        if saga.kind != SagaKind::PlaceOrder && saga.step == 0 && saga.attempts == 0 {
            self.inherit_references(saga).await?;
        }
        let key = saga.idempotency_key(step.name, step.forward.as_str());
        let deadline = saga
            .step_deadline
            .unwrap_or_else(|| now.saturating_add(self.capped(step.deadline)));
        let executor = Executor {
            payments: self.ports.payments.as_ref(),
            inventory: self.ports.inventory.as_ref(),
        };
        let attempt = saga.attempts + 1;
        match executor.run(step.forward, saga, &order, &key).await {
            Ok(effect) => {
                let record = StepRecord {
                    step: step.name,
                    direction: StepDirection::Forward,
                    call: effect.call.clone(),
                    idempotency_key: key,
                    state: StepState::Succeeded,
                    attempts: attempt,
                    last_error: None,
                    at: now,
                };
                let mut next = saga.clone();
                absorb(&mut next, &effect);
                next.step += 1;
                next.attempts = 0;
                next.step_deadline = None;
                next.data.step_tried = false;
                next.last_error = None;
                next.next_attempt_at = now;
                if next.step == definition.steps.len() {
                    next.status = SagaStatus::Succeeded;
                }
                self.commit(saga, next, Some(&record), order, &effect.change, None, now)
                    .await?;
                Ok(if saga.status.is_active() {
                    Next::Continue
                } else {
                    Next::Stop
                })
            }
            Err(GatewayFailure { error, call }) => {
                let retryable = !matches!(error, GatewayError::Permanent { .. });
                let reason = error.to_string();
                // A refusal that never called (open circuit) fails nothing by itself: past
                // the deadline only a step that really tried gives up.
                let tried = saga.data.step_tried || !matches!(error, GatewayError::NotTried { .. });
                if retryable && (now < deadline || !tried) {
                    let unresolved = matches!(error, GatewayError::Unknown { .. });
                    let record = StepRecord {
                        step: step.name,
                        direction: StepDirection::Forward,
                        call,
                        idempotency_key: key,
                        state: if unresolved {
                            StepState::Unresolved
                        } else {
                            StepState::Retrying
                        },
                        attempts: attempt,
                        last_error: Some(reason.clone()),
                        at: now,
                    };
                    let mut next = saga.clone();
                    next.attempts = attempt;
                    next.step_deadline = Some(deadline);
                    next.data.step_tried = tried;
                    next.last_error = Some(reason);
                    next.next_attempt_at =
                        now.saturating_add(step.retry.delay(attempt, (self.jitter)()));
                    // A timed-out authorisation is recorded as UNRESOLVED: the next attempt
                    // reconciles with the provider before sending anything.
                    let mark_unresolved = unresolved
                        && step.forward == super::definition::Operation::AuthorizePayment
                        && order.payment_status() == oms_domain::PaymentStatus::Pending;
                    let change = if mark_unresolved {
                        Some(Mark::Unresolved)
                    } else {
                        None
                    };
                    self.commit(saga, next, Some(&record), order, &Change::None, change, now)
                        .await?;
                    return Ok(Next::Stop);
                }
                debug!(saga = %saga.id, step = step.name, %reason, "step failed for good");
                let record = StepRecord {
                    step: step.name,
                    direction: StepDirection::Forward,
                    call,
                    idempotency_key: key,
                    state: StepState::Failed,
                    attempts: attempt,
                    last_error: Some(reason.clone()),
                    at: now,
                };
                self.start_compensation(
                    definition,
                    saga,
                    order,
                    Failure::Step(error.public_reason()),
                    Some(&record),
                    now,
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
            if saga.data.reservation_id.is_none() {
                saga.data
                    .reservation_id
                    .clone_from(&other.data.reservation_id);
            }
            if saga.data.payment_id.is_none() {
                saga.data.payment_id.clone_from(&other.data.payment_id);
            }
        }
        Ok(())
    }

    async fn start_compensation(
        &self,
        definition: &SagaDefinition,
        saga: &mut SagaInstance,
        order: Order,
        failure: Failure,
        record: Option<&StepRecord>,
        now: Timestamp,
    ) -> Result<Next, AppError> {
        let failed = saga.step;
        let (reason, park) = match failure {
            // A cancellation is not a failure of the step: undo everything, then cancel.
            Failure::Cancelled => ("cancelled while placing".to_owned(), false),
            Failure::Step(reason) => {
                let park = definition
                    .step(failed)
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
        let mut next = saga.clone();
        next.status = SagaStatus::Compensating;
        next.attempts = 0;
        next.step_deadline = None;
        next.data.step_tried = false;
        next.next_attempt_at = now;
        next.last_error = Some(reason.clone());
        next.data.failure = Some(reason);
        next.data.failed_step = Some(failed);
        // `step` completed steps remain to undo; the failed one had no effect.
        self.commit(saga, next, record, order, &Change::None, None, now)
            .await?;
        Ok(Next::Continue)
    }

    async fn backward(
        &self,
        definition: &SagaDefinition,
        saga: &mut SagaInstance,
        order: Order,
    ) -> Result<Next, AppError> {
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
            let mut next = saga.clone();
            next.step = index;
            self.commit(saga, next, None, order, &Change::None, None, now)
                .await?;
            return Ok(Next::Continue);
        };
        let key = saga.idempotency_key(step.name, op.as_str());
        let deadline = saga
            .step_deadline
            .unwrap_or_else(|| now.saturating_add(self.capped(definition.compensation_deadline)));
        let attempt = saga.attempts + 1;
        let executor = Executor {
            payments: self.ports.payments.as_ref(),
            inventory: self.ports.inventory.as_ref(),
        };
        match executor.run(op, saga, &order, &key).await {
            Ok(effect) => {
                let record = StepRecord {
                    step: step.name,
                    direction: StepDirection::Compensate,
                    call: effect.call.clone(),
                    idempotency_key: key,
                    state: StepState::Succeeded,
                    attempts: attempt,
                    last_error: None,
                    at: now,
                };
                let mut next = saga.clone();
                next.step = index;
                next.attempts = 0;
                next.step_deadline = None;
                next.data.step_tried = false;
                next.next_attempt_at = now;
                self.commit(saga, next, Some(&record), order, &effect.change, None, now)
                    .await?;
                Ok(Next::Continue)
            }
            Err(GatewayFailure { error, call }) => {
                let reason = error.to_string();
                let record = StepRecord {
                    step: step.name,
                    direction: StepDirection::Compensate,
                    call,
                    idempotency_key: key,
                    state: StepState::Retrying,
                    attempts: attempt,
                    last_error: Some(reason.clone()),
                    at: now,
                };
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
                let mut next = saga.clone();
                next.attempts = attempt;
                next.step_deadline = Some(deadline);
                next.data.step_tried = tried;
                next.last_error = Some(reason);
                next.next_attempt_at =
                    now.saturating_add(step.retry.delay(attempt, (self.jitter)()));
                self.commit(saga, next, Some(&record), order, &Change::None, None, now)
                    .await?;
                Ok(Next::Stop)
            }
        }
    }

    /// Ends the saga and moves the order to the outcome that ending means.
    async fn finish(
        &self,
        saga: &mut SagaInstance,
        order: Order,
        status: SagaStatus,
        reason: Option<String>,
        record: Option<&StepRecord>,
    ) -> Result<Next, AppError> {
        let now = self.clock.now();
        let reason_text = reason.clone().unwrap_or_else(|| "saga failed".to_owned());
        let mark = match status {
            SagaStatus::Compensated if order.status() == OrderStatus::Cancelling => {
                Some(Mark::CancellationFinished)
            }
            // Cancelled at once while nothing was held: that cancel already said so.
            SagaStatus::Compensated if order.status() == OrderStatus::Cancelled => None,
            SagaStatus::Compensated => {
                let failed = saga
                    .data
                    .failed_step
                    .and_then(|i| flows::definition(saga.kind).step(i));
                match failed.map(|s| s.on_failure) {
                    Some(OnFailure::CompensateThenReject) => Some(Mark::Rejected(reason_text)),
                    Some(OnFailure::CompensateThenFailPayment) => {
                        Some(Mark::PaymentFailed(reason_text))
                    }
                    _ => None,
                }
            }
            // Before the pivot (or while cancelling) the order waits in COMPENSATION_FAILED;
            // after it (a failed capture or refund) the order keeps its status and only the
            // saga is parked for the operator.
            SagaStatus::CompensationFailed
                if matches!(
                    order.status(),
                    OrderStatus::Pending | OrderStatus::Cancelling
                ) =>
            {
                Some(Mark::Parked(reason_text))
            }
            _ => None,
        };
        let mut next = saga.clone();
        if status == SagaStatus::CompensationFailed {
            next.data.parked_while = Some(saga.status.as_str().to_owned());
        }
        next.status = status;
        next.last_error = reason.or(next.last_error);
        next.next_attempt_at = now;
        let order_id = order.id();
        self.commit(saga, next, record, order, &Change::None, mark, now)
            .await?;
        if status == SagaStatus::CompensationFailed {
            // Never silent: this line, and the `SagaParked` event committed with it.
            warn!(
                saga = %saga.id,
                order = %order_id,
                kind = saga.kind.as_str(),
                step = saga.current_step().unwrap_or("-"),
                reason = saga.last_error.as_deref().unwrap_or("-"),
                "saga parked for an operator"
            );
        }
        Ok(Next::Stop)
    }

    /// Commits `next` (the saga after this step) with the step's audit row and the order
    /// change, then adopts `next` as the saga's state.
    #[allow(clippy::too_many_arguments)]
    async fn commit(
        &self,
        saga: &mut SagaInstance,
        mut next: SagaInstance,
        record: Option<&StepRecord>,
        mut order: Order,
        change: &Change,
        mark: Option<Mark>,
        now: Timestamp,
    ) -> Result<(), AppError> {
        let base = order.version();
        let mut events: Vec<OrderEvent> = Vec::new();
        if let Some(event) = change.apply(&mut order, now)? {
            events.push(event);
        }
        if let Some(mark) = mark
            && let Some(event) = mark.apply(&mut order, now)?
        {
            events.push(event);
        }
        let changed = order.version() != base;
        let mut outbox: Vec<OutboxMessage> = events
            .iter()
            .map(|e| OutboxMessage::for_event(&order, e))
            .collect();
        // Parking is announced whether or not the order changed with it (a fulfillment or a
        // refund parks after its pivot and leaves the order as it is).
        if next.status == SagaStatus::CompensationFailed && saga.status.is_active() {
            let reason = next.last_error.as_deref().unwrap_or("saga failed");
            let step = next.current_step().unwrap_or("-");
            outbox.push(OutboxMessage::saga_parked(&order, &next, step, reason, now));
        }
        next.version = saga.version + 1;
        next.updated_at = now;
        // Keep the lease only while this worker goes straight on to the next step; a saga
        // that waits for a retry is released so whichever worker is free when it is due
        // (in any process) picks it up.
        let lease_until = if next.status.is_active() && next.next_attempt_at <= now {
            now.saturating_add(self.config.lease)
        } else {
            now
        };
        let result = self
            .ports
            .sagas
            .commit(SagaCommit {
                saga: &next,
                expected_version: saga.version,
                fence: Fence::Lease(&self.config.worker),
                lease_until,
                step: record,
                // Unchanged with outbox rows: written at its own version, which still fences
                // the commit against a concurrent change of the order.
                order: (changed || !outbox.is_empty()).then_some(OrderWrite {
                    order: &order,
                    expected_version: Some(base),
                    outbox: &outbox,
                    idempotency: None,
                    start_saga: None,
                }),
            })
            .await;
        match result {
            Ok(()) => {
                *saga = next;
                if changed {
                    self.changes.publish(order.id(), order.version());
                }
                Ok(())
            }
            Err(StoreError::VersionConflict { current }) => {
                Err(AppError::VersionConflict { current })
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// Why a saga turns back.
enum Failure {
    /// The order was cancelled while the saga ran.
    Cancelled,
    /// A step failed for good; the reason.
    Step(String),
}

/// Terminal or bookkeeping transitions the engine itself decides (not a step's effect).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Mark {
    Unresolved,
    Rejected(String),
    PaymentFailed(String),
    CancellationFinished,
    Parked(String),
}

impl Mark {
    fn apply(
        &self,
        order: &mut Order,
        now: Timestamp,
    ) -> Result<Option<OrderEvent>, oms_domain::DomainError> {
        Ok(match self {
            Mark::Unresolved => order.mark_payment_unresolved(now).map(|()| None)?,
            Mark::Rejected(reason) => Some(order.reject(reason, now)?),
            Mark::PaymentFailed(reason) => Some(order.fail_payment(reason, now)?),
            Mark::CancellationFinished => Some(order.complete_cancellation(now)?),
            Mark::Parked(reason) => Some(order.fail_compensation(reason, now)?),
        })
    }
}

/// Copies what an effect taught into the saga's data.
fn absorb(saga: &mut SagaInstance, effect: &Effect) {
    if let Some(id) = &effect.reservation_id {
        saga.data.reservation_id = Some(id.clone());
    }
    if let Some(id) = &effect.payment_id {
        saga.data.payment_id = Some(id.clone());
    }
}
