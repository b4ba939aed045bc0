//! CreateOrder: accept an order durably as PENDING.

use oms_domain::{NewOrder, Order, OrderId};

use crate::error::{AppError, FieldViolation};
use crate::idempotency::IdempotencyRequest;
use crate::ports::PAYMENT_WORLD;
use crate::saga::{SagaInstance, SagaKind};
use crate::service::OrderService;

impl OrderService {
    /// Stores the order, its lines, `OrderCreated`, its placement saga and, with a key, the
    /// key's completed record in one transaction (one commit; see
    /// [`OrderService::idempotent_insert`]) and returns it as PENDING. The saga (reserve,
    /// authorize, confirm) then runs on its own task in this process at once when an inline
    /// placement slot is free (leased in the same transaction), or in the background
    /// workers; never inside this request.
    pub async fn create_order(
        &self,
        new: NewOrder,
        idempotency: Option<IdempotencyRequest>,
    ) -> Result<Order, AppError> {
        // Before the key is claimed: a refused request is not stored, so a corrected retry
        // with the same key runs.
        self.check_payment_provider(&new)?;
        self.idempotent_insert(idempotency, |key| {
            let new = new.clone();
            async move {
                let now = self.clock.now();
                let (order, created) = Order::place(new, OrderId::generate(), now);
                let saga = SagaInstance::start(SagaKind::PlaceOrder, order.id(), now);
                let slot = self.placement.as_ref().and_then(|p| p.try_start());
                let lease = slot.as_ref().map(|s| s.lease(now));
                self.commit_leased(&order, None, &[created], key, Some(&saga), lease)
                    .await?;
                if let Some(slot) = slot {
                    slot.drive(saga, order.clone());
                }
                Ok(order)
            }
        })
        .await
    }

    fn check_payment_provider(&self, new: &NewOrder) -> Result<(), AppError> {
        let Some(plugins) = &self.plugins else {
            return Ok(());
        };
        let provider = &new.payment().provider;
        if plugins.has_payment_provider(provider) {
            return Ok(());
        }
        let mut installed: Vec<String> = plugins
            .list()
            .into_iter()
            .filter(|p| p.kind == PAYMENT_WORLD)
            .map(|p| p.name)
            .collect();
        installed.sort();
        Err(AppError::InvalidArgument(vec![FieldViolation::new(
            "payment.provider",
            format!(
                "no payment provider {provider:?} is installed (installed: {})",
                if installed.is_empty() {
                    "none".to_owned()
                } else {
                    installed.join(", ")
                }
            ),
        )]))
    }
}
