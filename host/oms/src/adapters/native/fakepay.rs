//! `plugins/fakepay` in Rust over the host's key-value buffer: the same token script, keys
//! and records (see that crate for why each is shaped as it is), answered as the Wasm plugin
//! would answer. One difference, because nothing here is sandboxed: `tok_slow` sleeps for
//! `[config] slow-ms` instead of spinning until the host's epoch deadline stops it.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use oms_application::plugin_kv::{
    BatchOutcome, BoundedAdd, Buffering, KvError, KvTransaction, Swap,
};
use oms_application::ports::PluginKvStore;
use oms_plugin_runtime::PluginKind;
use oms_plugin_runtime::clients::payment::{
    AuthorizeRequest, Money, Payment, PaymentError, PaymentLookup, PaymentResult, PaymentStatus,
};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use super::NativeIdentity;

pub const NAME: &str = "fakepay";

const FLAKY_FAILURES: i64 = 2;
const DEFAULT_SLOW_MS: u64 = 60_000;
const MAX_SWAP_ATTEMPTS: usize = 8;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum Status {
    Authorized,
    Declined,
    PartiallyCaptured,
    Captured,
    Voided,
    PartiallyRefunded,
    Refunded,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct PaymentRecord {
    id: String,
    order_id: String,
    status: Status,
    currency: String,
    authorized: i64,
    captured: i64,
    refunded: i64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
enum Refusal {
    Declined(String),
    Invalid(String),
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct OpRecord {
    fingerprint: String,
    payment_id: Option<String>,
    result: Result<PaymentRecord, Refusal>,
}

impl OpRecord {
    fn replay(self, fingerprint: &str) -> Result<Payment, PaymentError> {
        if self.fingerprint != fingerprint {
            return Err(PaymentError::Invalid(
                "idempotency key already used for a different call".into(),
            ));
        }
        self.result.map(payment).map_err(|refusal| match refusal {
            Refusal::Declined(message) => PaymentError::Declined(message),
            Refusal::Invalid(message) => PaymentError::Invalid(message),
        })
    }
}

fn payment(record: PaymentRecord) -> Payment {
    let money = |amount_minor| Money {
        amount_minor,
        currency: record.currency.clone(),
    };
    Payment {
        id: record.id.clone(),
        order_id: record.order_id.clone(),
        status: match record.status {
            Status::Authorized => PaymentStatus::Authorized,
            Status::Declined => PaymentStatus::Declined,
            Status::PartiallyCaptured => PaymentStatus::PartiallyCaptured,
            Status::Captured => PaymentStatus::Captured,
            Status::Voided => PaymentStatus::Voided,
            Status::PartiallyRefunded => PaymentStatus::PartiallyRefunded,
            Status::Refunded => PaymentStatus::Refunded,
        },
        authorized: money(record.authorized),
        captured: money(record.captured),
        refunded: money(record.refunded),
    }
}

fn idem_key(idempotency_key: &str) -> String {
    format!("idem/{idempotency_key}")
}

fn payment_key(id: &str) -> String {
    format!("payment/{id}")
}

fn invalid(message: impl Into<String>) -> Refusal {
    Refusal::Invalid(message.into())
}

/// The plugin's fingerprint of an optional amount: its `{amount:?}` of the guest's `Money`.
fn amount_text(amount: Option<&Money>) -> String {
    match amount {
        None => "None".to_owned(),
        Some(m) => format!(
            "Some(Money {{ amount-minor: {}, currency: {:?} }})",
            m.amount_minor, m.currency
        ),
    }
}

/// The plugin sees a failing store as `kv` `unavailable`, which it answers `transient`.
fn unavailable(error: KvError) -> PaymentError {
    PaymentError::Transient(format!("kv: {error}"))
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, PaymentError> {
    serde_json::to_vec(value).map_err(|e| PaymentError::Invalid(format!("encoding record: {e}")))
}

/// A stored value and the exact bytes it was read from.
struct Versioned<T> {
    raw: Vec<u8>,
    value: T,
}

async fn get<T: DeserializeOwned>(
    kv: &mut KvTransaction,
    key: &str,
) -> Result<Option<Versioned<T>>, PaymentError> {
    let Some(raw) = kv.get(key).await.map_err(unavailable)? else {
        return Ok(None);
    };
    let value = serde_json::from_slice(&raw)
        .map_err(|e| PaymentError::Invalid(format!("corrupt record {key}: {e}")))?;
    Ok(Some(Versioned { raw, value }))
}

async fn swap_all(kv: &mut KvTransaction, swaps: &[Swap]) -> Result<bool, PaymentError> {
    match kv.batch(swaps, &[]).await.map_err(unavailable)? {
        BatchOutcome::Applied(_) => Ok(true),
        BatchOutcome::Conflict(_) => Ok(false),
        BatchOutcome::OutOfBounds(keys) => Err(PaymentError::Transient(format!(
            "kv reported bounds on a batch without counters: {keys:?}"
        ))),
    }
}

async fn bump(kv: &mut KvTransaction, key: &str) -> Result<i64, PaymentError> {
    let add = BoundedAdd {
        key: key.to_owned(),
        delta: 1,
        min: None,
        max: None,
    };
    match kv.batch(&[], &[add]).await.map_err(unavailable)? {
        BatchOutcome::Applied(values) => values
            .first()
            .copied()
            .ok_or_else(|| PaymentError::Transient("kv returned no counter value".into())),
        other => Err(PaymentError::Transient(format!(
            "unbounded increment of {key} not applied: {other:?}"
        ))),
    }
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

/// The payment provider, configured by `fakepay.toml`'s `[config]`.
pub struct FakePay {
    identity: NativeIdentity,
    slow: Duration,
    count_calls: bool,
}

impl FakePay {
    pub fn new(store: Arc<dyn PluginKvStore>, dir: &Path) -> anyhow::Result<Self> {
        let (identity, config) =
            NativeIdentity::from_manifest(store, dir, NAME, PluginKind::PaymentProvider)?;
        let slow_ms = config
            .get("slow-ms")
            .and_then(|value| value.parse().ok())
            .unwrap_or(DEFAULT_SLOW_MS);
        Ok(Self {
            identity,
            slow: Duration::from_millis(slow_ms),
            count_calls: config.get("count-calls") == Some("true"),
        })
    }

    pub async fn authorize(
        &self,
        request: AuthorizeRequest,
        buffering: Buffering,
    ) -> PaymentResult<Payment> {
        let mut call = self.identity.call(buffering);
        let result = match self
            .count_call(&mut call.kv, "authorize", &request.idempotency_key)
            .await
        {
            Ok(()) => self.authorize_in(&mut call.kv, request).await,
            Err(e) => Err(e),
        };
        call.finish(result)
    }

    pub async fn capture(
        &self,
        id: &str,
        amount: Option<Money>,
        idempotency_key: &str,
        buffering: Buffering,
    ) -> PaymentResult<Payment> {
        let fingerprint = format!("capture|{id}|{}", amount_text(amount.as_ref()));
        self.mutate(
            "capture",
            id,
            (idempotency_key, buffering),
            amount.as_ref(),
            &fingerprint,
            |p| capture(p, amount.as_ref()),
        )
        .await
    }

    pub async fn void(
        &self,
        id: &str,
        idempotency_key: &str,
        buffering: Buffering,
    ) -> PaymentResult<Payment> {
        let fingerprint = format!("void|{id}");
        let key = (idempotency_key, buffering);
        self.mutate("void", id, key, None, &fingerprint, void).await
    }

    pub async fn refund(
        &self,
        id: &str,
        amount: Option<Money>,
        idempotency_key: &str,
        buffering: Buffering,
    ) -> PaymentResult<Payment> {
        let fingerprint = format!("refund|{id}|{}", amount_text(amount.as_ref()));
        self.mutate(
            "refund",
            id,
            (idempotency_key, buffering),
            amount.as_ref(),
            &fingerprint,
            |p| refund(p, amount.as_ref()),
        )
        .await
    }

    pub async fn get_payment(&self, lookup: PaymentLookup) -> PaymentResult<Option<Payment>> {
        // A lookup writes nothing: nothing to leave to a commit.
        let mut call = self.identity.call(Buffering::default());
        let result = get_payment(&mut call.kv, lookup).await;
        call.finish(result)
    }

    /// Capture, void and refund: count, check, then the plugin's `transition`. The call's
    /// key and how it checks the keys it creates travel together.
    async fn mutate(
        &self,
        operation: &str,
        id: &str,
        (idempotency_key, buffering): (&str, Buffering),
        amount: Option<&Money>,
        fingerprint: &str,
        change: impl Fn(&PaymentRecord) -> Result<PaymentRecord, Refusal>,
    ) -> PaymentResult<Payment> {
        let mut call = self.identity.call(buffering);
        let result = async {
            self.count_call(&mut call.kv, operation, idempotency_key)
                .await?;
            check_key(idempotency_key)?;
            if let Some(money) = amount {
                check_money(money)?;
            }
            transition(&mut call.kv, id, idempotency_key, fingerprint, change).await
        }
        .await;
        call.finish(result)
    }

    async fn authorize_in(
        &self,
        kv: &mut KvTransaction,
        request: AuthorizeRequest,
    ) -> Result<Payment, PaymentError> {
        check_key(&request.idempotency_key)?;
        check_money(&request.amount)?;
        let fingerprint = format!(
            "authorize|{}|{}|{}|{}",
            request.order_id,
            request.amount.amount_minor,
            request.amount.currency,
            request.payment_token
        );
        // As the plugin: only the tokens that act before recording look for a replay first.
        if matches!(request.payment_token.as_str(), "tok_flaky" | "tok_slow")
            && let Some(done) = get::<OpRecord>(kv, &idem_key(&request.idempotency_key)).await?
        {
            return done.value.replay(&fingerprint);
        }
        let status = match request.payment_token.as_str() {
            "tok_ok" => Status::Authorized,
            "tok_decline" => Status::Declined,
            "tok_flaky" => {
                let attempt = bump(kv, &format!("attempts/{}", request.idempotency_key)).await?;
                if attempt <= FLAKY_FAILURES {
                    return Err(PaymentError::Transient(format!(
                        "tok_flaky: attempt {attempt} of {} fails",
                        FLAKY_FAILURES + 1
                    )));
                }
                Status::Authorized
            }
            "tok_slow" => {
                tokio::time::sleep(self.slow).await;
                Status::Authorized
            }
            _ => {
                let op = OpRecord {
                    fingerprint: fingerprint.clone(),
                    payment_id: None,
                    result: Err(invalid("unknown payment token")),
                };
                return record_authorization(kv, &request.idempotency_key, op, None, &fingerprint)
                    .await;
            }
        };

        let id = format!("fp_{}", request.idempotency_key);
        let record = PaymentRecord {
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
            _ => Ok(record.clone()),
        };
        let op = OpRecord {
            fingerprint: fingerprint.clone(),
            payment_id: Some(id),
            result,
        };
        record_authorization(kv, &request.idempotency_key, op, Some(record), &fingerprint).await
    }

    async fn count_call(
        &self,
        kv: &mut KvTransaction,
        operation: &str,
        idempotency_key: &str,
    ) -> Result<(), PaymentError> {
        if !self.count_calls {
            return Ok(());
        }
        bump(kv, &format!("calls/{operation}/{idempotency_key}"))
            .await
            .map(|_| ())
    }
}

async fn record_authorization(
    kv: &mut KvTransaction,
    idempotency_key: &str,
    op: OpRecord,
    record: Option<PaymentRecord>,
    fingerprint: &str,
) -> Result<Payment, PaymentError> {
    let mut swaps = vec![Swap {
        key: idem_key(idempotency_key),
        expected: None,
        new: Some(encode(&op)?),
    }];
    if let Some(record) = &record {
        swaps.push(Swap {
            key: payment_key(&record.id),
            expected: None,
            new: Some(encode(record)?),
        });
    }
    if swap_all(kv, &swaps).await? {
        log_outcome("authorize", &op);
        return op.replay(fingerprint);
    }
    match get::<OpRecord>(kv, &idem_key(idempotency_key)).await? {
        Some(winner) => winner.value.replay(fingerprint),
        None => Err(PaymentError::Transient(
            "concurrent authorize with the same key; retry".into(),
        )),
    }
}

fn capture(payment: &PaymentRecord, amount: Option<&Money>) -> Result<PaymentRecord, Refusal> {
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
    let amount = requested(amount, payment, remaining, "capture")?;
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
}

fn void(payment: &PaymentRecord) -> Result<PaymentRecord, Refusal> {
    match payment.status {
        Status::Authorized => Ok(PaymentRecord {
            status: Status::Voided,
            ..payment.clone()
        }),
        Status::Voided => Ok(payment.clone()),
        other => Err(invalid(format!("cannot void a {other:?} payment"))),
    }
}

fn refund(payment: &PaymentRecord, amount: Option<&Money>) -> Result<PaymentRecord, Refusal> {
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
    let amount = requested(amount, payment, remaining, "refund")?;
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
}

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

/// As the plugin's `transition`.
async fn transition(
    kv: &mut KvTransaction,
    id: &str,
    idempotency_key: &str,
    fingerprint: &str,
    change: impl Fn(&PaymentRecord) -> Result<PaymentRecord, Refusal>,
) -> Result<Payment, PaymentError> {
    for _ in 0..MAX_SWAP_ATTEMPTS {
        if let Some(done) = get::<OpRecord>(kv, &idem_key(idempotency_key)).await? {
            return done.value.replay(fingerprint);
        }
        let Some(current) = get::<PaymentRecord>(kv, &payment_key(id)).await? else {
            return Err(PaymentError::Invalid(format!("unknown payment {id}")));
        };
        let result = change(&current.value);
        let next = match &result {
            Ok(next) => encode(next)?,
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
                new: Some(encode(&op)?),
            },
            Swap {
                key: payment_key(id),
                expected: Some(current.raw),
                new: Some(next),
            },
        ];
        if swap_all(kv, &swaps).await? {
            log_outcome(fingerprint, &op);
            return op.replay(fingerprint);
        }
    }
    Err(PaymentError::Transient(format!(
        "payment {id} is being updated concurrently; retry"
    )))
}

async fn get_payment(
    kv: &mut KvTransaction,
    lookup: PaymentLookup,
) -> Result<Option<Payment>, PaymentError> {
    let id = match lookup {
        PaymentLookup::PaymentId(id) => id,
        PaymentLookup::AuthorizeKey(key) => {
            let Some(op) = get::<OpRecord>(kv, &idem_key(&key)).await? else {
                return Ok(None);
            };
            let Some(id) = op.value.payment_id else {
                return Ok(None);
            };
            id
        }
    };
    Ok(get::<PaymentRecord>(kv, &payment_key(&id))
        .await?
        .map(|record| payment(record.value)))
}

/// The plugin logs each recorded outcome through the log capability at info; so does this.
fn log_outcome(call: &str, op: &OpRecord) {
    let outcome = match &op.result {
        Ok(record) => format!("{:?}", record.status),
        Err(refusal) => format!("{refusal:?}"),
    };
    tracing::info!(
        plugin = NAME,
        call,
        payment_id = op.payment_id.as_deref().unwrap_or_default(),
        outcome,
        "fakepay recorded an outcome"
    );
}
