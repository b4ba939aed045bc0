//! rust-pay: a payment provider adapter for the OMS host. It keeps its payments in the host's
//! key-value store and decides authorizations by token (`[config] approve-token` and
//! `decline-token`), so it runs anywhere; a real adapter calls its PSP where `decide` is.
//!
//! What the host relies on (`wit/payment.wit`, checked by `oms plugin test`):
//! - every mutating call is idempotent on its key: the outcome is stored under `idem/<key>`
//!   in the same compare-and-swap as the payment it changes, so a retry (or a concurrent
//!   duplicate) replays the first answer and never moves money twice;
//! - `declined` and `invalid` are permanent, `transient` means "retry with the same key";
//! - captured <= authorized and refunded <= captured, always.

#[allow(unsafe_code)] // wit-bindgen's generated ABI glue.
mod bindings {
    wit_bindgen::generate!({ path: "wit", world: "payment-provider" });
    use super::Provider;
    export!(Provider with_types_in self);
}

use bindings::exports::oms::plugins::payment::{
    AuthorizeRequest, Guest, Money, Payment, PaymentError, PaymentLookup, PaymentStatus,
};
use bindings::oms::plugins::config;
use bindings::oms::plugins::kv::{self, BatchOutcome, KvError, Swap};
use serde::{Deserialize, Serialize};

struct Provider;

/// One payment as stored. Amounts are minor units of `currency`.
#[derive(Clone, Serialize, Deserialize)]
struct Record {
    id: String,
    order_id: String,
    status: String,
    currency: String,
    authorized: i64,
    captured: i64,
    refunded: i64,
}

/// A call's outcome, stored under its idempotency key with the call's arguments, so a key
/// reused for another call is refused. Transient failures are never stored: retrying them is
/// their point.
#[derive(Serialize, Deserialize)]
struct Outcome {
    call: String,
    result: Result<Record, (bool, String)>, // Err((declined?, message))
}

fn invalid(message: impl Into<String>) -> PaymentError {
    PaymentError::Invalid(message.into())
}

impl From<KvError> for PaymentError {
    fn from(e: KvError) -> Self {
        match e {
            KvError::Denied => invalid("the manifest must grant kv"),
            KvError::Invalid(m) => invalid(format!("kv: {m}")),
            KvError::Unavailable(m) => PaymentError::Transient(format!("kv: {m}")),
        }
    }
}

fn read<T: for<'de> Deserialize<'de>>(key: &str) -> Result<Option<(Vec<u8>, T)>, PaymentError> {
    let Some(raw) = kv::get(key)? else {
        return Ok(None);
    };
    let value = serde_json::from_slice(&raw).map_err(|e| invalid(format!("{key}: {e}")))?;
    Ok(Some((raw, value)))
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, PaymentError> {
    serde_json::to_vec(value).map_err(|e| invalid(format!("encoding: {e}")))
}

impl Outcome {
    fn answer(self, call: &str) -> Result<Payment, PaymentError> {
        if self.call != call {
            return Err(invalid("idempotency key already used for another call"));
        }
        match self.result {
            Ok(record) => Ok(record.into()),
            Err((true, m)) => Err(PaymentError::Declined(m)),
            Err((false, m)) => Err(invalid(m)),
        }
    }
}

impl From<Record> for Payment {
    fn from(r: Record) -> Self {
        let money = |amount_minor| Money {
            amount_minor,
            currency: r.currency.clone(),
        };
        let status = match r.status.as_str() {
            "authorized" => PaymentStatus::Authorized,
            "declined" => PaymentStatus::Declined,
            "partially-captured" => PaymentStatus::PartiallyCaptured,
            "captured" => PaymentStatus::Captured,
            "voided" => PaymentStatus::Voided,
            "partially-refunded" => PaymentStatus::PartiallyRefunded,
            _ => PaymentStatus::Refunded,
        };
        Payment {
            id: r.id.clone(),
            order_id: r.order_id.clone(),
            status,
            authorized: money(r.authorized),
            captured: money(r.captured),
            refunded: money(r.refunded),
        }
    }
}

fn check_money(m: &Money) -> Result<(), PaymentError> {
    if m.currency.len() != 3 || !m.currency.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(invalid(format!(
            "{:?} is not an ISO 4217 currency",
            m.currency
        )));
    }
    if m.amount_minor <= 0 {
        return Err(invalid(format!(
            "amount {} must be positive",
            m.amount_minor
        )));
    }
    Ok(())
}

/// Stores `outcome` under `key` and, when the call changed it, the payment (whose stored
/// bytes were `before`), atomically; on a conflict the first writer's outcome wins.
fn commit(key: &str, outcome: Outcome, before: Option<Vec<u8>>) -> Result<Payment, PaymentError> {
    let call = outcome.call.clone();
    let mut swaps = vec![Swap {
        key: format!("idem/{key}"),
        expected: None,
        new: Some(encode(&outcome)?),
    }];
    if let Ok(record) = &outcome.result {
        swaps.push(Swap {
            key: format!("payment/{}", record.id),
            expected: before,
            new: Some(encode(record)?),
        });
    }
    match kv::compare_and_swap(&swaps, &[])? {
        BatchOutcome::Applied(_) => outcome.answer(&call),
        _ => match read::<Outcome>(&format!("idem/{key}"))? {
            Some((_, first)) => first.answer(&call),
            // The payment changed under us (another call on it): the host retries.
            None => Err(PaymentError::Transient("concurrent update; retry".into())),
        },
    }
}

