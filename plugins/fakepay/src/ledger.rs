//! The payment lifecycle: validation, the token script, and idempotent state transitions.

use crate::bindings::exports::oms::plugins::payment::{
    AuthorizeRequest, Money, Payment, PaymentError, PaymentLookup,
};
use crate::bindings::oms::plugins::kv::Swap;
use crate::bindings::oms::plugins::log::{self, Level};
use crate::bindings::oms::plugins::{clock, config};
use crate::record::{OpRecord, PaymentRecord, Refusal, Status};
use crate::store;

/// `tok_flaky` fails this many attempts per idempotency key before it succeeds.
const FLAKY_FAILURES: i64 = 2;
/// Long enough to outlast any sane per-call deadline, so `tok_slow` tests the deadline and not
/// this constant; `[config] slow-ms` shortens it for tests of slow-but-successful calls.
const DEFAULT_SLOW_MS: u64 = 60_000;
/// A concurrent update of the same payment makes a compare-and-swap fail; after this many
/// re-reads the caller gets `transient` and retries later instead of spinning here.
const MAX_SWAP_ATTEMPTS: usize = 8;

fn idem_key(idempotency_key: &str) -> String {
    format!("idem/{idempotency_key}")
}

fn payment_key(id: &str) -> String {
    format!("payment/{id}")
}

fn invalid(message: impl Into<String>) -> Refusal {
    Refusal::Invalid(message.into())
}

fn check_key(idempotency_key: &str) -> Result<(), PaymentError> {
    if idempotency_key.is_empty() {
        return Err(PaymentError::Invalid("empty idempotency key".into()));
    }
    Ok(())
}

fn check_money(money: &Money) -> Result<(), PaymentError> {
    let currency_ok =
        money.currency.len() == 3 && money.currency.bytes().all(|b| b.is_ascii_uppercase());
    if !currency_ok {
        return Err(PaymentError::Invalid(format!(
            "currency {:?} is not an ISO 4217 code",
            money.currency
        )));
    }
    if money.amount_minor <= 0 {
        return Err(PaymentError::Invalid(format!(
            "amount {} must be positive",
            money.amount_minor
        )));
    }
    Ok(())
}

pub fn authorize(request: AuthorizeRequest) -> Result<Payment, PaymentError> {
    check_key(&request.idempotency_key)?;
    check_money(&request.amount)?;
    let fingerprint = format!(
        "authorize|{}|{}|{}|{}",
        request.order_id,
        request.amount.amount_minor,
        request.amount.currency,
        request.payment_token
    );
    // A replay is found by the record's swap from absent (a conflict, answered with the
    // first outcome), which the host reads with the payment's key in one round trip. Only
    // the tokens that do something before recording look first, so that a replay neither
    // counts an attempt nor waits again.
    if matches!(request.payment_token.as_str(), "tok_flaky" | "tok_slow")
        && let Some(done) = store::get::<OpRecord>(&idem_key(&request.idempotency_key))?
    {
        return done.value.replay(&fingerprint);
    }
    let status = match request.payment_token.as_str() {
        "tok_ok" => Status::Authorized,
        "tok_decline" => Status::Declined,
        "tok_flaky" => {
            let attempt = store::bump(&format!("attempts/{}", request.idempotency_key))?;
            if attempt <= FLAKY_FAILURES {
                return Err(PaymentError::Transient(format!(
                    "tok_flaky: attempt {attempt} of {} fails",
                    FLAKY_FAILURES + 1
                )));
            }
            Status::Authorized
        }
        "tok_slow" => {
            spin(slow_ms());
            Status::Authorized
        }
        _ => {
            let op = OpRecord {
                fingerprint: fingerprint.clone(),
                payment_id: None,
                result: Err(invalid("unknown payment token")),
            };
            return record_authorization(&request.idempotency_key, op, None, &fingerprint);
        }
    };

    // The id comes from the idempotency key, which is unique per logical authorisation: no
    // shared sequence row that every authorisation of every order would have to lock.
    let id = format!("fp_{}", request.idempotency_key);
    let payment = PaymentRecord {
        id: id.clone(),
        order_id: request.order_id,
        status,
        currency: request.amount.currency,
        authorized: if status == Status::Authorized {
            request.amount.amount_minor
        } else {
            0
        },
        captured: 0,
        refunded: 0,
    };
    let result = match status {
        Status::Declined => Err(Refusal::Declined("card declined (tok_decline)".into())),
        _ => Ok(payment.clone()),
    };
    let op = OpRecord {
        fingerprint: fingerprint.clone(),
        payment_id: Some(id),
        result,
    };
    record_authorization(&request.idempotency_key, op, Some(payment), &fingerprint)
}

