//! GetOrder.

use oms_domain::{Order, OrderId};

use crate::error::AppError;
use crate::service::OrderService;

impl OrderService {
    pub async fn get_order(&self, id: OrderId) -> Result<Order, AppError> {
        self.orders
            .get(id)
            .await?
            .ok_or_else(|| AppError::NotFound(format!("order {id}")))
    }
}
