// js-pay: a small deterministic payment provider written in JavaScript.
//
// The payment token picks the outcome of `authorize`:
//
//   tok_decline        declined("insufficient funds"), recorded (get-payment reports it)
//   any other tok_...  authorized
//   anything else      invalid
//
// State lives in the host's KV (the manifest grants `kv`): each payment as JSON under
// `payment/<id>`, and the outcome of each mutating call under `idem/<idempotency-key>`. Both
// are written in one compare-and-swap, so a retry with the same key replays the first outcome
// and never moves money twice.
//
// componentize-js maps the WIT types as follows: record fields and functions are camelCase
// (`amount-minor` -> `amountMinor`, `get-payment` -> `getPayment`), an enum case is its WIT
// name as a string ('partially-captured'), a variant is `{ tag, val }`, `option<T>` is the
// value or undefined, `s64` is a BigInt, `list<u8>` is a Uint8Array. An exported function
// returns a `result`'s error by throwing it; an imported function throws an Error whose
// `payload` is its error variant.

import { log } from 'oms:plugins/log@0.1.0';
import { get, compareAndSwap } from 'oms:plugins/kv@0.1.0';

// Thrown to answer err(...): componentize-js sends a thrown value's `payload` as the error (a
// thrown plain `{ tag, val }` works too; an Error without `payload` traps the call).
class PaymentError extends Error {
  constructor(tag, message) {
    super(message);
    this.payload = { tag, val: message };
  }
}
const invalid = (message) => new PaymentError('invalid', message);

// Calls a KV function, turning its error into the payment error the host expects.
function kv(f, ...args) {
  try {
    return f(...args);
  } catch (e) {
    const error = e.payload;
    if (error === undefined) throw e; // not a KV error: a bug, let it trap
    if (error.tag === 'unavailable') throw new PaymentError('transient', `kv unavailable: ${error.val}`);
    // A missing grant or a refused key/value: retrying cannot help.
    if (error.tag === 'denied') throw invalid('kv denied: the manifest must grant `kv = true`');
    throw invalid(`kv refused: ${error.val}`);
  }
}

// Amounts are BigInts, which JSON.stringify refuses: they are stored as decimal strings.
const encode = (value) =>
  new TextEncoder().encode(JSON.stringify(value, (_, v) => (typeof v === 'bigint' ? v.toString() : v)));

// The raw bytes at `key` (the `expected` of a later swap) and their decoded JSON.
function load(key) {
  const raw = kv(get, key);
  if (raw === undefined) return { raw, value: undefined };
  try {
    return { raw, value: JSON.parse(new TextDecoder().decode(raw)) };
  } catch {
    throw invalid(`corrupt record ${key}`);
  }
}

// componentize-js 0.23.0 passes an s64 argument as its unsigned bit pattern (-5 arrives as
// 18446744073709551611n): reinterpret every incoming amount before comparing it.
const signed = (money) => money && { ...money, amountMinor: BigInt.asIntN(64, money.amountMinor) };

function checkMoney({ amountMinor, currency }) {
  if (!/^[A-Z]{3}$/.test(currency)) throw invalid(`currency "${currency}" is not an ISO 4217 code`);
  if (amountMinor <= 0n) throw invalid(`amount ${amountMinor} must be positive`);
}

function checkKey(idempotencyKey) {
  if (!idempotencyKey) throw invalid('empty idempotency key');
}

// A stored payment (amounts as strings) as the WIT `payment` record (amounts as BigInts).
function view(p) {
  const money = (amount) => ({ amountMinor: BigInt(amount), currency: p.currency });
  return {
    id: p.id,
    orderId: p.orderId,
    status: p.status,
    authorized: money(p.authorized),
    captured: money(p.captured),
    refunded: money(p.refunded),
  };
}

// Answers a call from its recorded outcome: the payment, or the recorded refusal.
function replay(op, fingerprint) {
  if (op.fingerprint !== fingerprint) throw invalid('idempotency key already used for a different call');
  if (op.error) throw new PaymentError(op.error.tag, op.error.val);
  return view(op.payment);
}

// Stores the call's outcome, and the payment's new state if given, in one atomic batch. The
// payment's swap expects the bytes it was read from (undefined: it must not exist yet), so if
// a concurrent call changed it, or recorded this key first, nothing is written.
function record(idempotencyKey, op, paymentSwap) {
  const swaps = [{ key: `idem/${idempotencyKey}`, expected: undefined, new: encode(op) }];
  if (paymentSwap) swaps.push(paymentSwap);
  const outcome = kv(compareAndSwap, swaps, []);
  if (outcome.tag === 'applied') {
    log('info', 'js-pay recorded an outcome', [
      ['call', op.fingerprint],
      ['error', op.error ? op.error.tag : 'none'],
    ]);
    return replay(op, op.fingerprint);
  }
  // Lost a race: a duplicate of this call may have recorded its outcome meanwhile.
  const winner = load(`idem/${idempotencyKey}`).value;
  if (winner) return replay(winner, op.fingerprint);
  throw new PaymentError('transient', 'payment changed concurrently; retry');
}

