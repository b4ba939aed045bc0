//! One file per use case, each an `impl OrderService` block.

mod cancel_order;
mod create_order;
mod fulfill_order;
mod get_order;
mod list_orders;
mod refund_order;
mod update_shipping_address;
mod watch_order;

pub use list_orders::OrderPage;

use oms_domain::{DomainError, Order, OrderEvent, OrderId, Version};

use crate::saga::{SagaData, SagaInstance, SagaKind, SagaStatus};

use crate::error::{AppError, RunningOperation};
use crate::idempotency::IdempotencyClaim;
use crate::service::OrderService;

/// How often a change without `expected_version` is retried after losing a race: the client
/// did not pin a version, so re-applying to the newer one is what it asked for.
const UNPINNED_RETRIES: usize = 5;

/// Whether a change starts a saga.
#[derive(Debug, Clone, Copy)]
pub(crate) enum SagaStart {
    None,
    /// Start this saga with the change, in the same transaction.
    Required(SagaKind),
}

/// The sagas of one order, as the rules for concurrent operations see them
/// (docs/saga.md, "Concurrent operations").
pub(crate) struct OrderSagas(Vec<SagaInstance>);

impl OrderSagas {
    /// The saga that has not finished: running, compensating, or parked for an operator.
    /// Each of these blocks the next saga, so there is at most one; the newest wins should
    /// stored history say otherwise.
    pub fn unfinished(&self) -> Option<&SagaInstance> {
        self.0
            .iter()
            .rev()
            .find(|s| s.status.is_active() || s.status == SagaStatus::CompensationFailed)
    }

    /// The refusal for a change that must not run beside `saga`.
    pub fn in_progress(saga: &SagaInstance) -> AppError {
        AppError::OperationInProgress {
            running: Some(RunningOperation {
                kind: saga.kind,
                status: saga.status,
            }),
        }
    }

    /// A change that starts a saga runs alone: refused while another is unfinished.
    pub fn exclusive(&self, kind: SagaKind) -> Result<SagaStart, AppError> {
        match self.unfinished() {
            Some(saga) => Err(Self::in_progress(saga)),
            None => Ok(SagaStart::Required(kind)),
        }
    }

    /// Whether a fulfillment saga runs or is parked: what it did (commit, capture) cannot be
    /// undone by a cancellation, and the order ships where it was asked to.
    pub fn fulfillment_started(&self) -> bool {
        self.unfinished()
            .is_some_and(|s| s.kind == SagaKind::FulfillOrder)
    }
}

impl OrderService {
    /// Load, check the pinned version, decide with `admit` (which sees the order before the
    /// change and its sagas) whether the change may run now and which saga it starts, apply
    /// `change`, and commit both. Shared by every use case that changes an existing order.
    pub(crate) async fn mutate<F, S>(
        &self,
        id: OrderId,
        expected: Option<Version>,
        claim: Option<IdempotencyClaim>,
        change: F,
        admit: S,
    ) -> Result<Order, AppError>
    where
        F: Fn(&mut Order) -> Result<(OrderEvent, Option<SagaData>), DomainError>,
        S: Fn(&Order, &OrderSagas) -> Result<SagaStart, AppError>,
    {
        let mut attempts = 0;
        loop {
            attempts += 1;
            let mut order = self
                .orders
                .get(id)
                .await?
                .ok_or_else(|| AppError::NotFound(format!("order {id}")))?;
            let base = order.version();
            if let Some(expected) = expected
                && expected != base
            {
                return Err(AppError::VersionConflict { current: base });
            }
            // Saga rules before the order's own: while another operation runs the order's
            // state is about to change, so its answer would not be the final one.
            let sagas = OrderSagas(self.sagas.for_order(id).await?);
            let admitted = admit(&order, &sagas);
            let changed = change(&mut order);
            // A request that no state of the order could accept (a zero refund) is the
            // caller's to fix, whatever runs: say so first rather than "retry later".
            if let Err(
                e @ (DomainError::InvalidArgument { .. } | DomainError::CurrencyMismatch { .. }),
            ) = changed
            {
                return Err(e.into());
            }
            let start = admitted?;
            let (event, data) = changed?;
            let now = self.clock.now();
            let saga = match start {
                SagaStart::None => None,
                SagaStart::Required(kind) => {
                    let mut saga = SagaInstance::start(kind, id, now);
                    if let Some(data) = data {
                        saga.data = data;
                    }
                    Some(saga)
                }
            };
            // The order's version fences the decision above: every saga starts with a change
            // of its order, and the placement saga a cancel takes over ends with one, so a
            // decision made on a stale read fails here with a version conflict.
            let result = self
                .commit(&order, Some(base), &[event], claim.clone(), saga.as_ref())
                .await;
            match result {
                Ok(()) => return Ok(order),
                Err(AppError::VersionConflict { .. })
                    if expected.is_none() && attempts < UNPINNED_RETRIES =>
                {
                    continue;
                }
                // A saga started between our read and the commit (nothing was written):
                // decide again, so the refusal names it.
                Err(AppError::OperationInProgress { running: None })
                    if attempts < UNPINNED_RETRIES =>
                {
                    continue;
                }
                Err(AppError::NotFound(_)) => {
                    return Err(AppError::NotFound(format!("order {id}")));
                }
                Err(e) => return Err(e),
            }
        }
    }
}
