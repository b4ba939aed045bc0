"""python-stock: an inventory adapter written in Python whose stock lives in the host's KV.

It works like the bundled `plugins/local-stock`, in fewer lines. Keys (in this plugin's KV
namespace):

    stock/<sku>               units available, an ASCII-decimal KV counter. Seeded the first
                              time the SKU is used from `[config] catalogue` ("SKU=units, ...");
                              after that KV holds the truth. A SKU not in the catalogue is
                              unknown: `invalid`.
    reservation/<id>          the reserved lines and the state: held, released or committed.
    reserve/<idempotency-key> the outcome of a `reserve` (the reservation id, or the SKUs that
                              were short), so that a retry with the same key replays it.

`reserve` is one KV compare-and-swap: a bounded add of -quantity with `min=0` per line (so
concurrent reservations never oversell: a batch that would take a counter below zero writes
nothing), plus the reservation and its outcome, which must not exist yet (so the same key can
act only once). `release` and `commit` are idempotent by state: held -> released or
committed, and reaching the same final state again changes nothing.

componentize-py maps the WIT types as python-pay's docstring says: records are dataclasses
(`Line(sku, quantity)`), `u32`/`s64` are `int`, `list<u8>` is `bytes`, `option<T>` is
`T | None`, a variant case is one class (`InventoryError_OutOfStock([...])`). A `result`
error is returned by raising `Err(value)`; an imported function raises `Err(value)` too.
"""

import json
from typing import Callable, List, Optional

from componentize_py_types import Err
from wit_world import exports
from wit_world.exports.inventory import (
    InventoryError_Invalid,
    InventoryError_OutOfStock,
    InventoryError_Transient,
)
from wit_world.imports import config, kv, log
from wit_world.imports.types import Line

# release and commit re-read and retry when a concurrent call changed the same reservation
# between their read and their swap; after this many tries the host retries the call later.
MAX_SWAP_ATTEMPTS = 8


def invalid(message: str) -> Err:
    return Err(InventoryError_Invalid(message))


def kv_call(f: Callable, *args):
    """Calls a KV function, turning its error into the inventory error the host expects."""
    try:
        return f(*args)
    except Err as e:
        error = e.value
        if isinstance(error, kv.KvError_Unavailable):
            raise Err(InventoryError_Transient(f"kv unavailable: {error.value}"))
        # A missing grant or a refused key/value (say, a SKU too long for a key): retrying
        # cannot help, so it is permanent.
        if isinstance(error, kv.KvError_Denied):
            raise invalid("kv denied: the manifest must grant `kv = true`")
        raise invalid(f"kv refused: {error.value}")


def load(key: str) -> tuple[Optional[bytes], Optional[dict]]:
    """The raw bytes at `key` (the `expected` of a later swap) and their decoded JSON."""
    raw = kv_call(kv.get, key)
    if raw is None:
        return None, None
    try:
        return raw, json.loads(raw)
    except ValueError:
        raise invalid(f"corrupt record {key}")


def encode(value: dict) -> bytes:
    return json.dumps(value, sort_keys=True).encode()


def stock_key(sku: str) -> str:
    return f"stock/{sku}"


def initial_units(sku: str) -> Optional[int]:
    """The units `[config] catalogue` gives `sku`, or None when it does not list it.

    A malformed entry is `invalid` rather than skipped: skipping it would make its SKU look
    unknown, which is harder to diagnose.
    """
    for entry in (config.get("catalogue") or "").split(","):
        if not entry.strip():
            continue
        name, sep, units = entry.partition("=")
        units = units.strip()
        if not sep or not (units.isascii() and units.isdigit()):
            raise invalid(f"catalogue entry {entry.strip()!r} is not SKU=units")
        if name.strip() == sku:
            return int(units)
    return None


def ensure_seeded(sku: str) -> None:
    """Makes sure `stock/<sku>` exists, seeding it from the catalogue.

    Seeding is a swap from "absent": when two instances seed the same SKU at once exactly one
    write lands, and neither resets stock that reservations already took.
    """
    key = stock_key(sku)
    if kv_call(kv.get, key) is not None:
        return
    units = initial_units(sku)
    if units is None:
        raise invalid(f"unknown sku {sku}")
    # Applied, or conflict (another instance seeded it first): either way the counter exists.
    kv_call(kv.compare_and_swap, [kv.Swap(key=key, expected=None, new=str(units).encode())], [])


def validate(lines: List[Line], idempotency_key: str) -> None:
    if not idempotency_key:
        raise invalid("empty idempotency key")
    if not lines:
        raise invalid("no lines to reserve")
    seen = set()
    for i, line in enumerate(lines):
        if not line.sku or line.quantity <= 0:
            raise invalid(f"line {i} needs a sku and a positive quantity")
        # The same counter twice in one batch is refused by KV, and means a malformed order.
        if line.sku in seen:
            raise invalid(f"sku {line.sku} appears twice")
        seen.add(line.sku)


