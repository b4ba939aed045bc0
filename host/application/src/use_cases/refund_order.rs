//! RefundOrder.

use oms_domain::{Money, Order, OrderId, Version};

use crate::error::AppError;
use crate::idempotency::IdempotencyRequest;
use crate::service::OrderService;

impl OrderService {
    /// Refunds `amount`, or the whole refundable balance when `None`. Never more than was
    /// captured: the domain refuses it with FAILED_PRECONDITION.
    pub async fn refund_order(
        &self,
        id: OrderId,
        amount: Option<Money>,
        expected: Option<Version>,
        idempotency: Option<IdempotencyRequest>,
    ) -> Result<Order, AppError> {
        self.idempotent(idempotency, |claim| async move {
            let now = self.clock.now();
            self.mutate(id, expected, claim, |order| {
                let amount = match amount {
                    Some(a) => a,
                    None => order.captured().checked_sub(&order.refunded())?,
                };
                order.refund(amount, now)
            })
            .await
        })
        .await
    }
}
