//! CreateOrder: accept an order durably as PENDING.

use oms_domain::{NewOrder, Order, OrderId};

use crate::error::AppError;
use crate::idempotency::IdempotencyRequest;
use crate::service::OrderService;

impl OrderService {
    /// Stores the order, its lines and `OrderCreated` in one transaction and returns it.
    /// The placement saga (reserve, authorize, confirm) starts from the stored order; it
    /// never runs inside this request.
    pub async fn create_order(
        &self,
        new: NewOrder,
        idempotency: Option<IdempotencyRequest>,
    ) -> Result<Order, AppError> {
        self.idempotent(idempotency, |claim| async move {
            let (order, created) = Order::place(new, OrderId::generate(), self.clock.now());
            self.commit(&order, None, &[created], claim).await?;
            Ok(order)
        })
        .await
    }
}
