"""python-pay: a small deterministic payment provider written in Python.

The payment token picks the outcome of `authorize`:

    tok_decline         declined("insufficient funds"), recorded (get-payment reports it)
    any other tok_...   authorized
    anything else       invalid

State lives in the host's KV (the manifest grants `kv`): each payment as JSON under
`payment/<id>`, and the outcome of each mutating call under `idem/<idempotency-key>`. Both are
written in one compare-and-swap, so a retry with the same key replays the first outcome and
never moves money twice.

componentize-py maps the WIT types as follows: records are dataclasses, enums are `Enum`s,
a variant case `declined(string)` is the class `PaymentError_Declined(value)`, `option<T>` is
`T | None`, `s64` is `int`, `list<u8>` is `bytes`. A `result` error is returned by raising
`Err(value)`; an imported function raises `Err(value)` for its own error.
"""

import json
from typing import Callable, Optional

from componentize_py_types import Err
from wit_world import exports
from wit_world.exports.payment import (
    AuthorizeRequest,
    Payment as PaymentView,
    PaymentError_Declined,
    PaymentError_Invalid,
    PaymentError_Transient,
    PaymentLookup,
    PaymentLookup_AuthorizeKey,
    PaymentStatus,
)
from wit_world.imports import kv, log
from wit_world.imports.types import Money


def invalid(message: str) -> Err:
    return Err(PaymentError_Invalid(message))


def kv_call(f: Callable, *args):
    """Calls a KV function, turning its error into the payment error the host expects."""
    try:
        return f(*args)
    except Err as e:
        error = e.value
        if isinstance(error, kv.KvError_Unavailable):
            raise Err(PaymentError_Transient(f"kv unavailable: {error.value}"))
        # A missing grant or a refused key/value: retrying cannot help.
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


def check_money(money: Money) -> None:
    currency = money.currency
    if not (len(currency) == 3 and currency.isascii() and currency.isupper()):
        raise invalid(f"currency {currency!r} is not an ISO 4217 code")
    if money.amount_minor <= 0:
        raise invalid(f"amount {money.amount_minor} must be positive")


def check_key(idempotency_key: str) -> None:
    if not idempotency_key:
        raise invalid("empty idempotency key")


def view(record: dict) -> PaymentView:
    def money(amount: int) -> Money:
        return Money(amount_minor=amount, currency=record["currency"])

    return PaymentView(
        id=record["id"],
        order_id=record["order_id"],
        status=PaymentStatus[record["status"].upper().replace("-", "_")],
        authorized=money(record["authorized"]),
        captured=money(record["captured"]),
        refunded=money(record["refunded"]),
    )


def replay(op: dict, fingerprint: str) -> PaymentView:
    """Answers a call from its recorded outcome: the payment, or the recorded refusal."""
    if op["fingerprint"] != fingerprint:
        raise invalid("idempotency key already used for a different call")
    if op["error"] is not None:
        kind, message = op["error"]
        raise Err(PaymentError_Declined(message) if kind == "declined" else PaymentError_Invalid(message))
    return view(op["payment"])


def record(idempotency_key: str, op: dict, payment: Optional[kv.Swap] = None) -> PaymentView:
    """Stores the call's outcome, and the payment's new state if given, in one atomic batch.

    The payment's swap expects the bytes it was read from (None: it must not exist yet), so
    if a concurrent call changed it, or recorded this key first, nothing is written.
    """
    swaps = [kv.Swap(key=f"idem/{idempotency_key}", expected=None, new=encode(op))]
    if payment is not None:
        swaps.append(payment)
    outcome = kv_call(kv.compare_and_swap, swaps, [])
    if isinstance(outcome, kv.BatchOutcome_Applied):
        log.log(log.Level.INFO, "python-pay recorded an outcome",
                [("call", op["fingerprint"]), ("error", op["error"][0] if op["error"] else "none")])
        return replay(op, op["fingerprint"])
    # Lost a race: a duplicate of this call may have recorded its outcome meanwhile.
    _, winner = load(f"idem/{idempotency_key}")
    if winner is not None:
        return replay(winner, op["fingerprint"])
    raise Err(PaymentError_Transient("payment changed concurrently; retry"))


