//! CancelOrder.

use oms_domain::{Order, OrderId, OrderStatus, Version};

use crate::error::AppError;
use crate::idempotency::IdempotencyRequest;
use crate::saga::SagaKind;
use crate::service::OrderService;
use crate::use_cases::{OrderSagas, SagaStart};

impl OrderService {
    /// Cancels at once when nothing is held outside the OMS, otherwise moves the order to
    /// CANCELLING and starts the cancellation saga (void, release). A placement saga that
    /// still runs undoes its own steps instead. Refused while any other operation on the
    /// order is unfinished, and for good once fulfillment has begun (docs/saga.md,
    /// "Concurrent operations").
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
                admit_cancel,
            )
            .await
        })
        .await
    }
}

fn admit_cancel(order: &Order, sagas: &OrderSagas) -> Result<SagaStart, AppError> {
    match sagas.unfinished() {
        // The placement notices CANCELLING (or CANCELLED) at its next step and undoes
        // what it did; the order version fences this against its end.
        Some(saga)
            if saga.kind == SagaKind::PlaceOrder && order.status() == OrderStatus::Pending =>
        {
            Ok(SagaStart::None)
        }
        // The inventory contract cannot undo a commit: the way back is the operator's retry
        // of the fulfillment, then a refund.
        Some(_) if sagas.fulfillment_started() => Err(AppError::FulfillmentStarted(format!(
            "fulfillment of order {} has begun: it can no longer be cancelled; refund it once fulfilled",
            order.id()
        ))),
        Some(saga) => Err(OrderSagas::in_progress(saga)),
        // What the order's state says (nothing held: cancelled at once) is the domain's call.
        None if order.status() == OrderStatus::Pending && !order.has_external_effects() => {
            Ok(SagaStart::None)
        }
        None => Ok(SagaStart::Required(SagaKind::CancelOrder)),
    }
}