/// Stores a new authorization outcome (and its payment) unless a concurrent call with the
/// same key stored one first, in which case that one is the answer.
fn record_authorization(
    idempotency_key: &str,
    op: OpRecord,
    payment: Option<PaymentRecord>,
    fingerprint: &str,
) -> Result<Payment, PaymentError> {
    let mut swaps = vec![Swap {
        key: idem_key(idempotency_key),
        expected: None,
        new: Some(store::encode(&op)?),
    }];
    if let Some(payment) = &payment {
        swaps.push(Swap {
            key: payment_key(&payment.id),
            expected: None,
            new: Some(store::encode(payment)?),
        });
    }
    if store::swap_all(&swaps)? {
        log_outcome("authorize", &op);
        return op.replay(fingerprint);
    }
    match store::get::<OpRecord>(&idem_key(idempotency_key))? {
        Some(winner) => winner.value.replay(fingerprint),
        None => Err(PaymentError::Transient(
            "concurrent authorize with the same key; retry".into(),
        )),
    }
}

pub fn capture(
    id: &str,
    amount: Option<Money>,
    idempotency_key: &str,
) -> Result<Payment, PaymentError> {
    check_key(idempotency_key)?;
    if let Some(money) = &amount {
        check_money(money)?;
    }
    let fingerprint = format!("capture|{id}|{amount:?}");
    transition(id, idempotency_key, &fingerprint, |payment| {
        if !matches!(
            payment.status,
            Status::Authorized | Status::PartiallyCaptured
        ) {
            return Err(invalid(format!(
                "cannot capture a {:?} payment",
                payment.status
            )));
        }
        let remaining = payment.authorized - payment.captured;
        let amount = requested(amount.as_ref(), payment, remaining, "capture")?;
        let captured = payment.captured + amount;
        Ok(PaymentRecord {
            captured,
            status: if captured == payment.authorized {
                Status::Captured
            } else {
                Status::PartiallyCaptured
            },
            ..payment.clone()
        })
    })
}

pub fn void(id: &str, idempotency_key: &str) -> Result<Payment, PaymentError> {
    check_key(idempotency_key)?;
    transition(
        id,
        idempotency_key,
        &format!("void|{id}"),
        |payment| match payment.status {
            Status::Authorized => Ok(PaymentRecord {
                status: Status::Voided,
                ..payment.clone()
            }),
            Status::Voided => Ok(payment.clone()),
            other => Err(invalid(format!("cannot void a {other:?} payment"))),
        },
    )
}

pub fn refund(
    id: &str,
    amount: Option<Money>,
    idempotency_key: &str,
) -> Result<Payment, PaymentError> {
    check_key(idempotency_key)?;
    if let Some(money) = &amount {
        check_money(money)?;
    }
    let fingerprint = format!("refund|{id}|{amount:?}");
    transition(id, idempotency_key, &fingerprint, |payment| {
        let refundable = matches!(
            payment.status,
            Status::PartiallyCaptured | Status::Captured | Status::PartiallyRefunded
        );
        if !refundable {
            return Err(invalid(format!(
                "cannot refund a {:?} payment",
                payment.status
            )));
        }
        let remaining = payment.captured - payment.refunded;
        let amount = requested(amount.as_ref(), payment, remaining, "refund")?;
        let refunded = payment.refunded + amount;
        Ok(PaymentRecord {
            refunded,
            status: if refunded == payment.captured {
                Status::Refunded
            } else {
                Status::PartiallyRefunded
            },
            ..payment.clone()
        })
    })
}

