//! Free text typed by people (names, address lines, reasons): bounded, and free of control
//! characters. A NUL cannot be stored by PostgreSQL at all, and the other control characters
//! (escape sequences, line breaks, bidi-breaking C1 codes) travel into log lines, e-mails and
//! operator consoles, where they can forge or hide content.

use std::fmt;

use crate::error::InvalidValue;

/// Checks one free-text field: at most `max_chars` characters, none of them a control
/// character; when `required`, not blank.
pub fn check(value: &str, max_chars: usize, required: bool) -> Result<(), InvalidValue> {
    if required && value.trim().is_empty() {
        return Err(InvalidValue::new("is required"));
    }
    // Counting stops one past the limit: a megabyte of text costs no more than a short one.
    if value.chars().take(max_chars + 1).count() > max_chars {
        return Err(InvalidValue::new(format!(
            "must be at most {max_chars} characters"
        )));
    }
    if value.chars().any(char::is_control) {
        return Err(InvalidValue::new("must not contain control characters"));
    }
    Ok(())
}

/// Why an order was cancelled or refunded, as the caller wrote it: optional, at most
/// [`Reason::MAX_CHARS`] characters, no control characters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Reason(String);

impl Reason {
    pub const MAX_CHARS: usize = 500;

    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        check(raw, Self::MAX_CHARS, false)?;
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_bounded_and_printable() {
        assert!(Reason::parse("").is_ok());
        assert!(Reason::parse("customer changed their mind — früh").is_ok());
        assert!(Reason::parse(&"x".repeat(500)).is_ok());
        assert!(Reason::parse(&"x".repeat(501)).is_err());
        for bad in [
            "a\0b",
            "line\nbreak",
            "esc\u{1b}[2J",
            "c1\u{85}",
            "del\u{7f}",
        ] {
            assert!(Reason::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn required_text_must_not_be_blank() {
        assert!(check("  ", 10, true).is_err());
        assert!(check("  ", 10, false).is_ok());
        assert!(check("Ada", 3, true).is_ok());
        assert!(check("Adam", 3, true).is_err());
    }
}
