//! Order lines: what is bought, how many, at what unit price.

use std::fmt;

use crate::error::InvalidValue;
use crate::money::{Money, MoneyError};

/// A stock-keeping unit: 1..=64 characters of `A-Z a-z 0-9 . _ -`. The alphabet is kept
/// narrow because SKUs travel to every inventory adapter and into log lines.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sku(String);

impl Sku {
    pub const MAX_LEN: usize = 64;

    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        if raw.is_empty() || raw.len() > Self::MAX_LEN {
            return Err(InvalidValue::new(format!(
                "must be 1 to {} characters",
                Self::MAX_LEN
            )));
        }
        if !raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            return Err(InvalidValue::new(
                "may contain only letters, digits, '.', '_' and '-'",
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Sku {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// How many units of a SKU: 1..=10_000 per line. The cap keeps a typo from reserving a
/// warehouse and keeps `unit_price * quantity` far from overflow for sane prices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Quantity(u32);

impl Quantity {
    pub const MAX: u32 = 10_000;

    pub fn new(raw: i64) -> Result<Self, InvalidValue> {
        match u32::try_from(raw) {
            Ok(q) if (1..=Self::MAX).contains(&q) => Ok(Self(q)),
            _ => Err(InvalidValue::new(format!(
                "must be between 1 and {}",
                Self::MAX
            ))),
        }
    }

    pub fn get(&self) -> u32 {
        self.0
    }
}

/// One line of an order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineItem {
    pub sku: Sku,
    pub quantity: Quantity,
    pub unit_price: Money,
}

impl LineItem {
    /// `unit_price * quantity`, failing rather than wrapping on overflow.
    pub fn subtotal(&self) -> Result<Money, MoneyError> {
        self.unit_price.checked_mul(self.quantity.get())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sku_alphabet() {
        assert!(Sku::parse("DEMO-1").is_ok());
        assert!(Sku::parse("a.b_c-9").is_ok());
        assert!(Sku::parse("").is_err());
        assert!(Sku::parse("white space").is_err());
        assert!(Sku::parse(&"S".repeat(65)).is_err());
    }

    #[test]
    fn quantity_bounds() {
        assert!(Quantity::new(0).is_err());
        assert!(Quantity::new(-1).is_err());
        assert!(Quantity::new(1).is_ok());
        assert!(Quantity::new(10_000).is_ok());
        assert!(Quantity::new(10_001).is_err());
        assert!(Quantity::new(i64::MAX).is_err());
    }
}
