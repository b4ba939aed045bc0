//! CreateOrder: accept an order durably as PENDING.

use oms_domain::{NewOrder, Order, OrderId};

use crate::error::AppError;
use crate::idempotency::IdempotencyRequest;
use crate::saga::{SagaInstance, SagaKind};
use crate::service::OrderService;

impl OrderService {
    /// Stores the order, its lines, `OrderCreated` and its placement saga in one transaction
    /// and returns it as PENDING. The saga (reserve, authorize, confirm) runs in the
    /// background workers, never inside this request.
    pub async fn create_order(
        &self,
        new: NewOrder,
        idempotency: Option<IdempotencyRequest>,
    ) -> Result<Order, AppError> {
        self.idempotent(idempotency, |claim| async move {
            let now = self.clock.now();
            let (order, created) = Order::place(new, OrderId::generate(), now);
            let saga = SagaInstance::start(SagaKind::PlaceOrder, order.id(), now);
            self.commit(&order, None, &[created], claim, Some(&saga))
                .await?;
            Ok(order)
        })
        .await
    }
}