def replay(outcome: dict, fingerprint: str) -> str:
    """Answers a reserve from its recorded outcome: the reservation id or the shortage."""
    if outcome["fingerprint"] != fingerprint:
        raise invalid("idempotency key already used for a different reservation")
    if outcome["short"] is not None:
        raise Err(InventoryError_OutOfStock(outcome["short"]))
    return outcome["reservation_id"]


def replay_winner(idempotency_key: str, fingerprint: str) -> str:
    """Replays what a concurrent reserve with the same key recorded; transient if nothing (yet)."""
    _, winner = load(f"reserve/{idempotency_key}")
    if winner is None:
        raise Err(InventoryError_Transient("concurrent reserve with the same key; retry"))
    return replay(winner, fingerprint)


def settle(reservation_id: str, idempotency_key: str, target: str) -> None:
    """Moves a held reservation to `target` ("released" or "committed").

    Releasing gives the units back in the same batch that marks the reservation released, so
    stock is returned exactly once; committing keeps them taken. Reaching `target` again is a
    no-op (that is what makes a retry, with any key, harmless); the other final state is
    refused.
    """
    if not idempotency_key:
        raise invalid("empty idempotency key")
    key = f"reservation/{reservation_id}"
    for _ in range(MAX_SWAP_ATTEMPTS):
        raw, reservation = load(key)
        if reservation is None:
            raise invalid(f"unknown reservation {reservation_id}")
        state = reservation["state"]
        if state == target:
            return
        if state != "held":
            raise invalid(f"reservation {reservation_id} is already {state}")
        returns = []
        if target == "released":
            returns = [kv.BoundedAdd(key=stock_key(sku), delta=quantity, min=None, max=None)
                       for sku, quantity in reservation["lines"]]
        reservation["state"] = target
        # `expected=raw`: if a concurrent call settled it first, nothing is written; re-read.
        swap = kv.Swap(key=key, expected=raw, new=encode(reservation))
        outcome = kv_call(kv.compare_and_swap, [swap], returns)
        if isinstance(outcome, kv.BatchOutcome_Applied):
            log.log(log.Level.INFO, f"python-stock {target} a reservation",
                    [("reservation-id", reservation_id)])
            return
        if isinstance(outcome, kv.BatchOutcome_OutOfBounds):
            raise Err(InventoryError_Transient(f"kv bounded unbounded counters: {outcome.value}"))
    # Conflicts every time: others keep changing it. The host retries the call with its key.
    raise Err(InventoryError_Transient(f"reservation {reservation_id} keeps changing; retry"))


class Inventory(exports.Inventory):
    def reserve(self, order_id: str, lines: List[Line], idempotency_key: str) -> str:
        validate(lines, idempotency_key)
        # JSON, so that no SKU or order id can make two different requests look alike.
        fingerprint = json.dumps([order_id, [[line.sku, line.quantity] for line in lines]])
        _, done = load(f"reserve/{idempotency_key}")
        if done is not None:
            return replay(done, fingerprint)
        for line in lines:
            ensure_seeded(line.sku)

        # The id derives from the key, unique per reservation: no shared counter to lock.
        reservation_id = f"py-rsv-{idempotency_key}"
        reservation = {
            "order_id": order_id,
            "lines": [[line.sku, line.quantity] for line in lines],
            "state": "held",
        }
        outcome = {"fingerprint": fingerprint, "reservation_id": reservation_id, "short": None}
        swaps = [
            kv.Swap(key=f"reserve/{idempotency_key}", expected=None, new=encode(outcome)),
            kv.Swap(key=f"reservation/{reservation_id}", expected=None, new=encode(reservation)),
        ]
        takes = [kv.BoundedAdd(key=stock_key(line.sku), delta=-line.quantity, min=0, max=None)
                 for line in lines]
        result = kv_call(kv.compare_and_swap, swaps, takes)

        if isinstance(result, kv.BatchOutcome_Applied):
            log.log(log.Level.INFO, "python-stock reserved",
                    [("reservation-id", reservation_id), ("order-id", order_id)])
            return reservation_id
        if isinstance(result, kv.BatchOutcome_OutOfBounds):
            # Every short SKU, in the order's line order. Recorded, so that a retry gets the
            # same answer even if stock came back in between; if a concurrent same-key call
            # recorded first, its answer stands.
            short_keys = set(result.value)
            short = [line.sku for line in lines if stock_key(line.sku) in short_keys]
            shortage = {"fingerprint": fingerprint, "reservation_id": None, "short": short}
            swap = kv.Swap(key=f"reserve/{idempotency_key}", expected=None, new=encode(shortage))
            if isinstance(kv_call(kv.compare_and_swap, [swap], []), kv.BatchOutcome_Applied):
                return replay(shortage, fingerprint)
        # A conflict: only a concurrent reserve with the same key writes these keys; its
        # outcome is ours.
        return replay_winner(idempotency_key, fingerprint)

    def release(self, reservation_id: str, idempotency_key: str) -> None:
        settle(reservation_id, idempotency_key, "released")

    def commit(self, reservation_id: str, idempotency_key: str) -> None:
        settle(reservation_id, idempotency_key, "committed")
