//! What fakepay stores in KV, and its conversion to and from the WIT types.

use serde::{Deserialize, Serialize};

use crate::bindings::exports::oms::plugins::payment::{
    Money, Payment, PaymentError, PaymentStatus,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    Authorized,
    Declined,
    PartiallyCaptured,
    Captured,
    Voided,
    PartiallyRefunded,
    Refunded,
}

/// One payment. Amounts are in minor units of `currency`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentRecord {
    pub id: String,
    pub order_id: String,
    pub status: Status,
    pub currency: String,
    pub authorized: i64,
    pub captured: i64,
    pub refunded: i64,
}

/// A permanent failure, recorded so that a retry gets the same answer. Transient failures
/// are never recorded: retrying them is their whole point.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Refusal {
    Declined(String),
    Invalid(String),
}

/// The outcome of one mutating call, stored under its idempotency key. `fingerprint` is the
/// call's arguments, so that reusing a key for a different call is caught.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct OpRecord {
    pub fingerprint: String,
    pub payment_id: Option<String>,
    pub result: Result<PaymentRecord, Refusal>,
}

impl OpRecord {
    pub fn replay(self, fingerprint: &str) -> Result<Payment, PaymentError> {
        if self.fingerprint != fingerprint {
            return Err(PaymentError::Invalid(
                "idempotency key already used for a different call".into(),
            ));
        }
        self.result.map(Payment::from).map_err(PaymentError::from)
    }
}

impl From<Refusal> for PaymentError {
    fn from(refusal: Refusal) -> Self {
        match refusal {
            Refusal::Declined(message) => PaymentError::Declined(message),
            Refusal::Invalid(message) => PaymentError::Invalid(message),
        }
    }
}

impl From<Status> for PaymentStatus {
    fn from(status: Status) -> Self {
        match status {
            Status::Authorized => PaymentStatus::Authorized,
            Status::Declined => PaymentStatus::Declined,
            Status::PartiallyCaptured => PaymentStatus::PartiallyCaptured,
            Status::Captured => PaymentStatus::Captured,
            Status::Voided => PaymentStatus::Voided,
            Status::PartiallyRefunded => PaymentStatus::PartiallyRefunded,
            Status::Refunded => PaymentStatus::Refunded,
        }
    }
}

impl From<PaymentRecord> for Payment {
    fn from(record: PaymentRecord) -> Self {
        let money = |amount_minor| Money {
            amount_minor,
            currency: record.currency.clone(),
        };
        Payment {
            id: record.id.clone(),
            order_id: record.order_id.clone(),
            status: record.status.into(),
            authorized: money(record.authorized),
            captured: money(record.captured),
            refunded: money(record.refunded),
        }
    }
}
