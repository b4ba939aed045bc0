//! Any bytes as the body of a `CreateOrder` call: decoded by prost (or refused), then
//! validated into a new order (or field violations), as the gRPC edge does. Never a panic; an
//! accepted order's total is the sum of its lines.
#![no_main]

use libfuzzer_sys::fuzz_target;
use oms_grpc::convert::parse_new_order;
use oms_grpc::pb;
use prost::Message as _;

fuzz_target!(|body: &[u8]| {
    let Ok(request) = pb::CreateOrderRequest::decode(body) else {
        return;
    };
    if let Ok(order) = parse_new_order(&request) {
        let lines: Option<i64> = request.items.iter().try_fold(0_i64, |sum, item| {
            let price = item.unit_price.as_ref()?.amount_minor;
            sum.checked_add(price.checked_mul(item.quantity)?)
        });
        assert_eq!(lines, Some(order.total().amount_minor()), "{request:?}");
    }
});
