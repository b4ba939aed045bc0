// js-notify: a notification formatter written in JavaScript: plain-text e-mails to the
// customer. It formats exactly like ../python-notify.
//
// One e-mail per customer-facing order event (table `WORDING`); every other event type
// (`order.created`, the `*_requested` steps, an operator's `order.compensation_failed`, types
// added later) gets no message, which is an answer, not an error. A customer without an
// e-mail address gets no message either: nothing to send, and retrying would not change that.
//
// A formatter is a pure function of the event and the configuration: it reads no clock and no
// KV and keeps the event's order, so a redelivered event gives byte-for-byte the same
// messages. The host sends them; the formatter sends nothing itself. Configuration
// (optional): `shop-name`, the subject prefix and signature.
//
// componentize-js maps the WIT types as js-pay's header says: camelCase fields
// (`event.order.customer.email`, `lineTotal`, `contentType`), `option<T>` is the value or
// undefined, an enum case is its WIT name as a string ('email'). Numbers: `u32` (quantity,
// schema version) is a Number; `s64` (amounts) and `u64` (timestamps) are BigInts.

import { log } from 'oms:plugins/log@0.1.0';
import { get as configGet } from 'oms:plugins/config@0.1.0';

// event type -> [what happened, for the subject; the first sentence of the body].
const WORDING = {
  'order.confirmed': ['confirmed', 'Thank you: your order is confirmed and paid, and we are preparing it.'],
  'order.fulfilled': ['shipped', 'Good news: your order is on its way.'],
  'order.rejected': ['could not be placed', 'Sorry: an item is out of stock, so we could not place your order. Nothing was charged.'],
  'order.payment_failed': ['could not be paid', 'Sorry: your payment was not accepted, so we could not place your order.'],
  'order.cancelled': ['cancelled', 'Your order has been cancelled. Any payment taken will be refunded.'],
  'order.refunded': ['refunded', 'We have refunded your order. Your bank may take a few days to show it.'],
};

// Digits after the decimal point per ISO 4217 where it is not 2 (a short list; extend it for
// the currencies you sell in).
const EXPONENTS = { JPY: 0, KRW: 0, ISK: 0, CLP: 0, VND: 0, BHD: 3, KWD: 3, JOD: 3, OMR: 3, TND: 3 };

// 1250n EUR -> "12.50 EUR": BigInt arithmetic on minor units, so nothing is ever rounded.
// componentize-js 0.23.0 hands an s64 over as its unsigned bit pattern (-5 arrives as
// 18446744073709551611n): `BigInt.asIntN` reads it back as signed.
function display({ amountMinor, currency }) {
  const amount = BigInt.asIntN(64, BigInt(amountMinor));
  const exponent = EXPONENTS[currency] ?? 2;
  const sign = amount < 0n ? '-' : '';
  const minor = amount < 0n ? -amount : amount;
  if (exponent === 0) return `${sign}${minor} ${currency}`;
  const scale = 10n ** BigInt(exponent);
  return `${sign}${minor / scale}.${(minor % scale).toString().padStart(exponent, '0')} ${currency}`;
}

function body(order, intro, shop) {
  const lines = [`Hello ${order.customer.name || 'there'},`, '', intro, '', `Order:  ${order.id}`, `Status: ${order.status}`];
  for (const item of order.items) {
    lines.push(`  ${item.quantity} x ${item.name || item.sku} (${item.sku}): ${display(item.lineTotal)}`);
  }
  lines.push(`Total:  ${display(order.total)}`, '', '-- ', shop, '');
  return lines.join('\n');
}

// The exported `oms:plugins/formatter` interface.
export const formatter = {
  format(event) {
    // `Object.hasOwn`: an event type such as `constructor` must not find Object.prototype's.
    if (!Object.hasOwn(WORDING, event.eventType)) return []; // not an event the customer is told about
    const recipient = event.order.customer.email;
    if (!recipient) {
      log('debug', 'no e-mail address; nothing to send', [['event-id', event.eventId]]);
      return [];
    }
    const [headline, intro] = WORDING[event.eventType];
    const shop = configGet('shop-name') || 'OMS Demo Shop';
    const { order } = event;
    return [
      {
        channel: 'email',
        recipient,
        subject: `${shop}: order ${order.id} ${headline} (${display(order.total)})`,
        body: body(order, intro, shop),
        contentType: 'text/plain; charset=utf-8',
      },
    ];
  },
};
