//! RefundOrder.

use oms_domain::{Money, Order, OrderId, Version};

use crate::error::AppError;
use crate::idempotency::IdempotencyRequest;
use crate::saga::{SagaData, SagaKind};
use crate::service::OrderService;

impl OrderService {
    /// Starts a refund of `amount`, or of the whole refundable balance when `None`, through
    /// the refund saga. Never more than captured: the domain refuses it with
    /// FAILED_PRECONDITION before anything is sent to the provider.
    pub async fn refund_order(
        &self,
        id: OrderId,
        amount: Option<Money>,
        expected: Option<Version>,
        idempotency: Option<IdempotencyRequest>,
    ) -> Result<Order, AppError> {
        self.idempotent(idempotency, |claim| async move {
            let now = self.clock.now();
            self.mutate(
                id,
                expected,
                claim,
                |order| {
                    let amount = match amount {
                        Some(a) => a,
                        None => order.captured().checked_sub(&order.refunded())?,
                    };
                    let event = order.request_refund(amount, now)?;
                    let data = SagaData {
                        refund_amount_minor: Some(amount.amount_minor()),
                        ..SagaData::default()
                    };
                    Ok((event, Some(data)))
                },
                |_, sagas| sagas.exclusive(SagaKind::RefundOrder),
            )
            .await
        })
        .await
    }
}
