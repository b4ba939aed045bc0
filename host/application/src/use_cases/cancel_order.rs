//! CancelOrder.

use oms_domain::{Order, OrderId, Version};

use crate::error::AppError;
use crate::idempotency::IdempotencyRequest;
use crate::service::OrderService;

impl OrderService {
    /// Cancels at once when nothing is held outside the OMS, otherwise moves the order to
    /// CANCELLING for the saga to undo its effects (void or refund, release).
    pub async fn cancel_order(
        &self,
        id: OrderId,
        reason: String,
        expected: Option<Version>,
        idempotency: Option<IdempotencyRequest>,
    ) -> Result<Order, AppError> {
        let reason = if reason.is_empty() {
            "cancelled by request".to_owned()
        } else {
            reason
        };
        self.idempotent(idempotency, |claim| async move {
            let now = self.clock.now();
            self.mutate(id, expected, claim, |order| order.cancel(&reason, now))
                .await
        })
        .await
    }
}
