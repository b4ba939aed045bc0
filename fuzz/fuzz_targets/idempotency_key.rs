//! Any text as an `idempotency-key` header: parsed or refused, never a panic; an accepted key
//! reads back as itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use oms_domain::IdempotencyKey;

fuzz_target!(|raw: &str| {
    if let Ok(key) = IdempotencyKey::parse(raw) {
        assert_eq!(key.as_str(), raw);
    }
});