// Applies `change` to payment `id` once per idempotency key. `change` throws `invalid` to
// refuse; the refusal is recorded like a success, so a retry gets the same answer.
function transition(id, idempotencyKey, fingerprint, change) {
  checkKey(idempotencyKey);
  const done = load(`idem/${idempotencyKey}`).value;
  if (done) return replay(done, fingerprint);
  const { raw, value: current } = load(`payment/${id}`);
  if (!current) throw invalid(`unknown payment ${id}`);
  const op = { fingerprint, paymentId: id, payment: null, error: null };
  let next = raw; // a refusal rewrites the payment unchanged: a precondition on what it saw
  try {
    // BigInt arithmetic inside `change`; stored back as strings by `encode`.
    const p = { ...current, authorized: BigInt(current.authorized), captured: BigInt(current.captured), refunded: BigInt(current.refunded) };
    op.payment = change(p);
    next = encode(op.payment);
  } catch (e) {
    if (!(e instanceof PaymentError)) throw e;
    op.error = e.payload;
  }
  return record(idempotencyKey, op, { key: `payment/${id}`, expected: raw, new: next });
}

// The amount a capture or refund asks for (undefined = all that remains), checked.
function requested(amount, currency, remaining, what) {
  if (amount === undefined || amount === null) {
    if (remaining <= 0n) throw invalid(`nothing left to ${what}`);
    return remaining;
  }
  checkMoney(amount);
  if (amount.currency !== currency) throw invalid(`${what} in ${amount.currency} on a ${currency} payment`);
  if (amount.amountMinor > remaining) {
    throw invalid(`${what} of ${amount.amountMinor} exceeds the ${remaining} that remains`);
  }
  return amount.amountMinor;
}

const moneyKey = (amount) => (amount ? `${amount.amountMinor} ${amount.currency}` : 'all');

// The exported `oms:plugins/payment` interface.
export const payment = {
  authorize({ orderId, amount, paymentToken, idempotencyKey }) {
    amount = signed(amount);
    checkKey(idempotencyKey);
    checkMoney(amount);
    const fingerprint = `authorize|${orderId}|${amount.amountMinor}|${amount.currency}|${paymentToken}`;
    const done = load(`idem/${idempotencyKey}`).value;
    if (done) return replay(done, fingerprint);

    const op = { fingerprint, paymentId: null, payment: null, error: null };
    if (!paymentToken.startsWith('tok_')) {
      // Recorded too: the same key must keep getting the same answer.
      op.error = { tag: 'invalid', val: 'malformed payment token' };
      return record(idempotencyKey, op);
    }
    const declined = paymentToken === 'tok_decline';
    // The id derives from the key, unique per authorization: no shared counter to lock.
    const p = {
      id: `js_${idempotencyKey}`,
      orderId,
      status: declined ? 'declined' : 'authorized',
      currency: amount.currency,
      authorized: declined ? 0n : amount.amountMinor,
      captured: 0n,
      refunded: 0n,
    };
    op.paymentId = p.id;
    if (declined) op.error = { tag: 'declined', val: 'insufficient funds' };
    else op.payment = p;
    return record(idempotencyKey, op, { key: `payment/${p.id}`, expected: undefined, new: encode(p) });
  },

  capture(id, amount, idempotencyKey) {
    amount = signed(amount);
    return transition(id, idempotencyKey, `capture|${id}|${moneyKey(amount)}`, (p) => {
      if (p.status !== 'authorized' && p.status !== 'partially-captured') {
        throw invalid(`cannot capture a ${p.status} payment`);
      }
      p.captured += requested(amount, p.currency, p.authorized - p.captured, 'capture');
      p.status = p.captured === p.authorized ? 'captured' : 'partially-captured';
      return p;
    });
  },

  void(id, idempotencyKey) {
    return transition(id, idempotencyKey, `void|${id}`, (p) => {
      if (p.status !== 'authorized' && p.status !== 'voided') throw invalid(`cannot void a ${p.status} payment`);
      p.status = 'voided';
      return p;
    });
  },

  refund(id, amount, idempotencyKey) {
    amount = signed(amount);
    return transition(id, idempotencyKey, `refund|${id}|${moneyKey(amount)}`, (p) => {
      if (!['partially-captured', 'captured', 'partially-refunded'].includes(p.status)) {
        throw invalid(`cannot refund a ${p.status} payment`);
      }
      p.refunded += requested(amount, p.currency, p.captured - p.refunded, 'refund');
      p.status = p.refunded === p.captured ? 'refunded' : 'partially-refunded';
      return p;
    });
  },

  getPayment(lookup) {
    let id = lookup.val;
    if (lookup.tag === 'authorize-key') {
      // Undefined: never seen, or refused as invalid before any payment existed.
      id = load(`idem/${lookup.val}`).value?.paymentId;
      if (!id) return undefined;
    }
    const p = load(`payment/${id}`).value;
    return p ? view(p) : undefined;
  },
};
