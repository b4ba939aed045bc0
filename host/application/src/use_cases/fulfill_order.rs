//! FulfillOrder.

use oms_domain::{Order, OrderId, Version};

use crate::error::AppError;
use crate::idempotency::IdempotencyRequest;
use crate::saga::SagaKind;
use crate::service::OrderService;

impl OrderService {
    /// Starts fulfillment of a CONFIRMED order (`OrderFulfillmentRequested`); the fulfillment
    /// saga commits the reservation, captures the payment and marks the order FULFILLED.
    pub async fn fulfill_order(
        &self,
        id: OrderId,
        expected: Option<Version>,
        idempotency: Option<IdempotencyRequest>,
    ) -> Result<Order, AppError> {
        self.idempotent(idempotency, |claim| async move {
            let now = self.clock.now();
            self.mutate(
                id,
                expected,
                claim,
                |order| Ok((order.request_fulfillment(now)?, None)),
                |_, sagas| sagas.exclusive(SagaKind::FulfillOrder),
            )
            .await
        })
        .await
    }
}
