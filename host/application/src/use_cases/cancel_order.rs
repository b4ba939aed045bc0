//! CancelOrder.

use oms_domain::{Order, OrderId, OrderStatus, Version};

use crate::error::AppError;
use crate::idempotency::IdempotencyRequest;
use crate::saga::SagaKind;
use crate::service::OrderService;
use crate::use_cases::SagaStart;

impl OrderService {
    /// Cancels at once when nothing is held outside the OMS, otherwise moves the order to
    /// CANCELLING and starts the cancellation saga (void or refund, release). If the
    /// placement saga is still running it undoes its own steps instead.
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
            self.mutate(
                id,
                expected,
                claim,
                |order| Ok((order.cancel(&reason, now)?, None)),
                |order| {
                    if order.status() == OrderStatus::Cancelling {
                        SagaStart::UnlessActive(SagaKind::CancelOrder)
                    } else {
                        SagaStart::None
                    }
                },
            )
            .await
        })
        .await
    }
}