/// A capture, void or refund: replays a stored outcome, else applies `change` to the payment.
fn transition(
    id: &str,
    key: &str,
    call: String,
    change: impl FnOnce(&Record) -> Result<Record, String>,
) -> Result<Payment, PaymentError> {
    if let Some((_, done)) = read::<Outcome>(&format!("idem/{key}"))? {
        return done.answer(&call);
    }
    let Some((raw, payment)) = read::<Record>(&format!("payment/{id}"))? else {
        return Err(invalid(format!("unknown payment {id}")));
    };
    let result = change(&payment).map_err(|m| (false, m));
    commit(key, Outcome { call, result }, Some(raw))
}

/// The amount asked for (`None`: all that remains), never more than remains.
fn amount(asked: Option<&Money>, p: &Record, remaining: i64, what: &str) -> Result<i64, String> {
    let Some(m) = asked else {
        return if remaining > 0 {
            Ok(remaining)
        } else {
            Err(format!("nothing left to {what}"))
        };
    };
    if m.currency != p.currency {
        return Err(format!(
            "{what} in {} on a {} payment",
            m.currency, p.currency
        ));
    }
    if m.amount_minor > remaining {
        return Err(format!(
            "{what} of {} exceeds the {remaining} left",
            m.amount_minor
        ));
    }
    Ok(m.amount_minor)
}

/// The provider's decision on a token. A real adapter calls its PSP here (forwarding the
/// idempotency key) and maps its answer; `Err` is a decline.
fn decide(token: &str) -> Result<Result<(), String>, PaymentError> {
    let configured = |key: &str| config::get(key).unwrap_or_default();
    if token == configured("approve-token") {
        Ok(Ok(()))
    } else if token == configured("decline-token") {
        Ok(Err("insufficient funds".to_owned()))
    } else {
        Err(invalid("unknown payment token"))
    }
}

impl Guest for Provider {
    fn authorize(r: AuthorizeRequest) -> Result<Payment, PaymentError> {
        check_money(&r.amount)?;
        let key = &r.idempotency_key;
        let call = format!(
            "authorize {} {} {} {}",
            r.order_id, r.amount.amount_minor, r.amount.currency, r.payment_token
        );
        if let Some((_, done)) = read::<Outcome>(&format!("idem/{key}"))? {
            return done.answer(&call);
        }
        let record = Record {
            id: format!("pay_{key}"),
            order_id: r.order_id.clone(),
            status: "authorized".to_owned(),
            currency: r.amount.currency.clone(),
            authorized: r.amount.amount_minor,
            captured: 0,
            refunded: 0,
        };
        let result = match decide(&r.payment_token)? {
            Ok(()) => Ok(record),
            Err(why) => Err((true, why)),
        };
        commit(key, Outcome { call, result }, None)
    }

    fn capture(id: String, asked: Option<Money>, key: String) -> Result<Payment, PaymentError> {
        let call = format!("capture {id} {asked:?}");
        transition(&id, &key, call, |p| {
            if !matches!(p.status.as_str(), "authorized" | "partially-captured") {
                return Err(format!("cannot capture a {} payment", p.status));
            }
            let captured =
                p.captured + amount(asked.as_ref(), p, p.authorized - p.captured, "capture")?;
            let status = if captured == p.authorized {
                "captured"
            } else {
                "partially-captured"
            };
            Ok(Record {
                captured,
                status: status.to_owned(),
                ..p.clone()
            })
        })
    }

    fn void(id: String, key: String) -> Result<Payment, PaymentError> {
        transition(&id, &key, format!("void {id}"), |p| {
            match p.status.as_str() {
                "authorized" | "voided" => Ok(Record {
                    status: "voided".to_owned(),
                    ..p.clone()
                }),
                other => Err(format!("cannot void a {other} payment; refund it")),
            }
        })
    }

    fn refund(id: String, asked: Option<Money>, key: String) -> Result<Payment, PaymentError> {
        let call = format!("refund {id} {asked:?}");
        transition(&id, &key, call, |p| {
            if !matches!(
                p.status.as_str(),
                "partially-captured" | "captured" | "partially-refunded"
            ) {
                return Err(format!("cannot refund a {} payment", p.status));
            }
            let refunded =
                p.refunded + amount(asked.as_ref(), p, p.captured - p.refunded, "refund")?;
            let status = if refunded == p.captured {
                "refunded"
            } else {
                "partially-refunded"
            };
            Ok(Record {
                refunded,
                status: status.to_owned(),
                ..p.clone()
            })
        })
    }

    fn get_payment(lookup: PaymentLookup) -> Result<Option<Payment>, PaymentError> {
        let id = match lookup {
            // A declined authorization stored no payment: none, as the contract allows.
            PaymentLookup::AuthorizeKey(key) => format!("pay_{key}"),
            PaymentLookup::PaymentId(id) => id,
        };
        Ok(read::<Record>(&format!("payment/{id}"))?.map(|(_, r)| r.into()))
    }
}
