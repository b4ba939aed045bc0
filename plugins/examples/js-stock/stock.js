// js-stock: an inventory adapter written in JavaScript whose stock lives in the host's KV.
//
// It works like the bundled `plugins/local-stock` (and like ../python-stock), in fewer
// lines. Keys (in this plugin's KV namespace):
//
//   stock/<sku>                units available, an ASCII-decimal KV counter. Seeded the first
//                              time the SKU is used from `[config] catalogue` ("SKU=units,
//                              ..."); after that KV holds the truth. A SKU not in the
//                              catalogue is unknown: `invalid`.
//   reservation/<id>           the reserved lines and the state: held, released or committed.
//   reserve/<idempotency-key>  the outcome of a `reserve` (the reservation id, or the SKUs
//                              that were short), so that a retry with the same key replays it.
//
// `reserve` is one KV compare-and-swap: a bounded add of -quantity with `min: 0n` per line
// (so concurrent reservations never oversell: a batch that would take a counter below zero
// writes nothing), plus the reservation and its outcome, which must not exist yet (so the
// same key can act only once). `release` and `commit` are idempotent by state: held ->
// released or committed, and reaching the same final state again changes nothing.
//
// componentize-js maps the WIT types as js-pay's header says: camelCase names
// (`idempotency-key` -> `idempotencyKey`, `compare-and-swap` -> `compareAndSwap`), a variant
// is `{ tag, val }`, `option<T>` is the value or undefined, `list<u8>` is a Uint8Array.
// Numbers: `u32` (a line's quantity) is a Number, `s64` (a counter's delta and bounds) is a
// BigInt, both ways.

import { log } from 'oms:plugins/log@0.1.0';
import { get as configGet } from 'oms:plugins/config@0.1.0';
import { get, compareAndSwap } from 'oms:plugins/kv@0.1.0';

// release and commit re-read and retry when a concurrent call changed the same reservation
// between their read and their swap; after this many tries the host retries the call later.
const MAX_SWAP_ATTEMPTS = 8;

// Thrown to answer err(...): componentize-js sends a thrown value's `payload` as the error (an
// Error without `payload` traps the call).
class InventoryError extends Error {
  constructor(tag, val) {
    super(typeof val === 'string' ? val : `${tag}: ${val.join(', ')}`);
    this.payload = { tag, val };
  }
}
const invalid = (message) => new InventoryError('invalid', message);
const transient = (message) => new InventoryError('transient', message);

// Calls a KV function, turning its error into the inventory error the host expects.
function kv(f, ...args) {
  try {
    return f(...args);
  } catch (e) {
    const error = e.payload;
    if (error === undefined) throw e; // not a KV error: a bug, let it trap
    if (error.tag === 'unavailable') throw transient(`kv unavailable: ${error.val}`);
    // A missing grant or a refused key/value (say, a SKU too long for a key): retrying
    // cannot help, so it is permanent.
    if (error.tag === 'denied') throw invalid('kv denied: the manifest must grant `kv = true`');
    throw invalid(`kv refused: ${error.val}`);
  }
}

const encode = (value) => new TextEncoder().encode(JSON.stringify(value));

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

const stockKey = (sku) => `stock/${sku}`;

// The units `[config] catalogue` gives `sku`, or undefined when it does not list it. A
// malformed entry is `invalid` rather than skipped: skipping it would make its SKU look
// unknown, which is harder to diagnose.
function initialUnits(sku) {
  for (const entry of (configGet('catalogue') ?? '').split(',')) {
    if (!entry.trim()) continue;
    const at = entry.indexOf('=');
    const units = at < 0 ? '' : entry.slice(at + 1).trim();
    if (!/^[0-9]+$/.test(units)) throw invalid(`catalogue entry "${entry.trim()}" is not SKU=units`);
    if (entry.slice(0, at).trim() === sku) return units;
  }
  return undefined;
}

// Makes sure `stock/<sku>` exists, seeding it from the catalogue. Seeding is a swap from
// "absent": when two instances seed the same SKU at once exactly one write lands, and neither
// resets stock that reservations already took.
function ensureSeeded(sku) {
  const key = stockKey(sku);
  if (kv(get, key) !== undefined) return;
  const units = initialUnits(sku);
  if (units === undefined) throw invalid(`unknown sku ${sku}`);
  // Applied, or conflict (another instance seeded it first): either way the counter exists.
  kv(compareAndSwap, [{ key, expected: undefined, new: new TextEncoder().encode(units) }], []);
}

function validate(lines, idempotencyKey) {
  if (!idempotencyKey) throw invalid('empty idempotency key');
  if (lines.length === 0) throw invalid('no lines to reserve');
  const seen = new Set();
  lines.forEach(({ sku, quantity }, i) => {
    if (!sku || !(quantity > 0)) throw invalid(`line ${i} needs a sku and a positive quantity`);
    // The same counter twice in one batch is refused by KV, and means a malformed order.
    if (seen.has(sku)) throw invalid(`sku ${sku} appears twice`);
    seen.add(sku);
  });
}

