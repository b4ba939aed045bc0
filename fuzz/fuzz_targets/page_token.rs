//! Any text as a `ListOrders` page token, under any filters: read or refused, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use oms_grpc::page_token;

fuzz_target!(|input: (&str, &str)| {
    let (token, filters) = input;
    let _ = page_token::decode(token, filters);
});
