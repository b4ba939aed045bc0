//! Operator operations on sagas: list and inspect them, retry a parked one, force its
//! compensation. The admin API (`oms.admin.v1`) and `oms saga` expose them.

use std::sync::Arc;

use oms_domain::{OrderId, OrderStatus, Timestamp};
use tokio::sync::Notify;

use super::flows;
use super::instance::{Direction, SagaId, SagaInstance, SagaStatus};
use crate::changes::OrderChanges;
use crate::clock::Clock;
use crate::error::AppError;
use crate::outbox::OutboxMessage;
use crate::ports::{Fence, OrderStore, OrderWrite, SagaCommit, SagaQuery, SagaStore, StepHistory};

/// The statuses of a saga that has not finished: what an operator lists by default.
const UNFINISHED: [SagaStatus; 3] = [
    SagaStatus::Running,
    SagaStatus::Compensating,
    SagaStatus::CompensationFailed,
];

/// What an operator can do about sagas.
#[derive(Clone)]
pub struct SagaOperations {
    pub(crate) orders: Arc<dyn OrderStore>,
    pub(crate) sagas: Arc<dyn SagaStore>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) changes: OrderChanges,
    pub(crate) wakeup: Arc<Notify>,
}

impl SagaOperations {
    pub fn new(
        orders: Arc<dyn OrderStore>,
        sagas: Arc<dyn SagaStore>,
        clock: Arc<dyn Clock>,
        changes: OrderChanges,
        wakeup: Arc<Notify>,
    ) -> Self {
        Self {
            orders,
            sagas,
            clock,
            changes,
            wakeup,
        }
    }

    /// The operator queue: sagas parked in COMPENSATION_FAILED, oldest first.
    pub async fn parked(&self, limit: u32) -> Result<Vec<SagaInstance>, AppError> {
        self.list(SagaQuery {
            statuses: vec![SagaStatus::CompensationFailed],
            kind: None,
            updated_before: None,
            limit,
        })
        .await
    }

    /// Every saga not finished yet: running, compensating or parked, oldest first.
    pub async fn unfinished(&self, limit: u32) -> Result<Vec<SagaInstance>, AppError> {
        self.list(SagaQuery {
            statuses: UNFINISHED.to_vec(),
            kind: None,
            updated_before: None,
            limit,
        })
        .await
    }

    /// Sagas matching `query`, oldest first. No statuses means the unfinished ones.
    pub async fn list(&self, mut query: SagaQuery) -> Result<Vec<SagaInstance>, AppError> {
        if query.statuses.is_empty() {
            query.statuses = UNFINISHED.to_vec();
        }
        Ok(self.sagas.find(&query).await?)
    }

    /// A saga and its step history (which plugin build served each step, attempts, errors).
    pub async fn show(&self, id: SagaId) -> Result<(SagaInstance, Vec<StepHistory>), AppError> {
        let saga = self.get(id).await?;
        let steps = self.sagas.steps(id).await?;
        Ok((saga, steps))
    }

    pub async fn get(&self, id: SagaId) -> Result<SagaInstance, AppError> {
        self.sagas
            .get(id)
            .await?
            .ok_or_else(|| AppError::NotFound(format!("saga {id}")))
    }

    /// A payment provider brought news about `order_id`'s payment (an authenticated inbound
    /// webhook, which the plugin has recorded): the order's active sagas that wait for a
    /// later time run now, and read the outcome with `get-payment` rather than from the
    /// webhook. Returns how many were woken.
    pub async fn payment_news(&self, order_id: OrderId) -> Result<usize, AppError> {
        let now = self.clock.now();
        let mut woken = 0;
        for saga in self.sagas.for_order(order_id).await? {
            if saga.status.is_active() && self.sagas.wake(saga.id, now).await? {
                woken += 1;
            }
        }
        if woken > 0 {
            self.wakeup.notify_one();
        }
        Ok(woken)
    }

    /// Resumes a parked saga where it stopped, in the direction it was going, with fresh
    /// retries (fix the cause first: roll back a broken plugin, restore the provider). An
    /// order parked with it goes back to CANCELLING, so a resumed placement undoes itself.
    pub async fn retry(&self, id: SagaId) -> Result<SagaInstance, AppError> {
        self.resume(id, None).await
    }

    /// Makes a parked placement saga undo what it did instead of going on. Refused for sagas
    /// without compensations (cancel, fulfill, refund): retry those instead.
    pub async fn force_compensate(&self, id: SagaId) -> Result<SagaInstance, AppError> {
        self.resume(id, Some(Direction::Compensating)).await
    }

    async fn resume(
        &self,
        id: SagaId,
        direction: Option<Direction>,
    ) -> Result<SagaInstance, AppError> {
        let saga = self.get(id).await?;
        if direction == Some(Direction::Compensating)
            && !flows::definition(saga.kind)
                .steps
                .iter()
                .any(|s| s.compensation.is_some())
        {
            return Err(AppError::IllegalTransition(format!(
                "a {} saga has no compensations; retry it instead",
                saga.kind.as_str()
            )));
        }
        let now = self.clock.now();
        let Some(mut next) = saga.resume(direction, now) else {
            return Err(AppError::IllegalTransition(format!(
                "saga {id} is {}, not parked in COMPENSATION_FAILED",
                saga.status.as_str()
            )));
        };
        next.version = saga.version + 1;
        next.updated_at = now;
        self.commit_resumed(&saga, &next, now).await?;
        self.wakeup.notify_one();
        Ok(next)
    }

    async fn commit_resumed(
        &self,
        saga: &SagaInstance,
        next: &SagaInstance,
        now: Timestamp,
    ) -> Result<(), AppError> {
        let mut order = self
            .orders
            .get(saga.order_id)
            .await?
            .ok_or_else(|| AppError::NotFound(format!("order {}", saga.order_id)))?;
        let base = order.version();
        let event = if order.status() == OrderStatus::CompensationFailed {
            Some(order.retry_compensation(now)?)
        } else {
            None
        };
        let outbox: Vec<OutboxMessage> = event
            .iter()
            .map(|e| OutboxMessage::for_event(&order, e))
            .collect();
        self.sagas
            .commit(SagaCommit {
                saga: next,
                expected_version: saga.version,
                fence: Fence::Parked,
                lease_until: now,
                steps: &[],
                order: event.is_some().then_some(OrderWrite {
                    order: &order,
                    expected_version: Some(base),
                    outbox: &outbox,
                    idempotency: None,
                    start_saga: None,
                    lease_saga_to: None,
                }),
            })
            .await?;
        if event.is_some() {
            self.changes.publish(&order);
        }
        Ok(())
    }
}
