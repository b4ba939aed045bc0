//! Property tests of the request edge, the proptest form of issue 11's fuzz targets (request
//! conversion and validation, page tokens, idempotency keys): whatever a caller sends, the
//! answer is a value or field violations, never a panic, and what is accepted is consistent.

use oms_domain::{IdempotencyKey, OrderId};
use oms_grpc::convert::parse_new_order;
use oms_grpc::{page_token, pb};
use proptest::prelude::*;
use prost::Message as _;

/// `default` cases, or `PROPTEST_CASES` for a longer run (an explicit case count would
/// otherwise override the variable).
fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Any text, including control characters, separators and non-ASCII.
fn text(max: usize) -> impl Strategy<Value = String> {
    proptest::collection::vec(any::<char>(), 0..max).prop_map(|c| c.into_iter().collect())
}

fn address(
    recipient: impl Strategy<Value = String>,
    country: impl Strategy<Value = String>,
) -> impl Strategy<Value = pb::ShippingAddress> {
    (recipient, text(40), text(40), country).prop_map(|(recipient, line1, city, country)| {
        pb::ShippingAddress {
            recipient,
            line1,
            line2: String::new(),
            city,
            postal_code: "10115".to_owned(),
            country,
            email: String::new(),
        }
    })
}

/// Requests of any shape: mostly refused.
fn any_request() -> impl Strategy<Value = pb::CreateOrderRequest> {
    let money = proptest::option::of((any::<i64>(), text(5)).prop_map(
        |(amount_minor, currency)| pb::Money {
            amount_minor,
            currency,
        },
    ));
    let item =
        (text(70), any::<i64>(), money).prop_map(|(sku, quantity, unit_price)| pb::LineItem {
            sku,
            quantity,
            unit_price,
        });
    let payment = proptest::option::of(
        (text(20), text(20)).prop_map(|(provider, token)| pb::PaymentMethod { provider, token }),
    );
    (
        text(140),
        proptest::collection::vec(item, 0..8),
        payment,
        proptest::option::of(address(text(40), text(3))),
    )
        .prop_map(
            |(customer_id, items, payment, shipping_address)| pb::CreateOrderRequest {
                customer_id,
                items,
                payment,
                shipping_address,
            },
        )
}

/// Requests near the edge of validity: valid text, quantities and prices around their
/// bounds (negative, zero, 10,000, huge), one or two currencies, repeated SKUs.
fn plausible_request() -> impl Strategy<Value = pb::CreateOrderRequest> {
    let quantity = prop_oneof![Just(0_i64), Just(1), Just(10_000), Just(10_001), 1..20_i64];
    let amount = prop_oneof![
        Just(-1_i64),
        Just(0),
        Just(i64::MAX),
        Just(i64::MAX / 10_000),
        0..1_000_000_i64
    ];
    let currency = prop_oneof![Just("EUR".to_owned()), Just("USD".to_owned())];
    let item =
        ("[A-C]{1,2}", quantity, amount, currency).prop_map(|(sku, quantity, amount, currency)| {
            pb::LineItem {
                sku,
                quantity,
                unit_price: Some(pb::Money {
                    amount_minor: amount,
                    currency,
                }),
            }
        });
    let shipping_address = pb::ShippingAddress {
        recipient: "Ada".to_owned(),
        line1: "1 Main St".to_owned(),
        line2: String::new(),
        city: "Berlin".to_owned(),
        postal_code: "10115".to_owned(),
        country: "DE".to_owned(),
        email: String::new(),
    };
    (
        proptest::collection::vec(item, 1..6),
        Just(shipping_address),
    )
        .prop_map(|(items, shipping_address)| pb::CreateOrderRequest {
            customer_id: "c-1".to_owned(),
            items,
            payment: Some(pb::PaymentMethod {
                provider: "fakepay".to_owned(),
                token: "tok_ok".to_owned(),
            }),
            shipping_address: Some(shipping_address),
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(512)))]

    #[test]
    fn any_page_token_is_read_or_refused(token in text(200), filters in text(60)) {
        let _ = page_token::decode(&token, &filters);
    }

    #[test]
    fn an_issued_token_reads_back_for_its_filters_only(filters in text(60), other in text(60)) {
        let id = OrderId::generate();
        let token = page_token::encode(id, &filters);
        prop_assert_eq!(page_token::decode(&token, &filters), Ok(id));
        if other != filters {
            prop_assert!(page_token::decode(&token, &other).is_err());
        }
    }

    #[test]
    fn any_idempotency_key_is_parsed_or_refused(raw in text(300)) {
        if let Ok(key) = IdempotencyKey::parse(&raw) {
            prop_assert_eq!(key.as_str(), raw.as_str());
        }
    }

    #[test]
    fn any_bytes_as_a_create_request_are_refused_or_validated(
        bytes in proptest::collection::vec(any::<u8>(), 0..512)
    ) {
        if let Ok(request) = pb::CreateOrderRequest::decode(bytes.as_slice()) {
            let _ = parse_new_order(&request);
        }
    }

    #[test]
    fn any_create_request_is_refused_with_reasons_or_accepted(request in any_request()) {
        if let Err(violations) = parse_new_order(&request) {
            prop_assert!(!violations.is_empty());
        }
    }

    #[test]
    fn an_accepted_order_totals_its_lines_and_fits_64_bits(request in plausible_request()) {
        let one_currency = request
            .items
            .iter()
            .all(|i| i.unit_price.as_ref().map(|p| &p.currency) == request.items[0].unit_price.as_ref().map(|p| &p.currency));
        let mut skus: Vec<&str> = request.items.iter().map(|i| i.sku.as_str()).collect();
        skus.sort_unstable();
        let distinct = skus.windows(2).all(|w| w[0] != w[1]);
        let lines_valid = request.items.iter().all(|i| {
            (1..=10_000).contains(&i.quantity)
                && i.unit_price.as_ref().is_some_and(|p| p.amount_minor >= 0)
        });
        let sum: i128 = request
            .items
            .iter()
            .map(|i| i128::from(i.quantity) * i128::from(i.unit_price.as_ref().map_or(0, |p| p.amount_minor)))
            .sum();
        match parse_new_order(&request) {
            Ok(order) => {
                prop_assert!(one_currency && distinct && lines_valid, "{request:?}");
                prop_assert_eq!(i128::from(order.total().amount_minor()), sum);
            }
            Err(violations) => {
                prop_assert!(!violations.is_empty());
                prop_assert!(
                    !(one_currency && distinct && lines_valid && sum <= i128::from(i64::MAX)),
                    "a valid order was refused: {request:?} -> {violations:?}"
                );
            }
        }
    }
}
