//! UpdateShippingAddress: the optimistically locked edit.

use oms_domain::{Order, OrderId, ShippingAddress, Version};

use crate::error::AppError;
use crate::idempotency::IdempotencyRequest;
use crate::service::OrderService;
use crate::use_cases::SagaStart;

impl OrderService {
    /// Fails with `VersionConflict` carrying the current version when `expected` is stale,
    /// whether it was stale on read or lost a race at commit.
    pub async fn update_shipping_address(
        &self,
        id: OrderId,
        address: ShippingAddress,
        expected: Version,
        idempotency: Option<IdempotencyRequest>,
    ) -> Result<Order, AppError> {
        self.idempotent(idempotency, |claim| async move {
            let now = self.clock.now();
            self.mutate(
                id,
                Some(expected),
                claim,
                |order| Ok((order.update_shipping_address(address.clone(), now)?, None)),
                |order, sagas| {
                    // Beside a placement the change is safe (each step re-reads the order);
                    // once fulfillment is under way the order ships where it was asked to.
                    if sagas.fulfillment_started() {
                        return Err(AppError::FulfillmentStarted(format!(
                            "fulfillment of order {} has begun: its shipping address is fixed",
                            order.id()
                        )));
                    }
                    Ok(SagaStart::None)
                },
            )
            .await
        })
        .await
    }
}
