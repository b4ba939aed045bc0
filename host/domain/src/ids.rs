//! Identifiers.

use std::fmt;

use uuid::Uuid;

use crate::error::InvalidValue;

/// An order's id: a UUIDv7, so ids sort by creation time and keyset pagination needs no
/// second column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OrderId(Uuid);

impl OrderId {
    pub fn generate() -> Self {
        Self(Uuid::now_v7())
    }

    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        Uuid::try_parse(raw).map(Self).map_err(|_| {
            InvalidValue::new("must be a UUID such as 0190c3f2-7b1e-7cc0-8f35-1c1d2e3f4a5b")
        })
    }

    pub fn from_uuid(uuid: Uuid) -> Self {
        Self(uuid)
    }

    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl fmt::Display for OrderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

/// The customer an order belongs to, as the client's own identifier (opaque to the OMS).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CustomerId(String);

impl CustomerId {
    pub const MAX_LEN: usize = 128;

    /// 1..=128 characters, no control characters, no surrounding whitespace.
    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        if raw.is_empty() {
            return Err(InvalidValue::new("is required"));
        }
        if raw.chars().count() > Self::MAX_LEN {
            return Err(InvalidValue::new(format!(
                "must be at most {} characters",
                Self::MAX_LEN
            )));
        }
        if raw.trim() != raw || raw.chars().any(char::is_control) {
            return Err(InvalidValue::new(
                "must not contain control characters or surrounding whitespace",
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CustomerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_ids_sort_by_creation() {
        let a = OrderId::generate();
        let b = OrderId::generate();
        assert!(a < b);
        assert_eq!(OrderId::parse(&a.to_string()).unwrap(), a);
        assert!(OrderId::parse("not-a-uuid").is_err());
    }

    #[test]
    fn customer_id_rules() {
        assert!(CustomerId::parse("cust-42").is_ok());
        assert!(CustomerId::parse("").is_err());
        assert!(CustomerId::parse(" x").is_err());
        assert!(CustomerId::parse("a\nb").is_err());
        assert!(CustomerId::parse(&"x".repeat(129)).is_err());
        assert!(CustomerId::parse(&"x".repeat(128)).is_ok());
    }
}
