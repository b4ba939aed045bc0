"""python-notify: a notification formatter written in Python: plain-text e-mails to the customer.

One e-mail per customer-facing order event (table `WORDING`); every other event type
(`order.created`, the `*_requested` steps, an operator's `order.compensation_failed`, types
added later) gets no message, which is an answer, not an error. A customer without an e-mail
address gets no message either: nothing to send, and retrying would not change that.

A formatter is a pure function of the event and the configuration: it reads no clock and no
KV and keeps the event's order, so a redelivered event gives byte-for-byte the same messages.
The host sends them; the formatter sends nothing itself. Configuration (optional):
`shop-name`, the subject prefix and signature.

componentize-py maps the WIT types as python-pay's docstring says: records are dataclasses
with snake_case fields (`event.order.customer.email`), `option<T>` is `T | None`,
`u32`/`u64`/`s64` are `int`, an enum is an `Enum` (`Channel.EMAIL`).
"""

from typing import List

from wit_world import exports
from wit_world.exports.formatter import Channel, Event, Message
from wit_world.imports import config, log
from wit_world.imports.types import Money

# event type -> (what happened, for the subject; the first sentence of the body).
WORDING = {
    "order.confirmed": ("confirmed", "Thank you: your order is confirmed and paid, and we are preparing it."),
    "order.fulfilled": ("shipped", "Good news: your order is on its way."),
    "order.rejected": ("could not be placed", "Sorry: an item is out of stock, so we could not place your order. Nothing was charged."),
    "order.payment_failed": ("could not be paid", "Sorry: your payment was not accepted, so we could not place your order."),
    "order.cancelled": ("cancelled", "Your order has been cancelled. Any payment taken will be refunded."),
    "order.refunded": ("refunded", "We have refunded your order. Your bank may take a few days to show it."),
}

# Digits after the decimal point per ISO 4217 where it is not 2 (a short list; extend it for
# the currencies you sell in).
EXPONENTS = {"JPY": 0, "KRW": 0, "ISK": 0, "CLP": 0, "VND": 0, "BHD": 3, "KWD": 3, "JOD": 3, "OMR": 3, "TND": 3}


def display(money: Money) -> str:
    """1250 EUR -> "12.50 EUR": integer arithmetic on minor units, so nothing is ever rounded."""
    exponent = EXPONENTS.get(money.currency, 2)
    sign = "-" if money.amount_minor < 0 else ""
    units, fraction = divmod(abs(money.amount_minor), 10 ** exponent)
    if exponent == 0:
        return f"{sign}{units} {money.currency}"
    return f"{sign}{units}.{fraction:0{exponent}d} {money.currency}"


def body(event: Event, intro: str, shop: str) -> str:
    order = event.order
    lines = [f"Hello {order.customer.name or 'there'},", "", intro, "",
             f"Order:  {order.id}", f"Status: {order.status}"]
    for item in order.items:
        lines.append(f"  {item.quantity} x {item.name or item.sku} ({item.sku}): {display(item.line_total)}")
    lines += [f"Total:  {display(order.total)}", "", "-- ", shop, ""]
    return "\n".join(lines)


class Formatter(exports.Formatter):
    def format(self, event: Event) -> List[Message]:
        wording = WORDING.get(event.event_type)
        if wording is None:
            return []  # not an event the customer is told about
        recipient = event.order.customer.email
        if not recipient:
            log.log(log.Level.DEBUG, "no e-mail address; nothing to send", [("event-id", event.event_id)])
            return []
        headline, intro = wording
        shop = config.get("shop-name") or "OMS Demo Shop"
        order = event.order
        return [Message(
            channel=Channel.EMAIL,
            recipient=recipient,
            subject=f"{shop}: order {order.id} {headline} ({display(order.total)})",
            body=body(event, intro, shop),
            content_type="text/plain; charset=utf-8",
        )]
