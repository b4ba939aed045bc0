//! ListOrders: keyset pagination, newest first.

use oms_domain::Order;

use crate::error::AppError;
use crate::ports::OrderQuery;
use crate::service::OrderService;

/// One page of orders and whether another follows.
#[derive(Debug, Clone)]
pub struct OrderPage {
    pub orders: Vec<Order>,
    /// Set when more orders match: the `before` cursor of the next page.
    pub next: Option<oms_domain::OrderId>,
}

impl OrderService {
    /// Fetches one row more than asked to learn whether a next page exists, so the last page
    /// never carries a token that leads to an empty page.
    pub async fn list_orders(&self, query: OrderQuery) -> Result<OrderPage, AppError> {
        let limit = query.limit.max(1);
        let mut orders = self
            .orders
            .list(&OrderQuery {
                limit: limit.saturating_add(1),
                ..query
            })
            .await?;
        let more = orders.len() > limit as usize;
        orders.truncate(limit as usize);
        let next = if more {
            orders.last().map(Order::id)
        } else {
            None
        };
        Ok(OrderPage { orders, next })
    }
}
