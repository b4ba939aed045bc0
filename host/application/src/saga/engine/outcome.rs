//! How a saga ends, and the one commit every step goes through: the saga's next state, the
//! step's audit row, and the order change with its outbox rows, atomically.

use oms_domain::{Order, OrderEvent, OrderStatus, Timestamp};
use tracing::{debug, warn};

use super::run::Run;
use super::{Next, SagaEngine, StepError};
use crate::outbox::OutboxMessage;
use crate::ports::{Fence, OrderWrite, SagaCommit, StepRecord, StoreError};
use crate::saga::definition::OnFailure;
use crate::saga::executor::Change;
use crate::saga::flows;
use crate::saga::instance::{SagaInstance, SagaStatus};

/// Why a saga turns back.
pub(super) enum Failure {
    /// The order was cancelled while the saga ran.
    Cancelled,
    /// A step failed for good; the public reason.
    Step(String),
}

/// Terminal or bookkeeping transitions the engine itself decides (not a step's effect).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Mark {
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

impl SagaEngine {
    /// Ends the saga and moves the order to the outcome that ending means.
    pub(super) async fn finish(
        &self,
        saga: &mut Run,
        order: Order,
        status: SagaStatus,
        reason: Option<String>,
        record: Option<&StepRecord>,
    ) -> Result<Next, StepError> {
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
        let next = saga.end(status, reason, now);
        let order_id = order.id();
        // Counted by the commit once the end is durable (`ended`), so a saga that ends twice
        // (a retry after a lost commit) ended once.
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

    /// Commits the outcome of a call that reached a provider. When the order moved on
    /// meanwhile (an address change, a cancellation), the same outcome is committed onto the
    /// fresh order instead of running the step again: the provider already acted, and
    /// dropping its effect would strand it (a hold nobody voids when the order was
    /// cancelled under the call). The saga then sees the new order state at its next step.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn commit_called(
        &self,
        saga: &mut Run,
        next: SagaInstance,
        record: &StepRecord,
        mut order: Order,
        change: &Change,
        mark: Option<Mark>,
        now: Timestamp,
    ) -> Result<Order, StepError> {
        for _ in 0..super::ORDER_MOVED_ROUNDS {
            let result = self
                .commit(
                    saga,
                    next.clone(),
                    Some(record),
                    order,
                    change,
                    mark.clone(),
                    now,
                )
                .await;
            match result {
                // Steps run since the last commit go onto the fresh order with this one.
                Err(StepError::OrderMoved) => order = saga.rebase(self.load_order(saga).await?)?,
                other => return other,
            }
        }
        Err(StepError::OrderMoved)
    }

    /// Commits `next` (the saga after this step) with the step's audit row and the order
    /// change, together with the steps run since the last commit (their rows, their plugin
    /// writes; `order` already carries their changes), then adopts `next` as the saga's state
    /// and returns the order as committed (the next step starts from it instead of reading
    /// it again). On any error the saga and the steps not yet committed stay as they were.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn commit(
        &self,
        saga: &mut Run,
        mut next: SagaInstance,
        record: Option<&StepRecord>,
        mut order: Order,
        change: &Change,
        mark: Option<Mark>,
        now: Timestamp,
    ) -> Result<Order, StepError> {
        let unflushed = saga.unflushed.as_ref();
        // The fence is the order as the last commit left it (or as it was re-read since).
        let base = unflushed.map_or(order.version(), |u| u.order_version);
        let mut events: Vec<OrderEvent> = unflushed.map(|u| u.events.clone()).unwrap_or_default();
        let steps: Vec<StepRecord> = unflushed
            .into_iter()
            .flat_map(|u| u.records())
            .chain(record)
            .cloned()
            .collect();
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
                steps: &steps,
                // Unchanged with outbox rows: written at its own version, which still fences
                // the commit against a concurrent change of the order.
                order: (changed || !outbox.is_empty()).then_some(OrderWrite {
                    order: &order,
                    expected_version: Some(base),
                    outbox: &outbox,
                    idempotency: None,
                    start_saga: None,
                    lease_saga_to: None,
                }),
            })
            .await;
        debug!(
            saga.version = next.version,
            saga.status = next.status.as_str(),
            saga.step = next.step,
            steps = steps.len(),
            order.base = base.0,
            order.version = order.version().0,
            outcome = ?result,
            "saga commit"
        );
        match result {
            Ok(()) => {
                if saga.status.is_active() && !next.status.is_active() {
                    ended(&next, now);
                }
                saga.saga = next;
                saga.unflushed = None;
                saga.refused = 0;
                if changed {
                    self.changes.publish(&order);
                }
                Ok(order)
            }
            Err(StoreError::VersionConflict { .. }) => Err(StepError::OrderMoved),
            Err(StoreError::LeaseLost) => Err(StepError::LeaseLost),
            Err(StoreError::KvConflict { namespace, key }) => {
                debug!(saga = %saga.id, %namespace, %key, "plugin state moved under the step; running it again");
                Err(StepError::PluginStateMoved)
            }
            Err(e) => Err(StepError::Failed(e.into())),
        }
    }
}

/// Counts a saga that has just ended, once its end is committed:
/// `oms_saga_outcomes_total{kind, outcome}` and `oms_saga_duration_seconds{kind, outcome}`
/// (from its start to its end). Parked sagas count as `COMPENSATION_FAILED`.
fn ended(saga: &SagaInstance, now: Timestamp) {
    let (kind, outcome) = (saga.kind.as_str(), saga.status.as_str());
    metrics::counter!("oms_saga_outcomes_total", "kind" => kind, "outcome" => outcome).increment(1);
    let took = now
        .unix_millis()
        .saturating_sub(saga.created_at.unix_millis())
        .max(0);
    metrics::histogram!("oms_saga_duration_seconds", "kind" => kind, "outcome" => outcome)
        .record(took as f64 / 1000.0);
}