/// The amount a capture or refund asks for (`None` = all that remains), checked against what
/// remains: never capture more than authorized, never refund more than captured.
fn requested(
    amount: Option<&Money>,
    payment: &PaymentRecord,
    remaining: i64,
    what: &str,
) -> Result<i64, Refusal> {
    let Some(money) = amount else {
        return if remaining > 0 {
            Ok(remaining)
        } else {
            Err(invalid(format!("nothing left to {what}")))
        };
    };
    if money.currency != payment.currency {
        return Err(invalid(format!(
            "{what} in {} on a {} payment",
            money.currency, payment.currency
        )));
    }
    if money.amount_minor > remaining {
        return Err(invalid(format!(
            "{what} of {} exceeds the {remaining} that remains",
            money.amount_minor
        )));
    }
    Ok(money.amount_minor)
}

/// Applies `change` to the current state of payment `id` and records the outcome under the
/// idempotency key, both in one compare-and-swap on the payment's exact bytes: a concurrent
/// change of the same payment makes the swap fail and `change` runs again on fresh state.
fn transition(
    id: &str,
    idempotency_key: &str,
    fingerprint: &str,
    change: impl Fn(&PaymentRecord) -> Result<PaymentRecord, Refusal>,
) -> Result<Payment, PaymentError> {
    for _ in 0..MAX_SWAP_ATTEMPTS {
        if let Some(done) = store::get::<OpRecord>(&idem_key(idempotency_key))? {
            return done.value.replay(fingerprint);
        }
        let Some(current) = store::get::<PaymentRecord>(&payment_key(id))? else {
            return Err(PaymentError::Invalid(format!("unknown payment {id}")));
        };
        let result = change(&current.value);
        let next = match &result {
            Ok(next) => store::encode(next)?,
            Err(_) => current.raw.clone(),
        };
        let op = OpRecord {
            fingerprint: fingerprint.to_owned(),
            payment_id: Some(id.to_owned()),
            result,
        };
        let swaps = [
            Swap {
                key: idem_key(idempotency_key),
                expected: None,
                new: Some(store::encode(&op)?),
            },
            Swap {
                key: payment_key(id),
                expected: Some(current.raw),
                new: Some(next),
            },
        ];
        if store::swap_all(&swaps)? {
            log_outcome(fingerprint, &op);
            return op.replay(fingerprint);
        }
    }
    Err(PaymentError::Transient(format!(
        "payment {id} is being updated concurrently; retry"
    )))
}

pub fn get_payment(lookup: PaymentLookup) -> Result<Option<Payment>, PaymentError> {
    let id = match lookup {
        PaymentLookup::PaymentId(id) => id,
        PaymentLookup::AuthorizeKey(key) => {
            let Some(op) = store::get::<OpRecord>(&idem_key(&key))? else {
                return Ok(None);
            };
            let Some(id) = op.value.payment_id else {
                return Ok(None);
            };
            id
        }
    };
    Ok(store::get::<PaymentRecord>(&payment_key(&id))?.map(|payment| payment.value.into()))
}

fn slow_ms() -> u64 {
    config::get("slow-ms")
        .and_then(|value| value.parse().ok())
        .unwrap_or(DEFAULT_SLOW_MS)
}

/// Burns CPU rather than sleeping: the point is to be stopped by the host's epoch deadline,
/// which only interrupts running code.
fn spin(ms: u64) {
    let deadline = clock::monotonic_ns().saturating_add(ms.saturating_mul(1_000_000));
    while clock::monotonic_ns() < deadline {
        core::hint::spin_loop();
    }
}

fn log_outcome(call: &str, op: &OpRecord) {
    let outcome = match &op.result {
        Ok(payment) => format!("{:?}", payment.status),
        Err(refusal) => format!("{refusal:?}"),
    };
    let fields = [
        ("call".to_owned(), call.to_owned()),
        (
            "payment-id".to_owned(),
            op.payment_id.clone().unwrap_or_default(),
        ),
        ("outcome".to_owned(), outcome),
    ];
    log::log(Level::Info, "fakepay recorded an outcome", &fields);
}
