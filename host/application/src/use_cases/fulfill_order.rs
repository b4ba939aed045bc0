//! FulfillOrder.

use oms_domain::{Order, OrderId, Version};

use crate::error::AppError;
use crate::idempotency::IdempotencyRequest;
use crate::service::OrderService;

impl OrderService {
    /// Marks a CONFIRMED order fulfilled. Committing the reservation and capturing the
    /// payment are steps of the fulfilment saga; this records the outcome the domain allows.
    pub async fn fulfill_order(
        &self,
        id: OrderId,
        expected: Option<Version>,
        idempotency: Option<IdempotencyRequest>,
    ) -> Result<Order, AppError> {
        self.idempotent(idempotency, |claim| async move {
            let now = self.clock.now();
            self.mutate(id, expected, claim, |order| order.fulfil(now))
                .await
        })
        .await
    }
}