def transition(payment_id: str, idempotency_key: str, fingerprint: str,
               change: Callable[[dict], dict]) -> PaymentView:
    """Applies `change` to payment `payment_id` once per idempotency key.

    `change` raises `Err(invalid)` to refuse; the refusal is recorded like a success, so a
    retry gets the same answer.
    """
    check_key(idempotency_key)
    _, done = load(f"idem/{idempotency_key}")
    if done is not None:
        return replay(done, fingerprint)
    raw, current = load(f"payment/{payment_id}")
    if current is None:
        raise invalid(f"unknown payment {payment_id}")
    op = {"fingerprint": fingerprint, "payment_id": payment_id, "payment": None, "error": None}
    new = raw  # a refusal rewrites the payment unchanged: a precondition on what it saw
    try:
        op["payment"] = change(dict(current))
        new = encode(op["payment"])
    except Err as refusal:
        op["error"] = ["invalid", refusal.value.value]
    return record(idempotency_key, op, kv.Swap(key=f"payment/{payment_id}", expected=raw, new=new))


def requested(amount: Optional[Money], currency: str, remaining: int, what: str) -> int:
    """The amount a capture or refund asks for (None = all that remains), checked."""
    if amount is None:
        if remaining <= 0:
            raise invalid(f"nothing left to {what}")
        return remaining
    check_money(amount)
    if amount.currency != currency:
        raise invalid(f"{what} in {amount.currency} on a {currency} payment")
    if amount.amount_minor > remaining:
        raise invalid(f"{what} of {amount.amount_minor} exceeds the {remaining} that remains")
    return amount.amount_minor


def money_key(amount: Optional[Money]) -> str:
    return "all" if amount is None else f"{amount.amount_minor} {amount.currency}"


class Payment(exports.Payment):
    def authorize(self, request: AuthorizeRequest) -> PaymentView:
        check_key(request.idempotency_key)
        check_money(request.amount)
        amount, token = request.amount, request.payment_token
        fingerprint = f"authorize|{request.order_id}|{amount.amount_minor}|{amount.currency}|{token}"
        _, done = load(f"idem/{request.idempotency_key}")
        if done is not None:
            return replay(done, fingerprint)

        op = {"fingerprint": fingerprint, "payment_id": None, "payment": None, "error": None}
        if not token.startswith("tok_"):
            # Recorded too: the same key must keep getting the same answer.
            op["error"] = ["invalid", "malformed payment token"]
            return record(request.idempotency_key, op)

        declined = token == "tok_decline"
        # The id derives from the key, unique per authorization: no shared counter to lock.
        payment = {
            "id": f"py_{request.idempotency_key}",
            "order_id": request.order_id,
            "status": "declined" if declined else "authorized",
            "currency": amount.currency,
            "authorized": 0 if declined else amount.amount_minor,
            "captured": 0,
            "refunded": 0,
        }
        op["payment_id"] = payment["id"]
        if declined:
            op["error"] = ["declined", "insufficient funds"]
        else:
            op["payment"] = payment
        swap = kv.Swap(key=f"payment/{payment['id']}", expected=None, new=encode(payment))
        return record(request.idempotency_key, op, swap)

    def capture(self, id: str, amount: Optional[Money], idempotency_key: str) -> PaymentView:
        def change(p: dict) -> dict:
            if p["status"] not in ("authorized", "partially-captured"):
                raise invalid(f"cannot capture a {p['status']} payment")
            p["captured"] += requested(amount, p["currency"], p["authorized"] - p["captured"], "capture")
            p["status"] = "captured" if p["captured"] == p["authorized"] else "partially-captured"
            return p

        return transition(id, idempotency_key, f"capture|{id}|{money_key(amount)}", change)

    def void(self, id: str, idempotency_key: str) -> PaymentView:
        def change(p: dict) -> dict:
            if p["status"] not in ("authorized", "voided"):
                raise invalid(f"cannot void a {p['status']} payment")
            p["status"] = "voided"
            return p

        return transition(id, idempotency_key, f"void|{id}", change)

    def refund(self, id: str, amount: Optional[Money], idempotency_key: str) -> PaymentView:
        def change(p: dict) -> dict:
            if p["status"] not in ("partially-captured", "captured", "partially-refunded"):
                raise invalid(f"cannot refund a {p['status']} payment")
            p["refunded"] += requested(amount, p["currency"], p["captured"] - p["refunded"], "refund")
            p["status"] = "refunded" if p["refunded"] == p["captured"] else "partially-refunded"
            return p

        return transition(id, idempotency_key, f"refund|{id}|{money_key(amount)}", change)

    def get_payment(self, lookup: PaymentLookup) -> Optional[PaymentView]:
        if isinstance(lookup, PaymentLookup_AuthorizeKey):
            _, op = load(f"idem/{lookup.value}")
            # None: never seen, or refused as invalid before any payment existed.
            if op is None or op["payment_id"] is None:
                return None
            payment_id = op["payment_id"]
        else:
            payment_id = lookup.value
        _, payment = load(f"payment/{payment_id}")
        return None if payment is None else view(payment)
