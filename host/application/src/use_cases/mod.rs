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

use crate::error::AppError;
use crate::idempotency::IdempotencyClaim;
use crate::service::OrderService;

/// How often a change without `expected_version` is retried after losing a race: the client
/// did not pin a version, so re-applying to the newer one is what it asked for.
const UNPINNED_RETRIES: usize = 5;

impl OrderService {
    /// Load, check the pinned version, apply `change`, commit. Shared by every use case that
    /// changes an existing order.
    pub(crate) async fn mutate<F>(
        &self,
        id: OrderId,
        expected: Option<Version>,
        claim: Option<IdempotencyClaim>,
        change: F,
    ) -> Result<Order, AppError>
    where
        F: Fn(&mut Order) -> Result<OrderEvent, DomainError>,
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
            let event = change(&mut order)?;
            match self
                .commit(&order, Some(base), &[event], claim.clone())
                .await
            {
                Ok(()) => return Ok(order),
                Err(AppError::VersionConflict { .. })
                    if expected.is_none() && attempts < UNPINNED_RETRIES =>
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
