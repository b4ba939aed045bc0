//! The payment lifecycle: validation, the token script, customer actions and idempotent state
//! transitions.

use crate::bindings::exports::oms::plugins0_2_0::payment::{
    Authorization, AuthorizeRequest, Money, Payment, PaymentError, PaymentLookup,
};
use crate::bindings::oms::plugins0_1_0::kv::Swap;
use crate::bindings::oms::plugins0_1_0::log::{self, Level};
use crate::bindings::oms::plugins0_1_0::{clock, config};
use crate::record::{ActionRecord, OpRecord, PaymentRecord, Refusal, Status};
use crate::store;
use crate::webhook::ActionOutcome;

/// Where the customer is sent when the manifest sets no `[config] action_base_url`.
const DEFAULT_ACTION_BASE_URL: &str = "https://pay.example.test/challenge";
/// How long a customer action stays open when the manifest sets no `[config] action_ttl_ms`.
const DEFAULT_ACTION_TTL_MS: u64 = 600_000;
/// The contract's ceiling on a customer action's URL.
const MAX_ACTION_URL_BYTES: usize = 2048;
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

/// The payment id of the authorization with this idempotency key: `rp_` and the key's 64-bit
/// FNV-1a hash in hex. Derived, not counted, so there is no shared sequence row, and a retry
/// lands on the same id. FNV-1a rather than std's `DefaultHasher`, whose output may change
/// between Rust releases while the ids stored in KV must not.
fn payment_id(idempotency_key: &str) -> String {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let hash = idempotency_key.bytes().fold(OFFSET_BASIS, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(PRIME)
    });
    format!("rp_{hash:016x}")
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

/// What the payment token asks for (table in `lib.rs`).
enum Script {
    Decline,
    /// A customer action that stays open this many milliseconds.
    Action {
        ttl_ms: u64,
    },
    Authorize,
}

fn script(token: &str) -> Result<Script, PaymentError> {
    if token.starts_with("tok_decline") {
        return Ok(Script::Decline);
    }
    if let Some(ttl) = token.strip_prefix("tok_3ds_ttl_") {
        let ttl_ms = ttl.parse().map_err(|_| {
            PaymentError::Invalid(format!(
                "payment token {token:?}: tok_3ds_ttl_ must be followed by milliseconds"
            ))
        })?;
        return Ok(Script::Action { ttl_ms });
    }
    if token.starts_with("tok_3ds") {
        return Ok(Script::Action {
            ttl_ms: action_ttl_ms()?,
        });
    }
    Ok(Script::Authorize)
}

fn action_ttl_ms() -> Result<u64, PaymentError> {
    match config::get("action_ttl_ms") {
        None => Ok(DEFAULT_ACTION_TTL_MS),
        Some(value) => value.trim().parse().map_err(|_| {
            PaymentError::Invalid(format!(
                "[config] action_ttl_ms = {value:?} is not a number of milliseconds"
            ))
        }),
    }
}

/// Where the customer completes payment `id`: `[config] action_base_url` + `/` + the id.
fn action_url(id: &str) -> Result<String, PaymentError> {
    let base = config::get("action_base_url").unwrap_or_else(|| DEFAULT_ACTION_BASE_URL.into());
    let base = base.trim().trim_end_matches('/');
    if !(base.starts_with("https://") || base.starts_with("http://")) {
        return Err(PaymentError::Invalid(format!(
            "[config] action_base_url = {base:?} is not an https:// or http:// URL"
        )));
    }
    let url = format!("{base}/{id}");
    if url.len() > MAX_ACTION_URL_BYTES {
        return Err(PaymentError::Invalid(format!(
            "[config] action_base_url makes a customer action URL over {MAX_ACTION_URL_BYTES} bytes"
        )));
    }
    Ok(url)
}

pub fn authorize(request: AuthorizeRequest) -> Result<Authorization, PaymentError> {
    check_key(&request.idempotency_key)?;
    check_money(&request.amount)?;
    if request.payment_token.is_empty() {
        return Err(PaymentError::Invalid("empty payment token".into()));
    }
    let fingerprint = format!(
        "authorize|{}|{}|{}|{}",
        request.order_id,
        request.amount.amount_minor,
        request.amount.currency,
        request.payment_token
    );
    if let Some(done) = store::get::<OpRecord>(&idem_key(&request.idempotency_key))? {
        return replay_authorization(done.value, &fingerprint);
    }

    let id = payment_id(&request.idempotency_key);
    let amount = request.amount.amount_minor;
    let mut payment = PaymentRecord {
        id: id.clone(),
        order_id: request.order_id,
        status: Status::Authorized,
        currency: request.amount.currency,
        amount,
        authorized: amount,
        captured: 0,
        refunded: 0,
        action: None,
        decline_reason: None,
    };
    match script(&request.payment_token)? {
        Script::Authorize => {}
        Script::Decline => {
            payment.status = Status::Declined;
            payment.authorized = 0;
            payment.decline_reason = Some("card declined".into());
        }
        Script::Action { ttl_ms } => {
            payment.status = Status::RequiresAction;
            payment.authorized = 0;
            payment.action = Some(ActionRecord {
                url: action_url(&id)?,
                expires_at_ms: clock::now_ms().saturating_add(ttl_ms),
            });
        }
    }
    let op = OpRecord {
        fingerprint: fingerprint.clone(),
        payment_id: Some(id),
        result: match payment.status {
            Status::Declined => Err(Refusal::Declined("card declined".into())),
            _ => Ok(payment.clone()),
        },
    };
    record_authorization(&request.idempotency_key, op, payment, &fingerprint)
}

