//! The e-mail's words. Kept apart from the plumbing so that copy changes touch one file.

use core::fmt::Write;

use crate::bindings::exports::oms::plugins::formatter::{Address, Event};
use crate::bindings::oms::plugins::config;
use crate::money::display;

pub struct Settings {
    shop_name: String,
    support_email: Option<String>,
}

impl Settings {
    pub fn from_config() -> Self {
        Settings {
            shop_name: config::get("shop-name").unwrap_or_else(|| "OMS Demo Shop".into()),
            support_email: config::get("support-email"),
        }
    }
}

pub struct Wording {
    headline: &'static str,
    intro: &'static str,
}

/// The wording for an event type, or `None` for events customers are not told about.
pub fn wording(event_type: &str) -> Option<Wording> {
    let (headline, intro) = match event_type {
        "order.confirmed" => (
            "confirmed",
            "Thank you for your order. We have received your payment and are preparing it.",
        ),
        "order.fulfilled" => ("shipped", "Good news: your order is on its way."),
        "order.rejected" => (
            "could not be placed",
            "We are sorry: an item of your order is out of stock, so we could not place it. \
             Nothing was charged.",
        ),
        "order.payment_failed" => (
            "could not be paid",
            "We are sorry: your payment was not accepted, so we could not place your order. \
             Nothing was charged.",
        ),
        "order.shipping_address_updated" => (
            "address changed",
            "We have updated the delivery address of your order, as below.",
        ),
        "order.cancelled" => (
            "cancelled",
            "Your order has been cancelled. Any payment taken will be refunded.",
        ),
        "order.refunded" => (
            "refunded",
            "We have refunded your order. Your bank may take a few days to show it.",
        ),
        _ => return None,
    };
    Some(Wording { headline, intro })
}

pub fn subject(settings: &Settings, wording: &Wording, event: &Event) -> String {
    format!(
        "{}: order {} {}",
        settings.shop_name, event.order.id, wording.headline
    )
}

// `write!` into a String cannot fail; the results are ignored for that reason only.
pub fn body(settings: &Settings, wording: &Wording, event: &Event) -> String {
    let order = &event.order;
    let mut text = String::new();
    let greeting = order.customer.name.as_deref().unwrap_or("there");
    let _ = writeln!(text, "Hello {greeting},\n");
    let _ = writeln!(text, "{}\n", wording.intro);
    let _ = writeln!(text, "Order {}", order.id);
    for item in &order.items {
        let name = item.name.as_deref().unwrap_or(&item.sku);
        let _ = writeln!(
            text,
            "  {} x {name} ({}) - {}",
            item.quantity,
            item.sku,
            display(&item.line_total)
        );
    }
    let _ = writeln!(text, "Total: {}", display(&order.total));
    if let Some(address) = &order.shipping_address {
        let _ = writeln!(text, "\nShipping to:");
        write_address(&mut text, address);
    }
    if let Some(support) = &settings.support_email {
        let _ = writeln!(
            text,
            "\nQuestions? Reply to this e-mail or write to {support}."
        );
    }
    let _ = write!(text, "\n-- \n{}\n", settings.shop_name);
    text
}

fn write_address(text: &mut String, address: &Address) {
    let region = address
        .region
        .as_deref()
        .map(|r| format!(" {r}"))
        .unwrap_or_default();
    let _ = writeln!(text, "  {}", address.name);
    let _ = writeln!(text, "  {}", address.line1);
    if let Some(line2) = &address.line2 {
        let _ = writeln!(text, "  {line2}");
    }
    let _ = writeln!(text, "  {} {}{region}", address.postal_code, address.city);
    let _ = writeln!(text, "  {}", address.country);
}
