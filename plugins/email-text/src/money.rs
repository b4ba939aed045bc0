//! Rendering minor units for people.

use crate::bindings::exports::oms::plugins::formatter::Money;

/// Digits after the decimal point per ISO 4217. Only the exceptions are listed; everything
/// else has two.
fn exponent(currency: &str) -> u32 {
    match currency {
        "BIF" | "CLP" | "DJF" | "GNF" | "ISK" | "JPY" | "KMF" | "KRW" | "PYG" | "RWF" | "UGX"
        | "UYI" | "VND" | "VUV" | "XAF" | "XOF" | "XPF" => 0,
        "BHD" | "IQD" | "JOD" | "KWD" | "LYD" | "OMR" | "TND" => 3,
        _ => 2,
    }
}

/// `1234` EUR -> `12.34 EUR`; integer arithmetic only, so no amount is ever rounded.
pub fn display(money: &Money) -> String {
    let exponent = exponent(&money.currency);
    let sign = if money.amount_minor < 0 { "-" } else { "" };
    let minor = money.amount_minor.unsigned_abs();
    if exponent == 0 {
        return format!("{sign}{minor} {}", money.currency);
    }
    let scale = 10u64.pow(exponent);
    format!(
        "{sign}{}.{:0width$} {}",
        minor / scale,
        minor % scale,
        money.currency,
        width = exponent as usize
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn money(amount_minor: i64, currency: &str) -> Money {
        Money {
            amount_minor,
            currency: currency.into(),
        }
    }

    #[test]
    fn renders_by_currency_exponent() {
        assert_eq!(display(&money(1234, "EUR")), "12.34 EUR");
        assert_eq!(display(&money(5, "USD")), "0.05 USD");
        assert_eq!(display(&money(-1050, "EUR")), "-10.50 EUR");
        assert_eq!(display(&money(1234, "JPY")), "1234 JPY");
        assert_eq!(display(&money(1234, "KWD")), "1.234 KWD");
        assert_eq!(
            display(&money(i64::MIN, "EUR")),
            "-92233720368547758.08 EUR"
        );
    }
}
