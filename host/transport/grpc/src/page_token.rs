//! Opaque page tokens for ListOrders.
//!
//! A token carries the keyset cursor and the filters it was issued for; a token replayed with
//! other filters is refused (AIP-158), because its cursor would silently skip orders.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use oms_domain::OrderId;

/// Encodes the cursor and the filters it belongs to.
pub fn encode(last: OrderId, filters: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("v1|{last}|{filters}"))
}

/// The cursor, if `token` was issued for exactly these filters.
pub fn decode(token: &str, filters: &str) -> Result<OrderId, &'static str> {
    let bytes = URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| "is not a token issued by this API")?;
    let text = String::from_utf8(bytes).map_err(|_| "is not a token issued by this API")?;
    let mut parts = text.splitn(3, '|');
    match (parts.next(), parts.next(), parts.next()) {
        (Some("v1"), Some(id), Some(f)) => {
            if f != filters {
                return Err("was issued for other filters; restart without a token");
            }
            OrderId::parse(id).map_err(|_| "is not a token issued by this API")
        }
        _ => Err("is not a token issued by this API"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_filter_binding() {
        let id = OrderId::generate();
        let t = encode(id, "status=1;customer=c");
        assert_eq!(decode(&t, "status=1;customer=c"), Ok(id));
        assert!(decode(&t, "status=2;customer=c").is_err());
        assert!(decode("garbage!", "").is_err());
    }
}
