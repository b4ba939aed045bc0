//! Translation between protobuf messages and domain values.

mod from_proto;
pub(crate) mod to_proto;

pub use from_proto::{
    Violations, parse_address, parse_expected_version, parse_money, parse_new_order,
    parse_order_id, parse_reason, parse_status_filter,
};
pub use to_proto::{order_status, order_to_proto};
