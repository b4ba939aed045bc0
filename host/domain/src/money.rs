//! Money as integer minor units plus an ISO-4217 currency. Floating point never appears.

use std::fmt;

use crate::error::InvalidValue;

/// Active ISO-4217 alphabetic codes. Kept as one sorted string so the table is auditable at a
/// glance and lookup is a binary search over fixed-width entries.
const ISO_4217: &str = "AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BHD BIF BMD BND BOB \
BRL BSD BTN BWP BYN BZD CAD CDF CHF CLP CNY COP CRC CUC CUP CVE CZK DJF DKK DOP DZD EGP ERN ETB \
EUR FJD FKP GBP GEL GHS GIP GMD GNF GTQ GYD HKD HNL HTG HUF IDR ILS INR IQD IRR ISK JMD JOD JPY \
KES KGS KHR KMF KPW KRW KWD KYD KZT LAK LBP LKR LRD LSL LYD MAD MDL MGA MKD MMK MNT MOP MRU MUR \
MVR MWK MXN MYR MZN NAD NGN NIO NOK NPR NZD OMR PAB PEN PGK PHP PKR PLN PYG QAR RON RSD RUB RWF \
SAR SBD SCR SDG SEK SGD SHP SLE SLL SOS SRD SSP STN SVC SYP SZL THB TJS TMT TND TOP TRY TTD TWD \
TZS UAH UGX USD UYU UZS VED VES VND VUV WST XAF XCD XCG XOF XPF YER ZAR ZMW ZWG ZWL";

/// An ISO-4217 currency code such as `EUR`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Currency([u8; 3]);

impl Currency {
    /// Accepts only an active ISO-4217 code in upper case (`eur` is refused, not normalised,
    /// so that a stored request fingerprint means exactly what the client sent).
    pub fn parse(code: &str) -> Result<Self, InvalidValue> {
        let bytes = code.as_bytes();
        let [a, b, c] = bytes else {
            return Err(InvalidValue::new(
                "must be a three-letter ISO-4217 code such as EUR",
            ));
        };
        let known = ISO_4217
            .as_bytes()
            .chunks(4)
            .any(|entry| entry.get(..3) == Some(bytes));
        if !known {
            return Err(InvalidValue::new(format!(
                "'{code}' is not an active ISO-4217 currency code"
            )));
        }
        Ok(Self([*a, *b, *c]))
    }

    /// The three-letter code.
    pub fn as_str(&self) -> &str {
        // The constructor only admits ASCII letters, so this cannot fail.
        std::str::from_utf8(&self.0).unwrap_or("XXX")
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a money operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error("currency mismatch: {left} vs {right}")]
    CurrencyMismatch { left: Currency, right: Currency },
    #[error("amount overflows 64-bit minor units")]
    Overflow,
    #[error("amount must not be negative")]
    Negative,
}

/// A non-negative amount of one currency, in minor units (cents for EUR, yen for JPY).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Money {
    amount_minor: i64,
    currency: Currency,
}

impl Money {
    /// Refuses negative amounts: prices, totals, captures and refunds are all magnitudes; the
    /// direction of money is carried by the operation, never by a sign.
    pub fn new(amount_minor: i64, currency: Currency) -> Result<Self, MoneyError> {
        if amount_minor < 0 {
            return Err(MoneyError::Negative);
        }
        Ok(Self {
            amount_minor,
            currency,
        })
    }

    pub fn zero(currency: Currency) -> Self {
        Self {
            amount_minor: 0,
            currency,
        }
    }

    pub fn amount_minor(&self) -> i64 {
        self.amount_minor
    }

    pub fn currency(&self) -> Currency {
        self.currency
    }

    pub fn is_zero(&self) -> bool {
        self.amount_minor == 0
    }

    fn same_currency(&self, other: &Money) -> Result<(), MoneyError> {
        if self.currency == other.currency {
            Ok(())
        } else {
            Err(MoneyError::CurrencyMismatch {
                left: self.currency,
                right: other.currency,
            })
        }
    }