/// A repeated `authorize`: the payment's current state, not the first answer, so a retry after
/// the customer acted sees the outcome.
fn replay_authorization(op: OpRecord, fingerprint: &str) -> Result<Authorization, PaymentError> {
    op.check(fingerprint)?;
    let Some(id) = op.payment_id else {
        return Err(PaymentError::Invalid(
            "corrupt record: an authorization without a payment id".into(),
        ));
    };
    match store::get::<PaymentRecord>(&payment_key(&id))? {
        Some(payment) => payment.value.authorization(),
        None => Err(PaymentError::Invalid(format!(
            "corrupt record: payment {id} was authorized but is not stored"
        ))),
    }
}

/// Stores a new authorization and its payment unless a concurrent call with the same key
/// stored one first, in which case that one is the answer.
fn record_authorization(
    idempotency_key: &str,
    op: OpRecord,
    payment: PaymentRecord,
    fingerprint: &str,
) -> Result<Authorization, PaymentError> {
    let swaps = [
        Swap {
            key: idem_key(idempotency_key),
            expected: None,
            new: Some(store::encode(&op)?),
        },
        Swap {
            key: payment_key(&payment.id),
            expected: None,
            new: Some(store::encode(&payment)?),
        },
    ];
    if store::swap_all(&swaps)? {
        log_outcome("authorize", &op);
        return payment.authorization();
    }
    if let Some(winner) = store::get::<OpRecord>(&idem_key(idempotency_key))? {
        return replay_authorization(winner.value, fingerprint);
    }
    if store::get::<PaymentRecord>(&payment_key(&payment.id))?.is_some() {
        // Both keys are written together, so the payment belongs to another idempotency key
        // whose hash is the same: a retry would collide again.
        return Err(PaymentError::Invalid(format!(
            "payment id {} is taken by another authorization",
            payment.id
        )));
    }
    Err(PaymentError::Transient(
        "concurrent authorize with the same key; retry".into(),
    ))
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

/// Releases a hold, or cancels a payment that still requires action (the customer can no
/// longer complete it: a later `action.completed` webhook leaves it voided).
pub fn void(id: &str, idempotency_key: &str) -> Result<Payment, PaymentError> {
    check_key(idempotency_key)?;
    transition(
        id,
        idempotency_key,
        &format!("void|{id}"),
        |payment| match payment.status {
            Status::Authorized | Status::RequiresAction => Ok(PaymentRecord {
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

/// Records what a webhook says the customer did about payment `id`'s action: a payment that
/// requires action becomes authorized (`completed`) or declined (`failed`); a payment in any
/// other state is left as it is, so a redelivered (or late) webhook changes nothing. None when
/// `id` is no payment of ours.
pub fn settle_action(id: &str, outcome: ActionOutcome) -> Result<Option<Payment>, PaymentError> {
    if !is_payment_id(id) {
        return Ok(None);
    }
    for _ in 0..MAX_SWAP_ATTEMPTS {
        let Some(current) = store::get::<PaymentRecord>(&payment_key(id))? else {
            return Ok(None);
        };
        let payment = current.value;
        if payment.status != Status::RequiresAction {
            return Ok(Some(payment.into()));
        }
        let next = match outcome {
            ActionOutcome::Completed => PaymentRecord {
                status: Status::Authorized,
                authorized: payment.amount,
                ..payment
            },
            ActionOutcome::Failed => PaymentRecord {
                status: Status::Declined,
                decline_reason: Some("the customer did not complete the action".into()),
                ..payment
            },
        };
        let swap = Swap {
            key: payment_key(id),
            expected: Some(current.raw),
            new: Some(store::encode(&next)?),
        };
        if store::swap_all(&[swap])? {
            let fields = [
                ("call".to_owned(), "handle-webhook".to_owned()),
                ("event".to_owned(), outcome.event_type().to_owned()),
                ("payment-id".to_owned(), id.to_owned()),
                ("outcome".to_owned(), format!("{:?}", next.status)),
            ];
            log::log(Level::Info, "redirectpay recorded a webhook", &fields);
            return Ok(Some(next.into()));
        }
    }
    Err(PaymentError::Transient(format!(
        "payment {id} is being updated concurrently; retry"
    )))
}

/// Whether `id` has the shape of the ids `payment_id` makes, so that a webhook naming anything
/// else is acknowledged without a KV lookup (and without an over-long KV key).
fn is_payment_id(id: &str) -> bool {
    id.strip_prefix("rp_")
        .is_some_and(|hash| hash.len() == 16 && hash.bytes().all(|b| b.is_ascii_hexdigit()))
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
    log::log(Level::Info, "redirectpay recorded an outcome", &fields);
}
