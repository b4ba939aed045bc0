//! Where an order is shipped.

use crate::error::InvalidValue;

/// A postal address. Validation is deliberately shallow (presence, length, an ISO 3166-1
/// alpha-2 country): postal formats vary too much to check here, and the carrier adapter is
/// the authority on deliverability.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShippingAddress {
    pub recipient: String,
    pub line1: String,
    pub line2: String,
    pub city: String,
    pub postal_code: String,
    pub country: String,
    /// Contact e-mail for order and delivery notifications; empty when none was given.
    pub email: String,
}

/// The raw fields of an address before validation.
#[derive(Debug, Clone, Default)]
pub struct RawAddress<'a> {
    pub recipient: &'a str,
    pub line1: &'a str,
    pub line2: &'a str,
    pub city: &'a str,
    pub postal_code: &'a str,
    pub country: &'a str,
    pub email: &'a str,
}

const MAX_FIELD: usize = 200;

fn text(value: &str, required: bool) -> Result<String, InvalidValue> {
    crate::text::check(value, MAX_FIELD, required)?;
    Ok(value.to_owned())
}

impl ShippingAddress {
    /// Validates every field and returns all failures at once, keyed by field name, so the
    /// client can fix the whole form in one round trip.
    pub fn parse(raw: RawAddress<'_>) -> Result<Self, Vec<(&'static str, InvalidValue)>> {
        let mut errors = Vec::new();
        let mut field =
            |name: &'static str, value: &str, required: bool| match text(value, required) {
                Ok(v) => v,
                Err(e) => {
                    errors.push((name, e));
                    String::new()
                }
            };
        let recipient = field("recipient", raw.recipient, true);
        let line1 = field("line1", raw.line1, true);
        let line2 = field("line2", raw.line2, false);
        let city = field("city", raw.city, true);
        let postal_code = field("postal_code", raw.postal_code, false);
        let country = raw.country;
        if country.len() != 2 || !country.bytes().all(|b| b.is_ascii_uppercase()) {
            errors.push((
                "country",
                InvalidValue::new("must be an ISO 3166-1 alpha-2 code such as DE"),
            ));
        }
        let email = raw.email;
        if !email.is_empty() && !looks_like_email(email) {
            errors.push((
                "email",
                InvalidValue::new("must be an e-mail address such as ada@example.com"),
            ));
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Self {
            recipient,
            line1,
            line2,
            city,
            postal_code,
            country: country.to_owned(),
            email: email.to_owned(),
        })
    }
}

/// A deliberately loose check (one `@`, a dot in the domain, no spaces, at most 254
/// characters): the mail system is the authority, this only catches typos in the field.
fn looks_like_email(s: &str) -> bool {
    let Some((local, domain)) = s.split_once('@') else {
        return false;
    };
    s.len() <= 254
        && !local.is_empty()
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !domain.contains('@')
        && !s.chars().any(|c| c.is_whitespace() || c.is_control())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_every_bad_field() {
        let errors = ShippingAddress::parse(RawAddress {
            country: "germany",
            ..RawAddress::default()
        })
        .unwrap_err();
        let fields: Vec<_> = errors.iter().map(|(f, _)| *f).collect();
        assert_eq!(fields, ["recipient", "line1", "city", "country"]);
    }

    #[test]
    fn email_is_optional_but_checked() {
        let with = |email| {
            ShippingAddress::parse(RawAddress {
                recipient: "Ada",
                line1: "1 Main St",
                city: "Berlin",
                country: "DE",
                email,
                ..RawAddress::default()
            })
        };
        assert_eq!(with("").unwrap().email, "");
        assert_eq!(with("ada@example.com").unwrap().email, "ada@example.com");
        for bad in [
            "ada",
            "ada@",
            "@example.com",
            "ada@example",
            "a b@example.com",
            "a@b@c.de",
        ] {
            assert_eq!(with(bad).unwrap_err()[0].0, "email", "{bad}");
        }
    }

    #[test]
    fn accepts_a_plain_address() {
        let a = ShippingAddress::parse(RawAddress {
            recipient: "Ada",
            line1: "1 Main St",
            city: "Berlin",
            country: "DE",
            ..RawAddress::default()
        })
        .unwrap();
        assert_eq!(a.country, "DE");
    }
}