// Answers a reserve from its recorded outcome: the reservation id or the shortage.
function replay(outcome, fingerprint) {
  if (outcome.fingerprint !== fingerprint) {
    throw invalid('idempotency key already used for a different reservation');
  }
  if (outcome.short) throw new InventoryError('out-of-stock', outcome.short);
  return outcome.reservationId;
}

// Replays what a concurrent reserve with the same key recorded; transient if it recorded
// nothing (yet).
function replayWinner(idempotencyKey, fingerprint) {
  const winner = load(`reserve/${idempotencyKey}`).value;
  if (!winner) throw transient('concurrent reserve with the same key; retry');
  return replay(winner, fingerprint);
}

// Moves a held reservation to `target` ('released' or 'committed'). Releasing gives the
// units back in the same batch that marks the reservation released, so stock is returned
// exactly once; committing keeps them taken. Reaching `target` again is a no-op (that is what
// makes a retry, with any key, harmless); the other final state is refused.
function settle(reservationId, idempotencyKey, target) {
  if (!idempotencyKey) throw invalid('empty idempotency key');
  const key = `reservation/${reservationId}`;
  for (let attempt = 0; attempt < MAX_SWAP_ATTEMPTS; attempt++) {
    const { raw, value: reservation } = load(key);
    if (!reservation) throw invalid(`unknown reservation ${reservationId}`);
    if (reservation.state === target) return;
    if (reservation.state !== 'held') {
      throw invalid(`reservation ${reservationId} is already ${reservation.state}`);
    }
    const returns =
      target === 'released'
        ? reservation.lines.map(([sku, quantity]) => ({ key: stockKey(sku), delta: BigInt(quantity) }))
        : [];
    // `expected: raw`: if a concurrent call settled it first, nothing is written; re-read.
    const swap = { key, expected: raw, new: encode({ ...reservation, state: target }) };
    const outcome = kv(compareAndSwap, [swap], returns);
    if (outcome.tag === 'applied') {
      log('info', `js-stock ${target} a reservation`, [['reservation-id', reservationId]]);
      return;
    }
    if (outcome.tag === 'out-of-bounds') {
      throw transient(`kv bounded unbounded counters: ${outcome.val.join(', ')}`);
    }
  }
  // Conflicts every time: others keep changing it. The host retries the call with its key.
  throw transient(`reservation ${reservationId} keeps changing; retry`);
}

// The exported `oms:plugins/inventory` interface.
export const inventory = {
  reserve(orderId, lines, idempotencyKey) {
    validate(lines, idempotencyKey);
    // JSON, so that no SKU or order id can make two different requests look alike.
    const pairs = lines.map(({ sku, quantity }) => [sku, quantity]);
    const fingerprint = JSON.stringify([orderId, pairs]);
    const done = load(`reserve/${idempotencyKey}`).value;
    if (done) return replay(done, fingerprint);
    for (const { sku } of lines) ensureSeeded(sku);

    // The id derives from the key, unique per reservation: no shared counter to lock.
    const reservationId = `js-rsv-${idempotencyKey}`;
    const outcome = { fingerprint, reservationId, short: null };
    const swaps = [
      { key: `reserve/${idempotencyKey}`, expected: undefined, new: encode(outcome) },
      {
        key: `reservation/${reservationId}`,
        expected: undefined,
        new: encode({ orderId, lines: pairs, state: 'held' }),
      },
    ];
    // s64 fields take BigInts (a Number throws); `max` left out is none.
    const takes = lines.map(({ sku, quantity }) => ({
      key: stockKey(sku),
      delta: -BigInt(quantity),
      min: 0n,
    }));
    const result = kv(compareAndSwap, swaps, takes);

    if (result.tag === 'applied') {
      log('info', 'js-stock reserved', [
        ['reservation-id', reservationId],
        ['order-id', orderId],
      ]);
      return reservationId;
    }
    if (result.tag === 'out-of-bounds') {
      // Every short SKU, in the order's line order. Recorded, so that a retry gets the same
      // answer even if stock came back in between; if a concurrent same-key call recorded
      // first, its answer stands.
      const short = lines.map(({ sku }) => sku).filter((sku) => result.val.includes(stockKey(sku)));
      const shortage = { fingerprint, reservationId: null, short };
      const swap = { key: `reserve/${idempotencyKey}`, expected: undefined, new: encode(shortage) };
      if (kv(compareAndSwap, [swap], []).tag === 'applied') return replay(shortage, fingerprint);
    }
    // A conflict: only a concurrent reserve with the same key writes these keys; its outcome
    // is ours.
    return replayWinner(idempotencyKey, fingerprint);
  },

  release(reservationId, idempotencyKey) {
    settle(reservationId, idempotencyKey, 'released');
  },

  commit(reservationId, idempotencyKey) {
    settle(reservationId, idempotencyKey, 'committed');
  },
};
