//! RefundOrder.

use oms_domain::{Money, Order, OrderId, Reason, Version};

use crate::error::AppError;
use crate::idempotency::IdempotencyRequest;
use crate::saga::{SagaData, SagaKind};
use crate::service::OrderService;

impl OrderService {
    /// Starts a refund of `amount`, or of the whole refundable balance when `None`, through
    /// the refund saga. Never more than captured: the domain refuses it with
    /// FAILED_PRECONDITION before anything is sent to the provider; a zero amount or one in
    /// another currency is INVALID_ARGUMENT. The reason travels in the
    /// `OrderRefundRequested` event.
    pub async fn refund_order(
        &self,
        id: OrderId,
        amount: Option<Money>,
        reason: Reason,
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
                    let (amount, event) = order.request_refund(amount, reason.clone(), now)?;
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
