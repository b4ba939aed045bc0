//! What redirectpay stores in KV, and its conversion to and from the WIT types.

use serde::{Deserialize, Serialize};

use crate::bindings::exports::oms::plugins0_2_0::payment::{
    Authorization, CustomerAction, Money, Payment, PaymentError, PaymentStatus,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    RequiresAction,
    Authorized,
    Declined,
    PartiallyCaptured,
    Captured,
    Voided,
    PartiallyRefunded,
    Refunded,
}

/// The step a payment that requires action waits for, fixed when it is authorized so that
/// every retry of that `authorize` answers with the same action.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionRecord {
    pub url: String,
    pub expires_at_ms: u64,
}

/// One payment. Amounts are in minor units of `currency`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentRecord {
    pub id: String,
    pub order_id: String,
    pub status: Status,
    pub currency: String,
    /// What `authorize` asked to hold: `authorized` once the customer completes the action.
    pub amount: i64,
    pub authorized: i64,
    pub captured: i64,
    pub refunded: i64,
    /// The customer action, for a payment authorized with a `tok_3ds` token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<ActionRecord>,
    /// Why a `declined` payment was declined: what a retried `authorize` answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decline_reason: Option<String>,
}

impl PaymentRecord {
    /// What `authorize` answers for this payment as it stands now: a retry after the customer
    /// acted (or after a void) sees the outcome, not the first answer.
    pub fn authorization(self) -> Result<Authorization, PaymentError> {
        match self.status {
            Status::RequiresAction => {
                let Some(action) = self.action.clone() else {
                    return Err(PaymentError::Invalid(format!(
                        "corrupt record: payment {} requires action but has none",
                        self.id
                    )));
                };
                let action = CustomerAction {
                    url: action.url,
                    expires_at_ms: action.expires_at_ms,
                };
                Ok(Authorization::RequiresAction((self.into(), action)))
            }
            Status::Declined => Err(PaymentError::Declined(
                self.decline_reason
                    .unwrap_or_else(|| "payment declined".into()),
            )),
            Status::Voided => Err(PaymentError::Declined("the payment was cancelled".into())),
            Status::Authorized
            | Status::PartiallyCaptured
            | Status::Captured
            | Status::PartiallyRefunded
            | Status::Refunded => Ok(Authorization::Authorized(self.into())),
        }
    }
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
    pub fn check(&self, fingerprint: &str) -> Result<(), PaymentError> {
        if self.fingerprint != fingerprint {
            return Err(PaymentError::Invalid(
                "idempotency key already used for a different call".into(),
            ));
        }
        Ok(())
    }

    /// The recorded answer of a capture, void or refund.
    pub fn replay(self, fingerprint: &str) -> Result<Payment, PaymentError> {
        self.check(fingerprint)?;
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
            Status::RequiresAction => PaymentStatus::RequiresAction,
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
