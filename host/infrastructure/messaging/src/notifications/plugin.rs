//! [`Formatter`] backed by a notification formatter plugin (`oms:plugins/formatter`).

use async_trait::async_trait;
use oms_plugin_runtime::clients::notification::{
    Address, Channel, Customer, Event, FormatError, Item, Message, OrderSnapshot,
};
use oms_plugin_runtime::clients::payment::Money;
use oms_plugin_runtime::{CallErrorKind, NotificationFormatter, PluginError};

use super::{ChannelKind, FormatFailure, Formatter, Notification};
use crate::event::pb;

/// Calls one installed formatter plugin by name (hot swaps apply on the next call).
pub struct PluginFormatter {
    client: NotificationFormatter,
}

impl PluginFormatter {
    pub fn new(client: NotificationFormatter) -> Self {
        Self { client }
    }
}

#[async_trait]
impl Formatter for PluginFormatter {
    fn name(&self) -> &str {
        self.client.name()
    }

    async fn format(&self, event: &pb::OrderEvent) -> Result<Vec<Notification>, FormatFailure> {
        let messages = match self.client.format(to_wit(event)).await {
            Ok(called) => called.value,
            Err(PluginError::Rejected {
                error: FormatError::Invalid(e),
                ..
            }) => return Err(FormatFailure::Rejected(e)),
            Err(PluginError::Runtime(e)) => {
                return Err(match e.kind {
                    // What this event made the formatter do: a trap, or output or host calls
                    // outside the contract. It repeats on the same event: poison.
                    CallErrorKind::Trapped { .. }
                    | CallErrorKind::ContractViolation { .. }
                    | CallErrorKind::WrongKind { .. } => FormatFailure::Crashed(e.to_string()),
                    // The host's resources or state, not the event: no instance could be
                    // started (pool exhausted), the host was too busy to finish in time, the
                    // breaker is open, the plugin is not installed (yet). Retried with backoff;
                    // the consumer still dead-letters after its attempts run out.
                    CallErrorKind::Instantiate { .. }
                    | CallErrorKind::DeadlineExceeded { .. }
                    | CallErrorKind::MemoryLimitExceeded { .. }
                    | CallErrorKind::CircuitOpen { .. }
                    | CallErrorKind::NotInstalled => FormatFailure::Unavailable(e.to_string()),
                    // Only a saga step's buffered call is refused so; a formatter's writes go
                    // straight to the store. Reached, it would be the host's bug: not retried.
                    CallErrorKind::PendingSteps => FormatFailure::Crashed(e.to_string()),
                });
            }
        };
        Ok(messages
            .into_iter()
            .map(|m| from_wit(self.client.name(), event, m))
            .collect())
    }
}

/// `OrderConfirmed` -> `order.confirmed`, `PaymentFailed` -> `order.payment_failed`: the
/// dotted names the formatter contract uses.
pub fn dotted_event_type(event_type: &str) -> String {
    let rest = event_type.strip_prefix("Order").unwrap_or(event_type);
    let mut out = String::from("order.");
    for (i, c) in rest.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

fn money(m: Option<&pb::Money>) -> Money {
    m.map_or(
        Money {
            amount_minor: 0,
            currency: String::new(),
        },
        |m| Money {
            amount_minor: m.amount_minor,
            currency: m.currency.clone(),
        },
    )
}

fn to_wit(e: &pb::OrderEvent) -> Event {
    let o = e.order.clone().unwrap_or_default();
    let items = o
        .items
        .iter()
        .map(|l| {
            let unit = money(l.unit_price.as_ref());
            Item {
                sku: l.sku.clone(),
                name: None,
                quantity: l.quantity,
                line_total: Money {
                    amount_minor: unit.amount_minor.saturating_mul(i64::from(l.quantity)),
                    currency: unit.currency.clone(),
                },
                unit_price: unit,
            }
        })
        .collect();
    let non_empty = |s: &str| (!s.is_empty()).then(|| s.to_owned());
    Event {
        event_type: dotted_event_type(&e.event_type),
        schema_version: e.schema_version,
        event_id: e.event_id.clone(),
        occurred_at_ms: u64::try_from(e.occurred_at_ms).unwrap_or(0),
        order: OrderSnapshot {
            id: o.order_id.clone(),
            customer: Customer {
                id: o.customer_id.clone(),
                // The order's only name and e-mail are the ones given with the address.
                name: o
                    .shipping_address
                    .as_ref()
                    .and_then(|a| non_empty(&a.recipient)),
                email: o
                    .shipping_address
                    .as_ref()
                    .and_then(|a| non_empty(&a.email)),
                phone: None,
            },
            status: o.status.to_lowercase().replace('_', "-"),
            items,
            total: money(o.total.as_ref()),
            shipping_address: o.shipping_address.as_ref().map(|a| Address {
                name: a.recipient.clone(),
                line1: a.line1.clone(),
                line2: non_empty(&a.line2),
                city: a.city.clone(),
                region: None,
                postal_code: a.postal_code.clone(),
                country: a.country.clone(),
            }),
            created_at_ms: u64::try_from(o.created_at_ms).unwrap_or(0),
        },
        metadata: vec![("event_type".into(), e.event_type.clone())],
    }
}

fn from_wit(formatter: &str, e: &pb::OrderEvent, m: Message) -> Notification {
    Notification {
        event_id: e.event_id.clone(),
        event_type: e.event_type.clone(),
        formatter: formatter.to_owned(),
        channel: match m.channel {
            Channel::Email => ChannelKind::Email,
            Channel::Sms => ChannelKind::Sms,
            Channel::Webhook => ChannelKind::Webhook,
        },
        recipient: m.recipient,
        subject: m.subject,
        body: m.body,
        content_type: m.content_type,
    }
}

#[cfg(test)]
mod tests {
    use super::dotted_event_type;

    #[test]
    fn event_types_become_dotted_names() {
        assert_eq!(dotted_event_type("OrderConfirmed"), "order.confirmed");
        assert_eq!(dotted_event_type("PaymentFailed"), "order.payment_failed");
        assert_eq!(
            dotted_event_type("OrderShippingAddressUpdated"),
            "order.shipping_address_updated"
        );
    }
}
