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

use crate::saga::{SagaData, SagaInstance, SagaKind};

use crate::error::AppError;
use crate::idempotency::IdempotencyClaim;
use crate::service::OrderService;

/// How often a change without `expected_version` is retried after losing a race: the client
/// did not pin a version, so re-applying to the newer one is what it asked for.
const UNPINNED_RETRIES: usize = 5;

/// Whether a change starts a saga, and what to do if one is already running for the order.
#[derive(Debug, Clone, Copy)]
pub(crate) enum SagaStart {
    None,
    /// Start this saga; refuse the change if another is active.
    Required(SagaKind),
    /// Start this saga only if none is active; an active one takes the change over (a
    /// placement saga notices CANCELLING and compensates itself).
    UnlessActive(SagaKind),
}

impl OrderService {
    /// Load, check the pinned version, apply `change`, commit with the saga `start` decides
    /// from the changed order. Shared by every use case that changes an existing order.
    pub(crate) async fn mutate<F, S>(
        &self,
        id: OrderId,
        expected: Option<Version>,
        claim: Option<IdempotencyClaim>,
        change: F,
        start: S,
    ) -> Result<Order, AppError>
    where
        F: Fn(&mut Order) -> Result<(OrderEvent, Option<SagaData>), DomainError>,
        S: Fn(&Order) -> SagaStart,
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
            let (event, data) = change(&mut order)?;
            let now = self.clock.now();
            let saga = |kind| {
                let mut saga = SagaInstance::start(kind, id, now);
                if let Some(data) = &data {
                    saga.data = data.clone();
                }
                saga
            };
            let (saga, tolerate_active) = match start(&order) {
                SagaStart::None => (None, false),
                SagaStart::Required(kind) => (Some(saga(kind)), false),
                SagaStart::UnlessActive(kind) => (Some(saga(kind)), true),
            };
            let mut result = self
                .commit(
                    &order,
                    Some(base),
                    std::slice::from_ref(&event),
                    claim.clone(),
                    saga.as_ref(),
                )
                .await;
            if tolerate_active && matches!(result, Err(AppError::SagaActive)) {
                result = self
                    .commit(&order, Some(base), &[event], claim.clone(), None)
                    .await;
            }
            match result {
                Ok(()) => return Ok(order),
                Err(AppError::VersionConflict { .. })
                    if expected.is_none() && attempts < UNPINNED_RETRIES =>
                {
                    continue;
                }
                Err(AppError::NotFound(_)) => {
                    return Err(AppError::NotFound(format!("order {id}")));
                }
                Err(AppError::SagaActive) => {
                    return Err(AppError::FailedPrecondition(
                        "another operation is still running for this order; retry when it ends"
                            .to_owned(),
                    ));
                }
                Err(e) => return Err(e),
            }
        }
    }
}