    pub fn checked_add(&self, other: &Money) -> Result<Money, MoneyError> {
        self.same_currency(other)?;
        let amount_minor = self
            .amount_minor
            .checked_add(other.amount_minor)
            .ok_or(MoneyError::Overflow)?;
        Money::new(amount_minor, self.currency)
    }

    /// Fails with `Negative` when `other` is larger: a balance never goes below zero.
    pub fn checked_sub(&self, other: &Money) -> Result<Money, MoneyError> {
        self.same_currency(other)?;
        let amount_minor = self
            .amount_minor
            .checked_sub(other.amount_minor)
            .ok_or(MoneyError::Overflow)?;
        Money::new(amount_minor, self.currency)
    }

    pub fn checked_mul(&self, factor: u32) -> Result<Money, MoneyError> {
        let amount_minor = self
            .amount_minor
            .checked_mul(i64::from(factor))
            .ok_or(MoneyError::Overflow)?;
        Money::new(amount_minor, self.currency)
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} (minor units)", self.amount_minor, self.currency)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn eur() -> Currency {
        Currency::parse("EUR").unwrap()
    }

    #[test]
    fn currency_accepts_iso_codes_only() {
        assert!(Currency::parse("EUR").is_ok());
        assert!(Currency::parse("JPY").is_ok());
        assert!(Currency::parse("ZWL").is_ok());
        assert!(Currency::parse("AED").is_ok());
        for bad in ["eur", "EU", "EURO", "XYZ", "", "€€€"] {
            assert!(Currency::parse(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn mixing_currencies_fails() {
        let usd = Money::new(1, Currency::parse("USD").unwrap()).unwrap();
        let eur = Money::new(1, eur()).unwrap();
        assert!(matches!(
            eur.checked_add(&usd),
            Err(MoneyError::CurrencyMismatch { .. })
        ));
    }

    proptest! {
        #[test]
        fn add_then_sub_round_trips(a in 0i64..i64::MAX / 2, b in 0i64..i64::MAX / 2) {
            let x = Money::new(a, eur()).unwrap();
            let y = Money::new(b, eur()).unwrap();
            let sum = x.checked_add(&y).unwrap();
            prop_assert_eq!(sum.checked_sub(&y).unwrap(), x);
            prop_assert_eq!(sum.amount_minor(), a + b);
        }

        #[test]
        fn overflow_is_an_error_never_a_wrap(a in 0i64..=i64::MAX, b in 0i64..=i64::MAX) {
            let x = Money::new(a, eur()).unwrap();
            let y = Money::new(b, eur()).unwrap();
            match a.checked_add(b) {
                Some(expected) => prop_assert_eq!(x.checked_add(&y).unwrap().amount_minor(), expected),
                None => prop_assert_eq!(x.checked_add(&y), Err(MoneyError::Overflow)),
            }
        }

        #[test]
        fn multiplication_matches_i128(a in 0i64..=i64::MAX, q in 0u32..=u32::MAX) {
            let x = Money::new(a, eur()).unwrap();
            let wide = i128::from(a) * i128::from(q);
            match x.checked_mul(q) {
                Ok(m) => prop_assert_eq!(i128::from(m.amount_minor()), wide),
                Err(e) => {
                    prop_assert_eq!(e, MoneyError::Overflow);
                    prop_assert!(wide > i128::from(i64::MAX));
                }
            }
        }

        #[test]
        fn subtraction_never_goes_negative(a in 0i64..1_000_000, b in 0i64..1_000_000) {
            let x = Money::new(a, eur()).unwrap();
            let y = Money::new(b, eur()).unwrap();
            match x.checked_sub(&y) {
                Ok(m) => prop_assert!(m.amount_minor() >= 0 && a >= b),
                Err(e) => { prop_assert_eq!(e, MoneyError::Negative); prop_assert!(a < b); }
            }
        }
    }
}
